"""The run directory and its tables: the contract between stages.

Every write is atomic (temporary file + rename), so a run killed at any moment leaves
either the old file or the new one, never half of one.

Example:
    >>> from frameatlas.store import RunPaths, read_table
    >>> run = RunPaths("outputs/demo")  # doctest: +SKIP
    >>> frames = read_table(run.table("frames"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

__all__ = ["RunPaths", "user_cache_dir", "frame_shards", "in_frame_order", "read_thumbnail", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "read_table", "write_table"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600 files; results are meant to be shared
    return fd, tmp


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_table(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a DataFrame as Parquet, atomically."""
    path = Path(path)
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def user_cache_dir(*parts: str) -> Path:
    """frameatlas's per-user cache folder (`$XDG_CACHE_HOME/frameatlas`, else ~/.cache/frameatlas), joined with `parts`.

    Example:
        >>> user_cache_dir("terms").parts[-2:]
        ('frameatlas', 'terms')
    """
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "frameatlas", *parts)


def read_thumbnail(path: Path | str) -> Image.Image:
    """A frame's thumbnail, loaded as RGB; an unreadable one raises FileNotFoundError saying how to remake it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"{path}: thumbnail cannot be read ({error}); re-run the extract stage with --force extract") from None


def read_table(path: Path | str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: table not found; run the stage that writes it first")
    return pd.read_parquet(path)


def frame_shards(
    frames: pd.DataFrame, folder: Path, *, force: bool = False
) -> tuple[list[pd.DataFrame], list[tuple[Path, pd.DataFrame]]]:
    """Per-frame results cached in one shard per (video, sampling) under `folder`.

    Returns the cached shard tables that still cover exactly their frames, and the
    (shard path, frames) pairs still to compute (all of them when `force`).
    """
    cached: list[pd.DataFrame] = []
    todo: list[tuple[Path, pd.DataFrame]] = []
    for (video_id, sampling), group in frames.groupby(["video_id", "sampling"], sort=True):
        shard = folder / video_id / f"{sampling}.parquet"
        if not force and shard.exists():
            table = pd.read_parquet(shard)
            if set(table.frame_key) == set(group.frame_key):
                cached.append(table)
                continue
        todo.append((shard, group))
    return cached, todo


def in_frame_order(tables: list[pd.DataFrame], frames: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The shard tables joined and put in the frames table's row order, with `columns`."""
    if not tables:
        return pd.DataFrame(columns=columns)
    order = {frame_key: i for i, frame_key in enumerate(frames.frame_key)}
    table = pd.concat(tables, ignore_index=True)
    return table.sort_values("frame_key", key=lambda keys: keys.map(order)).reset_index(drop=True)[columns]


@dataclass(frozen=True)
class RunPaths:
    """Where everything of one run lives (`outputs/<run>/`)."""

    root: Path

    def __init__(self, root: Path | str):
        object.__setattr__(self, "root", Path(root).resolve())

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def config_file(self) -> Path:
        """The resolved config the run's stages last ran with (written by every stage)."""
        return self.root / "config.json"

    @property
    def dashboard(self) -> Path:
        return self.root / "index.html"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def frames(self) -> Path:
        return self.root / "frames"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def stage_results(self) -> Path:
        return self.root / "stages"

    @property
    def videos(self) -> Path:
        """Rendered videos (the render stage), with their contact sheets."""
        return self.root / "videos"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def table(self, name: str) -> Path:
        return self.tables / f"{name}.parquet"

    def stage_result(self, stage: str) -> Path:
        return self.stage_results / f"{stage}.json"

    def relative(self, path: Path | str) -> str:
        """A path inside the run as a POSIX string relative to the run root (portable tables)."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    def absolute(self, relative: str) -> Path:
        return self.root / relative
