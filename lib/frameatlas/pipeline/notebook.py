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
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import PipelineConfig, config_from_dict, load_config
from ..files import atomic_write_json, remove_orphan_temps
from ..lock import RunLock, acquire_run_lock
from ..store import RunPaths
from ..summary import StageSummary
from .registry import stage_named

__all__ = ["StageContext", "exit_with_parent", "open_stage"]


@dataclass
class StageContext:
    """What a stage notebook works with: the validated config, the run folder, the run's lock."""

    stage: str
    config: PipelineConfig
    run: RunPaths
    force: bool = False
    lock: RunLock | None = None
    started: float = field(default_factory=time.perf_counter)

    def finish(self, summary: StageSummary, **extra: Any) -> dict[str, Any]:
        """Record the stage's result (its summary, plus `extra` keys) for the runner's manifest."""
        base = summary.result()
        if not base.get("models"):
            base.pop("models", None)
        result = {"stage": self.stage, "seconds": round(time.perf_counter() - self.started, 3), **base, **extra}
        atomic_write_json(self.run.stage_result(self.stage), result)
        return result

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
    lock = acquire_run_lock(run.root, f"{stage} notebook ({Path(sys.argv[0]).name} pid {os.getpid()})")
    if lock.delegated:
        exit_with_parent()
    else:
        remove_orphan_temps(run.root)  # nobody else writes: temporaries here are a killed writer's
    context = StageContext(stage, cfg, run, force=force, lock=lock)
    _OPEN.append(context)
    atomic_write_json(run.config_file, cfg.to_parameters())  # search and later stages read it
    _log_to_notebook(run, stage)
    return context


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


def _log_to_notebook(run: RunPaths, stage: str) -> None:
    logger = logging.getLogger("frameatlas")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        if getattr(handler, "_frameatlas", False):
            logger.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    run.logs.mkdir(parents=True, exist_ok=True)
    logfile = logging.FileHandler(run.logs / f"{stage}.log", encoding="utf-8")
    logfile.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for handler in (console, logfile):
        handler._frameatlas = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
