"""The embed stage: a vector per sampled frame, in Parquet and in the vector index.

Thumbnails are decoded and preprocessed in a loader thread while the model runs on the
previous batch. Vectors are cached per (model, video, sampling): a new video or a new model
embeds only what is missing, and `tables/embeddings.parquet` plus the run's index collection are
brought in line with the current frames table. A video whose thumbnails cannot be read (any
error) is skipped with its reason in the summary, and the stage goes on with the others. With
`index.shared_collection` set, the image vectors are also added to that collection shared with
other runs (never deleted from there).

Example:
    >>> from frameatlas.config import load_config
    >>> from frameatlas.embed import embed_frames
    >>> cfg = load_config("pipeline.yaml")  # doctest: +SKIP
    >>> summary = embed_frames(cfg, cfg.run_dir)  # doctest: +SKIP
    >>> summary.counts["frames_per_second"]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from .config import ModelsConfig, PipelineConfig
from .corpus import SkippedInput
from .executor import Failed, open_executor, worker_threads
from .files import atomic_write_json
from .index import VectorIndex, frame_metadata, open_index, shared_id
from .models import ImageEncoder, ModelRecord, image_encoder
from .plots import Tile, image_grid
from .progress import progress_bar
from .store import RunPaths, UnsafePath, load_vectors, read_table, read_thumbnail, write_table
from .summary import StageSummary

log = logging.getLogger(__name__)

__all__ = [
    "TEXT_SOURCES", "EmbedSummary", "FrameEmbedder", "UnreadableThumbnail", "add_to_shared", "cached_frame_vectors",
    "embed_captions", "embed_frames", "extract_and_embed", "frame_input", "embed_text_channel", "embed_text_channels", "encode_image_files", "load_vectors",
    "nearest_neighbour_grid", "noise_sample", "noisy_query_vectors", "prepare_noise_queries", "quality_checks", "sync_index",
    "vectors_fingerprint",
]  # fmt: skip

EMBEDDING_COLUMNS = ["frame_key", "video_id", "model_id", "vector"]
QUALITY_VERSION = 2  # bump when the checks change what they measure: cached results are then redone


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class UnreadableThumbnail(Exception):
    """A thumbnail that could not be read or preprocessed, whatever the error; names the file."""

    def __init__(self, path: Path, error: BaseException):
        reason = str(error) if str(path) in str(error) else f"{path}: thumbnail cannot be read ({type(error).__name__}: {error})"
        super().__init__(reason if "--force extract" in reason else f"{reason}; re-run the extract stage with --force extract")
        self.path = path


def _load_batch(encoder: ImageEncoder, paths: Sequence[Path]) -> list:
    prepared = []
    for path in paths:
        try:
            prepared.append(encoder.preprocess(read_thumbnail(path)))
        except Exception as error:  # an odd file can fail anywhere in PIL or the transforms
            raise UnreadableThumbnail(path, error) from error
    return prepared


def encode_image_files(
    encoder: ImageEncoder,
    paths: Sequence[Path],
    *,
    batch_size: int = 32,
    loader_threads: int = 1,
    prefetch_batches: int = 2,
    on_batch=None,
) -> np.ndarray:
    """Vectors for image files, loading the next batches in threads while the model runs.

    Returns an (n, dim) float32 array of unit vectors, in the order of `paths`. A file that
    cannot be read or preprocessed raises `UnreadableThumbnail` naming it.
    """
    if not paths:
        return np.zeros((0, encoder.dim), np.float32)
    outputs: list[np.ndarray] = []
    batches = _batches(list(paths), batch_size)
    with ThreadPoolExecutor(max_workers=loader_threads, thread_name_prefix="frameatlas-loader") as pool:
        pending = deque(pool.submit(_load_batch, encoder, b) for b in islice(batches, prefetch_batches))
        while pending:
            prepared = pending.popleft().result()
            upcoming = next(batches, None)
            if upcoming is not None:
                pending.append(pool.submit(_load_batch, encoder, upcoming))
            outputs.append(encoder.encode_preprocessed(prepared))
            if on_batch:
                on_batch(len(prepared))
    return np.concatenate(outputs).astype(np.float32, copy=False)


@dataclass(kw_only=True)
class EmbedSummary(StageSummary):
    """What the embed stage did; `counts` goes to the run manifest.

    The text channels (`embed_text_channels`) fold in through `text_counts` and `text_model`.
    """

    model: ModelRecord
    frames: int = 0
    embedded: int = 0
    cached: int = 0
    indexed: int = 0
    removed_from_index: int = 0
    shared_added: int = 0
    embed_seconds: float = 0.0
    index_location: str = ""
    collection: str = ""
    shared_collection: str = ""
    text_counts: dict[str, Any] = field(default_factory=dict)
    text_model: ModelRecord | None = None

    @property
    def counts(self) -> dict[str, Any]:
        rate = self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0
        counts: dict[str, Any] = {
            "frames": self.frames,
            "frames_embedded": self.embedded,
            "frames_cached": self.cached,
            "index_upserted": self.indexed,
            "index_removed": self.removed_from_index,
            "embed_seconds": round(self.embed_seconds, 2),
            "frames_per_second": round(rate, 2),
            "model": self.model.model_id,
        }
        if self.collection:
            counts["index_collection"] = self.collection
        if self.shared_collection:
            counts.update(shared_collection=self.shared_collection, shared_added=self.shared_added)
        if self.skipped:
            counts["videos_skipped"] = len(self.skipped)
        return {**counts, **self.text_counts}

    @property
    def model_records(self) -> list[dict[str, Any]]:
        return [self.model.as_dict()] + ([self.text_model.as_dict()] if self.text_model else [])


def _shard_path(run: RunPaths, model_id: str, video_id: str, sampling: str, model_input: str | None = None) -> Path:
    """Where a video's vectors are cached: per model, video, sampling, and the model's input
    (thumbnails: no suffix, as before full frames were used; full frames: `.<input key>`)."""
    name = f"{sampling}.{model_input}.parquet" if model_input else f"{sampling}.parquet"
    return run.root / "vectors" / model_id / video_id / name


def frame_input(encoder: ImageEncoder) -> str | None:
    """The encoder's key for input made from full decoded frames, or None (it sees thumbnails)."""
    key = getattr(encoder, "input_key", None)
    return key if isinstance(key, str) and callable(getattr(encoder, "input_size", None)) else None


class FrameEmbedder:
    """The embed pass fed one decoded frame at a time (a `frames.SampleSink`).

    The caller's thread (the decoder) preprocesses each image and puts it on a bounded queue;
    one worker thread runs the model on batches and writes each video's vector shard when the
    video is done, so decoding and inference overlap and memory holds at most `queue_batches`
    batches of model input. Batches never span two videos, so a video's vectors are the same
    whichever pass made them. With `strict`, a model error is raised by `close`; otherwise it is
    logged once and the frames that follow are not embedded (the embed stage does them later).
    """

    def __init__(
        self, encoder: ImageEncoder, run: RunPaths, *, batch_size: int = 32, queue_batches: int = 2,
        strict: bool = False, on_batch=None, part: str | None = None,
    ):  # fmt: skip
        self.encoder, self.run, self.batch_size, self.strict, self.on_batch = encoder, run, batch_size, strict, on_batch
        # a part of a video (a time range a Ray worker extracted): its vectors go to `vector_part` of the
        # video's shard, which the driver joins once every part is there (`frames._join_ranges`)
        self.part = part
        self.written: list[Path] = []
        self.model_input = frame_input(encoder)
        if self.model_input is None:
            raise ValueError(f"{encoder.record.model_id} does not take full frames (no input_size)")
        self.tables: list[pd.DataFrame] = []
        self.embedded = 0
        self.model_seconds = 0.0
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, batch_size * queue_batches))
        self._thread = threading.Thread(target=self._work, name="frameatlas-embed", daemon=True)
        self._thread.start()

    # --- the decoder's side (frames.SampleSink)

    def input_size(self, width: int, height: int) -> tuple[int, int] | None:
        return None if self.error is not None else self.encoder.input_size(width, height)  # type: ignore[attr-defined]

    def add(self, video_id: str, frame_key: str, image: Image.Image) -> None:
        if self.error is not None:
            return
        try:
            prepared = self.encoder.preprocess(image)
        except Exception as error:  # noqa: BLE001 - reported by close() or in the log
            self._failed(error)
            return
        self._put(("frame", video_id, (frame_key, prepared)))

    def video_done(self, video_id: str, frames: pd.DataFrame) -> None:
        self._put(("done", video_id, frames[["frame_key", "video_id", "sampling"]].copy()))

    def video_failed(self, video_id: str) -> None:
        self._put(("failed", video_id, None))

    def close(self) -> FrameEmbedder:
        """Wait until every frame given is embedded and written; raise a model error if `strict`."""
        self._put(("stop", "", None), always=True)
        self._thread.join()
        if self.error is not None and self.strict:
            raise self.error
        return self

    def _put(self, item: tuple, *, always: bool = False) -> None:
        # after an error only the stop signal still goes in; a dead worker never leaves us blocked
        while (always or self.error is None) and self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _failed(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            if not self.strict:
                log.warning("embedding while extracting stopped (%s: %s); the embed stage will embed those frames",
                            type(error).__name__, error)  # fmt: skip

    # --- the worker

    def _work(self) -> None:
        batch: list[tuple[str, Any]] = []
        vectors: dict[str, dict[str, np.ndarray]] = {}
        current = ""
        try:
            while True:
                kind, video_id, payload = self._queue.get()
                if kind == "frame":
                    if video_id != current:
                        self._encode(current, batch, vectors)
                        batch, current = [], video_id
                    batch.append(payload)
                    if len(batch) >= self.batch_size:
                        self._encode(current, batch, vectors)
                        batch = []
                elif kind == "done":
                    if video_id == current:
                        self._encode(current, batch, vectors)
                        batch = []
                    self._write(payload, vectors.pop(video_id, {}))
                elif kind == "failed":
                    if video_id == current:
                        batch = []
                    vectors.pop(video_id, None)
                else:
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the decoder's side
            self._failed(error)

    def _encode(self, video_id: str, batch: list[tuple[str, Any]], vectors: dict[str, dict[str, np.ndarray]]) -> None:
        if not batch:
            return
        started = time.perf_counter()
        encoded = self.encoder.encode_preprocessed([prepared for _, prepared in batch])
        self.model_seconds += time.perf_counter() - started
        vectors.setdefault(video_id, {}).update(zip((key for key, _ in batch), encoded))
        if self.on_batch:
            self.on_batch(len(batch))

    def _write(self, frames: pd.DataFrame, found: dict[str, np.ndarray]) -> None:
        if not len(frames) or any(key not in found for key in frames.frame_key):
            return  # not every frame came: nothing is cached, the embed stage does the video
        model_id = self.encoder.record.model_id
        table = pd.DataFrame(
            {"frame_key": frames.frame_key.to_numpy(), "video_id": frames.video_id.to_numpy(), "model_id": model_id,
             "vector": [found[key] for key in frames.frame_key]}
        )  # fmt: skip
        video_id, sampling = str(frames.video_id.iloc[0]), str(frames.sampling.iloc[0])
        path = _shard_path(self.run, model_id, video_id, sampling, self.model_input)
        self.written.append(write_table(table, vector_part(path, self.part) if self.part else path))
        self.tables.append(table)
        self.embedded += len(table)


def vector_part(shard: Path, part: str) -> Path:
    """Where the vectors of one part of a video go, beside the video's vector shard `shard`."""
    return shard.with_name(f"{shard.name}.part-{part}")


def _frame_source(cfg: PipelineConfig, run: RunPaths, group: pd.DataFrame, hashes) -> Path | None:
    """The source video of `group` when it is still there unchanged (its content hash is its
    video_id), else None: its frames are then embedded from their thumbnails. A path outside the
    corpus folder raises `UnsafePath`."""
    from .corpus import content_hash, video_in_corpus

    if "video_path" not in group or not len(group):
        return None
    row = group.index[0]
    path = video_in_corpus(
        group.video_path.iloc[0], cfg.corpus.videos, what=f"tables/frames.parquet row {row}, column video_path"
    )
    if not path.is_file():
        log.warning("embed: %s is gone; embedding its frames from their thumbnails", path)
        return None
    if content_hash(path, hashes) != group.video_id.iloc[0]:
        log.warning("embed: %s changed since extraction; embedding its frames from their thumbnails", path)
        return None
    return path


def _decode_into(embedder: FrameEmbedder, source: Path, group: pd.DataFrame, decode_threads: int) -> None:
    """Decode `source` again at the frames of `group` and hand them to `embedder`."""
    from .frames import iter_frames_at, model_input, probe_video

    video_id = str(group.video_id.iloc[0])
    info = probe_video(source)
    size = embedder.input_size(info.width, info.height)
    key_of = dict(zip(group.timestamp.astype(float), group.frame_key))
    try:
        if size is not None:
            for timestamp, frame in iter_frames_at(source, list(key_of), decode_threads=decode_threads):
                if embedder.error is not None:
                    break  # the model failed: close() raises it
                embedder.add(video_id, key_of[timestamp], model_input(frame, size, info.rotation))
    except BaseException:
        embedder.video_failed(video_id)
        raise
    embedder.video_done(video_id, group)


def cached_frame_vectors(
    cfg: PipelineConfig,
    run: RunPaths,
    encoder: ImageEncoder,
    frames: pd.DataFrame,
    *,
    force: bool = False,
    summary: EmbedSummary | None = None,
    skipped: list[SkippedInput] | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Vectors of `frames` by `encoder`, read from the per-(model, video, sampling, input) shards,
    embedding (and saving) only what is missing. Returns the embeddings table and an (n, dim) array.

    When the encoder takes full frames (`frame_input`), a missing video is decoded again at its
    sampled frames (decoding overlapped with the model, see `FrameEmbedder`); the extract stage
    usually made them already, from the same decoded pictures. A video whose source is gone or
    changed is embedded from its thumbnails instead (cached apart). When `skipped` is a list, a
    video that cannot be read (any error) is left out and appended there with the reason;
    otherwise the error propagates. The caption stage calls this too.
    """
    from .files import HashCache

    summary = summary or EmbedSummary(model=encoder.record)
    model_id = encoder.record.model_id
    wants_frames = frame_input(encoder)
    hashes = HashCache(run.cache / "content_hashes.json") if wants_frames else None
    tables: list[pd.DataFrame] = []
    todo: list[tuple[Path, pd.DataFrame, Path | None]] = []

    def skip(group: pd.DataFrame, error: BaseException) -> None:
        if skipped is None:
            raise error
        video = str(group.video_path.iloc[0]) if "video_path" in group else str(group.video_id.iloc[0])
        log.warning("embed: skipping %s: %s", video, error)
        skipped.append(SkippedInput(video, str(error), stage="embed"))

    for (video_id, sampling), group in frames.groupby(["video_id", "sampling"], sort=True):
        try:
            run.thumbnails(group)  # a crafted path is refused whether or not the model reads it
            source = _frame_source(cfg, run, group, hashes) if wants_frames else None
        except UnsafePath as error:
            skip(group, error)
            continue
        shard = _shard_path(run, model_id, video_id, sampling, wants_frames if source else None)
        if not force and shard.exists():
            cached = pd.read_parquet(shard)
            if set(cached.frame_key) >= set(group.frame_key):
                tables.append(cached[cached.frame_key.isin(set(group.frame_key))])
                summary.cached += len(group)
                continue
        todo.append((shard, group, source))
    if hashes is not None:
        hashes.save()
    if todo and cfg.run.executor == "ray":
        with open_executor(cfg.run, run.root) as executor:
            _embed_on_workers(executor, cfg, run, encoder, todo, tables, summary, skip)
        todo = []

    total = sum(len(group) for _, group, _ in todo)
    bar = progress_bar(total=total, desc=f"embed {model_id}"[:40], unit="frame") if total else None
    started = time.perf_counter()
    batch_size = cfg.models.image.batch_size
    embedder = None
    if any(source is not None for _, _, source in todo):
        embedder = FrameEmbedder(encoder, run, batch_size=batch_size, queue_batches=cfg.embed.prefetch_batches,
                                 strict=True, on_batch=bar.update if bar else None)  # fmt: skip
    try:
        for shard, group, source in todo:
            if source is not None:
                try:
                    _decode_into(embedder, source, group, cfg.extract.decode_threads)
                except Exception as error:  # noqa: BLE001 - one unreadable video must not stop the others
                    skip(group, error)
                continue
            try:
                paths = run.thumbnails(group)
                vectors = encode_image_files(
                    encoder, paths, batch_size=batch_size, loader_threads=cfg.embed.loader_threads,
                    prefetch_batches=cfg.embed.prefetch_batches, on_batch=bar.update if bar else None,
                )  # fmt: skip
            except (UnreadableThumbnail, UnsafePath) as error:
                skip(group, error)
                continue
            table = pd.DataFrame(
                {"frame_key": group.frame_key.to_numpy(), "video_id": group.video_id.to_numpy(), "model_id": model_id,
                 "vector": list(vectors)}
            )  # fmt: skip
            write_table(table, shard)  # finished videos survive an interrupted run
            tables.append(table)
            summary.embedded += len(table)
    finally:
        if embedder is not None:
            embedder.close()  # waits for the last frames; raises a model error
            tables.extend(embedder.tables)
            summary.embedded += embedder.embedded
        if bar:
            bar.close()
    summary.embed_seconds += time.perf_counter() - started
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=EMBEDDING_COLUMNS)
    vectors = np.stack(table.vector.to_numpy()).astype(np.float32) if len(table) else np.zeros((0, encoder.dim), np.float32)
    return table[EMBEDDING_COLUMNS], vectors


@dataclass(frozen=True)
class WorkerImageModel:
    """The image model as a Ray worker loads it, once (`executor.RayExecutor.map`'s `setup`): the
    config's model with torch's threads set to the worker's CPUs. Refuses a model that is not the
    one the driver loaded (another model id: a node with other weights)."""

    models: ModelsConfig
    model_id: str | None = None  # None: whatever loads (embedding while extracting only costs time if it does not)

    def __call__(self, threads: int) -> ImageEncoder:
        encoder = image_encoder(self.models.model_copy(update={"threads": threads}))
        if self.model_id is not None and encoder.record.model_id != self.model_id:
            raise RuntimeError(f"a Ray worker loaded the image model {encoder.record.model_id}, the driver "
                               f"{self.model_id}: every node needs the same models.* weights (a shared model cache)")  # fmt: skip
        return encoder


@dataclass(frozen=True)
class _EmbedUnit:
    """One video for a Ray worker (`_embed_on_worker`): its frames, the vector shard to write, the source to decode."""

    run_root: str
    shard: Path
    group: pd.DataFrame
    source: Path | None
    batch_size: int
    queue_batches: int
    loader_threads: int
    decode_threads: int


def _embed_on_worker(encoder: ImageEncoder, unit: _EmbedUnit) -> int | str:
    """Embed one video on a Ray worker into its vector shard; how many frames, or why the video is skipped
    (what the local loop skips it for). A model error propagates: the executor tries again, then skips."""
    run = RunPaths(unit.run_root)
    group = unit.group
    if unit.source is not None:
        embedder = FrameEmbedder(encoder, run, batch_size=unit.batch_size, queue_batches=unit.queue_batches, strict=True)
        try:
            _decode_into(embedder, unit.source, group, unit.decode_threads or worker_threads() or 1)
        except Exception as error:  # noqa: BLE001 - as the local loop: this video is skipped, with this reason
            try:
                embedder.close()
            except Exception:  # noqa: BLE001 - the decode error is the reason given
                pass
            return str(error)
        embedder.close()  # raises a model error
        return embedder.embedded if embedder.tables else f"{unit.source}: not every sampled frame was decoded again"
    try:
        vectors = encode_image_files(
            encoder, run.thumbnails(group), batch_size=unit.batch_size, loader_threads=unit.loader_threads,
            prefetch_batches=unit.queue_batches,
        )  # fmt: skip
    except (UnreadableThumbnail, UnsafePath) as error:
        return str(error)
    table = pd.DataFrame(
        {"frame_key": group.frame_key.to_numpy(), "video_id": group.video_id.to_numpy(), "model_id": encoder.record.model_id,
         "vector": list(vectors)}
    )  # fmt: skip
    write_table(table, unit.shard)
    return len(table)


def _embed_on_workers(executor, cfg: PipelineConfig, run: RunPaths, encoder: ImageEncoder, todo: list, tables: list,
                      summary: EmbedSummary, skip) -> None:  # fmt: skip
    """`cached_frame_vectors`' missing videos embedded by Ray workers, each into its shard; the shards are read
    back here into `tables` (vectors never travel through Ray), and videos that could not be embedded go to `skip`."""
    model_id = encoder.record.model_id
    columns = [c for c in ("frame_key", "video_id", "video_path", "sampling", "timestamp", "thumbnail") if c in todo[0][1]]
    units = [_EmbedUnit(str(run.root), shard, group[columns], source, cfg.models.image.batch_size, cfg.embed.prefetch_batches,
                        cfg.embed.loader_threads, cfg.extract.decode_threads) for shard, group, source in todo]  # fmt: skip
    bar = progress_bar(total=sum(len(group) for _, group, _ in todo), desc=f"embed {model_id}"[:40], unit="frame")
    started = time.perf_counter()
    try:
        outcomes = executor.map(_embed_on_worker, units, setup=WorkerImageModel(cfg.models, model_id),
                                on_done=lambda i, result: bar.update(len(units[i].group)))  # fmt: skip
    finally:
        bar.close()
    summary.embed_seconds += time.perf_counter() - started
    for (shard, group, _), outcome in zip(todo, outcomes):
        if isinstance(outcome, (Failed, str)):
            skip(group, RuntimeError(outcome.reason if isinstance(outcome, Failed) else outcome))
            continue
        table = pd.read_parquet(shard)
        tables.append(table[table.frame_key.isin(set(group.frame_key))])
        summary.embedded += len(group)


def extract_and_embed(cfg: PipelineConfig, run: RunPaths | Path | str, *, force: bool = False):
    """The extract stage (`frames.extract_corpus`), handing each decoded frame to the embed pass
    as well when the embed stage is enabled and the image model takes full frames: one decode,
    two outputs (the thumbnail JPEG for the reports, the model's input scaled from the full
    picture), with the model running in a thread while the next frames decode. The vectors land
    in the embed stage's cache, where 03_embed (and 02_caption) find them.

    Anything that goes wrong on the embedding side only costs time: the embed stage embeds what
    is missing. Returns the `ExtractSummary`, whose counts also say how many frames were embedded.
    """
    from .frames import extract_corpus

    run = run if isinstance(run, RunPaths) else RunPaths(run)
    if cfg.run.executor == "ray":  # each Ray worker loads the model once and embeds the videos it extracts
        worker_sink = WorkerFrameEmbedder(WorkerImageModel(cfg.models), str(run.root), cfg.models.image.batch_size,
                                          cfg.embed.prefetch_batches) if cfg.embed.enabled and cfg.embed.during_extract else None  # fmt: skip
        return extract_corpus(cfg, run, force=force, worker_sink=worker_sink)
    embedder = None
    if cfg.embed.enabled and cfg.embed.during_extract:
        try:
            encoder = image_encoder(cfg.models)
        except Exception as error:  # noqa: BLE001 - the embed stage reports a model that cannot load
            log.warning("extract: not embedding while decoding: the image model cannot be loaded (%s)", error)
        else:
            if frame_input(encoder):
                embedder = FrameEmbedder(encoder, run, batch_size=cfg.models.image.batch_size,
                                         queue_batches=cfg.embed.prefetch_batches)  # fmt: skip
    try:
        summary = extract_corpus(cfg, run, force=force, sink=embedder)
    finally:
        if embedder is not None:
            embedder.close()
    if embedder is not None:
        summary.embedded = {"frames_embedded": embedder.embedded, "embed_model": embedder.encoder.record.model_id,
                            "embed_model_seconds": round(embedder.model_seconds, 2)}  # fmt: skip
        if embedder.error is None and getattr(embedder.encoder, "loaded", True):  # the model is here: no load for this
            try:
                summary.embedded["noise_queries_frames"] = prepare_noise_queries(cfg, run, embedder.encoder)
            except Exception as error:  # noqa: BLE001 - the embed stage computes them instead
                log.warning("extract: the noise check's queries were not prepared (%s); the embed stage makes them", error)
    return summary


@dataclass(frozen=True)
class WorkerFrameEmbedder:
    """Embedding while extracting on a Ray worker (`frames.extract_corpus`'s `worker_sink`): called once per
    worker, it loads the image model there; the state it returns gives a `FrameEmbedder` per video
    (`new_sink`) and its counts once the video's vectors are written (`close_sink`). A model that cannot
    be loaded, or takes no full frames, only means no embedding there (its `error` says why)."""

    model: WorkerImageModel
    run_root: str
    batch_size: int
    queue_batches: int

    def __call__(self, threads: int) -> _WorkerEmbedding:
        return _WorkerEmbedding(self, threads)


class _WorkerEmbedding:
    def __init__(self, recipe: WorkerFrameEmbedder, threads: int):
        self.recipe, self.encoder, self.error = recipe, None, None
        try:
            encoder = recipe.model(threads)
            if callable(getattr(encoder, "load", None)):  # now, while the driver prepares the units (a lazy model)
                encoder.load()
        except Exception as error:  # noqa: BLE001 - the embed stage reports a model that cannot load
            self.error = f"the image model cannot be loaded ({error})"
        else:
            self.encoder = encoder if frame_input(encoder) else None

    def new_sink(self, part: str | None = None) -> FrameEmbedder | None:
        """A sink for one video, or for one `part` of it (a time range; see `FrameEmbedder`)."""
        if self.encoder is None:
            return None
        return FrameEmbedder(self.encoder, RunPaths(self.recipe.run_root), batch_size=self.recipe.batch_size,
                             queue_batches=self.recipe.queue_batches, part=part)  # fmt: skip

    def close_sink(self, sink: FrameEmbedder) -> dict[str, Any]:
        """The sink's counts; `vector_files`: the files it wrote (a part's, for the driver to join)."""
        sink.close()
        return {"frames_embedded": sink.embedded, "embed_model": self.encoder.record.model_id,
                "embed_model_seconds": sink.model_seconds, "vector_files": [str(path) for path in sink.written]}  # fmt: skip


def embed_frames(
    cfg: PipelineConfig, run: RunPaths | Path | str, *, force: bool = False, encoder: ImageEncoder | None = None
) -> EmbedSummary:
    """Run the embed stage over the run's frames table; see the module docstring."""
    started = time.perf_counter()
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    frames = read_table(run.table("frames"))
    encoder = encoder or image_encoder(cfg.models)
    model_id = encoder.record.model_id
    summary = EmbedSummary(model=encoder.record, frames=len(frames))
    embeddings, _ = cached_frame_vectors(cfg, run, encoder, frames, force=force, summary=summary, skipped=summary.skipped)
    order = {key: i for i, key in enumerate(frames.frame_key)}
    embeddings = embeddings.sort_values("frame_key", key=lambda keys: keys.map(order)).reset_index(drop=True)
    write_table(embeddings[EMBEDDING_COLUMNS], run.table("embeddings"))

    # the stage runs under the run's lock, so it may give the run its identity (run.json)
    index = open_index(run, cfg.index.url, cfg.index.collection_prefix, writer=True)
    summary.index_location = index.location
    collection = index.collection(model_id, dim=encoder.dim)
    summary.collection = collection.name
    summary.indexed, summary.removed_from_index = sync_index(index, collection, frames, embeddings, force=force)
    if cfg.index.shared_collection:
        shared = index.shared_collection(cfg.index.shared_collection, model_id, dim=encoder.dim)
        summary.shared_collection = shared.name
        summary.shared_added = add_to_shared(index, shared, frames, embeddings, force=force)
    summary.seconds = time.perf_counter() - started
    log.info(
        "embed: %d frames with %s (%d new at %.1f frames/s, %d cached, %d video(s) skipped); index %s: %d upserted, %d removed",
        summary.frames, model_id, summary.embedded, summary.counts["frames_per_second"], summary.cached,
        len(summary.skipped), summary.collection, summary.indexed, summary.removed_from_index,
    )  # fmt: skip
    return summary


def add_to_shared(index: VectorIndex, collection, frames: pd.DataFrame, embeddings: pd.DataFrame, *, force: bool = False) -> int:
    """Add this run's frames of `embeddings` to a collection shared with other runs; returns how many.

    Ids there are `<run id>/<frame key>` and the metadata carries `run_id` and `run_name`. Only
    adds: nothing is ever deleted from a shared collection, not even this run's removed frames.
    """
    scope = index.scope
    if scope is None:
        raise ValueError("a shared collection needs a run-scoped index (open_index)")
    present = index.ids(collection, where={"run_id": scope.run_id})
    ids = [shared_id(scope.run_id, key) for key in embeddings.frame_key]
    missing = [i for i, id_ in enumerate(ids) if force or id_ not in present]
    if not missing:
        return 0
    rows = embeddings.iloc[missing]
    metadatas = [
        {**meta, "frame_key": key, "run_id": scope.run_id, "run_name": scope.name, "model_id": model}
        for meta, key, model in zip(
            frame_metadata(frames.set_index("frame_key").loc[rows.frame_key].reset_index()), rows.frame_key, rows.model_id
        )
    ]
    return index.upsert(collection, [ids[i] for i in missing], np.stack(rows.vector.to_numpy()), metadatas)


def sync_index(
    index: VectorIndex, collection, frames: pd.DataFrame, embeddings: pd.DataFrame, *, force: bool = False
) -> tuple[int, int]:
    """Make `collection`, one of this run's own, hold exactly the frames of `embeddings`; returns
    (upserted, removed). Deletes only there (`VectorIndex.delete` refuses any other collection)."""
    present = index.ids(collection)
    wanted = set(embeddings.frame_key)
    missing = embeddings if force else embeddings[~embeddings.frame_key.isin(present)]
    upserted = 0
    if len(missing):
        rows = frames.set_index("frame_key").loc[missing.frame_key].reset_index()
        upserted = index.upsert(collection, list(missing.frame_key), np.stack(missing.vector.to_numpy()), frame_metadata(rows))
    stale = sorted(present - wanted)
    removed = index.delete(collection, stale) if stale else 0
    return upserted, removed


# Where each text channel's texts come from: (table written by 02_caption, its text column).
TEXT_SOURCES = {"caption": ("captions", "prompt"), "ocr": ("ocr", "text"), "speech": ("speech_frames", "text")}


def embed_text_channel(
    cfg: PipelineConfig, run: RunPaths | Path | str, channel: str, *, force: bool = False
) -> tuple[dict[str, Any], ModelRecord | None]:
    """One text channel's texts (caption prompts, on-screen text; see `TEXT_SOURCES`) through the sentence
    encoder into `<channel>_embeddings` and the index collection `<prefix>-<channel>-<text model>`.
    Returns counts for the manifest (keys start with the channel) and the sentence encoder's record
    (None when there was nothing to embed).

    Without texts (stage or option off, or no model could write any) the channel is removed, so search
    and clustering never use stale vectors. Frames with empty text get no vector.
    """
    from .models import text_encoder
    from .search import write_text_channel

    run = run if isinstance(run, RunPaths) else RunPaths(run)
    source, column = TEXT_SOURCES[channel]
    path = run.table(source)
    texts = read_table(path) if path.exists() else pd.DataFrame(columns=["frame_key", column])
    texts = texts[texts[column].fillna("").astype(str).str.strip() != ""]
    vectors_path = run.table(f"{channel}_embeddings")
    if texts.empty:
        vectors_path.unlink(missing_ok=True)
        return {f"{channel}_vectors": 0}, None
    encoder = text_encoder(cfg.models)
    started = time.perf_counter()
    write_text_channel(run, channel, list(texts.frame_key), list(texts[column]), encoder)
    table = read_table(vectors_path)
    index = open_index(run, cfg.index.url, cfg.index.collection_prefix, writer=True)
    collection = index.collection(f"{channel}-{encoder.record.model_id}", dim=encoder.dim)
    frames = read_table(run.table("frames"))
    upserted, removed = sync_index(index, collection, frames, table[table.frame_key.isin(set(frames.frame_key))], force=force)
    counts = {f"{channel}_vectors": len(table), f"{channel}_text_model": encoder.record.model_id,
              f"{channel}_index_upserted": upserted, f"{channel}_index_removed": removed,
              f"{channel}_embed_seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
    return counts, encoder.record


def embed_captions(cfg: PipelineConfig, run: RunPaths | Path | str, *, force: bool = False):
    """The caption prompts of 02_caption into the caption channel (see `embed_text_channel`)."""
    return embed_text_channel(cfg, run, "caption", force=force)


def embed_text_channels(
    cfg: PipelineConfig, run: RunPaths | Path | str, *, force: bool = False
) -> tuple[dict[str, Any], ModelRecord | None]:
    """Every text channel of `TEXT_SOURCES`, and each utterance for the speech channel (`speech.embed_segments`);
    merged counts and the sentence encoder's record (None if unused)."""
    from .speech import embed_segments

    counts: dict[str, Any] = {}
    used = None
    for channel in TEXT_SOURCES:
        channel_counts, record = embed_text_channel(cfg, run, channel, force=force)
        counts.update(channel_counts)
        used = used or record
    counts.update(embed_segments(cfg, run, force=force))
    return counts, used


def nearest_neighbour_grid(
    cfg: PipelineConfig,
    run: RunPaths | Path | str,
    model_id: str,
    *,
    samples: int = 4,
    k: int = 5,
    tile: int = 140,
    seed: int = 0,
) -> tuple[Image.Image, pd.DataFrame]:
    """A sanity grid: a few random frames (left column) with their k nearest frames from the index.

    Returns the image and the table behind it (query, rank, frame_key, score, video, timestamp).
    """
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    table, vectors = load_vectors(run, model_id)
    frames = read_table(run.table("frames")).set_index("frame_key")
    if not len(table):
        return Image.new("RGB", (tile, tile), "white"), pd.DataFrame()
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(table), size=min(samples, len(table)), replace=False)
    index = open_index(run, cfg.index.url, cfg.index.collection_prefix)
    collection = index.collection(model_id, create=False)
    results = index.query(collection, vectors[picks], k=min(k + 1, len(table)))
    rows = []
    for pick, hits in zip(picks, results):
        for rank, hit in enumerate(hits.itertuples()):
            rows.append({"query": table.frame_key[pick], "rank": rank, "frame_key": hit.frame_key, "score": hit.score})
    grid_table = pd.DataFrame(rows).join(frames[["video_name", "timestamp", "thumbnail"]], on="frame_key")
    tiles, tile_rows = [], []
    for row_number, (_, group) in enumerate(grid_table.groupby("query", sort=False)):
        for hit in group.itertuples():
            label = f"{hit.video_name[:10]} {hit.timestamp:.0f}s" + ("" if hit.rank == 0 else f" {hit.score:.2f}")
            what = f"tables/frames.parquet frame {hit.frame_key}, column thumbnail"
            tiles.append(Tile(run.resolve(hit.thumbnail, what=what), label, highlight=hit.rank == 0))
            tile_rows.append(row_number)
    grid = image_grid(tiles, rows=tile_rows, tile_width=tile)
    return grid, grid_table.drop(columns=["thumbnail"])


@dataclass
class QualityChecks:
    """The embed report's checks on one set of vectors (see `quality_checks`).

    `index`: recall@10 and latency of the run's index (and, with `embed.quality: full`, of
    other indexes) against exact search; `noise`: retrieval under impulse noise. Either is None
    when that check is off. `cached` says the result was read back instead of computed.
    """

    index: pd.DataFrame | None = None
    noise: pd.DataFrame | None = None
    fingerprint: str = ""
    cached: bool = False
    seconds: float = 0.0
    note: str = ""

    def __iter__(self):  # `index_quality, robustness = quality_checks(...)` keeps working
        return iter((self.index, self.noise))


def vectors_fingerprint(model_id: str, frame_keys: Sequence[str], vectors: np.ndarray) -> str:
    """SHA-256 of a set of vectors: the model, the frame keys in order and the vector bytes."""
    digest = hashlib.sha256(model_id.encode())
    digest.update("\n".join(frame_keys).encode())
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _frame_table(df: pd.DataFrame | None) -> dict | None:
    if df is None:
        return None
    return {
        "records": json.loads(df.to_json(orient="records")),
        "dtypes": {column: str(dtype) for column, dtype in df.dtypes.items()},
        "attrs": dict(df.attrs),
    }


def _table_frame(data: dict | None) -> pd.DataFrame | None:
    if data is None:
        return None
    dtypes = data["dtypes"]
    df = pd.DataFrame(data["records"], columns=list(dtypes)).astype(dtypes)  # JSON's null back to NaN
    df.attrs.update(data.get("attrs") or {})
    return df


def quality_checks(
    cfg: PipelineConfig, run: RunPaths | Path | str, encoder: ImageEncoder, *, force: bool = False
) -> QualityChecks:
    """The report's checks on the run's vectors, computed once per set of vectors and cached.

    * index: the run's own index (Chroma HNSW, approximate) against exact numpy search, queried
      with `embed.quality_samples` of the run's frames (recall@10, latency). Nothing is built.
      With `embed.quality: full`, also FAISS flat and LSH and a freshly built HNSW (slow).
    * noise: `embed.noise_samples` frames (`quality_samples` with `full`) corrupted with impulse
      noise at the ImageNet-C severities, each searched exactly against the run's vectors.

    The result is kept in `cache/quality/`, keyed by the vectors' fingerprint (model, frame keys,
    vector bytes) and the settings: a re-run with the same vectors reads it back and computes
    nothing. `force` computes again.
    """
    from . import evaluation

    run = run if isinstance(run, RunPaths) else RunPaths(run)
    options = cfg.embed
    model_id = encoder.record.model_id
    table, vectors = load_vectors(run, model_id)
    if options.quality == "off" or not options.quality_samples or len(table) < 10:
        why = (
            "embed.quality is off"
            if options.quality == "off"
            else ("embed.quality_samples is 0" if not options.quality_samples else "the run has fewer than 10 frames")
        )
        return QualityChecks(note=f"skipped: {why}")
    noise_frames = options.quality_samples if options.quality == "full" else options.noise_samples
    settings = {"quality": options.quality, "queries": min(options.quality_samples, len(table)), "noise": noise_frames,
                "severities": [0.0, *evaluation.IMPULSE_SEVERITIES], "index": cfg.index.url or "embedded", "k": 10,
                "version": QUALITY_VERSION}  # fmt: skip
    fingerprint = vectors_fingerprint(model_id, list(table.frame_key), vectors)
    key = hashlib.sha256(json.dumps([fingerprint, settings], sort_keys=True).encode()).hexdigest()[:20]
    cache_file = run.cache / "quality" / f"{model_id}-{key}.json"
    if not force and cache_file.exists():
        try:
            data = json.loads(cache_file.read_text())
            return QualityChecks(_table_frame(data["index"]), _table_frame(data["noise"]), fingerprint, cached=True,
                                 seconds=float(data.get("seconds", 0.0)))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("%s: unreadable (%s); computing the quality checks again", cache_file, error)

    started = time.perf_counter()
    index = open_index(run, cfg.index.url, cfg.index.collection_prefix)
    collection = index.collection(model_id, create=False)
    row_of = {frame_key: row for row, frame_key in enumerate(table.frame_key)}

    def search_run_index(queries: np.ndarray, k: int) -> np.ndarray:
        hits = index.query(collection, queries, k=k)
        return np.array([[row_of.get(key, -1) for key in found.frame_key] + [-1] * (k - len(found)) for found in hits])

    # Chroma's index is HNSW, an approximate one: the comparison has something to say
    methods: list = [evaluation.SearchMethod("run index (chroma-hnsw)", search_run_index,
                                             notes=f"the run's own collection {collection.name}, as search uses it")]  # fmt: skip
    if options.quality == "full":
        run.cache.mkdir(parents=True, exist_ok=True)
        methods += ["faiss-flat", "faiss-lsh", "faiss-lsh-rerank", "chroma-hnsw"]
    index_quality = evaluation.compare_indexes(
        vectors, settings["queries"], k=10, methods=methods, workdir=run.cache, batched=options.quality == "full"
    )
    robustness = None
    if noise_frames:
        keys = noise_sample(list(table.frame_key), noise_frames)
        noisy = noisy_query_vectors(cfg, run, encoder, keys, settings["severities"])
        robustness = evaluation.recall_under_noise(
            vectors, [row_of[key] for key in keys], {s: np.stack([noisy[(key, s)] for key in keys]) for s in settings["severities"]}
        )  # fmt: skip
        robustness.attrs.update({"model_id": model_id, "corpus": len(vectors), "sample": "smallest sha256(frame_key)"})
    seconds = time.perf_counter() - started
    atomic_write_json(cache_file, {"fingerprint": fingerprint, "settings": settings, "seconds": round(seconds, 2),
                                   "index": _frame_table(index_quality), "noise": _frame_table(robustness)})  # fmt: skip
    return QualityChecks(index_quality, robustness, fingerprint, cached=False, seconds=seconds)


def noise_sample(frame_keys: Sequence[str], count: int) -> list[str]:
    """The frames the noise check corrupts: the `count` whose key has the smallest SHA-256.

    The choice does not depend on the order of the frames nor on the other frames but through
    the cut, so adding videos only ever swaps some of their frames in: noisy vectors computed
    before stay valid, and the extract stage computes the new ones while its model is loaded
    (`prepare_noise_queries`), so the embed stage's check needs no model load of its own.

    Example:
        >>> noise_sample(["b:1", "a:1", "c:1"], 2) == noise_sample(["c:1", "b:1", "a:1"], 2)
        True
    """
    return sorted(frame_keys, key=lambda key: hashlib.sha256(key.encode()).hexdigest())[:count]


def _noise_store(run: RunPaths, encoder: ImageEncoder) -> Path:
    model_input = frame_input(encoder) or "thumbnail"
    return run.cache / "quality" / f"noise-{encoder.record.model_id}-{model_input}-v{QUALITY_VERSION}.parquet"


def _noisy(image: Image.Image, severity: float, frame_key: str) -> Image.Image:
    """`image` with impulse noise, seeded by the frame and the severity (the same wherever it is made)."""
    from .evaluation import salt_and_pepper

    seed = int.from_bytes(hashlib.sha256(f"{frame_key}|{severity!r}".encode()).digest()[:8], "little")
    return salt_and_pepper(image, severity, np.random.default_rng(seed))


def noisy_query_vectors(
    cfg: PipelineConfig, run: RunPaths, encoder: ImageEncoder, frame_keys: Sequence[str], severities: Sequence[float]
) -> dict[tuple[str, float], np.ndarray]:
    """The encoder's vectors of `frame_keys`' model inputs under impulse noise at each severity, by
    (frame key, severity): read from `cache/quality/noise-<model>-<input>-v<N>.parquet`, the missing
    ones computed (the model loads only then) and added there."""
    path = _noise_store(run, encoder)
    known: dict[tuple[str, float], np.ndarray] = {}
    if path.exists():
        try:
            stored = read_table(path)
            known = {
                (key, float(s)): np.asarray(v, np.float32) for key, s, v in zip(stored.frame_key, stored.severity, stored.vector)
            }
        except Exception as error:  # noqa: BLE001 - a damaged cache is only recomputed
            log.warning("%s: unreadable (%s); computing the noisy queries again", path, error)
    missing = [key for key in dict.fromkeys(frame_keys) if any((key, float(s)) not in known for s in severities)]
    if missing:
        images = model_input_images(cfg, run, encoder, pd.DataFrame({"frame_key": missing}))
        jobs = [(key, float(s)) for key in missing for s in severities]
        noisy = [encoder.preprocess(_noisy(images[key], s, key)) for key, s in jobs]
        batch = cfg.models.image.batch_size
        vectors = np.concatenate([encoder.encode_preprocessed(noisy[i : i + batch]) for i in range(0, len(noisy), batch)])
        known.update(zip(jobs, vectors))
        write_table(pd.DataFrame({"frame_key": [key for key, _ in known], "severity": [s for _, s in known],
                                  "vector": list(known.values())}), path)  # fmt: skip
        log.info("quality: %d noisy queries of %d frame(s) encoded with %s", len(jobs), len(missing), encoder.record.model_id)
    return known


def prepare_noise_queries(cfg: PipelineConfig, run: RunPaths, encoder: ImageEncoder) -> int:
    """While the extract stage has the image model loaded: the noisy queries the embed stage's
    quick check will need (`noise_sample` of the run's frames), so that check loads no model.
    Returns how many frames were corrupted and encoded now."""
    from .evaluation import IMPULSE_SEVERITIES

    options = cfg.embed
    count = options.quality_samples if options.quality == "full" else options.noise_samples
    if options.quality == "off" or not options.quality_samples or not count or not run.table("frames").exists():
        return 0
    frames = read_table(run.table("frames"))
    keys = noise_sample(list(frames.frame_key), count)
    path = _noise_store(run, encoder)
    before = len(read_table(path)) if path.exists() else 0
    after = len(noisy_query_vectors(cfg, run, encoder, keys, [0.0, *IMPULSE_SEVERITIES]))
    return (after - before) // (len(IMPULSE_SEVERITIES) + 1)


def model_input_images(cfg: PipelineConfig, run: RunPaths, encoder: ImageEncoder, rows: pd.DataFrame) -> dict[str, Image.Image]:
    """The images the encoder saw for some rows of the embeddings table, by frame key: decoded
    again from the source (seeking to each frame) when the encoder takes full frames and the
    source is there unchanged, else the thumbnails (as `cached_frame_vectors` chooses)."""
    from .files import HashCache
    from .frames import iter_frames_at, model_input, probe_video

    frames = read_table(run.table("frames")).set_index("frame_key")
    frames = frames.loc[list(rows.frame_key)].reset_index()
    images: dict[str, Image.Image] = {}
    hashes = HashCache(run.cache / "content_hashes.json")
    for _, group in frames.groupby("video_id", sort=True):
        source = _frame_source(cfg, run, group, hashes) if frame_input(encoder) else None
        if source is not None:
            info = probe_video(source)
            size = encoder.input_size(info.width, info.height)  # type: ignore[attr-defined]
            key_of = dict(zip(group.timestamp.astype(float), group.frame_key))
            for timestamp, frame in iter_frames_at(source, list(key_of), seek=True):
                images[key_of[timestamp]] = model_input(frame, size, info.rotation)
            continue
        paths = run.thumbnails(group)
        images.update((key, read_thumbnail(path)) for key, path in zip(group.frame_key, paths))
    return {key: images[key] for key in rows.frame_key}
