"""One writer per run folder: the lock taken by the runner, the stage notebooks and every
command that writes into a run.

The lock is `<run>/.frameatlas.lock`, held with an exclusive `flock` for as long as the
writer works and carrying who holds it (pid, host, command, start time). A second writer
fails at once with `RunLocked`, whose message names the holder. The kernel drops a `flock`
when its process dies, so a lock left by a killed process is free again: the next writer
takes it over and logs a warning naming the process that left it. Readers (search without
export, the investigator) take no lock; every file is replaced atomically, so they never see
half of one.

The runner hands its lock down to the stage kernels it starts: they inherit a token in
`FRAMEATLAS_RUN_LOCK` and write under the runner's lock instead of waiting for it; a kernel
whose runner died finds the lock free with the runner's token in it and raises `WriterGone`
instead of taking it. Inside one process the lock is re-entrant.

Example:
    >>> import tempfile
    >>> run = tempfile.mkdtemp()
    >>> with run_lock(run, "example") as holder:
    ...     holder.command
    'example'
"""

from __future__ import annotations

import atexit
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["LOCK_FILE", "LOCK_TOKEN_ENV", "LockHolder", "RunLock", "RunLocked", "WriterGone", "acquire_run_lock", "lock_holder",
           "run_lock"]  # fmt: skip

LOCK_FILE = ".frameatlas.lock"
LOCK_TOKEN_ENV = "FRAMEATLAS_RUN_LOCK"


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a run's lock."""

    pid: int
    host: str
    command: str
    started: str
    token: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}: {self.command}"

    @classmethod
    def parse(cls, text: str) -> LockHolder | None:
        try:
            data = json.loads(text)
            return cls(int(data["pid"]), str(data["host"]), str(data["command"]), str(data["started"]), str(data["token"]))
        except (ValueError, KeyError, TypeError):
            return None


class RunLocked(RuntimeError):
    """Another process is writing into this run folder."""

    def __init__(self, root: Path, holder: LockHolder | None):
        who = holder.describe() if holder else "a process that has not written its name yet"
        super().__init__(
            f"{root} is being written by another frameatlas process ({who}). "
            "Wait for it to finish, or stop it; only one writer may work on a run folder at a time. "
            "Reading (search without --export, the investigator) needs no lock."
        )
        self.root, self.holder = root, holder


class WriterGone(RuntimeError):
    """This process was started to write under a writer's lock (`LOCK_TOKEN_ENV`), and that writer is gone."""

    def __init__(self, root: Path, holder: LockHolder):
        super().__init__(
            f"{root}: the frameatlas process this one was started to write for ({holder.describe()}) is gone "
            "(killed or stopped), so this one stops too without writing; run the pipeline again to resume."
        )
        self.root, self.holder = root, holder


def default_command() -> str:
    """This process's command line, shortened for the lock file."""
    words = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    return " ".join(words)[:300]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class RunLock:
    """An acquired lock on one run folder; `release()` (or leaving `run_lock`) gives it back."""

    def __init__(self, root: Path, holder: LockHolder, fd: int | None):
        self.root, self.holder, self._fd = root, holder, fd
        self._count = 1

    @property
    def delegated(self) -> bool:
        """True when this process writes under a lock its parent (the runner) holds."""
        return self._fd is None

    def release(self) -> None:
        with _GUARD:
            self._count -= 1
            if self._count > 0:
                return
            _HELD.pop(self.root, None)
            if self._fd is not None:
                try:
                    os.ftruncate(self._fd, 0)  # a clean release leaves no holder to report
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    os.close(self._fd)
                    self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_HELD: dict[Path, RunLock] = {}
_GUARD = threading.RLock()


def lock_holder(root: Path | str) -> LockHolder | None:
    """Who last wrote their name into the run's lock file (None: nobody, or a clean release)."""
    try:
        return LockHolder.parse((Path(root) / LOCK_FILE).read_text())
    except OSError:
        return None


def acquire_run_lock(root: Path | str, command: str | None = None) -> RunLock:
    """Take the run folder's lock for this process, or raise `RunLocked` naming its holder."""
    root = Path(root).resolve()
    with _GUARD:
        held = _HELD.get(root)
        if held is not None:
            held._count += 1
            return held
        root.mkdir(parents=True, exist_ok=True)
        path = root / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = lock_holder(root)
            token = os.environ.get(LOCK_TOKEN_ENV)
            if holder is not None and token and holder.token == token:
                lock = RunLock(root, holder, None)  # the runner that started us holds it
                _HELD[root] = lock
                return lock
            raise RunLocked(root, holder) from None
        try:
            previous = LockHolder.parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            token = os.environ.get(LOCK_TOKEN_ENV)
            if previous is not None and token and previous.token == token:
                # the runner that handed its lock down to this process died (its flock went with it): a
                # stage kernel left behind must not become a writer of its own while the runner's
                # re-run starts
                raise WriterGone(root, previous)
            if previous is not None:
                log.warning("taking over the lock of %s: its holder (%s) is gone without releasing it", root, previous.describe())
            holder = LockHolder(os.getpid(), socket.gethostname(), command or default_command(), _now(), uuid.uuid4().hex)
            data = json.dumps(asdict(holder)).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except BaseException:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        lock = RunLock(root, holder, fd)
        _HELD[root] = lock
        return lock


@contextmanager
def run_lock(root: Path | str, command: str | None = None) -> Iterator[LockHolder]:
    """Hold the run folder's lock for the `with` block (re-entrant within a process)."""
    lock = acquire_run_lock(root, command)
    try:
        yield lock.holder
    finally:
        lock.release()


def child_environment(root: Path | str) -> dict[str, str]:
    """Environment entries that let processes this one starts write under its lock on `root`."""
    lock = _HELD.get(Path(root).resolve())
    if lock is None:
        raise RuntimeError(f"{root}: this process does not hold the run's lock")
    return {LOCK_TOKEN_ENV: lock.holder.token}


@atexit.register
def _release_all() -> None:  # pragma: no cover - process exit
    for lock in list(_HELD.values()):
        lock._count = 1
        lock.release()
