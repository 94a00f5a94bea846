"""Retrieval under impulse noise: is a frame still found when its image is corrupted?

`noise_robustness` adds salt-and-pepper noise at the ImageNet-C "impulse noise" severities to a
sample of frames, encodes them, and checks whether the clean frame is still found among the top
1 / top 5 of the corpus (the UCF-Crime notebook's test). `robustness_figure` draws the result
(plotly), `robustness_image` as a plain PNG (PIL).

Example:
    >>> import pandas as pd
    >>> table = pd.DataFrame({"severity": [0.0, 0.1], "recall@1": [1.0, 0.5]})
    >>> robustness_image(table).size
    (640, 400)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from .index_comparison import _BLOCK_BYTES, _as_unit

log = logging.getLogger(__name__)

__all__ = [
    "IMPULSE_SEVERITIES",
    "noise_robustness",
    "robustness_figure",
    "robustness_image",
    "salt_and_pepper",
]

#: ImageNet-C impulse-noise amounts for severities 1-5 (`skimage.util.random_noise(mode="s&p")`).
IMPULSE_SEVERITIES = (0.03, 0.06, 0.09, 0.17, 0.27)


# --------------------------------------------------------------------------- impulse noise


def salt_and_pepper(image: Image.Image, amount: float, rng: np.random.Generator | int | None = None) -> Image.Image:
    """Impulse noise: `amount` of the pixels set to white (half) or black (half).

    Whole pixels are replaced (all channels at once), as a dead or stuck sensor pixel would
    be; ImageNet-C's impulse noise (skimage "s&p") uses amounts 0.03-0.27 for severities 1-5
    (`IMPULSE_SEVERITIES`). Exactly round(amount x pixels) pixels are picked, without
    replacement, so the fraction is exact rather than expected.

    Args:
        image: any PIL image; greyscale ("L") stays greyscale, everything else becomes RGB.
        amount: fraction of pixels to replace, 0 to 1.
        rng: a numpy Generator or a seed (same seed, same noise).

    Returns:
        A new image; the input is not modified.

    Example:
        >>> from PIL import Image
        >>> noisy = salt_and_pepper(Image.new("RGB", (10, 10), (90, 120, 30)), 0.2, rng=0)
        >>> np.unique(np.asarray(noisy).reshape(-1, 3), axis=0).tolist()
        [[0, 0, 0], [90, 120, 30], [255, 255, 255]]
    """
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount must be between 0 and 1, got {amount}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    pixels = np.array(image.convert("L" if image.mode == "L" else "RGB"))  # a copy we may write to
    height, width = pixels.shape[:2]
    count = int(round(amount * height * width))
    if count:
        chosen = rng.choice(height * width, size=count, replace=False)
        flat = pixels.reshape(height * width, -1)  # a view: writes go to `pixels`
        flat[chosen[: count // 2]] = 255
        flat[chosen[count // 2 :]] = 0
    return Image.fromarray(pixels)


def _encode(encoder, images: list[Image.Image], batch_size: int) -> np.ndarray:
    outputs = [
        encoder.encode_preprocessed([encoder.preprocess(image) for image in images[start : start + batch_size]])
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32, copy=False) if outputs else np.zeros((0, encoder.dim), np.float32)


def _ranks(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """0-based rank of corpus row `rows[i]` for query i: how many rows score strictly higher.

    Counting only strictly higher scores means an exact duplicate of the clean frame does not
    push it down, so a clean query is always at rank 0."""
    ranks = np.empty(len(queries), dtype=np.int64)
    chunk = max(1, _BLOCK_BYTES // (4 * max(len(vectors), 1)))
    for start in range(0, len(queries), chunk):
        block = queries[start : start + chunk] @ vectors.T
        own = block[np.arange(len(block)), rows[start : start + chunk]]
        ranks[start : start + chunk] = np.count_nonzero(block > own[:, None] + 1e-6, axis=1)
    return ranks


def recall_under_noise(
    vectors: np.ndarray, rows: Sequence[int], queries: Mapping[float, np.ndarray], *, ks: Sequence[int] = (1, 5)
) -> pd.DataFrame:
    """The table of `noise_robustness` from query vectors made elsewhere: `queries[severity]`
    holds one vector per corpus row in `rows` (the clean frame each noisy query should find).

    Example:
        >>> corpus = np.eye(3, dtype=np.float32)
        >>> recall_under_noise(corpus, [0, 2], {0.0: corpus[[0, 2]]})["recall@1"].tolist()
        [1.0]
    """
    vectors = _as_unit(vectors)
    rows = np.asarray(rows, dtype=np.int64)
    records = [
        _severity_record(severity, vectors, _as_unit(np.asarray(vectors_of_queries, np.float32), "query vectors"), rows, ks)
        for severity, vectors_of_queries in queries.items()
    ]
    return pd.DataFrame(records)


def _severity_record(severity: float, vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray,
                     ks: Sequence[int]) -> dict[str, Any]:  # fmt: skip
    """One row of the robustness table: how well the noisy `queries` find their clean `rows`."""
    ranks = _ranks(vectors, queries, rows) if len(rows) else np.zeros(0, np.int64)
    record: dict[str, Any] = {"severity": float(severity)}
    for k in ks:
        record[f"recall@{k}"] = float(np.mean(ranks < k)) if len(ranks) else float("nan")
    record["median_rank"] = float(np.median(ranks)) if len(ranks) else float("nan")
    record["mean_cosine"] = float(np.einsum("ij,ij->i", queries, vectors[rows]).mean()) if len(rows) else float("nan")
    record["n_queries"] = len(rows)
    return record


def noise_robustness(
    encoder,
    image_paths: Sequence[str | Path] | Mapping[str, str | Path],
    vectors: np.ndarray,
    keys: Sequence[str],
    *,
    severities: Sequence[float] = IMPULSE_SEVERITIES,
    sample: int = 200,
    seed: int = 0,
    ks: Sequence[int] = (1, 5),
    batch_size: int = 32,
) -> pd.DataFrame:
    """Is a frame still found when its image is corrupted by impulse noise?

    A sample of frames is loaded, corrupted with `salt_and_pepper` at each severity, encoded
    with `encoder`, and searched exactly against the whole corpus `vectors` (row i is frame
    `keys[i]`). A query is a hit at k when its clean frame ranks among the top k (an exact
    duplicate scoring the same does not push it out). Noise is applied to the images as
    stored (frameatlas thumbnails, before the encoder's own resizing), whereas ImageNet-C
    corrupts 224 x 224 crops; the amounts are the same fractions of pixels.

    `encoder` must be the model that produced `vectors`, or the clean (severity 0) row is
    meaningless; include 0.0 in `severities` to check that it is 1.0.

    Args:
        encoder: a frameatlas image encoder (`preprocess` + `encode_preprocessed`).
        image_paths: the image of each corpus row, aligned with `keys`; or a mapping from key
            to path for the frames that may be sampled. A value may also be the image itself
            (a PIL image): the model's input as the corpus vector was made from it.
        vectors: (n, dim) corpus vectors.
        keys: frame key of each row of `vectors`.
        severities: noise amounts (fraction of pixels replaced).
        sample: how many frames to corrupt (fewer if fewer have images).
        seed: picks the frames and the noise.
        ks: recall cut-offs, one column each.
        batch_size: images per encoder call.

    Returns:
        One row per severity: `severity`, `recall@1`, `recall@5` (one per `ks`), `median_rank`
        (0 = first), `mean_cosine` (noisy vs clean vector), `n_queries`.

    Example:
        >>> from frameatlas.store import load_vectors
        >>> from frameatlas.models import ColourTextureEncoder
        >>> table, vectors = load_vectors("outputs/demo")  # doctest: +SKIP
        >>> thumbs = read_table("outputs/demo/tables/frames.parquet").set_index("frame_key").thumbnail  # doctest: +SKIP
        >>> paths = {key: f"outputs/demo/{thumbs[key]}" for key in table.frame_key}  # doctest: +SKIP
        >>> noise_robustness(ColourTextureEncoder(), paths, vectors, list(table.frame_key))  # doctest: +SKIP
    """
    vectors = _as_unit(vectors)
    keys = list(keys)
    if len(keys) != len(vectors):
        raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")

    def image_or_path(value):
        return value if isinstance(value, Image.Image) else Path(value)

    if isinstance(image_paths, Mapping):
        row_of = {key: row for row, key in enumerate(keys)}
        candidates = [(row_of[key], image_or_path(path)) for key, path in image_paths.items() if key in row_of]
    else:
        if len(image_paths) != len(keys):
            raise ValueError(f"{len(image_paths)} image paths for {len(keys)} keys (pass a mapping for a subset)")
        candidates = [(row, image_or_path(path)) for row, path in enumerate(image_paths) if path]
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(candidates), size=min(sample, len(candidates)), replace=False).tolist())
    rows = np.array([candidates[i][0] for i in picked], dtype=np.int64)
    images = []
    for i in picked:
        source = candidates[i][1]
        if isinstance(source, Image.Image):
            images.append(source.convert("RGB"))
            continue
        with Image.open(source) as image:
            images.append(image.convert("RGB"))  # convert() loads the pixels, so the file can close
    noise_rngs = rng.spawn(len(severities))  # one stream per severity: adding one keeps the others

    records = []
    for severity, noise_rng in zip(severities, noise_rngs):
        noisy = [salt_and_pepper(image, severity, noise_rng) for image in images]
        queries = _as_unit(_encode(encoder, noisy, batch_size), "encoded images")
        records.append(_severity_record(severity, vectors, queries, rows, ks))
    table = pd.DataFrame(records)
    table.attrs.update({"model_id": getattr(getattr(encoder, "record", None), "model_id", None),
                        "corpus": len(vectors), "seed": seed})  # fmt: skip
    return table


# --------------------------------------------------------------------------- figure

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
_FIGURE_TITLE = "Retrieval under impulse (salt-and-pepper) noise"


def _recall_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if str(c).startswith("recall@")] if len(df) and "severity" in df else []


def robustness_figure(df: pd.DataFrame, *, title: str | None = None):
    """Recall against noise severity as a plotly figure, one line per `recall@k` column.

    plotly is a frameatlas dependency; in an environment that lacks it this returns the PIL
    image of `robustness_image` instead, so a report still gets a chart.

    Example:
        >>> import pandas as pd
        >>> table = pd.DataFrame({"severity": [0.0, 0.1], "recall@1": [1.0, 0.5], "recall@5": [1.0, 0.8]})
        >>> [trace.name for trace in robustness_figure(table).data]
        ['recall@1', 'recall@5']
    """
    try:
        import plotly.graph_objects as go
    except ImportError:
        log.info("plotly is not installed: drawing the robustness chart with PIL")
        return robustness_image(df, title=title)
    data = df.sort_values("severity") if "severity" in df else df
    figure = go.Figure()
    for number, column in enumerate(_recall_columns(data)):
        figure.add_trace(go.Scatter(
            x=data.severity, y=data[column], name=str(column), mode="lines+markers",
            line={"color": _COLOURS[number % len(_COLOURS)]},
            customdata=data[["n_queries"]] if "n_queries" in data else None,
            hovertemplate="severity %{x:.2f}: %{y:.3f}" + (" (%{customdata[0]} queries)" if "n_queries" in data else ""),
        ))  # fmt: skip
    figure.update_layout(
        title=title or _FIGURE_TITLE, xaxis_title="fraction of pixels replaced", yaxis_title="recall",
        yaxis_range=[0, 1.02], template="plotly_white", height=380, margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )  # fmt: skip
    return figure


def robustness_image(df: pd.DataFrame, *, width: int = 640, height: int = 400, title: str | None = None) -> Image.Image:
    """The same chart as `robustness_figure`, drawn with PIL: a PNG needs no plotting library.

    One line per `recall@k` column of a `noise_robustness` table; y from 0 to 1, x from 0 to
    the largest severity. An empty table gives an image saying "no results".

    Example:
        >>> import pandas as pd
        >>> table = pd.DataFrame({"severity": [0.0, 0.1], "recall@1": [1.0, 0.5], "recall@5": [1.0, 0.8]})
        >>> robustness_image(table).size
        (640, 400)
    """
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    columns = _recall_columns(df)
    draw.text((10, 8), title or _FIGURE_TITLE, fill="black", font=font)
    if not columns:
        draw.text((10, height // 2), "no results", fill="grey", font=font)
        return image
    data = df.sort_values("severity")
    left, right, top, bottom = 56, width - 130, 46, height - 44
    x_max = float(data.severity.max()) or 1.0

    def point(x: float, y: float) -> tuple[float, float]:
        return left + (right - left) * x / x_max, bottom - (bottom - top) * min(max(y, 0.0), 1.0)

    for tick in np.linspace(0, 1, 6):  # horizontal grid with recall labels
        _, y = point(0, tick)
        draw.line([(left, y), (right, y)], fill="#e6e6e6")
        draw.text((left - 34, y - 6), f"{tick:.1f}", fill="black", font=font)
    for severity in data.severity:
        x, _ = point(float(severity), 0)
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x - 12, bottom + 7), f"{severity:.2f}", fill="black", font=font)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    draw.text(((left + right) // 2 - 70, height - 20), "fraction of pixels replaced", fill="black", font=font)
    draw.text((6, top - 14), "recall", fill="black", font=font)
    for number, column in enumerate(columns):
        colour = _COLOURS[number % len(_COLOURS)]
        points = [point(float(s), float(v)) for s, v in zip(data.severity, data[column]) if pd.notna(v)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        legend_y = top + 16 * number
        draw.line([(right + 14, legend_y + 6), (right + 34, legend_y + 6)], fill=colour, width=2)
        draw.text((right + 40, legend_y), str(column), fill="black", font=font)
    return image
