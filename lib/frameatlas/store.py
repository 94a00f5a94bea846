"""The run directory and its tables: the contract between stages.

Every write goes through the one atomic writer (`frameatlas.files.atomic_path`), so a run
killed at any moment leaves either the old file or the new one, never half of one. Paths
read from tables resolve inside the run (`RunPaths.resolve`), or are refused.

Example:
    >>> from frameatlas.store import RunPaths, read_table
    >>> run = RunPaths("outputs/demo")  # doctest: +SKIP
    >>> frames = read_table(run.table("frames"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from .files import UnsafePath, atomic_path, atomic_write_json, contained_path

__all__ = ["RunPaths", "UnsafePath", "frame_shards", "in_frame_order", "load_vectors", "read_thumbnail", "read_table", "write_table"]


def write_table(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a DataFrame as Parquet, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return path


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

    def resolve(self, relative: str | Path, *, what: str = "path") -> Path:
        """A path read from a table or the config, resolved inside the run; `UnsafePath` otherwise.

        `what` says where it came from, e.g. "tables/frames.parquet row 3, column thumbnail".
        """
        return contained_path(relative, [self.root], what=what)

    def table_path(self, relative: str | Path, *, table: str, row: Any, column: str) -> Path:
        """A path read from `row` of one of the run's tables (`tables/<table>.parquet`), resolved inside the run.

        A crafted table cannot point anything at a file elsewhere: a path outside the run raises
        `UnsafePath` naming the table, row, column and path.

        Example:
            >>> RunPaths("/runs/demo").table_path("../../etc/passwd", table="frames", row=3, column="thumbnail")
            Traceback (most recent call last):
            ...
            frameatlas.files.UnsafePath: tables/frames.parquet row 3, column thumbnail: path '../../etc/passwd' resolves to /etc/passwd, outside /runs/demo; refused
        """
        return self.resolve(relative, what=f"tables/{table}.parquet row {row}, column {column}")

    def table_paths(self, values: Sequence, *, table: str, column: str, rows: Sequence | None = None) -> list[Path]:
        """`table_path` for many rows at once (`rows`: their row numbers, default 0, 1, ...)."""
        rows = range(len(values)) if rows is None else list(rows)
        return self.resolve_many(values, lambda i: f"tables/{table}.parquet row {rows[i]}, column {column}")

    def thumbnails(self, frames: pd.DataFrame) -> list[Path]:
        """The thumbnails of rows of `tables/frames.parquet` (index as read), each resolved inside the run."""
        return self.table_paths(frames.thumbnail.astype(str).tolist(), table="frames", column="thumbnail", rows=frames.index)

    def resolve_many(self, values: Sequence, what: Callable[[int], str]) -> list[Path]:
        """Paths (relative to the run, or absolute) resolved inside the run; `what(i)` names where value i came from.

        Same answer as `resolve` on each value, faster for thousands of thumbnails: a folder
        shared by many values is resolved once, and a file inside it is taken as is unless it is a
        symbolic link (then it is resolved fully) or its name is "..". Raises `UnsafePath` for the
        first value outside the run.
        """
        folders: dict[str, str | None] = {}  # folder as written -> resolved (None: outside the run)
        resolved = []
        for i, value in enumerate(values):
            head, name = os.path.split(os.fspath(value))
            if name not in ("", ".", ".."):
                if head not in folders:
                    try:
                        folders[head] = str(self.resolve(head, what="folder"))
                    except UnsafePath:
                        folders[head] = None  # the full path decides (and names itself) below
                folder = folders[head]
                if folder is not None:
                    candidate = os.path.join(folder, name)
                    if not os.path.islink(candidate):
                        resolved.append(Path(candidate))
                        continue
            resolved.append(self.resolve(value, what=what(i)))
        return resolved

    def contact_sheet(self, video_id: str) -> Path:
        """One strip of a video's frames (extract stage), linked from the dashboard."""
        return self.root / "plots" / "contact_sheets" / f"{video_id}.jpg"

    @property
    def identity_file(self) -> Path:
        return self.root / "run.json"

    def run_id(self, *, create: bool = False) -> str | None:
        """The run's identity (a random id made once, kept in `run.json`): it scopes the run's
        collections on a shared Chroma server. None when the run has none yet and `create` is false
        (only a writer holding the run's lock may create it)."""
        try:
            return str(json.loads(self.identity_file.read_text())["run_id"])
        except (OSError, ValueError, KeyError, TypeError):
            if not create:
                return None
        run_id = uuid.uuid4().hex[:12]
        atomic_write_json(self.identity_file, {"run_id": run_id, "name": self.root.name})
        return run_id


def load_vectors(run: RunPaths | Path | str, model_id: str | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """The embeddings table (one model) and its vectors as an (n, dim) array."""
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    table = read_table(run.table("embeddings"))
    if model_id is not None:
        table = table[table.model_id == model_id].reset_index(drop=True)
    vectors = np.stack(table.vector.to_numpy()).astype(np.float32) if len(table) else np.zeros((0, 0), np.float32)
    return table.drop(columns=["vector"]), vectors
