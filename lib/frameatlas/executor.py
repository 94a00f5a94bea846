"""Where the per-video passes run: in this process (`run.executor: local`), or on Ray (`ray`).

Extraction, on-screen text, speech and image embedding work video by video with no shared
state, so each video can be a unit of work on a Ray cluster. Under Ray:

* a pool of worker actors (`run.ray_worker_cpus` CPUs each, one per that many CPUs of the
  cluster) each loads its model once (`setup`), with torch's and ONNX Runtime's threads set to
  the CPUs it was given, and then takes one video after another;
* a unit writes only its own shard files (per-video files written atomically under the run
  folder, which every node sees at the same path) and returns their paths and counts: frames
  and vectors never travel through Ray's object store;
* the driver (the stage) stays the single writer of tables, manifest and index, and holds the
  run's lock; a worker checks before each unit that the driver that sent it still holds it;
* a unit that raises is tried again (`RETRIES` more times, on any worker), then reported as
  `Failed` with the worker's error, which the stage records as a skipped input, as in local
  runs. A worker that dies (a node lost, out of memory) is replaced.

The local executor is no executor at all: the stages run their loops as before.

Example:
    >>> from frameatlas.config import RunConfig
    >>> with open_executor(RunConfig(), "outputs/demo") as executor:
    ...     executor.distributed
    False
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .corpus import failure_reason
from .lock import LOCK_TOKEN_ENV, child_environment, lock_holder

log = logging.getLogger(__name__)

__all__ = ["RETRIES", "Failed", "LocalExecutor", "RayExecutor", "RayUnavailable", "open_executor", "worker_threads"]

RETRIES = 1  # a unit that raised is tried this many more times before its video is skipped
# passed on to Ray's workers: they must not reach the hub either, and draw no progress bars
_WORKER_ENVIRONMENT = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "TORCH_HOME", "FRAMEATLAS_PROGRESS")


class RayUnavailable(RuntimeError):
    """`run.executor: ray` but Ray cannot be imported or reached; the message says what to do."""


@dataclass(frozen=True)
class Failed:
    """A unit that raised on its worker every time it was tried; `reason` is the worker's error."""

    reason: str
    attempts: int = 1


class LocalExecutor:
    """`run.executor: local`: the stages run their own loops in this process, as always.

    `map` runs units here, one after another, with `RayExecutor.map`'s contract: a pass meant for
    Ray runs here when no local Ray could be started."""

    distributed = False
    workers = 1

    def describe(self) -> str:
        return "this process"

    def start(self, setup=None, units: int | None = None) -> None:
        """Nothing to start ahead here (`RayExecutor.start`)."""

    def map(self, work, items, *, setup=None, on_done=None, retries: int = RETRIES) -> list[Any]:
        state = setup(0) if setup is not None else None  # 0: every core, as the local executor's models use
        results: list[Any] = []
        for index, item in enumerate(items):
            for attempt in range(1, retries + 2):
                try:
                    result = work(state, item)
                    break
                except MemoryError:
                    raise
                except Exception as error:  # noqa: BLE001 - as on a Ray worker: tried again, then reported
                    result = Failed(failure_reason(error), attempt)
                    log.warning("item %d failed (%s)%s", index, result.reason, "; trying it again" if attempt <= retries else "")
            results.append(result)
            if on_done is not None:
                on_done(index, result)
        return results


def worker_threads() -> int:
    """The CPUs Ray gave the current worker (at least 1); outside Ray, 0 (= every core)."""
    try:
        import ray

        if ray.is_initialized():
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if cpus:
                return max(1, int(cpus))
    except Exception:  # noqa: BLE001 - not in a Ray worker
        pass
    return 0


class _Worker:
    """A Ray actor: the state `setup(threads)` made (a loaded model), then one unit after another."""

    def __init__(self, environment: dict[str, str], run_root: str, lock_token: str | None):
        # the driver's offline and progress settings, before anything that reads them is imported (the
        # state is made by `setup`); passed here, not as the job's runtime_env: a job with a runtime_env
        # cannot use the workers Ray keeps started, and waits seconds for new ones
        os.environ.update(environment)
        threads = worker_threads() or 1
        # numpy/BLAS, ONNX Runtime and FFmpeg read these; torch is set below once imported
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = str(threads)
        os.environ.setdefault("FRAMEATLAS_PROGRESS", "off")
        self.threads = threads
        self.run_root, self.lock_token = run_root, lock_token
        self.state: Any = None

    def setup(self, pickled_setup: bytes | None) -> int:
        """Makes the worker's state (loads its model): `setup(threads)`, unpickled only now, after __init__
        set the environment (its modules are imported by unpickling)."""
        if pickled_setup is not None:
            from ray import cloudpickle

            try:
                self.state = cloudpickle.loads(pickled_setup)(self.threads)
            except Exception as error:  # every unit on this worker then fails with it (tried again elsewhere, then reported)
                self.setup_error: BaseException | None = error
                raise
        if "torch" in sys.modules:  # not imported for nothing: OCR and speech workers run without torch
            sys.modules["torch"].set_num_threads(self.threads)
        return self.threads

    def run(self, work: Callable[[Any, Any], Any], item: Any) -> Any:
        if getattr(self, "setup_error", None) is not None:
            raise self.setup_error
        if self.lock_token is not None:
            holder = lock_holder(self.run_root)
            if holder is None or holder.token != self.lock_token:
                raise RuntimeError(f"{self.run_root}: the driver that sent this work no longer holds the run's lock; not writing")
        return work(self.state, item)

    def ping(self) -> int:
        return self.threads


class RayExecutor:
    """Runs units of work on Ray worker actors (see the module docstring)."""

    distributed = True

    def __init__(self, ray_module, run_root: Path | str, worker_cpus: int = 1, retries: int = RETRIES):
        self._ray = ray_module
        self.run_root = str(Path(run_root).resolve())
        self.worker_cpus = worker_cpus
        self.retries = retries
        try:
            self.lock_token: str | None = child_environment(self.run_root)[LOCK_TOKEN_ENV]
        except RuntimeError:  # a library call outside any lock (a notebook cell, a test): nothing to check
            self.lock_token = None
        cpus = float(ray_module.cluster_resources().get("CPU", 1))
        self.workers = max(1, int(cpus // worker_cpus))
        self._environment = worker_environment()
        self._actor_class = None
        self._pool: _Pool | None = None

    def describe(self) -> str:
        return f"ray ({self.workers} workers x {self.worker_cpus} CPU)"

    def start(self, setup: Callable[[int], Any] | None = None, units: int | None = None) -> None:
        """Starts the workers of the next `map` with this `setup` now, so that their processes start and their
        models load while the driver still prepares the units (`units`: at most that many workers)."""
        if self._pool is not None:
            return
        ray = self._ray
        if self._actor_class is None:
            self._actor_class = ray.remote(num_cpus=self.worker_cpus, max_restarts=0)(_Worker)
        from ray import cloudpickle

        pickled = cloudpickle.dumps(setup) if setup is not None else None
        self._pool = _Pool(setup, [self._new_actor(pickled) for _ in range(min(self.workers, units or self.workers))], pickled)

    def _new_actor(self, pickled_setup: bytes | None):
        actor = self._actor_class.remote(self._environment, self.run_root, self.lock_token)
        actor.setup.remote(pickled_setup)  # runs before any unit sent to this actor (an actor's calls run in order)
        return actor

    def map(
        self,
        work: Callable[[Any, Any], Any],
        items: Sequence[Any],
        *,
        setup: Callable[[int], Any] | None = None,
        on_done: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        """`work(state, item)` for every item on the workers; the results in the order of `items`.

        `setup(threads)` runs once per worker and makes its `state` (a loaded model); `work` and
        `setup` must be picklable (module-level functions, or `functools.partial` of them). A unit
        that raised on every try gives a `Failed` in its place. `on_done(i, result)` is called here
        as each unit finishes (progress bars). Items are handed out in their order: put the longest first.
        Workers started by `start` with the same `setup` are used; the workers end with the pass.
        """
        results: list[Any] = [None] * len(items)
        pool, self._pool = self._pool, None
        if not items:
            if pool is not None:
                pool.end(self._ray)
            return results
        if pool is not None and pool.setup is not setup:  # started for another pass: not these workers
            pool.end(self._ray)
            pool = None
        if pool is None:
            self.start(setup, len(items))
            pool, self._pool = self._pool, None
        ray = self._ray
        idle = list(pool.actors)
        pending = list(range(len(items)))[::-1]  # popped from the end: in order
        attempts = [0] * len(items)
        running: dict[Any, tuple[Any, int]] = {}

        def submit(actor, index: int) -> None:
            attempts[index] += 1
            running[actor.run.remote(work, items[index])] = (actor, index)

        def finish(index: int, result: Any) -> None:
            results[index] = result
            if on_done is not None:
                on_done(index, result)

        try:
            while pending or running:
                while idle and pending:
                    submit(idle.pop(), pending.pop())
                done, _ = ray.wait(list(running), num_returns=1)
                ref = done[0]
                actor, index = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as error:  # the worker died: replace it
                    reason = _worker_error(error)
                    log.warning("a Ray worker died while on item %d (%s); starting another", index, reason)
                    ray.kill(actor, no_restart=True)
                    actor = self._new_actor(pool.pickled_setup)
                    self._retry_or_fail(index, attempts, reason, pending, finish)
                except ray.exceptions.RayError as error:
                    reason = _worker_error(error)
                    self._retry_or_fail(index, attempts, reason, pending, finish)
                else:
                    finish(index, result)
                idle.append(actor)
        finally:  # also on an interrupt: the workers (and what they are doing) go with the pass
            _Pool(setup, idle + [busy for busy, _ in running.values()], None).end(ray)
        return results

    def close(self) -> None:
        """Ends workers started for a pass that never came."""
        if self._pool is not None:
            self._pool.end(self._ray)
            self._pool = None

    def _retry_or_fail(self, index: int, attempts: list[int], reason: str, pending: list[int], finish) -> None:
        if attempts[index] <= self.retries:
            log.warning("item %d failed on its Ray worker (%s); trying it again", index, reason)
            pending.append(index)
        else:
            finish(index, Failed(reason, attempts[index]))


@dataclass
class _Pool:
    """Workers started for a pass (`RayExecutor.start`): the setup they were started with, and its pickle."""

    setup: Any
    actors: list[Any]
    pickled_setup: bytes | None

    def end(self, ray) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def worker_environment() -> dict[str, str]:
    """What a Ray worker takes from the driver's environment: offline model hubs, no progress bars."""
    environment = {name: os.environ[name] for name in _WORKER_ENVIRONMENT if name in os.environ}
    environment.setdefault("FRAMEATLAS_PROGRESS", "off")
    return environment


def _worker_error(error: BaseException) -> str:
    """The error as the worker raised it (not Ray's wrapper and remote traceback)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return failure_reason(cause)
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0] if first else ''}".strip()


class _LocalRayFailed(RuntimeError):
    """A local Ray could not be started (a machine too busy for its start-up time limit, say)."""


def _connect(address: str | None):
    """(Ray, whether a local Ray was started here): connected to the cluster at `address` (or
    $RAY_ADDRESS), to the Ray this process already joined, else to a new local Ray."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports to Ray's servers
    try:
        import ray
    except ImportError as error:
        raise RayUnavailable(
            f"run.executor is ray, but Ray cannot be imported ({error}); install it with "
            "`pip install 'frameatlas[scale]'` (or `pip install ray`), or set run.executor: local"
        ) from None
    if ray.is_initialized():
        return ray, False
    configured = bool(address)
    address = address or os.environ.get("RAY_ADDRESS") or None
    # no runtime_env: the workers get the driver's settings from `worker_environment` (see `_Worker`)
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address:
            ray.init(address=address, **options)
            log.info("Ray: connected to %s (%s CPUs)", address, ray.cluster_resources().get("CPU"))
            return ray, False
        # a Ray of this machine only, reachable on the loopback address only; "local": a new one, even where
        # `ray start` left a cluster that ray.init() would otherwise join
        for attempt in (1, 2):  # Ray gives its raylet 30 s to start: a busy machine may need a second try
            try:
                ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", **options)
                break
            except Exception as error:  # noqa: BLE001 - Ray's start-up raises plain Exceptions
                ray.shutdown()
                if attempt == 2:
                    raise _LocalRayFailed(failure_reason(error)) from None
                log.warning("Ray did not start (%s); trying once more", failure_reason(error))
        log.info("Ray: started a local Ray for this pass (%s CPUs)", ray.cluster_resources().get("CPU"))
        return ray, True
    except ConnectionError as error:
        source = "run.ray_address" if configured else "RAY_ADDRESS"
        cause = f": {error.__cause__}".splitlines()[0] if error.__cause__ else ""
        raise RayUnavailable(
            f"{source} = {address!r}: could not join a Ray cluster there ({error}{cause}); start one with "
            '`ray start --head` (README "Running on a cluster"), fix the address, or set it to null for a local Ray. '
            "A cluster with token authentication (`ray start --head` turns it on where ~/.ray/auth_token exists) "
            "needs RAY_AUTH_MODE=token and the same token here"
        ) from None


@contextmanager
def open_executor(run_cfg, run_root: Path | str) -> Iterator[LocalExecutor | RayExecutor]:
    """The executor `run_cfg` (a `RunConfig`) asks for, for a pass over the run at `run_root`.

    A local Ray started here (no `run.ray_address`, no $RAY_ADDRESS) is shut down again when the
    pass ends: a stage kernel may be stopped at any moment after its last cell, and Ray's processes
    must not outlive it. For many passes or runs, start Ray once (`ray start --head`) and point
    `run.ray_address` (or $RAY_ADDRESS) at it.
    """
    if run_cfg.executor != "ray":
        yield LocalExecutor()
        return
    try:
        ray, started_here = _connect(run_cfg.ray_address)
    except _LocalRayFailed as error:
        log.warning("Ray could not start on this machine (%s); this pass runs in this process instead", error)
        yield LocalExecutor()
        return
    executor = RayExecutor(ray, run_root, run_cfg.ray_worker_cpus)
    try:
        yield executor
    finally:
        executor.close()
        if started_here:
            ray.shutdown()
