"""Figures shared by the notebooks and the dashboard: thumbnail grids, frames with their text.

Example:
    >>> from frameatlas.plots import Tile, image_grid
    >>> grid = image_grid([Tile("frames/a.jpg", "00:01")], columns=4)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

__all__ = [
    "Tile",
    "format_time",
    "frame_text_sample",
    "frame_text_table",
    "image_grid",
    "plotly_bundle",
]

PLOTLY_BUNDLE = "plotly.min.js"

LABEL_HEIGHT = 14


def plotly_bundle(folder: Path | str) -> Path:
    """plotly.js written once into `folder` (a run's `plots/`), for pages to reference relatively.

    One copy per run instead of 4.8 MB inlined in every page; pages still open offline and from
    an unzipped archive. The copy is the installed plotly package's own bundle, rewritten only
    when that differs (another plotly version).

    Example:
        >>> import tempfile
        >>> plotly_bundle(tempfile.mkdtemp()).name
        'plotly.min.js'
    """
    from plotly.offline import get_plotlyjs

    from .files import atomic_write_text

    target = Path(folder) / PLOTLY_BUNDLE
    script = get_plotlyjs()
    if not target.exists() or target.stat().st_size != len(script.encode("utf-8")):
        atomic_write_text(target, script)
    return target


def format_time(seconds: float) -> str:
    """mm:ss.ss, as on contact sheets and in tables.

    Example:
        >>> format_time(75.5)
        '01:15.50'
    """
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes):02d}:{rest:05.2f}"


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
        thumbnail = run.table_path(frame.thumbnail, table="frames", row=number, column="thumbnail")
        rows.append((thumbnail, where, text_html(row)))
    return frame_text_table(rows, heading=heading, width=width)
