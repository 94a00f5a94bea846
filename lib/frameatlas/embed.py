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

import logging
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

from .config import PipelineConfig
from .corpus import SkippedInput
from .index import VectorIndex, frame_metadata, open_index, shared_id
from .models import ImageEncoder, ModelRecord, image_encoder
from .plots import Tile, image_grid
from .progress import progress_bar
from .store import RunPaths, UnsafePath, load_vectors, read_table, read_thumbnail, write_table
from .summary import StageSummary

log = logging.getLogger(__name__)

__all__ = [
    "TEXT_SOURCES", "EmbedSummary", "UnreadableThumbnail", "add_to_shared", "cached_frame_vectors", "embed_captions",
    "embed_frames", "embed_text_channel", "embed_text_channels", "encode_image_files", "load_vectors",
    "nearest_neighbour_grid", "sync_index",
]  # fmt: skip

EMBEDDING_COLUMNS = ["frame_key", "video_id", "model_id", "vector"]


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


def _shard_path(run: RunPaths, model_id: str, video_id: str, sampling: str) -> Path:
    return run.root / "vectors" / model_id / video_id / f"{sampling}.parquet"


def cached_frame_vectors(
    cfg: PipelineConfig, run: RunPaths, encoder: ImageEncoder, frames: pd.DataFrame, *, force: bool = False,
    summary: EmbedSummary | None = None, skipped: list[SkippedInput] | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Vectors of `frames` by `encoder`, read from the per-(model, video, sampling) shards, embedding
    (and saving) only what is missing. Returns the embeddings table and an (n, dim) array, in shard order.

    When `skipped` is a list, a video whose thumbnails cannot be read (any error) is left out and
    appended there with the reason; otherwise the error propagates. The caption stage calls this
    too, so 03_embed then finds its vectors already made.
    """
    summary = summary or EmbedSummary(model=encoder.record)
    model_id = encoder.record.model_id
    tables: list[pd.DataFrame] = []
    todo: list[tuple[Path, pd.DataFrame]] = []
    for (video_id, sampling), group in frames.groupby(["video_id", "sampling"], sort=True):
        shard = _shard_path(run, model_id, video_id, sampling)
        if not force and shard.exists():
            cached = pd.read_parquet(shard)
            if set(cached.frame_key) >= set(group.frame_key):
                tables.append(cached[cached.frame_key.isin(set(group.frame_key))])
                summary.cached += len(group)
                continue
        todo.append((shard, group))

    total = sum(len(group) for _, group in todo)
    bar = progress_bar(total=total, desc=f"embed {model_id}"[:40], unit="frame") if total else None
    started = time.perf_counter()
    try:
        for shard, group in todo:
            try:
                paths = run.thumbnails(group)
                vectors = encode_image_files(
                    encoder, paths, batch_size=cfg.models.image.batch_size, loader_threads=cfg.embed.loader_threads,
                    prefetch_batches=cfg.embed.prefetch_batches, on_batch=bar.update if bar else None,
                )  # fmt: skip
            except (UnreadableThumbnail, UnsafePath) as error:
                if skipped is None:
                    raise
                video = str(group.video_path.iloc[0]) if "video_path" in group else str(group.video_id.iloc[0])
                log.warning("embed: skipping %s: %s", video, error)
                skipped.append(SkippedInput(video, str(error), stage="embed"))
                continue
            table = pd.DataFrame(
                {"frame_key": group.frame_key.to_numpy(), "video_id": group.video_id.to_numpy(), "model_id": model_id,
                 "vector": list(vectors)}
            )  # fmt: skip
            write_table(table, shard)  # finished videos survive an interrupted run
            tables.append(table)
            summary.embedded += len(table)
    finally:
        if bar:
            bar.close()
    summary.embed_seconds += time.perf_counter() - started
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=EMBEDDING_COLUMNS)
    vectors = np.stack(table.vector.to_numpy()).astype(np.float32) if len(table) else np.zeros((0, encoder.dim), np.float32)
    return table[EMBEDDING_COLUMNS], vectors


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


def add_to_shared(
    index: VectorIndex, collection, frames: pd.DataFrame, embeddings: pd.DataFrame, *, force: bool = False
) -> int:
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
TEXT_SOURCES = {"caption": ("captions", "prompt"), "ocr": ("ocr", "text")}


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
    """Every text channel of `TEXT_SOURCES`; merged counts and the sentence encoder's record (None if unused)."""
    counts: dict[str, Any] = {}
    used = None
    for channel in TEXT_SOURCES:
        channel_counts, record = embed_text_channel(cfg, run, channel, force=force)
        counts.update(channel_counts)
        used = used or record
    return counts, used


def nearest_neighbour_grid(
    cfg: PipelineConfig, run: RunPaths | Path | str, model_id: str, *, samples: int = 4, k: int = 5, tile: int = 140, seed: int = 0
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


def quality_checks(
    cfg: PipelineConfig, run: RunPaths | Path | str, encoder: ImageEncoder
) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The report's checks on `embed.quality_samples` frames: approximate vs exact search
    (recall@10 and latency of Chroma HNSW, FAISS flat and LSH), and retrieval of frames
    corrupted by impulse noise (ImageNet-C severities). (None, None) when turned off."""
    from .evaluation import IMPULSE_SEVERITIES, compare_indexes, noise_robustness

    run = run if isinstance(run, RunPaths) else RunPaths(run)
    samples = cfg.embed.quality_samples
    table, vectors = load_vectors(run, encoder.record.model_id)
    if not samples or len(table) < 10:
        return None, None
    run.cache.mkdir(parents=True, exist_ok=True)
    index_quality = compare_indexes((table, vectors), min(samples, len(table)), workdir=run.cache)
    thumbnails = read_table(run.table("frames")).set_index("frame_key").thumbnail
    paths = {key: run.resolve(thumbnails[key], what=f"tables/frames.parquet frame {key}, column thumbnail")
             for key in table.frame_key}  # fmt: skip
    robustness = noise_robustness(
        encoder, paths, vectors, list(table.frame_key), severities=(0.0, *IMPULSE_SEVERITIES), sample=samples
    )
    return index_quality, robustness
