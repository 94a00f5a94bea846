"""The cluster stage: read the run's frames and vectors, cluster and name them, and write the
tables, montages and keyframe strips.

* `cluster_run`: writes `tables/clusters.parquet` (one row per frame and labelling; several
  labellings coexist), `tables/frames_annotated.parquet` + `.csv` (the frames with the current
  labelling), `tables/keyframes.parquet`, a montage per cluster and a keyframe strip per video
  under `plots/`. Every file goes through the one atomic writer (`frameatlas.files`).
* `cluster_table`, `labellings`: any stored labelling read back, without recomputing.

Thumbnail paths come from `tables/frames.parquet`; each one is resolved inside the run before it
is opened, so a crafted table cannot make a montage read a file outside the run.

Example:
    >>> summary = cluster_run(cfg, "outputs/demo")  # doctest: +SKIP
    >>> cluster_table("outputs/demo", "kmeans-k15-pca32")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ..config import PipelineConfig
from ..files import atomic_write_text, save_image
from ..plots import Tile, format_time, image_grid
from ..store import RunPaths, read_table, write_table
from ..summary import StageSummary
from .algorithms import NOISE, ClusterError, ClusterLabels, cluster_vectors, labelling_id, place_vectors, video_keyframes
from .fitted import FitUnreadable, SavedFit, fit_parameters, fit_path, load_fit, save_fit, vectors_digest
from .naming import NOISE_NAME, name_clusters

log = logging.getLogger(__name__)

__all__ = [
    "CLUSTER_COLUMNS",
    "ClusterSummary",
    "cluster_montage",
    "cluster_run",
    "cluster_table",
    "labellings",
    "time_ranges",
]

MONTAGE_TILE_WIDTH = 160
KEYFRAME_TILE_WIDTH = 140
MONTAGE_JPEG_QUALITY = 88  # montage files (the reports show display-size copies)
KEYFRAME_COLUMNS_PER_ROW = 8
RANGES_SHOWN = 12  # time ranges spelled out per cluster in `cluster_table`; the rest are counted
_UNCLUSTERED = -2  # internal marker for frames without a label in the current labelling
FRAMES_TABLE = "frames"  # thumbnails are read from it; errors name it

CLUSTER_COLUMNS = ["frame_key", "labelling", "method", "params", "label", "name", "name_source", "distance"]
SUMMARY_COLUMNS = ["label", "name", "name_source", "size", "share", "videos", "video_names", "time_ranges",
                   "representatives", "montage"]  # fmt: skip


# --- time ranges and montages -------------------------------------------------------------------


def time_ranges(annotated: pd.DataFrame, column: str = "cluster") -> pd.DataFrame:
    """Consecutive sampled frames of a video with the same label, merged into time ranges.

    Args:
        annotated: frames with video_id, video_name, timestamp, frame_key and a label `column`
            (missing labels break ranges and are not reported).

    Returns:
        DataFrame with label, video_id, video_name, start, end (timestamps of the first and last
        frame of the range) and frames, ordered by video name and time.

    Example:
        >>> frames = pd.DataFrame({"video_id": "v", "video_name": "v.mp4", "frame_key": list("abcd"),
        ...                        "timestamp": [0.0, 1.0, 2.0, 3.0], "cluster": [0, 0, 1, 0]})
        >>> time_ranges(frames)[["label", "start", "end", "frames"]]
           label  start  end  frames
        0      0    0.0  1.0       2
        1      1    2.0  2.0       1
        2      0    3.0  3.0       1
    """
    columns = ["label", "video_id", "video_name", "start", "end", "frames"]
    if annotated.empty:
        return pd.DataFrame(columns=columns)
    ordered = annotated.sort_values(["video_name", "video_id", "timestamp"], kind="stable").reset_index(drop=True)
    label = pd.to_numeric(ordered[column], errors="coerce").astype("float64").fillna(_UNCLUSTERED).astype(np.int64).to_numpy()
    video = ordered["video_id"].to_numpy()
    starts_run = np.r_[True, (label[1:] != label[:-1]) | (video[1:] != video[:-1])]
    ranges = (
        ordered.assign(_run=np.cumsum(starts_run), _label=label)
        .groupby("_run", sort=True)
        .agg(label=("_label", "first"), video_id=("video_id", "first"), video_name=("video_name", "first"),
             start=("timestamp", "min"), end=("timestamp", "max"), frames=("frame_key", "size"))
    )  # fmt: skip
    return ranges[ranges.label != _UNCLUSTERED].reset_index(drop=True)[columns]


def _format_ranges(ranges: pd.DataFrame, limit: int = RANGES_SHOWN) -> str:
    """'one.mp4 00:00.00–00:01.50, 00:03.00; two.mp4 00:00.00 (+4 more)'."""
    parts, shown = [], 0
    for video_name, group in ranges.groupby("video_name", sort=True):
        spans = []
        for row in group.itertuples():
            if shown >= limit:
                break
            shown += 1
            spans.append(format_time(row.start) if row.start == row.end else f"{format_time(row.start)}–{format_time(row.end)}")
        if spans:
            parts.append(f"{video_name} {', '.join(spans)}")
    text = "; ".join(parts)
    return text + (f" (+{len(ranges) - shown} more)" if len(ranges) > shown else "")


def _aspect(frames: pd.DataFrame) -> float:
    if {"width", "height"} <= set(frames.columns) and len(frames):
        ratio = (pd.to_numeric(frames["height"], errors="coerce") / pd.to_numeric(frames["width"], errors="coerce")).median()
        if np.isfinite(ratio) and ratio > 0:
            return float(ratio)
    return 0.75


def cluster_montage(
    frames: pd.DataFrame,
    run: RunPaths | Path | str,
    *,
    columns: int | None = None,
    tile_width: int = MONTAGE_TILE_WIDTH,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """A grid of the given frames (in the given order), each labelled with video and time.

    Args:
        frames: rows of the run's frames table with thumbnail, video_name, timestamp (and
            width/height for the aspect); their index is their row number in
            `tables/frames.parquet`, which a refused thumbnail's error names.
        columns: tiles per row; default: a square-ish grid (ceil of the square root).
        labels: tile labels instead of "<video> <mm:ss.ss>".

    Raises:
        UnsafePath: a thumbnail that resolves outside the run.

    Example:
        >>> image = cluster_montage(frames.head(16), "outputs/demo")  # a 4 x 4 grid  # doctest: +SKIP
    """
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    if labels is None:
        labels = [f"{Path(str(row.video_name)).stem[:10]} {format_time(row.timestamp)}" for row in frames.itertuples()]
    tiles = [Tile(_thumbnail(run, row.Index, row.thumbnail), label) for row, label in zip(frames.itertuples(), labels)]
    columns = columns or max(1, math.ceil(math.sqrt(len(tiles))))
    return image_grid(tiles, columns=columns, tile_width=tile_width, aspect=_aspect(frames))


def _thumbnail(run: RunPaths, row: Any, thumbnail: str) -> Path:
    """A frames-table thumbnail resolved inside the run; `UnsafePath` names the row otherwise."""
    return run.table_path(thumbnail, table=FRAMES_TABLE, row=row, column="thumbnail")


class _Thumbnails(Sequence):
    """The thumbnails of some frames-table rows, each resolved inside the run only when read
    (colour naming opens a few dozen per cluster, not every frame's)."""

    def __init__(self, run: RunPaths, frames: pd.DataFrame):
        self._run, self._rows, self._paths = run, frames.index.to_numpy(), frames.thumbnail.to_numpy()

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, position):
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(len(self)))]
        return _thumbnail(self._run, self._rows[position], self._paths[position])


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:40] or "video"


# --- the stage ------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ClusterSummary(StageSummary):
    """What `cluster_run` did: the clustering, its names and tables, and counts for the manifest."""

    labelling: str
    clusters: ClusterLabels
    names: pd.DataFrame
    table: pd.DataFrame  # `cluster_table` of this labelling
    assignments: pd.DataFrame  # this labelling's rows of tables/clusters.parquet
    keyframes: pd.DataFrame
    model_id: str
    vectors: str
    montages: dict[int, Path] = field(default_factory=dict)
    keyframe_strips: dict[str, Path] = field(default_factory=dict)
    fit: str = "fitted"  # "fitted" (no earlier fit), "refitted", or "placed" (new frames placed into the saved fit)
    placed: int = 0  # frames placed into the saved fit by this run
    fit_reason: str = ""  # why it refitted or placed, for people to read (also in `notes`)

    @property
    def counts(self) -> dict[str, float | int | str]:
        counts: dict[str, float | int | str] = {
            "fit": self.fit,
            "placed_frames": self.placed,
            "frames": len(self.assignments),
            "clusters": self.clusters.n_clusters,
            "noise": self.clusters.noise,
            "labelling": self.labelling,
            "params": self.clusters.description,
            "name_source": ", ".join(sorted(set(self.names.name_source) - {NOISE_NAME})),
            "keyframes": len(self.keyframes),
            "seconds": round(self.seconds, 2),
        }
        if self.clusters.best_silhouette is not None:
            counts["silhouette"] = round(self.clusters.best_silhouette, 4)
        return counts


def _load_cluster_vectors(run: RunPaths, kind: str, encoder: Any) -> tuple[pd.Series, np.ndarray, str]:
    """(frame keys, vectors, model id) of the image or caption vectors of the run."""
    if kind == "caption":
        path = run.table("caption_embeddings")
        if not path.exists():
            captions = run.table("captions")
            if captions.exists():  # captioned, but nothing to embed: no model could write a caption
                why = f"{run.relative(captions)} holds no prompts: reports/02_caption.html says why"
                fix = "give the caption stage a model that can caption (CLIP weights, or caption.caption_model)"
            else:
                why = "the caption stage has not run"
                fix = "enable the caption stage (caption.enabled: true)"
            raise ClusterError(
                f"cluster.vectors is 'caption' but this run has no caption vectors ({run.relative(path)} is missing; "
                f"{why}): {fix} and run it with the embed stage (python run_pipeline.py --stages caption,embed), "
                "or set cluster.vectors: image"
            )
    else:
        path = run.table("embeddings")
        if not path.exists():
            raise ClusterError(
                f"this run has no frame vectors ({run.relative(path)} is missing): "
                "run the embed stage first (python run_pipeline.py --stages embed)"
            )
    model_ids = list(pd.read_parquet(path, columns=["model_id"]).model_id.unique())
    if not model_ids:
        raise ClusterError(f"{run.relative(path)} is empty: no vectors to cluster")
    wanted = getattr(getattr(encoder, "record", None), "model_id", None) if kind == "image" else None
    model_id = wanted if wanted in model_ids else model_ids[0]
    table = read_table(path)
    table = table[table.model_id == model_id].drop_duplicates("frame_key", keep="last")
    return table.frame_key.reset_index(drop=True), np.stack(table.vector.to_numpy()).astype(np.float32), str(model_id)


def _load_captions(run: RunPaths) -> pd.Series | None:
    path = run.table("caption_embeddings")
    if not path.exists():
        return None
    table = pd.read_parquet(path, columns=["frame_key", "text"]).drop_duplicates("frame_key", keep="last")
    table = table[table.text.notna() & (table.text.astype(str).str.strip() != "")]  # blank captions name nothing
    return table.set_index("frame_key").text.astype(str)


def _naming_encoder(cfg: PipelineConfig, encoder: Any, model_id: str, notes: list[str]) -> Any:
    """The image encoder, if its text side lives in the space of the clustered vectors."""
    if encoder is None:
        from ..models import ModelUnavailable, image_encoder

        try:
            encoder = image_encoder(cfg.models)
        except ModelUnavailable as error:
            notes.append(f"names from colours: the image model cannot be loaded ({error.detail or error})")
            return None
    if not getattr(encoder, "has_text", False):
        notes.append(f"names from colours: {encoder.record.model_id} has no text side")
        return None
    if encoder.record.model_id != model_id:
        notes.append(f"names from colours: vectors come from {model_id}, the encoder is {encoder.record.model_id}")
        return None
    return encoder


def _summarise(annotated: pd.DataFrame, names: pd.DataFrame, run: RunPaths, labelling: str, montage_frames: int) -> pd.DataFrame:
    """The cluster table from frames annotated with cluster, cluster_name and distance."""
    ranges = time_ranges(annotated, "cluster")
    clustered = annotated[annotated.cluster.notna()]
    total = max(len(clustered), 1)
    rows = []
    for name_row in names.itertuples():
        label = int(name_row.label)
        members = clustered[clustered.cluster == label].sort_values(["distance", "video_name", "timestamp"], kind="stable")
        montage = _montage_path(run, labelling, label)
        rows.append({
            "label": label, "name": name_row.name, "name_source": name_row.name_source, "size": len(members),
            "share": round(len(members) / total, 4), "videos": members.video_id.nunique(),
            "video_names": ", ".join(sorted(members.video_name.astype(str).unique())),
            "time_ranges": _format_ranges(ranges[ranges.label == label]),
            "representatives": [] if label == NOISE else list(members.frame_key.head(montage_frames)),
            "montage": run.relative(montage) if label != NOISE and montage.exists() else "",
        })  # fmt: skip
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _montage_path(run: RunPaths, labelling: str, label: int) -> Path:
    return run.root / "plots" / "clusters" / labelling / f"cluster_{label}.jpg"


def cluster_run(cfg: PipelineConfig, run: RunPaths | Path | str, *, encoder: Any = None, force: bool = False) -> ClusterSummary:
    """The cluster stage: cluster (or place new frames into the saved clustering), name, and write
    tables, montages and keyframes.

    When the frames added since the labelling was fitted are at most `cluster.refit_new_fraction`
    of all its frames, and its settings, the vectors' model and the fitted frames (none removed,
    vectors unchanged) are as they were, the new frames are placed into the saved k-means fit
    (`place_vectors`): every earlier frame keeps its label, distance and cluster name, and only
    the montages and keyframe strips that change are drawn. Otherwise (or with `force`) it fits
    anew. `ClusterSummary.fit` and a note say which happened and why.

    Args:
        cfg: the pipeline config; `cfg.cluster` holds the settings.
        run: the run folder (`outputs/<run>`), with frames and vectors from earlier stages.
        encoder: the image encoder the frames were embedded with (loaded from `cfg.models` when
            needed and not given); only used to name clusters when there are no captions.
        force: fit anew even when new frames could be placed (`--force cluster`).

    Writes:
        * ``tables/clusters.parquet``: frame_key, labelling, method, params, label, name,
          name_source, distance; one row per clustered frame and labelling. Rows of this
          labelling are replaced, others kept; this labelling's rows come last.
        * ``tables/frames_annotated.parquet`` and ``.csv``: the frames table plus cluster
          (nullable int; -1 = noise) and cluster_name of this labelling.
        * ``tables/keyframes.parquet``: video_id, frame_key, timestamp, rank, represents.
        * ``plots/clusters/<labelling>/cluster_<label>.jpg`` and ``plots/keyframes/<video>.png``.
        * ``cache/cluster/<labelling>.npz``: the k-means fit new frames can be placed into.

    Example:
        >>> summary = cluster_run(cfg, "outputs/demo")  # doctest: +SKIP
        >>> summary.counts  # doctest: +SKIP
        {'fit': 'fitted', 'placed_frames': 0, 'frames': 2400, 'clusters': 15, 'noise': 0, ...}
    """
    started = time.perf_counter()
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    options = cfg.cluster
    frames = read_table(run.table(FRAMES_TABLE)).reset_index(drop=True)  # index = row number, named in errors
    keys, vectors, model_id = _load_cluster_vectors(run, options.vectors, encoder)
    # Vectors of frames no longer in the frames table are stale; the rest follow the frames' order.
    position = pd.Series(np.arange(len(keys)), index=keys.to_numpy())
    wanted = frames.frame_key[frames.frame_key.isin(position.index)]
    if wanted.empty:
        raise ClusterError("no frame of the frames table has a vector; re-run the embed stage")
    vectors = vectors[position.loc[wanted.to_numpy()].to_numpy()]
    members = frames.loc[wanted.index]  # frames-table order and row numbers
    labelling = labelling_id(options)

    placement = _placement(run, labelling, options, model_id, members, vectors, force)
    if isinstance(placement, _Placement):
        clusters, names, previous_labels = placement.clusters, placement.names, placement.previous
        fit, placed, reason = "placed", placement.new_count, placement.reason
        notes = [reason]
    else:
        reason = placement
        clusters = cluster_vectors(vectors, options)
        notes = list(clusters.notes)
        fit, placed, previous_labels = ("fitted" if reason.startswith("fitted") else "refitted"), 0, None
        notes.append(reason)
        names = _names(cfg, run, clusters, members, model_id, encoder, notes)
    log.info("cluster: %s", reason)
    name_of = dict(zip(names.label, names.name))
    source_of = dict(zip(names.label, names.name_source))

    assignments = pd.DataFrame({
        "frame_key": members.frame_key.to_numpy(), "labelling": labelling, "method": clusters.method,
        "params": clusters.description, "label": clusters.labels.astype(np.int64),
        "name": [name_of[label] for label in clusters.labels], "name_source": [source_of[label] for label in clusters.labels],
        "distance": clusters.distances.astype(np.float64),
    })  # fmt: skip
    if previous_labels is not None:  # earlier frames keep their stored rows exactly (distances included)
        stored = previous_labels.reindex(assignments.frame_key)
        old = stored.label.notna().to_numpy()
        for column in ("label", "name", "name_source", "distance"):
            assignments.loc[old, column] = stored[column].to_numpy()[old]
        assignments = assignments.astype({"label": "int64", "distance": "float64"})
    _write_assignments(run, labelling, assignments)
    _save_state(run, labelling, options, model_id, members, vectors, clusters, placement)

    annotated = frames.copy()
    by_key = assignments.set_index("frame_key")
    annotated["cluster"] = annotated.frame_key.map(by_key.label).astype("Int64")
    annotated["cluster_name"] = annotated.frame_key.map(by_key.name)
    write_table(annotated, run.table("frames_annotated"))
    atomic_write_text(run.tables / "frames_annotated.csv", annotated.to_csv(index=False))

    drawn = _drawing_settings(options)
    same_drawing = isinstance(placement, _Placement) and placement.saved.description.get("drawing") == drawn
    if same_drawing:
        montages = _update_montages(run, labelling, clusters, members, options.montage_frames, placement.old)
    else:
        montages = _write_montages(run, labelling, clusters, members, options.montage_frames)
    with_distance = annotated.assign(distance=annotated.frame_key.map(by_key.distance))
    table = _summarise(with_distance, names, run, labelling, options.montage_frames)

    keyframes, changed_videos = _keyframes(run, members, vectors, options)
    strips = _write_keyframe_strips(run, frames, keyframes, changed_videos)

    summary = ClusterSummary(
        labelling=labelling, clusters=clusters, names=names, table=table, assignments=assignments, keyframes=keyframes,
        model_id=model_id, vectors=options.vectors, montages=montages, keyframe_strips=strips, notes=notes,
        fit=fit, placed=placed, fit_reason=reason, seconds=time.perf_counter() - started,
    )  # fmt: skip
    log.info("cluster: %d frames into %d clusters (%s, %d noise) in %.1f s; names from %s",
             len(assignments), clusters.n_clusters, clusters.description, clusters.noise, summary.seconds,
             summary.counts["name_source"])  # fmt: skip
    return summary


def _names(cfg: PipelineConfig, run: RunPaths, clusters: ClusterLabels, members: pd.DataFrame, model_id: str,
           encoder: Any, notes: list[str]) -> pd.DataFrame:  # fmt: skip
    """Name a new clustering: from captions, else CLIP's vocabulary, else colours."""
    captions = _load_captions(run)
    caption_texts = None if captions is None else [captions.get(key) for key in members.frame_key]
    uncaptioned = caption_texts is None or any(
        not any(caption_texts[i] for i in clusters.members(label)) for label in range(clusters.n_clusters)
    )
    vectors_kind = cfg.cluster.vectors
    naming_encoder = _naming_encoder(cfg, encoder, model_id, notes) if uncaptioned and vectors_kind == "image" else None
    return name_clusters(clusters, captions=caption_texts, encoder=naming_encoder, thumbnails=_Thumbnails(run, members))


# --- placing new frames into the saved fit ----------------------------------------------------------


@dataclass
class _Placement:
    """New frames placed into a saved fit: the whole labelling, its names, and the earlier frames' stored rows."""

    clusters: ClusterLabels
    names: pd.DataFrame
    previous: pd.DataFrame  # this labelling's stored rows, by frame_key
    old: np.ndarray  # (n,) bool: members labelled before this run
    saved: SavedFit
    new_count: int
    reason: str


def _placement(run: RunPaths, labelling: str, options: Any, model_id: str, members: pd.DataFrame, vectors: np.ndarray,
               force: bool) -> _Placement | str:  # fmt: skip
    """The placement of new frames into the saved fit when the rule allows it, else why it fits anew."""
    total = len(members)
    fraction = options.refit_new_fraction
    if force:
        return f"refitted on {total} frames: forced (--force cluster)"
    if options.method != "kmeans" or options.reduce == "umap":
        return (f"refitted on {total} frames: {options.method} with reduce={options.reduce} is fitted anew on every run "
                "(new frames are placed only into k-means on PCA or unreduced vectors)")  # fmt: skip
    try:
        saved = load_fit(run, labelling)
    except FitUnreadable as error:
        log.warning("cluster: the saved clustering is unusable, fitting anew: %s", error)
        return f"refitted on {total} frames: the saved clustering is unusable ({error})"
    if saved is None:
        return f"fitted on {total} frames (no saved clustering {labelling})"
    if fraction <= 0:
        return f"refitted on {total} frames: cluster.refit_new_fraction is 0"
    if saved.parameters != fit_parameters(options):
        changed = sorted(k for k in set(saved.parameters) | set(fit_parameters(options))
                         if saved.parameters.get(k) != fit_parameters(options).get(k))  # fmt: skip
        return f"refitted on {total} frames: cluster settings changed since the fit ({', '.join(changed)})"
    if saved.model_id != model_id:
        return f"refitted on {total} frames: the vectors come from {model_id}, the saved clustering from {saved.model_id}"
    current = pd.Index(members.frame_key.astype(str))
    gone = ~pd.Index(saved.keys).isin(current)
    if gone.any():
        return f"refitted on {total} frames: {int(gone.sum())} frame(s) of the saved clustering are gone"
    old = current.isin(saved.keys)
    new_count = int((~old).sum())
    share = (saved.placed_frames + new_count) / total
    if share > fraction:
        return (f"refitted on {total} frames: {share:.0%} of frames new since the fit on {saved.fit_frames} "
                f"(above cluster.refit_new_fraction {fraction:g})")  # fmt: skip
    order = pd.Series(np.arange(total), index=current)
    if vectors_digest(saved.keys, vectors[order.loc[saved.keys].to_numpy()]) != saved.digest:
        return f"refitted on {total} frames: the vectors of frames in the saved clustering changed"
    previous = _stored_rows(run, labelling)
    if previous is None or not pd.Index(saved.keys).isin(previous.index).all():
        return f"refitted on {total} frames: {run.relative(run.table('clusters'))} lacks frames of the saved clustering"
    labels = np.full(total, NOISE, dtype=np.int64)
    distances = np.full(total, np.nan, dtype=np.float32)
    labels[old] = previous.label.reindex(current[old]).to_numpy(dtype=np.int64)
    distances[old] = previous.distance.reindex(current[old]).to_numpy(dtype=np.float32)
    if new_count:
        try:
            labels[~old], distances[~old] = place_vectors(vectors[~old], saved.fitted, saved.centroids)
        except ClusterError as error:
            return f"refitted on {total} frames: the new frames cannot be placed ({error})"
    n_clusters = len(saved.centroids)
    names = previous.drop_duplicates("label")[["label", "name", "name_source"]]
    if labels.min() < 0 or labels.max() >= n_clusters or set(names.label) != set(range(n_clusters)):
        return f"refitted on {total} frames: the stored cluster labels do not match the saved clustering"
    names = names.sort_values("label").reset_index(drop=True).astype({"label": "int64"})
    description = saved.description
    clusters = ClusterLabels(
        labels=labels, centroids=saved.centroids, distances=distances, method="kmeans",
        params=dict(description.get("params") or {}), reduction=str(description.get("reduction", "none")),
        silhouette={int(k): float(v) for k, v in (description.get("silhouette") or {}).items()}, fitted=saved.fitted,
    )  # fmt: skip
    reason = (f"placed {new_count} new frame{'s' * (new_count != 1)} into the clustering fitted on {saved.fit_frames} frames"
              + (f" ({saved.placed_frames} placed earlier)" if saved.placed_frames else ""))  # fmt: skip
    return _Placement(clusters, names, previous, np.asarray(old), saved, new_count, reason)


def _drawing_settings(options: Any) -> dict[str, int]:
    """The settings montages and keyframes were made with: when they change, all are made anew."""
    return {"montage_frames": options.montage_frames, "keyframes_per_video": options.keyframes_per_video,
            "seed": options.seed}  # fmt: skip


def _stored_rows(run: RunPaths, labelling: str) -> pd.DataFrame | None:
    """This labelling's rows of tables/clusters.parquet, by frame_key (None if unreadable)."""
    path = run.table("clusters")
    try:
        table = read_table(path)
        rows = table[table.labelling == labelling]
        return rows.drop_duplicates("frame_key", keep="last").set_index("frame_key")[["label", "name", "name_source", "distance"]]
    except (OSError, ValueError, KeyError, AttributeError) as error:
        log.warning("cluster: %s cannot be read (%s); fitting anew", run.relative(path), error)
        return None


def _save_state(run: RunPaths, labelling: str, options: Any, model_id: str, members: pd.DataFrame, vectors: np.ndarray,
                clusters: ClusterLabels, placement: _Placement | str) -> None:  # fmt: skip
    """Keep the fit (or the fit plus the frames placed into it) for the next run; a clustering that cannot
    place frames leaves no saved fit behind."""
    keys = members.frame_key.astype(str).to_numpy()
    if isinstance(placement, _Placement):
        saved = placement.saved
        fit_keys = set(saved.keys.tolist())
        ordered = np.concatenate([saved.keys, keys[~np.isin(keys, list(fit_keys))]])
        fit_frames = saved.fit_frames
    elif clusters.fitted is not None:
        ordered, fit_frames = keys, len(keys)
    else:
        fit_path(run, labelling).unlink(missing_ok=True)
        return
    order = pd.Series(np.arange(len(keys)), index=keys)
    digest = vectors_digest(ordered, vectors[order.loc[ordered].to_numpy()])
    description = {"params": clusters.params, "reduction": clusters.reduction, "drawing": _drawing_settings(options),
                   "silhouette": {str(k): v for k, v in clusters.silhouette.items()}}  # fmt: skip
    save_fit(run, SavedFit(labelling=labelling, model_id=model_id, parameters=fit_parameters(options), fitted=clusters.fitted,
                           centroids=clusters.centroids, keys=ordered, fit_frames=fit_frames, digest=digest,
                           description=description))  # fmt: skip


def _keyframes(run: RunPaths, members: pd.DataFrame, vectors: np.ndarray, options: Any
               ) -> tuple[pd.DataFrame, set[str] | None]:  # fmt: skip
    """The keyframes table (written), and the videos whose keyframes were computed (None = every video).

    Keyframes depend on a video's own frames and vectors only: a video whose frames, vectors and keyframe
    settings are those of the stored table (as ``cache/cluster/keyframes.json`` records them) keeps its rows,
    placed or refitted."""
    settings = {"per_video": options.keyframes_per_video, "seed": options.seed}
    positions = pd.Series(np.arange(len(members)), index=members.index)
    frame_sets = {str(v): vectors_digest(group.frame_key.astype(str).to_numpy(), vectors[positions.loc[group.index].to_numpy()])
                  for v, group in members.groupby("video_id")}  # fmt: skip
    record_path = run.cache / "cluster" / "keyframes.json"
    table, changed = None, None
    if run.table("keyframes").exists() and record_path.exists():
        try:
            record = json.loads(record_path.read_text())
            stored = read_table(run.table("keyframes"))
            known = record.get("videos", {}) if record.get("settings") == settings else {}
            kept = {v for v, digest in frame_sets.items() if known.get(v) == digest and v in set(stored.video_id.astype(str))}
        except (OSError, ValueError, AttributeError, KeyError) as error:
            log.warning("cluster: stored keyframes cannot be reused (%s); computing every video's", error)
        else:
            fresh_rows = members[~members.video_id.astype(str).isin(kept)]
            fresh = video_keyframes(fresh_rows, vectors[members.index.get_indexer(fresh_rows.index)],
                                    per_video=options.keyframes_per_video, seed=options.seed)  # fmt: skip
            table = pd.concat([stored[stored.video_id.astype(str).isin(kept)], fresh], ignore_index=True)
            table = table.sort_values(["video_id", "timestamp"], kind="stable").reset_index(drop=True)
            table = table.astype({"rank": "int64", "represents": "int64"})
            changed = set(fresh_rows.video_id.astype(str))
    if table is None:
        table = video_keyframes(members, vectors, per_video=options.keyframes_per_video, seed=options.seed)
    write_table(table, run.table("keyframes"))
    atomic_write_text(record_path, json.dumps({"settings": settings, "videos": frame_sets}))
    return table, changed


def _write_assignments(run: RunPaths, labelling: str, assignments: pd.DataFrame) -> None:
    path = run.table("clusters")
    parts = []
    if path.exists():
        previous = read_table(path)
        if "labelling" in previous.columns:
            parts.append(previous[previous.labelling != labelling].reindex(columns=CLUSTER_COLUMNS))
    parts.append(assignments[CLUSTER_COLUMNS])  # never empty: cluster_run stops earlier when nothing has a vector
    combined = pd.concat([part for part in parts if len(part)], ignore_index=True)
    write_table(combined.astype({"label": "int64", "distance": "float64"})[CLUSTER_COLUMNS], path)


def _write_montages(
    run: RunPaths, labelling: str, clusters: ClusterLabels, members: pd.DataFrame, montage_frames: int
) -> dict[int, Path]:
    folder = run.root / "plots" / "clusters" / labelling
    if folder.exists():
        for old in [*folder.glob("cluster_*.jpg"), *folder.glob("cluster_*.png")]:  # no stale ones (nor older PNGs)
            old.unlink()
    montages = {}
    for label in range(clusters.n_clusters):
        nearest = clusters.members(label)[:montage_frames]
        path = _montage_path(run, labelling, label)
        # JPEG: montages of photos weigh a quarter of a PNG (they travel with the reports and the share zip)
        save_image(cluster_montage(members.iloc[nearest], run), path, "JPEG", quality=MONTAGE_JPEG_QUALITY)
        montages[label] = path
    return montages


def _update_montages(run: RunPaths, labelling: str, clusters: ClusterLabels, members: pd.DataFrame, montage_frames: int,
                     old: np.ndarray) -> dict[int, Path]:  # fmt: skip
    """Redraw only the montages whose frames changed: a placed frame among a cluster's nearest, or a missing file."""
    montages = {}
    keys = members.frame_key.to_numpy()
    earlier = ClusterLabels(labels=np.where(old, clusters.labels, _UNCLUSTERED), centroids=clusters.centroids,
                            distances=clusters.distances, method=clusters.method)  # fmt: skip
    for label in range(clusters.n_clusters):
        nearest = clusters.members(label)[:montage_frames]
        path = _montage_path(run, labelling, label)
        if not path.exists() or list(keys[nearest]) != list(keys[earlier.members(label)[:montage_frames]]):
            save_image(cluster_montage(members.iloc[nearest], run), path, "JPEG", quality=MONTAGE_JPEG_QUALITY)
        montages[label] = path
    return montages


def _write_keyframe_strips(run: RunPaths, frames: pd.DataFrame, keyframes: pd.DataFrame,
                           changed: set[str] | None = None) -> dict[str, Path]:  # fmt: skip
    """A strip per video; with `changed`, the other videos' strips are kept when they exist."""
    folder = run.root / "plots" / "keyframes"
    row_of = pd.Series(np.arange(len(frames)), index=frames.frame_key.to_numpy())
    strips: dict[str, Path] = {}
    for video_id, group in keyframes.groupby("video_id", sort=True):
        rows = frames.iloc[row_of.loc[group.frame_key.to_numpy()].to_numpy()]  # keeps the frames-table row numbers
        video_name = str(rows.video_name.iloc[0]) if "video_name" in rows.columns else str(video_id)
        path = folder / f"{_safe_name(Path(video_name).stem)}-{video_id}.png"
        if changed is not None and str(video_id) not in changed and path.exists():
            strips[str(video_id)] = path
            continue
        labels = [f"#{rank} {format_time(t)}" for rank, t in zip(group["rank"], group.timestamp)]
        image = cluster_montage(rows, run, columns=min(len(rows), KEYFRAME_COLUMNS_PER_ROW), tile_width=KEYFRAME_TILE_WIDTH,
                                labels=labels)  # fmt: skip
        save_image(image, path, "PNG")
        strips[str(video_id)] = path
    written = set(strips.values())
    for old in folder.glob("*.png") if folder.exists() else []:
        if old not in written:  # strips of videos that left the corpus
            old.unlink()
    return strips


# --- reading stored labellings --------------------------------------------------------------------


def labellings(run: RunPaths | Path | str) -> pd.DataFrame:
    """The labellings stored in `tables/clusters.parquet`, the latest (current) last.

    Returns:
        DataFrame with labelling, method, params, frames, clusters, noise, name_source.

    Example:
        >>> labellings("outputs/demo")  # doctest: +SKIP
    """
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    table = read_table(run.table("clusters"))
    rows = []
    for labelling, group in table.groupby("labelling", sort=False):
        rows.append({
            "labelling": labelling, "method": group.method.iloc[0], "params": group.params.iloc[0], "frames": len(group),
            "clusters": int(group.label[group.label != NOISE].nunique()), "noise": int((group.label == NOISE).sum()),
            "name_source": ", ".join(sorted(set(group.name_source) - {NOISE_NAME})),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["labelling", "method", "params", "frames", "clusters", "noise", "name_source"])


def cluster_table(run: RunPaths | Path | str, labelling: str | None = None, *, montage_frames: int = 16) -> pd.DataFrame:
    """One row per cluster of a stored labelling (default: the latest), from the run's tables.

    Returns:
        DataFrame with label, name, name_source, size, share (of clustered frames), videos (how
        many), video_names, time_ranges (readable text, e.g. "one.mp4 00:00.00–00:01.50, 00:03.00"),
        representatives (frame keys nearest the centroid) and montage (PNG path relative to the
        run, "" when not drawn).

    Example:
        >>> cluster_table("outputs/demo")[["label", "name", "size", "time_ranges"]]  # doctest: +SKIP
    """
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    table = read_table(run.table("clusters"))
    if table.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    labelling = labelling or str(table.labelling.iloc[-1])
    chosen = table[table.labelling == labelling]
    if chosen.empty:
        known = ", ".join(table.labelling.unique())
        raise ClusterError(f"labelling {labelling!r} is not in this run; stored labellings: {known}")
    by_key = chosen.set_index("frame_key")
    frames = read_table(run.table("frames"))
    annotated = frames.assign(
        cluster=frames.frame_key.map(by_key.label).astype("Int64"), distance=frames.frame_key.map(by_key.distance)
    )
    names = chosen.drop_duplicates("label")[["label", "name", "name_source"]]
    names = names.assign(_noise=names.label == NOISE).sort_values(["_noise", "label"]).drop(columns="_noise")
    return _summarise(annotated, names, run, labelling, montage_frames)
