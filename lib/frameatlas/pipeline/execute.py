"""Executing one stage notebook with papermill: parameters injected, kernel on local IPC
sockets, a time limit for the whole stage, the executed notebook saved atomically, and its
HTML export (`frameatlas.pipeline.export`).

Example:
    >>> from frameatlas.pipeline.execute import notebooks_dir
    >>> (notebooks_dir() / "01_extract.ipynb").name
    '01_extract.ipynb'
"""

from __future__ import annotations

import itertools
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
from .kernels import KernelPool, PreparedKernel, stop_kernel
from .notebook import LOG_LEVEL_ENV
from .registry import Stage

__all__ = ["KERNEL_ARGUMENTS", "StageFailed", "execute_stage", "export_html", "kernel_pool", "notebooks_dir", "prepare_execution",
           "stage_environment"]  # fmt: skip

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

    @property
    def pid(self) -> int | None:
        """The stage kernel's process id, once known."""
        return self._pid

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


def _engine() -> str:
    """papermill's nbclient engine, except that a kernel handed over (`km`, started ahead) is stopped
    and its client closed after the notebook, as nbclient does with a kernel it started itself."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.log import logger
    from papermill.utils import remove_args

    class StageEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(
            cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None, start_timeout=60,
            execution_timeout=None, **kwargs,
        ):  # fmt: skip
            kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
            client = PapermillNotebookClient(
                nb_man, kernel_name=kernel_name, log=logger, log_output=log_output, stdout_file=stdout_file,
                stderr_file=stderr_file, startup_timeout=start_timeout, timeout=execution_timeout, **kwargs,
            )  # fmt: skip
            return client.execute(cleanup_kc=True)

    papermill_engines.register(ENGINE, StageEngine)
    return ENGINE


ENGINE = "frameatlas"


def _kernel_config(socket_folder: Path):
    from traitlets.config import Config

    config = Config()
    config.KernelManager.transport = "ipc"  # local sockets: the kernel is never reachable from the network
    # ...kept out of the run and the package (which may be read-only): a private temporary folder
    config.KernelManager.ip = str(socket_folder / "kernel")
    return config


def stage_environment(run: RunPaths, show_progress: bool) -> dict[str, str]:
    """Environment entries of a stage kernel (the same for every stage of one runner invocation)."""
    # The kernel must be this interpreter (with frameatlas installed), whatever PATH says.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {
        # Progress and INFO logs go to the runner's terminal and logs/<stage>.log, not into the report
        # (frameatlas.progress, notebook._log_to_notebook); other libraries' tqdm bars are off.
        PROGRESS_ENV: "terminal" if show_progress else "log",
        LOG_LEVEL_ENV: logging.getLevelName(logging.getLogger("frameatlas").getEffectiveLevel()),
        "TQDM_DISABLE": "1",
        "PATH": path,
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        **child_environment(run.root),
    }


#: nbclient starts kernels with an in-memory IPython history (no history.sqlite shared between
#: kernels); a kernel started ahead gets the same.
KERNEL_ARGUMENTS = ["--HistoryManager.hist_file=:memory:"]


def kernel_pool(run: RunPaths, show_progress: bool, socket_folder: Path) -> KernelPool:
    """A pool starting stage kernels ahead, as `execute_stage` would start them (same interpreter,
    environment, working folder, local sockets: one folder per kernel)."""
    count = itertools.count()

    def manager():  # jupyter_client is imported only when a stage runs (not by a run with nothing to do)
        from jupyter_client.manager import AsyncKernelManager

        folder = socket_folder / f"ahead-{next(count)}"
        folder.mkdir(parents=True, exist_ok=True)
        return AsyncKernelManager(kernel_name="python3", config=_kernel_config(folder))

    env = {**os.environ, **stage_environment(run, show_progress)}
    run.reports.mkdir(parents=True, exist_ok=True)  # the kernels' working folder; a first run has none yet
    return KernelPool(manager, {"cwd": str(run.reports), "env": env, "extra_arguments": list(KERNEL_ARGUMENTS)}, run.cache)


def prepare_execution() -> None:
    """Import what executing a notebook needs (papermill, nbclient: about 0.6 s), e.g. while a
    stage's kernel boots."""
    import papermill  # noqa: F401


def execute_stage(
    stage: Stage, cfg: PipelineConfig, run: RunPaths, force: bool, show_progress: bool, kernel: PreparedKernel | None = None
) -> Path:
    """Run `stage`'s notebook into `reports/`; raises `StageFailed` (the partial notebook kept).

    `kernel`: one started ahead for this stage (`KernelPool`), used instead of starting one, and
    stopped when the notebook is done."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = notebooks_dir() / stage.notebook
    if not source.exists():
        raise StageFailed(stage.name, f"notebook {source} not found", source)
    output = run.reports / stage.notebook
    run.reports.mkdir(parents=True, exist_ok=True)
    run.stage_result(stage.name).unlink(missing_ok=True)
    parameters = {"config": cfg.to_parameters(), "run_dir": str(run.root), "force": force}
    limit_minutes = cfg.run.stage_timeout_minutes
    clock = _StageClock(limit_minutes * 60)
    failure: StageFailed | None = None
    env = stage_environment(run, show_progress)
    ahead = {"km": kernel.manager} if kernel is not None else {}
    # papermill saves the notebook after every cell: into a temporary file, renamed when the stage
    # ends (done or failed), so the report in place is always a whole notebook.
    with (
        atomic_path(output) as partial,
        _environment(**env),
        tempfile.TemporaryDirectory(prefix="frameatlas-kernel-") as sockets,
    ):
        _CLOCK.append(clock)
        clock.start()
        if kernel is not None and kernel.pid is not None:
            clock.attach(kernel.pid)
        try:
            papermill.execute_notebook(
                str(source),
                str(partial),
                parameters=parameters,
                kernel_name="python3",
                engine_name=_engine(),
                cwd=str(run.reports),  # relative links written by a notebook resolve from its report
                progress_bar=False,  # the stage's own bars are on the terminal instead
                log_output=False,  # the kernel writes its log lines to the terminal itself
                config=_kernel_config(Path(sockets)),
                kernel_manager_class=_kernel_manager_class(),
                # Once the last cell has returned the stage is done: everything it wrote went through
                # atomic renames (and SQLite commits), its log lines are flushed. A graceful shutdown
                # only spends 2-4 s finalising torch, chromadb & co. (manifest: timing.kernel_stop).
                shutdown_kernel="immediate",
                **ahead,
            )
        except PapermillExecutionError as error:
            failure = StageFailed(stage.name, f"{error.ename}: {error.evalue}", output)
        except Exception as error:  # kernel died or was stopped, missing kernel...
            failure = StageFailed(stage.name, f"{type(error).__name__}: {error}", output)
        finally:
            if kernel is not None:  # stopped by the engine, unless papermill failed before starting the notebook
                stop_kernel(kernel.manager)
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
        raise failure  # the partial notebook is in place (the runner exports it)
    return output
