"""Executing one stage notebook with papermill: parameters injected, kernel on local IPC
sockets, a time limit for the whole stage, the executed notebook saved atomically, and its
HTML export (`frameatlas.pipeline.export`).

Example:
    >>> from frameatlas.pipeline.execute import notebooks_dir
    >>> (notebooks_dir() / "01_extract.ipynb").name
    '01_extract.ipynb'
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..config import PipelineConfig
from ..files import atomic_path
from ..lock import child_environment
from ..progress import PROGRESS_ENV
from ..store import RunPaths
from .export import export_html
from .notebook import LOG_LEVEL_ENV
from .registry import Stage

__all__ = ["StageFailed", "execute_stage", "export_html", "notebooks_dir"]

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def notebooks_dir() -> Path:
    """The stage notebooks the package carries (FRAMEATLAS_NOTEBOOKS overrides, e.g. for tests)."""
    override = os.environ.get("FRAMEATLAS_NOTEBOOKS")
    if override:
        return Path(override).resolve()
    return PACKAGE_DIR / "notebooks"


class StageFailed(RuntimeError):
    def __init__(self, stage: str, error: str, notebook: Path):
        super().__init__(f"stage {stage!r} failed: {error}\n  partial notebook: {notebook}")
        self.stage, self.error, self.notebook = stage, error, notebook


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _StageClock:
    """Kills the stage's kernel when the stage has run longer than its limit."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.timed_out = False
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    def attach(self, pid: int) -> None:
        with self._lock:
            self._pid = pid
            if self.timed_out:
                self._kill()

    def _expire(self) -> None:
        with self._lock:
            self.timed_out = True
            self._kill()

    def _kill(self) -> None:
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


_CLOCK: list[_StageClock] = []  # the clock of the stage being executed (one at a time per runner)


def _kernel_manager_class():
    """An AsyncKernelManager that tells the stage clock which process to stop."""
    from jupyter_client.manager import AsyncKernelManager

    class StageKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kwargs):  # type: ignore[override]
            await super().start_kernel(**kwargs)
            process = getattr(self.provisioner, "process", None)
            if _CLOCK and process is not None:
                _CLOCK[-1].attach(process.pid)

    return StageKernelManager


def _kernel_config(socket_folder: Path):
    from traitlets.config import Config

    config = Config()
    config.KernelManager.transport = "ipc"  # local sockets: the kernel is never reachable from the network
    # ...kept out of the run and the package (which may be read-only): a private temporary folder
    config.KernelManager.ip = str(socket_folder / "kernel")
    return config


def execute_stage(stage: Stage, cfg: PipelineConfig, run: RunPaths, force: bool, show_progress: bool) -> Path:
    """Run `stage`'s notebook into `reports/`; raises `StageFailed` (the partial notebook kept)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = notebooks_dir() / stage.notebook
    if not source.exists():
        raise StageFailed(stage.name, f"notebook {source} not found", source)
    output = run.reports / stage.notebook
    run.reports.mkdir(parents=True, exist_ok=True)
    run.stage_result(stage.name).unlink(missing_ok=True)
    parameters = {"config": cfg.to_parameters(), "run_dir": str(run.root), "force": force}
    # The kernel must be this interpreter (with frameatlas installed), whatever PATH says.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    limit_minutes = cfg.run.stage_timeout_minutes
    clock = _StageClock(limit_minutes * 60)
    failure: StageFailed | None = None
    env = {
        # Progress and INFO logs go to the runner's terminal and logs/<stage>.log, not into the report
        # (frameatlas.progress, notebook._log_to_notebook); other libraries' tqdm bars are off.
        PROGRESS_ENV: "terminal" if show_progress else "log",
        LOG_LEVEL_ENV: logging.getLevelName(logging.getLogger("frameatlas").getEffectiveLevel()),
        "TQDM_DISABLE": "1",
        "PATH": path,
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        **child_environment(run.root),
    }
    # papermill saves the notebook after every cell: into a temporary file, renamed when the stage
    # ends (done or failed), so the report in place is always a whole notebook.
    with (
        atomic_path(output) as partial,
        _environment(**env),
        tempfile.TemporaryDirectory(prefix="frameatlas-kernel-") as sockets,
    ):
        _CLOCK.append(clock)
        clock.start()
        try:
            papermill.execute_notebook(
                str(source),
                str(partial),
                parameters=parameters,
                kernel_name="python3",
                cwd=str(run.reports),  # relative links written by a notebook resolve from its report
                progress_bar=False,  # the stage's own bars are on the terminal instead
                log_output=False,  # the kernel writes its log lines to the terminal itself
                config=_kernel_config(Path(sockets)),
                kernel_manager_class=_kernel_manager_class(),
                # Once the last cell has returned the stage is done: everything it wrote went through
                # atomic renames (and SQLite commits), its log lines are flushed. A graceful shutdown
                # only spends 2-4 s finalising torch, chromadb & co. (manifest: timing.kernel_stop).
                shutdown_kernel="immediate",
            )
        except PapermillExecutionError as error:
            failure = StageFailed(stage.name, f"{error.ename}: {error.evalue}", output)
        except Exception as error:  # kernel died or was stopped, missing kernel...
            failure = StageFailed(stage.name, f"{type(error).__name__}: {error}", output)
        finally:
            clock.cancel()
            _CLOCK.remove(clock)
        if clock.timed_out:
            failure = StageFailed(
                stage.name,
                f"stopped after {limit_minutes:g} min, the stage time limit (run.stage_timeout_minutes in the config); "
                "raise it for larger corpora, or re-run: cached work is kept",
                output,
            )
        if failure is not None and not partial.exists():
            raise failure
    if failure is not None:
        export_html(output, f"{stage.notebook} (failed)")
        raise failure
    return output
