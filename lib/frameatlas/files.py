"""Files at the bottom of every layer: the one atomic writer, content hashes, contained paths.

Every file frameatlas writes (tables, shards, thumbnails, figures, pages, videos, the
manifest) goes through `atomic_path`: the content is written under a unique temporary name
in the target's own folder, flushed to disk, then renamed over the target. A reader sees the
old file or the new one, never half of one, and a process killed mid-write leaves only a
temporary file that `remove_orphan_temps` recognises by its name and removes at the next start.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(folder / "hello.txt") as tmp:
    ...     _ = tmp.write_text("hi")
    >>> (folder / "hello.txt").read_text(), is_temp_name(tmp.name)
    ('hi', True)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "HashCache",
    "UnsafePath",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "contained_path",
    "fsync_folder",
    "is_temp_name",
    "remove_orphan_temps",
    "save_image",
    "sha256_file",
    "user_cache_dir",
]

HASH_CHUNK = 4 << 20  # large reads: hashing multi-GB videos is I/O bound
# `.<target name>.fa-<32 hex>.tmp<target suffix>`: the suffix is kept so that tools choosing a
# format from the file name (ffmpeg, PIL, pandas) write the right one.
_TEMP_TAG = ".fa-"
_TEMP_PATTERN = re.compile(r"^\..+\.fa-[0-9a-f]{32}\.tmp(\.[A-Za-z0-9]{1,8})?$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def is_temp_name(name: str) -> bool:
    """True for the names `atomic_path` gives its temporary files (and only those)."""
    return bool(_TEMP_PATTERN.match(name))


def _temp_name(target: Path) -> str:
    return f".{target.name}{_TEMP_TAG}{uuid.uuid4().hex}.tmp{target.suffix}"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (renames, new files) to disk."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path | str, *, sync_folder: bool = True) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to; on success it replaces `path`.

    The temporary file sits in the same folder (so the rename is atomic), has a unique name
    and the target's suffix. On an exception it is removed and `path` is left as it was.
    `sync_folder=False` leaves the folder's fsync (which makes the rename itself durable) to a
    caller writing many files into one folder, who then calls `fsync_folder` once before the
    file that commits them (extract's thumbnails, committed by their shard's table).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(_temp_name(target))
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: nothing was written for {target}")
        os.chmod(tmp, _FILE_MODE)
        _fsync_file(tmp)
        os.replace(tmp, target)
        if sync_folder:
            fsync_folder(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def save_image(
    image: Any, path: Path | str, format: str | None = None, *, sync_folder: bool = True, **options: Any
) -> Path:
    """Save a PIL image atomically (`format` defaults to the one the suffix names)."""
    with atomic_path(path, sync_folder=sync_folder) as tmp:
        image.save(tmp, format=format, **options)
    return Path(path)


def remove_orphan_temps(root: Path | str, *, skip: Iterable[str] = ("index",)) -> list[Path]:
    """Delete the temporary files a killed writer left under `root`; returns what was removed.

    Only names made by `atomic_path` are touched. Folders named in `skip` (the vector
    store, which manages its own files) are not entered. Call it only while holding the
    run's lock, so no live writer's temporary file is taken for an orphan.
    """
    root = Path(root)
    removed: list[Path] = []
    skipped = set(skip)
    for folder, dirnames, filenames in os.walk(root):
        if Path(folder) == root:
            dirnames[:] = [d for d in dirnames if d not in skipped]
        for name in filenames:
            if is_temp_name(name):
                path = Path(folder) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run under %s", len(removed), root)
    return removed


class UnsafePath(ValueError):
    """A path read from a table or a config that points outside the folders it may use."""


def contained_path(path: Path | str, roots: Iterable[Path | str], *, what: str) -> Path:
    """`path` resolved (relative paths against the first root), if it lies under one of `roots`.

    `what` names where the path came from, for the error (e.g. "tables/frames.parquet row 12,
    column thumbnail").

    Example:
        >>> contained_path("frames/a.jpg", ["/runs/demo"], what="frames row 0").as_posix()
        '/runs/demo/frames/a.jpg'
        >>> contained_path("../../etc/passwd", ["/runs/demo"], what="frames row 0")
        Traceback (most recent call last):
        ...
        frameatlas.files.UnsafePath: frames row 0: path '../../etc/passwd' resolves to /etc/passwd, outside /runs/demo; refused
    """
    bases = [Path(root).resolve() for root in roots]
    if not bases:
        raise ValueError("contained_path needs at least one root folder")
    raw = Path(path)
    resolved = (raw if raw.is_absolute() else bases[0] / raw).resolve()
    if any(resolved == base or resolved.is_relative_to(base) for base in bases):
        return resolved
    allowed = " or ".join(str(base) for base in bases)
    raise UnsafePath(f"{what}: path '{path}' resolves to {resolved}, outside {allowed}; refused")


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class HashCache:
    """Remembers SHA-256 digests per (path, size, mtime_ns) in a small JSON file.

    `get` takes anything with `path`, `size` and `mtime_ns` attributes (a corpus `VideoFile`).
    """

    def __init__(self, path: Path | None):
        self.path = path
        self._entries: dict[str, list] = {}
        self._dirty = False
        if path and path.exists():
            try:
                self._entries = json.loads(path.read_text())
            except (OSError, ValueError):
                log.warning("ignoring unreadable hash cache %s", path)

    def get(self, item: Any) -> str:
        key = str(Path(item.path).resolve())
        cached = self._entries.get(key)
        if cached and cached[0] == item.size and cached[1] == item.mtime_ns:
            return cached[2]
        digest = sha256_file(item.path)
        self._entries[key] = [item.size, item.mtime_ns, digest]
        self._dirty = True
        return digest

    def digest_of(self, path: Path | str) -> str:
        """The digest of the file at `path` (stat taken now)."""
        path = Path(path)
        stat = path.stat()
        return self.get(SimpleNamespace(path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns))

    def save(self) -> None:
        if self.path and self._dirty:
            atomic_write_text(self.path, json.dumps(self._entries, indent=0, sort_keys=True))
            self._dirty = False


def user_cache_dir(*parts: str) -> Path:
    """frameatlas's per-user cache folder (`$XDG_CACHE_HOME/frameatlas`, else ~/.cache/frameatlas), joined with `parts`.

    Example:
        >>> user_cache_dir("terms").parts[-2:]
        ('frameatlas', 'terms')
    """
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "frameatlas", *parts)
