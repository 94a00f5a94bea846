"""Inside a stage notebook: `open_stage` gives the stage its config, its run folder and the
run's lock, whether the runner injected them or the notebook was opened by hand.

Run by the runner, a stage writes under the runner's lock (handed down through the
environment) and its kernel exits as soon as the runner is gone, so a killed run leaves no
kernel writing into the folder. Opened by hand, the notebook takes the run's lock itself and
holds it until its kernel shuts down (or it opens another stage).

Example (in a notebook):
    >>> ctx = open_stage("extract", config_path="../pipeline.yaml")  # doctest: +SKIP
    >>> ctx.finish(frames.extract_corpus(ctx.config, ctx.run))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import PipelineConfig, config_from_dict, load_config
from ..files import atomic_write_json, remove_orphan_temps
from ..lock import RunLock, acquire_run_lock
from ..progress import is_progress_record, terminal_stream
from ..store import RunPaths
from ..summary import StageSummary
from .registry import stage_named

__all__ = ["HEAVY_MODULES", "StageContext", "exit_with_parent", "heavy_imports", "open_stage"]

#: Libraries that take seconds to import (or mean a model was loaded); the manifest records which
#: of them each stage's kernel imported (`imports`), so a stage that needed none can be seen to.
HEAVY_MODULES = (
    "torch", "torchvision", "open_clip", "sentence_transformers", "transformers", "tensorflow", "onnxruntime",
    "openvino", "rapidocr_onnxruntime", "faster_whisper", "ctranslate2", "chromadb", "faiss", "umap", "hdbscan", "sklearn",
    "numba", "plotly", "av", "cv2",
)  # fmt: skip


def heavy_imports() -> list[str]:
    """Which of `HEAVY_MODULES` this process has imported."""
    return [name for name in HEAVY_MODULES if name in sys.modules]


@dataclass
class StageContext:
    """What a stage notebook works with: the validated config, the run folder, the run's lock."""

    stage: str
    config: PipelineConfig
    run: RunPaths
    force: bool = False
    lock: RunLock | None = None
    started: float = field(default_factory=time.perf_counter)
    opened_at: float = field(default_factory=time.time)  # wall clock, to place the stage's work in the kernel's time
    _result: dict[str, Any] | None = field(default=None, repr=False)
    _modules: list[str] | None = field(default=None, repr=False)

    def finish(self, summary: StageSummary, **extra: Any) -> dict[str, Any]:
        """Record the stage's result (its summary, plus `extra` keys) for the runner's manifest."""
        base = summary.result()
        if not base.get("models"):
            base.pop("models", None)
        result = {"stage": self.stage, "seconds": round(time.perf_counter() - self.started, 3), **base, **extra,
                  "opened_at": self.opened_at, "finished_at": time.time(), "imports": heavy_imports(),
                  "kernel_pid": os.getpid()}  # fmt: skip
        atomic_write_json(self.run.stage_result(self.stage), result)
        self._result = result
        self._record_modules()
        return result

    def _record_modules(self) -> None:
        """Keep the modules imported so far for this stage's next kernel (`kernels.modules_file`)."""
        from .kernels import loaded_modules, modules_file

        modules = loaded_modules()
        if modules != self._modules:
            atomic_write_json(modules_file(self.run.cache, self.stage), modules)
            self._modules = modules

    def after_cell(self, *_: Any) -> None:
        """After each cell (an IPython `post_run_cell` hook): the heavy modules imported since the
        stage finished (the report's last cells, its quality checks) join its recorded result."""
        if self._result is None or self.lock is None:
            return
        self._record_modules()
        imports = heavy_imports()
        if imports != self._result.get("imports"):
            self._result["imports"] = imports
            atomic_write_json(self.run.stage_result(self.stage), self._result)

    def close(self) -> None:
        """Give the run's lock back (a notebook opened by hand; the runner's lock is the runner's)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


_OPEN: list[StageContext] = []  # the stage this kernel works on: one at a time


def open_stage(
    stage: str,
    *,
    config: dict[str, Any] | None = None,
    config_path: str | Path | None = None,
    run_dir: str | Path | None = None,
    force: bool = False,
) -> StageContext:
    """Set a notebook up for `stage`: the runner injects `config` and `run_dir`; by hand,
    `config_path` (the default `../pipeline.yaml`) is read and validated instead.

    Raises `frameatlas.lock.RunLocked` when another process is writing into the run.
    """
    stage_named(stage)  # unknown names fail here, with the list of stages
    if config is not None:
        cfg = config_from_dict(config, source="injected config")
    elif config_path is not None:
        cfg = load_config(config_path)
    else:
        raise ValueError("open_stage needs either config (a dict) or config_path (a pipeline.yaml)")
    run = RunPaths(run_dir or cfg.run_dir)
    while _OPEN:
        _OPEN.pop().close()
    _unhook_cells()
    lock = acquire_run_lock(run.root, f"{stage} notebook ({Path(sys.argv[0]).name} pid {os.getpid()})")
    if lock.delegated:
        exit_with_parent()
    else:
        remove_orphan_temps(run.root)  # nobody else writes: temporaries here are a killed writer's
    context = StageContext(stage, cfg, run, force=force, lock=lock)
    _OPEN.append(context)
    _hook_cells(context)
    atomic_write_json(run.config_file, cfg.to_parameters())  # search and later stages read it
    _log_to_notebook(run, stage, by_runner=lock.delegated)
    return context


def _hook_cells(context: StageContext) -> None:
    """Call `context.after_cell` after every cell of the notebook (when run in IPython)."""
    shell = _ipython()
    if shell is not None:
        shell.events.register("post_run_cell", context.after_cell)
        _HOOKED.append(context)


def _unhook_cells() -> None:
    shell = _ipython()
    if shell is None:
        return
    for context in list(_HOOKED):
        try:
            shell.events.unregister("post_run_cell", context.after_cell)
        except ValueError:
            pass
    _HOOKED.clear()


_HOOKED: list[StageContext] = []


def _ipython():
    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    return get_ipython()


_WATCHING = threading.Event()


def exit_with_parent(poll_seconds: float = 0.2) -> None:
    """End this kernel, and every process it started, when the runner that started it dies
    (killed, say), so nothing keeps writing into the run once its lock is gone.

    Jupyter starts a kernel as the leader of a new process group, which the kernel's own
    children (ffmpeg, ...) join: killing the group stops them all, at no cost per child (a
    per-child PR_SET_PDEATHSIG needs a `preexec_fn`, which makes every spawn a full fork of
    this large process). Polling the parent pid is portable and not fooled by the exit of the
    parent's thread that started us.
    """
    if _WATCHING.is_set():
        return
    _WATCHING.set()
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                if os.getpgrp() == os.getpid():  # our own group: only our descendants are in it
                    os.killpg(os.getpid(), signal.SIGKILL)
                os._exit(70)  # EX_SOFTWARE: the runner is gone

    threading.Thread(target=watch, name="frameatlas-parent-watch", daemon=True).start()


LOG_LEVEL_ENV = "FRAMEATLAS_LOG_LEVEL"  # the runner's terminal level (INFO, or WARNING with --quiet)
NOTE_CHARS = 400  # a warning longer than this is cut in the report (whole in the stage log)


class _NoteFormatter(logging.Formatter):
    """A warning as a short note in the report: its level and first line, cut at NOTE_CHARS."""

    def __init__(self, log_name: str):
        super().__init__("%(levelname)s: %(message)s")
        self.log_name = log_name

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).strip()
        if record.name == "py.warnings":  # "/path/to/module.py:12: UserWarning: ..." -> "UserWarning: ..."
            text = re.sub(r"^(\w+: )\S.*?:\d+: ", r"\1", text, count=1)
        first, _, rest = text.partition("\n")
        if rest or len(first) > NOTE_CHARS:
            first = f"{first[:NOTE_CHARS].rstrip()} ... (whole message in {self.log_name})"
        return first.replace("WARNING:", "warning:", 1).replace("ERROR:", "error:", 1).replace("CRITICAL:", "error:", 1)


class _TerminalHandler(logging.StreamHandler):
    """Log lines on the runner's terminal, written around the live progress bars (tqdm.write)."""

    def emit(self, record: logging.LogRecord) -> None:
        if is_progress_record(record):
            return  # the live bar is on the terminal already; progress lines are for the stage log
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def _log_to_notebook(run: RunPaths, stage: str, *, by_runner: bool = False) -> None:
    """Where the stage's log goes. By hand: the notebook (INFO) and `logs/<stage>.log`. Run by the
    runner: `logs/<stage>.log` (INFO, with progress lines), the runner's terminal (its level), and
    only warnings and errors into the notebook, as one-line notes the report shows."""
    run.logs.mkdir(parents=True, exist_ok=True)
    log_file = run.logs / f"{stage}.log"
    logfile = logging.FileHandler(log_file, encoding="utf-8")
    logfile.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if by_runner:
        terminal = _TerminalHandler(terminal_stream())
        terminal.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
        terminal.setLevel(logging.getLevelName(os.environ.get(LOG_LEVEL_ENV, "INFO").upper()))
        notes = logging.StreamHandler(sys.stderr)  # the notebook's stderr: shown in the report
        notes.setLevel(logging.WARNING)
        notes.setFormatter(_NoteFormatter(f"logs/{log_file.name}"))
        handlers: list[logging.Handler] = [logfile, terminal, notes]
        logging.captureWarnings(True)  # library warnings: one-line notes too, not tracebacks of source lines
        loggers = [logging.getLogger("frameatlas"), logging.getLogger("py.warnings")]
    else:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handlers = [console, logfile]
        loggers = [logging.getLogger("frameatlas")]
    for logger in loggers:
        for handler in list(logger.handlers):
            if getattr(handler, "_frameatlas", False):
                logger.removeHandler(handler)
                handler.close()
        for handler in handlers:
            handler._frameatlas = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.propagate = False
    logging.getLogger("frameatlas").setLevel(logging.INFO)
