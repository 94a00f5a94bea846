"""Features per video and per window, pooled from every channel of a run.

Samples are the videos and, with `classify.window_seconds`, their windows `[k w, (k+1) w)` that
hold at least one sampled frame, so a long video gives many samples. Per sample and modality:

* `image`: the mean of its frames' image vectors (CLIP, or the colour/texture fallback);
* `keyframes`: the mean of its keyframes' vectors (the cluster stage's frames nearest each
  per-video centroid); a window without a keyframe takes its video's keyframe nearest in time;
* `caption`, `ocr`, `speech`: the mean sentence vector of the frames that have such text
  (a sample without any is marked absent and its vector is zeros);
* `audio`: log-mel statistics (or YAMNet embeddings) over the window's sound;
* `objects`: the mean count per COCO category of the objects detected on its frames (`objects.py`).

Pooling is one sparse matrix product per modality, so 10k windows of 100k frames take well under
a second (`benchmarks/bench_classify.py`).

Example:
    >>> features = build_features(cfg, "outputs/demo")  # doctest: +SKIP
    >>> features.samples[["video_name", "level", "start", "end"]].head()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from ..config import PipelineConfig
from ..files import UnsafePath, contained_path
from ..progress import progress_bar
from ..store import RunPaths, read_table
from .audio import AudioStats, LogMelDescriptor, YamnetWorkerError, audio_descriptor

log = logging.getLogger(__name__)

__all__ = ["CHANNELS", "TEXT_CHANNELS", "FeatureSet", "build_features", "make_samples", "pool", "sample_matrix"]

TEXT_CHANNELS = ("caption", "ocr", "speech")
CHANNELS = ("image", "keyframes", *TEXT_CHANNELS, "audio", "objects")
SAMPLE_COLUMNS = ["sample_id", "video_id", "video_name", "level", "window", "start", "end", "frames"]


@dataclass
class FeatureSet:
    """Samples (one row per video and per window) and, per modality, their pooled vectors."""

    samples: pd.DataFrame
    blocks: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> (samples, dim) float32
    present: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> (samples,) bool
    models: dict[str, str] = field(default_factory=dict)  # modality -> model id of its vectors
    window_seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # models that ran here (the audio descriptor)

    @property
    def modalities(self) -> list[str]:
        return list(self.blocks)

    def spec(self) -> dict[str, Any]:
        """What the features are made of: a model trained on them fits only features of the same spec."""
        return {
            "window_seconds": self.window_seconds,
            "modalities": {name: {"model": self.models.get(name, ""), "dim": int(block.shape[1])}
                           for name, block in self.blocks.items()},
        }  # fmt: skip

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.spec(), sort_keys=True).encode()).hexdigest()[:16]

    def without(self, modality: str) -> FeatureSet:
        """The same samples without one modality."""
        keep = [m for m in self.blocks if m != modality]
        return FeatureSet(self.samples, {m: self.blocks[m] for m in keep}, {m: self.present[m] for m in keep},
                          {m: self.models[m] for m in keep if m in self.models}, self.window_seconds, list(self.notes),
                          list(self.records))  # fmt: skip

    def subset(self, rows: np.ndarray) -> FeatureSet:
        return FeatureSet(
            self.samples.iloc[rows].reset_index(drop=True), {k: v[rows] for k, v in self.blocks.items()},
            {k: v[rows] for k, v in self.present.items()}, dict(self.models), self.window_seconds, list(self.notes),
            list(self.records),
        )  # fmt: skip


def make_samples(
    videos: pd.DataFrame, frames: pd.DataFrame, window_seconds: float | None
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The samples of a run, and for each frame (row of `frames`) its video sample and window sample (-1: none).

    Example:
        >>> videos = pd.DataFrame({"video_id": ["v"], "video_name": ["v.mp4"], "duration": [5.0]})
        >>> frames = pd.DataFrame({"video_id": ["v"] * 5, "timestamp": [0.0, 1.0, 2.0, 3.0, 4.0]})
        >>> samples, by_video, by_window = make_samples(videos, frames, 2.0)
        >>> samples[["level", "start", "end", "frames"]].values.tolist()
        [['video', 0.0, 5.0, 5], ['window', 0.0, 2.0, 2], ['window', 2.0, 4.0, 2], ['window', 4.0, 5.0, 1]]
        >>> by_window.tolist()
        [1, 1, 2, 2, 3]
    """
    frame_video = frames.video_id.astype(str).to_numpy()
    present = set(frame_video)
    order = [v for v in dict.fromkeys(videos.video_id.astype(str)) if v in present]
    table = videos.assign(video_id=videos.video_id.astype(str)).drop_duplicates("video_id").set_index("video_id")
    code = pd.Categorical(frame_video, categories=order).codes.astype(np.int64)  # video of each frame; -1: not listed
    keep = code >= 0
    stamps = frames.timestamp.to_numpy(float)
    count = len(order)
    # a video ends at its duration, else just after its last frame
    last = np.full(count, -np.inf)
    np.maximum.at(last, code[keep], stamps[keep])
    duration = pd.to_numeric(table.reindex(order).get("duration", pd.Series(np.nan, index=order)), errors="coerce").to_numpy(
        float
    )
    ends = np.where(np.isfinite(duration) & (duration > 0), duration, last + 1e-3)
    frames_per_video = np.bincount(code[keep], minlength=count)
    by_video = np.full(len(frames), -1, np.int64)
    by_window = np.full(len(frames), -1, np.int64)
    if window_seconds:
        window = np.floor(stamps / window_seconds + 1e-9).astype(np.int64)
        span = int(window[keep].max()) + 1 if keep.any() else 1
        keys, inverse, sizes = np.unique(code[keep] * span + window[keep], return_inverse=True, return_counts=True)
        owner, number = keys // span, keys % span  # each window sample's video and window number
    else:
        owner = number = sizes = inverse = np.zeros(0, np.int64)
    windows_per_video = np.bincount(owner, minlength=count)
    # rows: each video, then its windows in time order
    video_rows = np.arange(count) + np.concatenate([[0], np.cumsum(windows_per_video)[:-1]])
    window_rows = np.arange(len(owner)) + owner + 1
    by_video[keep] = video_rows[code[keep]]
    if window_seconds:
        by_window[keep] = window_rows[inverse]
    total = count + len(owner)
    ids = np.asarray(order, dtype=object)
    names = table.reindex(order).video_name.astype(str).to_numpy(object)
    video_of = np.empty(total, np.int64)
    video_of[video_rows], video_of[window_rows] = np.arange(count), owner
    level = np.full(total, "video", dtype=object)
    level[window_rows] = "window"
    numbers = np.full(total, -1, np.int64)
    numbers[window_rows] = number
    starts = np.zeros(total)
    ends_all = ends[video_of].copy()
    counts = frames_per_video[video_of].copy()
    if window_seconds:
        starts[window_rows] = number * window_seconds
        ends_all[window_rows] = np.minimum(
            starts[window_rows] + window_seconds, np.maximum(ends[owner], starts[window_rows] + 1e-3)
        )
        counts[window_rows] = sizes
    sample_ids = ids[video_of].copy()
    sample_ids[window_rows] = [f"{v}:w{w}" for v, w in zip(ids[owner], number)]
    samples = pd.DataFrame({"sample_id": sample_ids, "video_id": ids[video_of], "video_name": names[video_of], "level": level,
                            "window": numbers, "start": starts, "end": ends_all, "frames": counts})  # fmt: skip
    return samples, by_video, by_window


def sample_matrix(n_samples: int, *assignments: np.ndarray) -> sparse.csr_matrix:
    """A (samples, rows) 0/1 matrix: row i belongs to sample assignments[k][i] (negative: to none)."""
    row_ids, col_ids = [], []
    for assigned in assignments:
        keep = assigned >= 0
        row_ids.append(assigned[keep])
        col_ids.append(np.flatnonzero(keep))
    rows, cols = np.concatenate(row_ids), np.concatenate(col_ids)
    n_rows = len(assignments[0]) if assignments else 0
    return sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_samples, n_rows))


def pool(membership: sparse.csr_matrix, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the member rows of `vectors` per sample, and which samples have any member."""
    counts = np.asarray(membership.sum(axis=1)).ravel()
    sums = membership @ np.asarray(vectors, np.float32)
    means = sums / np.maximum(counts, 1)[:, None]
    return np.asarray(means, np.float32), counts > 0


def _vectors_of(table: pd.DataFrame) -> np.ndarray:
    return np.stack(table.vector.to_numpy()).astype(np.float32) if len(table) else np.zeros((0, 0), np.float32)


def _image_vectors(run: RunPaths, image_model: str | None) -> tuple[pd.DataFrame, np.ndarray, str]:
    table = pd.read_parquet(run.table("embeddings"), columns=["frame_key", "model_id", "vector"])
    models = list(table.model_id.unique())
    if not models:
        raise ValueError(f"{run.table('embeddings')}: no image vectors; run the embed stage first")
    model = image_model if image_model in models else models[0]
    table = table[table.model_id == model].reset_index(drop=True)
    return table, _vectors_of(table), model


def _positions(keys: pd.Series, frame_rows: dict[str, int]) -> np.ndarray:
    return keys.map(frame_rows).fillna(-1).astype(np.int64).to_numpy()


def _keyframe_block(run: RunPaths, frames: pd.DataFrame, samples: pd.DataFrame, by_video: np.ndarray, by_window: np.ndarray,
                    frame_vectors: np.ndarray, has_vector: np.ndarray) -> np.ndarray | None:  # fmt: skip
    path = run.table("keyframes")
    if not path.exists():
        return None
    keyframes = read_table(path)
    frame_rows = {key: i for i, key in enumerate(frames.frame_key)}
    rows = _positions(keyframes.frame_key, frame_rows)
    rows = rows[(rows >= 0)]
    rows = rows[has_vector[rows]]
    if not len(rows):
        return None
    membership = sample_matrix(len(samples), by_video[rows], by_window[rows])
    means, present = pool(membership, frame_vectors[rows])
    # a window without a keyframe: its video's keyframe nearest in time
    stamps = frames.timestamp.to_numpy(float)[rows]
    videos = frames.video_id.astype(str).to_numpy()[rows]
    centres = ((samples.start + samples.end) / 2).to_numpy()
    by_video_rows = pd.Series(np.arange(len(rows))).groupby(videos).apply(np.asarray).to_dict()
    for i in np.flatnonzero(~present):
        candidates = by_video_rows.get(samples.video_id.iat[i], ())
        if len(candidates):
            means[i] = frame_vectors[rows[candidates[np.argmin(np.abs(stamps[candidates] - centres[i]))]]]
    return means


def _video_path(cfg: PipelineConfig, run: RunPaths, value: str, row: int) -> Path:
    return contained_path(value, [Path(cfg.corpus.videos), run.root], what=f"tables/videos.parquet row {row}, column video_path")


def _decoded(path: Path):
    """A video's audio as 16 kHz mono blocks (the file is opened when the blocks are first asked for)."""
    from ..speech import AudioDecoder

    with AudioDecoder(path) as decoder:
        yield from decoder.blocks()


def _audio_block(cfg: PipelineConfig, run: RunPaths, videos: pd.DataFrame, samples: pd.DataFrame, descriptor: Any,
                 window_seconds: float | None, features: FeatureSet) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per sample, the audio features of its window (or video), cached per video in the run's cache.

    The videos not cached yet go to the descriptor together (`window_stats_many`), so YAMNet's worker
    process starts once for many videos."""
    from ..speech import NoAudio

    block = np.zeros((len(samples), descriptor.dim), np.float32)
    present = np.zeros(len(samples), bool)
    span = window_seconds or 1e9
    folder = run.cache / "classify" / "audio" / f"{descriptor.model_id}-w{span:g}"
    has_audio = videos.set_index("video_id").get("has_audio")
    wanted = [v for v in dict.fromkeys(samples.video_id)]
    video_ids = videos.video_id.to_numpy()
    sample_videos = samples.video_id.to_numpy()

    def place(video_id: str, stats: AudioStats) -> None:
        for i in np.flatnonzero(sample_videos == video_id):
            level, window = samples.level.iat[i], int(samples.window.iat[i])
            part = stats.whole() if level == "video" else (
                AudioStats(stats.sums[window : window + 1], stats.squares[window : window + 1], stats.counts[window : window + 1])
                if window < len(stats.counts) else None)  # fmt: skip
            if part is not None and part.counts.sum() > 0:
                block[i] = part.features()[0]
                present[i] = True

    bar = progress_bar(total=len(wanted), desc="classify: audio features", unit="video")
    try:
        todo: list[tuple[str, int, Path]] = []
        for video_id in wanted:
            row = int(np.flatnonzero(video_ids == video_id)[0])
            cached = folder / f"{video_id}.npz"
            if has_audio is not None and not bool(has_audio.get(video_id, True)):
                bar.update(1)
            elif cached.exists():
                place(video_id, AudioStats.load(cached))
                bar.update(1)
            else:
                try:
                    todo.append((video_id, row, _video_path(cfg, run, str(videos.video_path.iat[row]), row)))
                except UnsafePath as error:
                    features.notes.append(f"audio of {videos.video_name.iat[row]}: {error}")
                    bar.update(1)
        rows = {video_id: row for video_id, row, _ in todo}
        sources = ((video_id, _decoded(path)) for video_id, _, path in todo)
        for video_id, stats in descriptor.window_stats_many(sources, span):
            bar.update(1)
            if isinstance(stats, NoAudio):
                continue
            if isinstance(stats, Exception):  # an undecodable track: this video has no audio features
                features.notes.append(f"audio of {videos.video_name.iat[rows[video_id]]} could not be decoded ({stats})")
                continue
            stats.save(folder / f"{video_id}.npz")
            place(video_id, stats)
    finally:
        bar.close()
    return block, present


def build_features(
    cfg: PipelineConfig, run: RunPaths | Path | str, *, image_model: str | None = None, channels: list[str] | None = None,
    audio: Any = None,
) -> FeatureSet:  # fmt: skip
    """Every modality's pooled vectors for the run's videos and windows (see the module docstring).

    `image_model`: which model's vectors to pool when the embeddings table holds several (default:
    the first). `channels`: the modalities to build (default `classify.channels`). `audio`: an audio
    descriptor (default: the one `classify.audio` asks for). Channels whose tables are missing
    are left out with a note.
    """
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    options = cfg.classify
    channels = list(channels or options.channels)
    window = options.window_seconds
    videos = read_table(run.table("videos"))
    if "status" in videos:
        videos = videos[videos.status.astype(str) != "skipped"].reset_index(drop=True)
    frames = read_table(run.table("frames"))
    samples, by_video, by_window = make_samples(videos, frames, window)
    features = FeatureSet(samples, window_seconds=window)
    frame_rows = {key: i for i, key in enumerate(frames.frame_key)}

    table, vectors, model = _image_vectors(run, image_model)
    rows = _positions(table.frame_key, frame_rows)
    keep = rows >= 0
    frame_vectors = np.zeros((len(frames), vectors.shape[1]), np.float32)
    frame_vectors[rows[keep]] = vectors[keep]
    has_vector = np.zeros(len(frames), bool)
    has_vector[rows[keep]] = True
    if "image" in channels:
        membership = sample_matrix(len(samples), np.where(has_vector, by_video, -1), np.where(has_vector, by_window, -1))
        features.blocks["image"], features.present["image"] = pool(membership, frame_vectors)
        features.models["image"] = model
    if "keyframes" in channels:
        block = _keyframe_block(run, frames, samples, by_video, by_window, frame_vectors, has_vector)
        if block is None:
            features.notes.append("no keyframes (tables/keyframes.parquet, the cluster stage): the keyframes channel is off")
        else:
            features.blocks["keyframes"], features.present["keyframes"] = block, np.ones(len(samples), bool)
            features.models["keyframes"] = model
    for channel in TEXT_CHANNELS:
        if channel not in channels:
            continue
        path = run.table(f"{channel}_embeddings")
        if not path.exists():
            features.notes.append(f"no {channel} vectors (tables/{channel}_embeddings.parquet): the {channel} channel is off")
            continue
        text = pd.read_parquet(path, columns=["frame_key", "model_id", "vector"])
        if not len(text):
            features.notes.append(f"no frame has {channel} text: the {channel} channel is off")
            continue
        text_model = str(text.model_id.iat[0])
        text = text[text.model_id == text_model]
        rows = _positions(text.frame_key, frame_rows)
        keep = rows >= 0
        membership = sample_matrix(len(samples), np.where(keep, by_video[rows], -1), np.where(keep, by_window[rows], -1))
        features.blocks[channel], features.present[channel] = pool(membership, _vectors_of(text))
        features.models[channel] = text_model
    if "objects" in channels and cfg.objects.enabled:  # off: no channel, and nothing to say
        path = run.table("objects")
        if not path.exists():
            features.notes.append("no detected objects (tables/objects.parquet; objects.enabled and the detector's weights): "
                                  "the objects channel is off")  # fmt: skip
        else:
            from ..objects import count_vectors, detector_categories

            objects = read_table(path)
            model = str(objects.model.iat[0]) if len(objects) else "no-detections"
            counts = count_vectors(objects, frames.frame_key, detector_categories(model))
            membership = sample_matrix(len(samples), by_video, by_window)
            features.blocks["objects"], _ = pool(membership, counts)
            features.present["objects"] = np.ones(len(samples), bool)
            features.models["objects"] = model
    if "audio" in channels:
        note = None
        chosen = audio is None
        if chosen:
            audio, note = audio_descriptor(options.audio, options.yamnet, None, options.yamnet_python)
        try:
            block, present = _audio_block(cfg, run, videos, samples, audio, window, features)
        except YamnetWorkerError as error:
            if not (chosen and options.audio == "auto"):
                raise
            log.warning("%s", error)
            audio, note = LogMelDescriptor(), f"audio features: the weight-free log-mel statistics descriptor ({error})"
            block, present = _audio_block(cfg, run, videos, samples, audio, window, features)
        if note:
            features.notes.append(note)
        if present.any():
            features.blocks["audio"], features.present["audio"] = block, present
            features.models["audio"] = audio.model_id
            features.records.append(audio.record)
        else:
            features.notes.append("no video has sound: the audio channel is off")
    return features
