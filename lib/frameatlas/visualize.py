"""The visualize stage: 3D maps of the frame vectors and text-similarity timelines.

* **Maps** (`map_3d`): every frame as a point of a PCA / t-SNE / UMAP projection
  (`frameatlas.project`; each projection's fit is kept, so a re-run that adds a few frames places
  them into it and every earlier point stays put), one trace per cluster (when the cluster stage wrote
  `tables/frames_annotated.parquet`) or per video, so the legend toggles groups. Hover shows
  the video, the time, the cluster and the caption when known.
* **Timelines** (`similarity_timelines`): for every video, the cosine similarity of each
  configured query (`search.queries`, encoded by the CLIP text tower) to every frame over
  time; one figure per video with one line per query, so peaks of different queries in the
  same video can be compared on one time axis (as in the CLIP video-investigator app).
  The weight-free fallback descriptor has no text side: no timelines, and the reason says so.
* **Standalone HTML** (`write_standalone_html`): plotly.js from the run's one copy
  (`plots/plotly.min.js`, referenced relatively: no network needed, and light pages), and
  the hovered or clicked point's thumbnail shown next to the plot. Thumbnails are referenced
  relative to the HTML file (`plots/` inside the run), so a zipped run folder keeps working.
  Every thumbnail path read from `tables/frames.parquet` must resolve inside the run, or the
  stage stops naming the row and the path: a crafted table cannot point a page elsewhere.

Every trace carries ``customdata = [thumbnail, frame_key]`` per point (`CUSTOMDATA`).

Example:
    >>> from frameatlas.config import load_config
    >>> from frameatlas.visualize import write_visualizations
    >>> cfg = load_config("pipeline.yaml")  # doctest: +SKIP
    >>> summary = write_visualizations(cfg, cfg.run_dir)  # doctest: +SKIP
    >>> summary.maps["pca"].show()  # doctest: +SKIP
"""

from __future__ import annotations

import html
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from .config import PipelineConfig
from .files import atomic_write_text
from .investigator.pages import write_investigator_pages
from .plots import format_time, plotly_bundle
from .progress import progress_bar
from .project import ProjectionFit, fit_or_place
from .store import RunPaths, load_vectors, read_table, write_table
from .summary import StageSummary

log = logging.getLogger(__name__)

__all__ = [
    "CUSTOMDATA",
    "Timelines",
    "VisualizeSummary",
    "annotated_frames",
    "map_3d",
    "query_vectors",
    "similarity_timelines",
    "timeline_figure",
    "write_standalone_html",
    "write_visualizations",
]

CUSTOMDATA = ("thumbnail", "frame_key")  # per-point customdata columns of every trace
PROJECTION_COLUMNS = ["frame_key", "method", "x", "y", "z"]
TIMELINE_COLUMNS = ["video_id", "video_name", "frame_key", "timestamp", "query", "similarity", "channel"]
METHOD_LABELS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
NOISE_COLOUR = "#b8b8b8"
NO_CLUSTERS_NOTE = "no clusters yet (tables/frames_annotated.parquet missing): maps coloured by video"


def _palette() -> list[str]:
    from plotly.colors import qualitative

    return list(qualitative.Plotly) + list(qualitative.D3) + list(qualitative.Dark24) + list(qualitative.Alphabet)


def _run(run: RunPaths | Path | str) -> RunPaths:
    return run if isinstance(run, RunPaths) else RunPaths(run)


# --------------------------------------------------------------------------- frames


def annotated_frames(run: RunPaths | Path | str) -> pd.DataFrame:
    """The frames table plus `cluster` / `cluster_name` (cluster stage) and `caption` when known.

    `tables/frames.parquet` decides which frames exist, in its order (the index is the row number
    in that table); cluster columns come from
    `tables/frames_annotated.parquet` (frames it does not know get cluster -2, "not clustered"),
    captions from its `caption` column or from `tables/caption_embeddings.parquet`.
    """
    run = _run(run)
    frames = read_table(run.table("frames")).reset_index(drop=True)
    annotated_path = run.table("frames_annotated")
    if annotated_path.exists():
        annotated = read_table(annotated_path)
        extra = [c for c in ("cluster", "cluster_name", "caption") if c in annotated.columns]
        if extra:
            frames = frames.merge(annotated[["frame_key", *extra]].drop_duplicates("frame_key"), on="frame_key", how="left")
        if "cluster" in extra:
            missing = frames.cluster.isna()
            frames["cluster"] = frames.cluster.fillna(-2).astype(int)
            if "cluster_name" not in frames.columns:
                frames["cluster_name"] = frames.cluster.map(lambda c: f"cluster {c}")
            frames["cluster_name"] = frames.cluster_name.astype(object).where(~missing, "not clustered")
            frames.loc[~missing & frames.cluster_name.isna(), "cluster_name"] = frames.cluster.map(lambda c: f"cluster {c}")
            if missing.any():
                log.info("visualize: %d frames are not in frames_annotated.parquet (re-run the cluster stage)", missing.sum())
    captions = run.table("caption_embeddings")
    if "caption" not in frames.columns and captions.exists():
        texts = read_table(captions)
        if {"frame_key", "text"} <= set(texts.columns):
            frames = frames.merge(
                texts[["frame_key", "text"]].drop_duplicates("frame_key").rename(columns={"text": "caption"}),
                on="frame_key", how="left",
            )  # fmt: skip
    return frames


def _frames_with_vectors(run: RunPaths) -> tuple[pd.DataFrame, np.ndarray, str]:
    """Frames that have a vector (frames-table order), their vectors and the model id."""
    table, vectors = load_vectors(run)
    if not len(table):
        return annotated_frames(run).iloc[:0], np.zeros((0, 0), np.float32), ""
    model_id = str(table.model_id.iloc[0])
    if table.model_id.nunique() > 1:  # as search does: the first model's vectors
        keep = (table.model_id == model_id).to_numpy()
        table, vectors = table[keep].reset_index(drop=True), vectors[keep]
    frames = annotated_frames(run)  # frames-table order; index = row number
    position = pd.Series(np.arange(len(table)), index=table.frame_key.to_numpy())
    frames = frames[frames.frame_key.isin(position.index)]
    # Every thumbnail becomes a hover preview: refuse the table if one points outside the run.
    run.thumbnails(frames)
    frames = frames.reset_index(drop=True)
    return frames, vectors[position.loc[frames.frame_key].to_numpy()], model_id


def _hover_text(frames: pd.DataFrame) -> list[str]:
    names = frames.video_name.astype(str).map(html.escape).tolist()
    times = [format_time(float(t)) for t in frames.timestamp]
    clusters = frames.cluster_name.astype(str).map(html.escape).tolist() if "cluster_name" in frames.columns else None
    captions = None
    if "caption" in frames.columns:
        captions = [html.escape(str(c)[:100]) if isinstance(c, str) and c else "" for c in frames.caption]
    texts = []
    for i in range(len(frames)):
        text = f"<b>{names[i]}</b> {times[i]}"
        if clusters is not None:
            cid = f"cluster {int(frames.cluster.iat[i])}" if "cluster" in frames.columns else ""
            text += f"<br>{cid}" + (f": {clusters[i]}" if cid and clusters[i] != cid else "" if cid else clusters[i])
        if captions is not None and captions[i]:
            text += f"<br><i>{captions[i]}</i>"
        texts.append(text)
    return texts


def _customdata(frames: pd.DataFrame) -> np.ndarray:
    return np.column_stack([frames.thumbnail.astype(str).to_numpy(object), frames.frame_key.astype(str).to_numpy(object)])


# --------------------------------------------------------------------------- 3D map


def _groups(frames: pd.DataFrame, color_by: str) -> tuple[str, str | None, list[tuple[str, np.ndarray, str]]]:
    """(effective colouring, note, [(legend label, row mask, colour)])."""
    palette = _palette()
    note = None
    if color_by == "cluster" and "cluster" not in frames.columns:
        color_by, note = "video", NO_CLUSTERS_NOTE
    groups = []
    if color_by == "cluster":
        clusters = frames.cluster.to_numpy()
        names = frames.cluster_name.astype(str).to_numpy() if "cluster_name" in frames.columns else clusters.astype(str)
        ids = sorted(set(clusters.tolist()), key=lambda c: (c < 0, c if c >= 0 else -c))
        for n, cid in enumerate(ids):
            mask = clusters == cid
            name = str(names[np.argmax(mask)])
            if cid == -1:
                label, colour = "noise", NOISE_COLOUR
            elif cid < -1:
                label, colour = name, "#707070"
            else:
                label = name if name.startswith(f"{cid}") else f"{cid}: {name}"
                colour = palette[n % len(palette)]
            groups.append((label[:48], mask, colour))
    elif color_by == "video":
        ids = frames.video_id.astype(str).to_numpy()
        for n, vid in enumerate(dict.fromkeys(ids)):
            mask = ids == vid
            groups.append((str(frames.video_name.iat[int(np.argmax(mask))])[:48], mask, palette[n % len(palette)]))
    elif color_by == "class":  # the classify stage's maps: a `predicted_class` column
        classes = frames.predicted_class.astype(str).to_numpy()
        for n, name in enumerate(sorted(set(classes.tolist()))):
            groups.append((name[:48], classes == name, palette[n % len(palette)]))
    else:
        raise ValueError(f"color_by {color_by!r}: choose cluster, video or class")
    return color_by, note, groups


def map_3d(
    points: np.ndarray,
    frames_table: pd.DataFrame,
    *,
    color_by: str = "cluster",
    title: str = "Frames in 3D",
    marker_size: float = 3,
) -> go.Figure:
    """A 3D scatter of `points` (n, 3), one row of `frames_table` per point.

    One trace per cluster (`color_by="cluster"`, needs a `cluster` column; noise -1 in grey)
    or per video (`color_by="video"`, also used, with a note in the title, when there are no
    clusters). Every point appears exactly once; its customdata is ``[thumbnail, frame_key]``.
    `fig.layout.meta["frameatlas"]` records the colouring used and the note.
    """
    points = np.asarray(points, dtype=np.float32)
    frames = frames_table.reset_index(drop=True)
    if points.ndim != 2 or points.shape[0] != len(frames) or points.shape[1] < 3:
        raise ValueError(f"points {points.shape} do not match the {len(frames)} frames (need an (n, 3) array)")
    effective, note, groups = _groups(frames, color_by)
    hover = np.array(_hover_text(frames), dtype=object)
    customdata = _customdata(frames)
    fig = go.Figure()
    for label, mask, colour in groups:
        fig.add_trace(go.Scatter3d(
            x=points[mask, 0], y=points[mask, 1], z=points[mask, 2], mode="markers", name=f"{label} ({int(mask.sum())})",
            marker={"size": marker_size, "color": colour, "opacity": 0.5 if colour == NOISE_COLOUR else 0.85},
            text=hover[mask].tolist(), hovertemplate="%{text}<extra></extra>", customdata=customdata[mask].tolist(),
        ))  # fmt: skip
    subtitle = f"{len(frames)} frames, coloured by {effective}" + (f" ({note})" if note else "")
    axis = {"showticklabels": False, "title": {"text": ""}, "showspikes": False}
    fig.update_layout(
        title={"text": f"{html.escape(title)}<br><sup>{html.escape(subtitle)}</sup>"},
        scene={"xaxis": axis, "yaxis": axis, "zaxis": axis, "aspectmode": "cube"},
        legend={"itemsizing": "constant", "title": {"text": effective}},
        margin={"l": 0, "r": 0, "t": 60, "b": 0},
        meta={"frameatlas": {"kind": "map", "color_by": effective, "note": note, "customdata": list(CUSTOMDATA)}},
    )  # fmt: skip
    return fig


# --------------------------------------------------------------------------- standalone HTML

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
  html, body {{ margin: 0; height: 100%; font-family: system-ui, sans-serif; }}
  .fa-page {{ display: flex; height: 100vh; }}
  .fa-plot {{ flex: 1 1 auto; min-width: 0; }}
  .fa-side {{ flex: 0 0 {side_width}px; padding: 12px; border-left: 1px solid #ddd; background: #fafafa;
              overflow: auto; font-size: 13px; }}
  .fa-side img {{ display: none; max-width: 100%; border: 1px solid #ccc; margin-bottom: 8px; }}
  .fa-hint {{ color: #777; }}
</style>
</head>
<body>
<div class="fa-page">
<div class="fa-plot">
{plot}
</div>
{side}
</div>
</body>
</html>
"""

_SIDE = """<aside class="fa-side">
<div class="fa-hint" id="fa-hint">Hover over a point to see its frame; click to keep it (double-click the plot to release).</div>
<img id="fa-thumb" alt="frame thumbnail">
<div id="fa-caption"></div>
</aside>"""

# `{plot_id}` is replaced by plotly with the figure's div id.
_POST_SCRIPT = """
(function () {
  var gd = document.getElementById('{plot_id}');
  var pinned = false;
  function el(id) { return document.getElementById(id); }  // looked up late: the panel follows the plot
  function show(event) {
    if (!event || !event.points || !event.points.length) { return; }
    var point = event.points[0];
    var data = point.customdata;
    var img = el('fa-thumb'), caption = el('fa-caption');
    if (!data || !data[0] || !img) { return; }
    img.src = data[0];
    img.title = data[1] || '';
    img.style.display = 'block';
    if (caption) { caption.innerHTML = point.text || ''; }  // hover text: built by frameatlas, user strings escaped
  }
  function hint(text) { var h = el('fa-hint'); if (h) { h.textContent = text; } }
  gd.on('plotly_hover', function (event) { if (!pinned) { show(event); } });
  gd.on('plotly_click', function (event) { pinned = true; hint('Pinned: click another point, or double-click the plot to release.'); show(event); });
  gd.on('plotly_doubleclick', function () { pinned = false; hint('Hover over a point to see its frame.'); });
})();
"""


def _relative_to(folder: Path, target: Path) -> str:
    try:
        return Path(os.path.relpath(target, folder)).as_posix()
    except ValueError:  # another drive (Windows): fall back to an absolute file URL
        return target.resolve().as_uri()


def write_standalone_html(
    fig: go.Figure, path: Path | str, run: RunPaths | Path | str, *, thumbnails: bool = True, title: str | None = None
) -> Path:
    """Write `fig` as an HTML page that works offline.

    plotly.js is not embedded: the page loads the run's one copy (`plots/plotly.min.js`, written by
    `frameatlas.plots.plotly_bundle` when missing) by a relative path. With `thumbnails`, the customdata
    thumbnail of every point (run-relative in the figure) is resolved inside the run (an
    outside one raises `UnsafePath` naming the trace and point) and rewritten relative to the
    HTML file's folder, and a side panel shows the hovered / clicked point's frame. The figure
    passed in is not modified.
    """
    run, path = _run(run), Path(path).resolve()
    out = go.Figure(fig)
    title = title or (fig.layout.title.text or "frameatlas").split("<br>")[0]
    if thumbnails:
        relative: dict[Path, str] = {}
        for number, trace in enumerate(out.data):
            rows = getattr(trace, "customdata", None)
            if rows is None or not len(rows):
                continue
            rows = [list(row) for row in rows]
            where = f"figure {re.sub(r'<[^>]+>', '', title)!r} trace {number} ({trace.name})"
            files = run.resolve_many(
                [str(row[0]) for row in rows], lambda i, where=where: f"{where} point {i}, customdata thumbnail"
            )
            for row, file in zip(rows, files):
                if file not in relative:
                    relative[file] = _relative_to(path.parent, file)
                row[0] = relative[file]
            trace.customdata = rows
    # One plotly.js per run (plots/plotly.min.js), referenced relatively: the page opens offline and from an archive.
    bundle = plotly_bundle(run.root / "plots")
    plot = pio.to_html(
        out, include_plotlyjs=_relative_to(path.parent, bundle), full_html=False, post_script=_POST_SCRIPT if thumbnails else None,
        default_width="100%", default_height="100vh", config={"displaylogo": False, "responsive": True},
    )  # fmt: skip
    page = _PAGE.format(title=html.escape(re.sub(r"<[^>]+>", "", title)), plot=plot, side=_SIDE if thumbnails else "",
                        side_width=340)  # fmt: skip
    atomic_write_text(path, page)
    return path


# --------------------------------------------------------------------------- timelines


@dataclass
class Timelines:
    """Similarity of each query to each frame over time.

    `table` has one row per (frame, query, channel): video_id, video_name, frame_key, timestamp, query,
    similarity, channel, thumbnail; ordered by video, channel, query (as configured) and time. The
    `visual` channel is the cosine of unit CLIP vectors; the `speech` channel (videos with speech,
    when the run has the speech channel) is the sentence-encoder cosine of the query to what is said
    around the frame, NaN where nothing is. `figures` maps video_id to its figure (one line per
    query and channel). When no timelines can be made, `figures` is empty and `reason` says why.
    """

    table: pd.DataFrame
    figures: dict[str, go.Figure] = field(default_factory=dict)
    reason: str | None = None
    queries: list[str] = field(default_factory=list)


def query_vectors(cfg: PipelineConfig, model_id: str, queries: list[str], encoder=None) -> tuple[np.ndarray | None, str | None]:
    """The queries' CLIP text vectors (len(queries), dim), or None and the reason they cannot be made.

    Same rules as the visual channel of `frameatlas.search`: the configured image model must be
    the one the frames were embedded with, and it must have a text side.
    """
    from .search import matching_image_encoder

    encoder, reason = matching_image_encoder(cfg, model_id, need_text=True, encoder=encoder)
    if encoder is None:
        return None, f"no timelines: {reason}"
    return np.asarray(encoder.encode_text(list(queries)), dtype=np.float32), None


def timeline_figure(table: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Similarity over time for one video: one line per query (rows of a `Timelines.table`)."""
    palette = _palette()
    fig = go.Figure()
    video_name = str(table.video_name.iloc[0]) if len(table) else ""
    channels = table["channel"] if "channel" in table else pd.Series("visual", index=table.index)
    for n, ((query, channel), rows) in enumerate(table.groupby([table["query"], channels], sort=False)):
        rows = rows.sort_values("timestamp")
        name = str(query) if channel == "visual" else f"{query} [{channel}]"  # speech: gaps where nothing is said
        hover = [f"<b>{html.escape(name)}</b><br>{html.escape(video_name)} {format_time(float(t))}<br>similarity {s:.4f}"
                 for t, s in zip(rows.timestamp, rows.similarity)]  # fmt: skip
        fig.add_trace(go.Scatter(
            x=rows.timestamp.to_numpy(float), y=rows.similarity.to_numpy(float), mode="lines+markers", name=name,
            line={"color": palette[n % len(palette)], "width": 1.5}, marker={"size": 4},
            text=hover, hovertemplate="%{text}<extra></extra>", customdata=_customdata(rows).tolist(),
        ))  # fmt: skip
    fig.update_layout(
        title={"text": html.escape(title or f"Query similarity over time: {video_name}")},
        xaxis={"title": {"text": "time (s)"}}, yaxis={"title": {"text": "cosine similarity"}},
        hovermode="closest", legend={"title": {"text": "query"}}, margin={"t": 60},
        meta={"frameatlas": {"kind": "timeline", "video_name": video_name, "customdata": list(CUSTOMDATA)}},
    )  # fmt: skip
    return fig


def _speech_timelines(run: RunPaths, cfg: PipelineConfig, frames: pd.DataFrame, queries: list[str]) -> list[pd.DataFrame]:
    """Each query's similarity to what is said around each frame (the speech channel's vectors), for the
    videos with speech; frames without speech are gaps (NaN). None when the run has no speech channel."""
    from .search import _load_channel, _text_query

    try:
        table, vectors, model_id = _load_channel(run, "speech")
    except FileNotFoundError:
        return []
    if not len(table):
        return []
    encoded = []
    for query in queries:
        vector, reason = _text_query(cfg, model_id, query)
        if vector is None:
            log.info("visualize: no speech lines in the timelines: %s", reason)
            return []
        encoded.append(np.asarray(vector, np.float32))
    position = pd.Series(np.arange(len(table)), index=table.frame_key.astype(str).to_numpy())
    rows = position[~position.index.duplicated()].reindex(frames.frame_key.astype(str)).fillna(-1).to_numpy(int)
    spoken = rows >= 0
    with_speech = frames.video_id[spoken].unique()
    keep = frames.video_id.isin(with_speech).to_numpy()
    similarity = np.full((len(frames), len(queries)), np.nan, np.float32)
    similarity[spoken] = vectors[rows[spoken]] @ np.stack(encoded).T
    columns = {"video_id": frames.video_id.to_numpy()[keep], "video_name": frames.video_name.to_numpy()[keep],
               "frame_key": frames.frame_key.to_numpy()[keep], "timestamp": frames.timestamp.to_numpy(float)[keep],
               "thumbnail": frames.thumbnail.to_numpy()[keep], "channel": "speech"}  # fmt: skip
    return [pd.DataFrame({**columns, "query": query, "similarity": similarity[keep, q].astype(float), "_order": len(queries) + q})
            for q, query in enumerate(queries)]  # fmt: skip


def similarity_timelines(
    run: RunPaths | Path | str, cfg: PipelineConfig, queries: list[str] | None = None, *, encoder=None
) -> Timelines:
    """Text-to-frame cosine similarity over time for every video and query (default `search.queries`).

    Returns a `Timelines`: the long table and one figure per video (keyed by video_id). With an
    image model that has no text side (the fallback descriptor) or that does not match the
    stored vectors, there are no figures and `reason` explains why.
    """
    run = _run(run)
    queries = list(dict.fromkeys(cfg.search.queries if queries is None else queries))
    columns = TIMELINE_COLUMNS + ["thumbnail"]
    empty = pd.DataFrame({c: pd.Series(dtype=float if c in ("timestamp", "similarity") else object) for c in columns})
    if not queries:
        return Timelines(empty, reason="no timelines: no queries configured (search.queries)", queries=queries)
    frames, vectors, model_id = _frames_with_vectors(run)
    if not len(frames):
        return Timelines(empty, reason="no timelines: no frame vectors yet; run the embed stage", queries=queries)
    text_vectors, reason = query_vectors(cfg, model_id, queries, encoder)
    parts = []
    if text_vectors is None:
        log.debug("visualize: %s", reason)
    else:
        similarity = vectors @ text_vectors.T  # (frames, queries)
        for q, query in enumerate(queries):
            parts.append(pd.DataFrame({
                "video_id": frames.video_id.to_numpy(), "video_name": frames.video_name.to_numpy(),
                "frame_key": frames.frame_key.to_numpy(), "timestamp": frames.timestamp.to_numpy(float), "query": query,
                "similarity": similarity[:, q].astype(float), "thumbnail": frames.thumbnail.to_numpy(), "_order": q,
                "channel": "visual",
            }))  # fmt: skip
    parts += _speech_timelines(run, cfg, frames, queries)
    if not parts:
        return Timelines(empty, reason=reason, queries=queries)
    long = pd.concat(parts, ignore_index=True)
    figures = {str(video_id): timeline_figure(rows) for video_id, rows in long.groupby("video_id", sort=False)}
    table = long.sort_values(["video_name", "video_id", "_order", "timestamp"], kind="stable").reset_index(drop=True)
    return Timelines(table[columns], figures, None, queries)


# --------------------------------------------------------------------------- the stage


@dataclass(kw_only=True)
class VisualizeSummary(StageSummary):
    """What `write_visualizations` made: figures for the notebook, files, counts for the manifest."""

    frames: int = 0
    points: int = 0
    model_id: str = ""
    color_by: str = ""
    clusters: int = 0
    maps: dict[str, go.Figure] = field(default_factory=dict)  # method -> figure
    map_files: dict[str, Path] = field(default_factory=dict)
    projection_seconds: dict[str, float] = field(default_factory=dict)
    projections_cached: int = 0
    projection_fits: dict[str, ProjectionFit] = field(default_factory=dict)  # method -> fitted, placed or kept, and why
    timelines: Timelines | None = None
    timeline_files: dict[str, Path] = field(default_factory=dict)  # video_id -> file
    investigator_files: dict[str, Path] = field(default_factory=dict)  # video_id -> plots/investigate_<video>.html

    @property
    def figures(self) -> dict[str, go.Figure]:
        """Every figure by the stem of its file (map_pca, timeline_<video>, ...)."""
        figures = {f"map_{method}": fig for method, fig in self.maps.items()}
        if self.timelines is not None:
            for video_id, fig in self.timelines.figures.items():
                path = self.timeline_files.get(video_id)
                figures[path.stem if path else f"timeline_{video_id}"] = fig
        return figures

    @property
    def counts(self) -> dict[str, float | int | str]:
        return {
            "frames": self.frames,
            "map_points": self.points,
            "projections": ",".join(self.maps),
            "projections_cached": self.projections_cached,
            "projections_fitted": ",".join(m for m, fit in self.projection_fits.items() if fit.mode == "fitted"),
            "projections_placed": ",".join(m for m, fit in self.projection_fits.items() if fit.mode == "placed"),
            "frames_placed": max((fit.placed for fit in self.projection_fits.values()), default=0),
            "projection_seconds": round(sum(self.projection_seconds.values()), 2),
            "color_by": self.color_by,
            "clusters": self.clusters,
            "timeline_videos": len(self.timelines.figures) if self.timelines else 0,
            "timeline_queries": len(self.timelines.queries) if self.timelines and self.timelines.figures else 0,
            "model": self.model_id,
            "investigator_pages": len(self.investigator_files),
        }


def _file_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "video"
    return stem[:60]


def _remove_stale(folder: Path, pattern: str, keep: set[Path]) -> None:
    for old in folder.glob(pattern):
        if old.resolve() not in keep:
            old.unlink(missing_ok=True)


def write_visualizations(cfg: PipelineConfig, run: RunPaths | Path | str, *, force: bool = False) -> VisualizeSummary:
    """Run the visualize stage.

    Writes `plots/map_<method>.html` for every `visualize.projections`, `tables/projections.parquet`
    (frame_key, method, x, y, z), and, when `visualize.timelines`, `plots/timeline_<video>.html`
    plus `tables/timelines.parquet`. Projections are cached under `cache/projections/`, and each
    one's fit is kept in `cache/projection_fits/<method>.npz`: a re-run that adds at most
    `visualize.refit_new_fraction` of the frames places them into it (`frameatlas.project.fit_or_place`)
    unless `force`. Plot files of an earlier run of the stage that are no longer produced are removed.
    """
    started = time.perf_counter()
    run = _run(run)
    options = cfg.visualize
    plots = run.root / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    summary = VisualizeSummary()
    frames, vectors, model_id = _frames_with_vectors(run)
    summary.frames, summary.model_id = len(frames), model_id
    written: set[Path] = set()

    if len(frames):
        projections = []
        methods = list(dict.fromkeys(options.projections))
        bar = progress_bar(total=len(methods), desc="visualize: projections", unit="map")
        try:
            for method in methods:
                bar.set_postfix_str(method)
                t0 = time.perf_counter()
                label = METHOD_LABELS[method]
                fit = fit_or_place(
                    frames.frame_key, vectors, method, fit_path=run.cache / "projection_fits" / f"{method}.npz", dims=3,
                    seed=options.seed, perplexity=options.perplexity, neighbors=options.umap_neighbors,
                    max_points=options.max_points, refit_new_fraction=options.refit_new_fraction, force=force,
                    cache_dir=run.cache / "projections", identity={"model": model_id}, label=label,
                )  # fmt: skip
                summary.projection_seconds[method] = time.perf_counter() - t0
                summary.projection_fits[method] = fit
                summary.projections_cached += fit.cached
                summary.notes.append(fit.message)
                points, mapped = fit.points, frames.iloc[fit.rows].reset_index(drop=True)
                if not summary.points:
                    summary.points = len(mapped)
                    if len(mapped) < len(frames):
                        summary.notes.append(
                            f"maps show {len(mapped)} of {len(frames)} frames, sampled evenly (visualize.max_points)"
                        )
                    if "cluster" in mapped.columns:
                        summary.clusters = int(mapped.cluster[mapped.cluster >= 0].nunique())
                fig = map_3d(points, mapped, color_by=options.color_by, title=f"Frames in 3D: {label} of {model_id} vectors")
                summary.maps[method] = fig
                summary.map_files[method] = write_standalone_html(fig, plots / f"map_{method}.html", run,
                                                                  title=f"frameatlas map ({label})")  # fmt: skip
                written.add(summary.map_files[method])
                projections.append(pd.DataFrame({"frame_key": mapped.frame_key.to_numpy(), "method": method,
                                                 "x": points[:, 0], "y": points[:, 1], "z": points[:, 2]}))  # fmt: skip
                bar.update(1)
        finally:
            bar.close()
        summary.color_by = summary.maps[next(iter(summary.maps))].layout.meta["frameatlas"]["color_by"]
        if options.color_by == "cluster" and summary.color_by == "video":
            summary.notes.append(NO_CLUSTERS_NOTE)
        write_table(pd.concat(projections, ignore_index=True)[PROJECTION_COLUMNS], run.table("projections"))
    else:
        summary.notes.append("no frame vectors yet: run the embed stage first")
        write_table(pd.DataFrame({c: pd.Series(dtype=float if c in "xyz" else object) for c in PROJECTION_COLUMNS}),
                    run.table("projections"))  # fmt: skip

    if options.timelines:
        timelines = similarity_timelines(run, cfg)
        summary.timelines = timelines
        if timelines.reason:
            summary.notes.append(timelines.reason)
        write_table(timelines.table[TIMELINE_COLUMNS], run.table("timelines"))
        used: set[str] = set()
        for video_id, fig in timelines.figures.items():
            stem = _file_stem(str(fig.layout.meta["frameatlas"]["video_name"]))
            if stem in used:
                stem = f"{stem}_{video_id[:8]}"
            used.add(stem)
            path = write_standalone_html(fig, plots / f"timeline_{stem}.html", run, title=f"frameatlas timeline ({stem})")
            summary.timeline_files[video_id] = path
            written.add(path)
    else:
        run.table("timelines").unlink(missing_ok=True)  # no stale timelines next to a config without them
    if options.timelines:  # the same prompts beside the video: plots/investigate_<video>.html (frameatlas.investigator)
        pages = write_investigator_pages(run, cfg)
        summary.investigator_files = pages.files
        summary.notes.extend(pages.notes)
    else:
        _remove_stale(plots, "investigate_*.html", set())
    _remove_stale(plots, "map_*.html", written)
    _remove_stale(plots, "timeline_*.html", written)
    summary.seconds = time.perf_counter() - started
    for note in summary.notes:
        log.info("visualize: %s", note)
    log.info("visualize: %d frames, %d map points, maps %s, %d timelines in %.1f s", summary.frames, summary.points,
             ",".join(summary.maps) or "-", len(summary.timeline_files), summary.seconds)  # fmt: skip
    return summary


_PLOTLY_JS_SHOWN = False


def show(fig: go.Figure, *, height: int | None = None) -> None:
    """Display a figure in a notebook so it also works in the exported HTML report, offline.

    plotly.js is embedded inline once per kernel (later figures reuse it); plotly's own
    notebook renderer would need require.js from a CDN, which reports do not load.
    """
    global _PLOTLY_JS_SHOWN
    from IPython.display import HTML, display

    html = fig.to_html(full_html=False, include_plotlyjs=not _PLOTLY_JS_SHOWN, default_height=height or "600px")
    _PLOTLY_JS_SHOWN = True
    display(HTML(html))
