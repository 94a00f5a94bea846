"""Figures shared by the notebooks and the dashboard: thumbnail grids, frames with their text.

Example:
    >>> from frameatlas.plots import Tile, image_grid
    >>> grid = image_grid([Tile("frames/a.jpg", "00:01")], columns=4)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from .files import UnsafePath

__all__ = [
    "Tile",
    "format_time",
    "frame_text_sample",
    "frame_text_table",
    "image_grid",
    "resolve_paths",
    "table_path",
    "table_paths",
]

LABEL_HEIGHT = 14


def format_time(seconds: float) -> str:
    """mm:ss.ss, as on contact sheets and in tables.

    Example:
        >>> format_time(75.5)
        '01:15.50'
    """
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes):02d}:{rest:05.2f}"


def table_path(run, relative: str | Path, *, table: str, row, column: str) -> Path:
    """A path read from `row` of one of `run`'s tables (`tables/<table>.parquet`), resolved inside the run.

    A crafted table cannot point a figure at a file elsewhere: anything outside the run raises
    `frameatlas.files.UnsafePath` naming the table, row, column and path.

    Example:
        >>> from frameatlas.store import RunPaths
        >>> table_path(RunPaths("/runs/demo"), "../../etc/passwd", table="frames", row=3, column="thumbnail")
        Traceback (most recent call last):
        ...
        frameatlas.files.UnsafePath: tables/frames.parquet row 3, column thumbnail: path '../../etc/passwd' resolves to /etc/passwd, outside /runs/demo; refused
    """
    return run.resolve(relative, what=f"tables/{table}.parquet row {row}, column {column}")


def table_paths(run, values: Sequence, *, table: str, column: str, rows: Sequence | None = None) -> list[Path]:
    """`table_path` for many rows at once (`rows`: their row numbers, default 0, 1, ...)."""
    rows = range(len(values)) if rows is None else list(rows)
    return resolve_paths(run, values, lambda i: f"tables/{table}.parquet row {rows[i]}, column {column}")


def resolve_paths(run, values: Sequence, what: Callable[[int], str]) -> list[Path]:
    """Paths (relative to the run, or absolute) resolved inside `run`; `what(i)` names where value i came from.

    Same answer as `run.resolve` on each value, faster for thousands of thumbnails: a folder
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
                    folders[head] = str(run.resolve(head, what="folder"))
                except UnsafePath:
                    folders[head] = None  # the full path decides (and names itself) below
            folder = folders[head]
            if folder is not None:
                candidate = os.path.join(folder, name)
                if not os.path.islink(candidate):
                    resolved.append(Path(candidate))
                    continue
        resolved.append(run.resolve(value, what=what(i)))
    return resolved


@dataclass(frozen=True)
class Tile:
    """One thumbnail in a grid, with a one-line label under it."""

    path: Path | str
    label: str = ""
    highlight: bool = False  # label drawn in red (e.g. the query of a row)


def image_grid(
    tiles: Sequence[Tile], *, columns: int = 8, tile_width: int = 160, aspect: float = 0.75, rows: Sequence[int] | None = None
) -> Image.Image:
    """Thumbnails laid out left to right, top to bottom, each fitted into its cell.

    `rows` optionally gives the row of every tile (for grids whose rows have different
    lengths, e.g. a query and its neighbours); otherwise rows fill up to `columns`.
    """
    if not tiles:
        return Image.new("RGB", (tile_width, int(tile_width * aspect)), "white")
    tile_height = max(1, int(round(tile_width * aspect)))
    if rows is None:
        rows = [i // columns for i in range(len(tiles))]
        cols = [i % columns for i in range(len(tiles))]
        width = min(columns, len(tiles))
    else:
        cols, seen = [], {}
        for row in rows:
            cols.append(seen.get(row, 0))
            seen[row] = cols[-1] + 1
        width = max(seen.values())
    height = max(rows) + 1
    sheet = Image.new("RGB", (width * tile_width, height * (tile_height + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    for tile, row, col in zip(tiles, rows, cols):
        x, y = col * tile_width, row * (tile_height + LABEL_HEIGHT)
        with Image.open(tile.path) as image:
            image.thumbnail((tile_width - 2, tile_height - 2))
            sheet.paste(image.convert("RGB"), (x + (tile_width - image.width) // 2, y + (tile_height - image.height) // 2))
        draw.text((x + 3, y + tile_height + 1), tile.label, fill="firebrick" if tile.highlight else "black")
    return sheet


def frame_text_table(rows: Sequence[tuple[Path | str, str, str]], *, heading: str = "text", width: int = 200) -> str:
    """An HTML table of (thumbnail path, where: e.g. video and time, text as HTML) rows. Thumbnails
    are embedded, so a saved report stands alone."""
    import base64
    import io

    cells = []
    for path, where, text_html in rows:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((width, width))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=80)
        source = base64.b64encode(buffer.getvalue()).decode()
        cells.append(f'<tr><td><img src="data:image/jpeg;base64,{source}" width="{image.width}"></td><td>{where}</td>'
                     f'<td style="text-align:left">{text_html}</td></tr>')  # fmt: skip
    return (f'<table><tr><th>frame</th><th>video, time</th><th style="text-align:left">{heading}</th></tr>'
            + "".join(cells) + "</table>")  # fmt: skip


def frame_text_sample(run, table, text_html, *, count: int = 12, heading: str = "text", width: int = 200) -> str:
    """`frame_text_table` of up to `count` rows spread evenly over `table` (rows with a `frame_key`),
    each shown with its thumbnail, video and time, and `text_html(row)`."""
    import html

    import numpy as np
    import pandas as pd

    from .store import read_table

    frames = read_table(run.table("frames")).reset_index(drop=True)
    row_of = pd.Series(np.arange(len(frames)), index=frames.frame_key.to_numpy())
    picks = table.iloc[np.unique(np.linspace(0, len(table) - 1, min(count, len(table))).round().astype(int))]
    rows = []
    for row in picks.itertuples():
        number = int(row_of[row.frame_key])
        frame = frames.iloc[number]
        where = f"{html.escape(str(frame.video_name))}<br>{format_time(float(frame.timestamp))}"
        thumbnail = table_path(run, frame.thumbnail, table="frames", row=number, column="thumbnail")
        rows.append((thumbnail, where, text_html(row)))
    return frame_text_table(rows, heading=heading, width=width)
