"""Find frames by text, by an example image, or by an existing frame.

Every channel compares unit vectors by cosine similarity:

* ``visual``: the query's CLIP vector (text or image) against the frames' image vectors;
* ``caption``, ``ocr``: the query text's sentence vector against the text of each frame
  (`tables/<channel>_embeddings.parquet`, written by `write_text_channel`);
* ``speech``: the query's sentence vector against each utterance
  (`tables/speech_segment_embeddings.parquet`, written by `speech.embed_segments`); a frame scores
  as the best utterance it shows (said within `speech.frame_window_seconds` of it, or the frame
  nearest an utterance no frame is that close to). Hits the speech channel scored carry that
  utterance: its words and time (`speech_text`, `speech_start`, `speech_end`, `speech_segment`),
  which render cuts query videos at. Runs embedded before utterances had vectors rank the speech
  said around each frame (`tables/speech_embeddings.parquet`) instead.

With several channels the rankings are fused by reciprocal rank fusion (each channel adds
``1 / (60 + rank)``; the constant 60 is the usual one from Cormack et al., 2009) and every
channel's own score stays in the result. A channel that cannot answer the query (the weight-free
fallback descriptor has no text side, a channel with no vectors yet) is named in
`SearchResult.notes` instead of returning noise.

Selection follows the original notebooks: the `top_k` best frames, and the frames whose score
is at least `threshold`, either absolute or relative to the best score (0.9 = 90% of the max).

Example:
    >>> from frameatlas.search import search
    >>> result = search("outputs/demo", "a rabbit in a meadow", top_k=10)  # doctest: +SKIP
    >>> result.hits[["rank", "score", "video_name", "timestamp"]]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from .config import PipelineConfig, config_from_dict
from .files import UnsafePath, atomic_write_bytes, atomic_write_json, atomic_write_text, contained_path
from .lock import run_lock
from .store import RunPaths, read_table, write_table

log = logging.getLogger(__name__)

__all__ = [
    "EXPORT_MARKER",
    "TEXT_CHANNELS",
    "SearchError",
    "SearchResult",
    "UnsafeHitPath",
    "configured_searches",
    "export_hits",
    "format_hits",
    "gallery",
    "search",
    "write_text_channel",
]

TEXT_CHANNELS = ("caption", "ocr", "speech", "objects")  # objects: "2 person, 1 car" per frame (objects.enabled)
RRF_K = 60
EXPORT_MARKER = ".frameatlas-export.json"  # marks a folder an export wrote, and lists what it wrote
EXPORT_FOLDERS = ("top_k", "above_threshold")
SPEECH_FRAME_FALLBACK = ["frame_key", "text", "speech_start", "speech_end", "segments"]
HIT_COLUMNS = ["rank", "score", "video_name", "timestamp", "thumbnail", "frame_key", "video_id", "in_top_k", "above_threshold"]


class SearchError(ValueError):
    """A search that cannot run; the message says what is missing and how to get it."""


class UnsafeHitPath(SearchError, UnsafePath):
    """A hit's thumbnail path that points outside the run: an export refuses it (both a
    `SearchError` for the CLI and an `UnsafePath` like every refused table path)."""


@dataclass
class SearchResult:
    """Ranked hits plus what the search did (channels used, notes on those it could not use)."""

    hits: pd.DataFrame
    query: str
    channels: list[str]
    notes: list[str] = field(default_factory=list)
    threshold_value: float | None = None

    @property
    def top_k(self) -> pd.DataFrame:
        return self.hits[self.hits.in_top_k]

    @property
    def above_threshold(self) -> pd.DataFrame:
        return self.hits[self.hits.above_threshold]


def _run_config(run: RunPaths) -> PipelineConfig:
    """The config the run's stages ran with (models must match the stored vectors)."""
    if not run.config_file.exists():
        raise SearchError(f"{run.root}: not a frameatlas run (no config.json); run `python run_pipeline.py` first")
    return config_from_dict(json.loads(run.config_file.read_text()), source=str(run.config_file))


def _channel_path(run: RunPaths, channel: str) -> Path:
    return run.table("embeddings") if channel == "visual" else run.table(f"{channel}_embeddings")


def available_channels(run: RunPaths | Path | str) -> list[str]:
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    return [c for c in ("visual", *TEXT_CHANNELS) if _channel_path(run, c).exists()]


_TABLE_CACHE: dict[str, tuple[tuple[int, int], Any]] = {}  # path -> ((mtime_ns, size), loaded value)


def _cached(path: Path, load):
    """`load(path)`, reused while the file is unchanged (same mtime and size): a long-lived process
    (`frameatlas serve`, a notebook) answers repeated queries without re-reading the tables.
    Tables are replaced atomically, so a new file always has a new mtime or size. Callers must not
    modify what they get."""
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _TABLE_CACHE.get(str(path))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    value = load(path)
    _TABLE_CACHE[str(path)] = (stamp, value)
    return value


def _read_channel(path: Path) -> tuple[pd.DataFrame, np.ndarray, str]:
    table = read_table(path)
    if table.empty:
        return table, np.zeros((0, 0), np.float32), ""
    model_ids = table.model_id.unique()
    if len(model_ids) > 1:  # several models embedded: use the latest table's first model
        table = table[table.model_id == model_ids[0]]
    vectors = np.stack(table.vector.to_numpy()).astype(np.float32)
    return table.drop(columns=["vector"]).reset_index(drop=True), vectors, str(model_ids[0])


def _load_channel(run: RunPaths, channel: str) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The channel's table (without vectors), its vectors (n, dim) and model id; cached while the file is unchanged."""
    path = _channel_path(run, channel)
    if not path.exists():
        raise FileNotFoundError(f"{path}: table not found; run the stage that writes it first")
    return _cached(path, _read_channel)


def _frames_table(run: RunPaths) -> pd.DataFrame:
    """tables/frames.parquet, cached while the file is unchanged."""
    path = run.table("frames")
    if not path.exists():
        raise FileNotFoundError(f"{path}: table not found; run the stage that writes it first")
    return _cached(path, read_table)


def _query_image(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image.astype(np.uint8)).convert("RGB")
    path = Path(image)
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except FileNotFoundError:
        raise SearchError(f"{path}: query image not found") from None
    except OSError as error:
        raise SearchError(f"{path}: not a readable image ({error})") from None


def matching_image_encoder(cfg: PipelineConfig, model_id: str, *, need_text: bool = False, encoder=None):
    """The configured image encoder, if it is the one that made the `model_id` vectors (and, when
    `need_text`, has a text side). Returns (encoder, None), or (None, the reason it cannot be used)."""
    from .models import ModelUnavailable, image_encoder

    if encoder is None:
        try:
            encoder = image_encoder(cfg.models)
        except ModelUnavailable as error:
            return None, f"the image model cannot be loaded ({error})"
    if encoder.record.model_id != model_id:
        return None, (f"frames were embedded with {model_id}, but the config now loads "
                      f"{encoder.record.model_id}; re-run the embed stage")  # fmt: skip
    if need_text and not encoder.has_text:
        reason = encoder.record.fallback_reason or "it has no text side"
        return None, f"{model_id} cannot encode text queries ({reason})"
    return encoder, None


def _visual_query(cfg, model_id, text, image) -> tuple[np.ndarray | None, str | None]:
    encoder, reason = matching_image_encoder(cfg, model_id, need_text=image is None)
    if encoder is None:
        return None, f"visual channel off{' for text queries' if image is None else ''}: {reason}"
    if image is not None:
        return encoder.encode_images([_query_image(image)])[0], None
    return encoder.encode_text([text])[0], None


def _text_query(cfg, model_id, text) -> tuple[np.ndarray | None, str | None]:
    from .models import ModelUnavailable, text_encoder

    try:
        encoder = text_encoder(cfg.models)
    except ModelUnavailable as error:
        return None, f"text channels off: {error}"
    if encoder.record.model_id != model_id:
        return None, f"text vectors were made with {model_id}, the config now loads {encoder.record.model_id}"
    return encoder.encode([text])[0], None


def _describe_query(text: str | None, image: Any, frame_key: str | None) -> str:
    if text is not None:
        return text
    if frame_key is not None:
        return f"frame {frame_key}"
    return f"image {image}" if isinstance(image, (str, Path)) else "image"


def _suppress_neighbours(ranked: pd.DataFrame, seconds: float) -> pd.DataFrame:
    """Keep a hit only if no better hit of the same video lies within `seconds` of it."""
    if seconds <= 0 or ranked.empty:
        return ranked
    kept: dict[str, list[float]] = {}
    keep = []
    for video_id, timestamp in zip(ranked.video_id, ranked.timestamp):
        times = kept.setdefault(video_id, [])
        if any(abs(timestamp - t) < seconds for t in times):
            keep.append(False)
        else:
            times.append(timestamp)
            keep.append(True)
    return ranked[keep]


def search(
    run: RunPaths | Path | str,
    text: str | None = None,
    *,
    image: Any = None,
    frame_key: str | None = None,
    top_k: int = 20,
    threshold: float | None = None,
    relative: bool = True,
    videos: list[str] | None = None,
    time_range: tuple[float | None, float | None] | None = None,
    suppress_seconds: float = 0.0,
    channels: list[str] | None = None,
    min_text_score: float | None = None,
) -> SearchResult:
    """Rank the run's frames against a text, an image (path, PIL image or array) or a frame.

    Args:
        run: the run folder (`outputs/<run>`).
        text / image / frame_key: the query; exactly one.
        top_k: how many best frames to mark `in_top_k`.
        threshold: also keep every frame scoring at least this (`above_threshold`); relative to
            the best score when `relative` (0.9 = 90% of the max), else an absolute score.
        videos: only frames of these videos (names like `bbb.mp4` or video ids).
        time_range: only frames with start <= timestamp <= end (either end may be None).
        suppress_seconds: drop hits within this many seconds of a better hit in the same video.
        channels: which channels to use (default: every channel that can answer).
        min_text_score: in the text channels (caption, ocr, speech), frames whose text is less similar
            than this are no hits, so a query no text is about gets no answer from them rather than
            noise; None: the run's `search.min_text_score`, -1: keep every frame.

    Returns:
        A `SearchResult`; its `hits` table is empty (not an error) when nothing matches.
    """
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    if not run.root.is_dir():
        raise SearchError(f"{run.root}: run folder not found")
    given = [q for q in (text, image, frame_key) if q is not None and not (isinstance(q, str) and not q.strip())]
    if len(given) != 1:
        raise SearchError("give exactly one query: a non-empty text, an image, or a frame key")
    if top_k < 1:
        raise SearchError(f"top_k = {top_k}: must be at least 1")
    if threshold is not None and relative and not 0 < threshold <= 1:
        raise SearchError(f"relative threshold = {threshold}: must be in (0, 1], e.g. 0.9 for 90% of the best score")
    cfg = _run_config(run)
    if min_text_score is None:
        min_text_score = cfg.search.min_text_score
    present = available_channels(run)
    if "visual" not in present:
        raise SearchError(f"{run.root}: no frame vectors yet; run the embed stage (python run_pipeline.py --stages embed)")
    wanted = channels or present
    unknown = [c for c in wanted if c not in ("visual", *TEXT_CHANNELS)]
    if unknown:
        raise SearchError(f"unknown channel(s) {', '.join(unknown)}; channels are visual, {', '.join(TEXT_CHANNELS)}")

    frames = _frames_table(run)
    query_label = _describe_query(text, image, frame_key)
    notes: list[str] = []
    scores: dict[str, pd.Series] = {}
    speech_matched = None  # the utterance each frame matched, when the speech channel ranked utterances
    for channel in wanted:
        if channel not in present:
            notes.append(f"{channel} channel off: no {channel} vectors in this run")
            continue
        table, vectors, model_id = _load_channel(run, channel)
        if not len(table):
            notes.append(f"{channel} channel off: its table is empty")
            continue
        if frame_key is not None:
            position = np.flatnonzero(table.frame_key.to_numpy() == frame_key)
            if channel == "visual" and not len(position):
                raise SearchError(f"frame {frame_key!r} is not in this run")
            if not len(position):
                notes.append(f"{channel} channel off: frame {frame_key} has no {channel} vector")
                continue
            query_vector, note = vectors[position[0]], None
        elif channel == "visual":
            query_vector, note = _visual_query(cfg, model_id, text, image)
        elif text is None:
            query_vector, note = None, f"{channel} channel off: image queries use the visual channel only"
        else:
            query_vector, note = _text_query(cfg, model_id, text)
        if note:
            notes.append(note)
        if query_vector is None:
            continue
        utterances = _speech_utterances(run, cfg, model_id) if channel == "speech" else None
        if utterances is not None:  # the speech channel ranks utterances; a frame scores as the best one it shows
            segments, segment_vectors = utterances
            segment_scores = pd.Series(
                segment_vectors @ np.asarray(query_vector, np.float32), index=segments.segment_id.to_numpy()
            )
            if frame_key is None and segment_scores.max() < min_text_score:
                notes.append(f"speech channel: nothing said is similar enough to the query "
                             f"(best {float(segment_scores.max()):.3f}, below search.min_text_score {min_text_score})")  # fmt: skip
                continue
            kept = segment_scores[segment_scores >= min_text_score] if frame_key is None else segment_scores
            speech_matched = _best_utterances(frames, segments, kept, cfg.speech.frame_window_seconds)
            scores[channel] = pd.Series(speech_matched.score.to_numpy(), index=speech_matched.frame_key.to_numpy())
            continue
        channel_scores = pd.Series(vectors @ np.asarray(query_vector, np.float32), index=table.frame_key.to_numpy())
        if channel != "visual" and frame_key is None:
            best = float(channel_scores.max())
            channel_scores = channel_scores[channel_scores >= min_text_score]
            if channel_scores.empty:
                notes.append(f"{channel} channel: no frame's text is similar enough to the query "
                             f"(best {best:.3f}, below search.min_text_score {min_text_score})")  # fmt: skip
                continue
        scores[channel] = channel_scores
    for note in notes:
        log.info("search: %s", note)
    if not scores:
        raise SearchError("no channel can answer this query: " + "; ".join(notes))

    scored = _filter(_scored(frames, scores), videos, time_range)
    order = _ranking(scored)
    best = float(scored.score.iat[order[0]]) if len(order) else 0.0  # suppression always keeps the best
    cut = None if threshold is None else (threshold * best if relative else threshold)
    if suppress_seconds > 0:
        ranked = _suppress_neighbours(scored.iloc[order].reset_index(), suppress_seconds)
    else:  # the hits are a prefix of the ranking: only that prefix becomes a table (fast on 100k frames)
        above = int((scored.score.to_numpy() >= cut).sum()) if cut is not None else 0
        ranked = scored.iloc[order[: max(top_k, above)]].reset_index()
    ranked = ranked.reset_index(drop=True)
    ranked["rank"] = np.arange(1, len(ranked) + 1)
    ranked["in_top_k"] = ranked["rank"] <= top_k
    ranked["above_threshold"] = (ranked.score >= cut) if cut is not None else False
    hits = ranked[ranked.in_top_k | ranked.above_threshold].reset_index(drop=True)
    channel_columns = [f"score_{c}" for c in scores]
    hits = hits[HIT_COLUMNS[:2] + channel_columns + HIT_COLUMNS[2:]]
    if "speech" in scores:
        hits = _with_speech(run, hits, speech_matched)
    return SearchResult(hits=hits, query=query_label, channels=list(scores), notes=notes, threshold_value=cut)


def _speech_utterances(run: RunPaths, cfg: PipelineConfig, model_id: str) -> tuple[pd.DataFrame, np.ndarray] | None:
    """The utterances and their vectors (`tables/speech_segment_embeddings.parquet`) made with the sentence
    encoder `model_id`, cached while the file is unchanged; None when the run has none (embedded before
    utterances had vectors, or by another model): the speech channel then ranks frames' speech text."""
    path = run.table("speech_segment_embeddings")
    if not path.exists():
        return None
    table, vectors, segments_model = _cached(path, _read_segments)
    if not len(table) or segments_model != model_id:
        return None
    return table, vectors


def _read_segments(path: Path) -> tuple[pd.DataFrame, np.ndarray, str]:
    table = read_table(path)
    if table.empty:
        return table, np.zeros((0, 0), np.float32), ""
    model_id = str(table.model_id.iloc[0])
    table = table[table.model_id == model_id]
    vectors = np.stack(table.vector.to_numpy()).astype(np.float32)
    return table.drop(columns=["vector"]).reset_index(drop=True), vectors, model_id


def _best_utterances(frames: pd.DataFrame, segments: pd.DataFrame, scores: pd.Series, window: float) -> pd.DataFrame:
    """Per frame showing a scored utterance, the best one: frame_key, segment_id, score, and the utterance's
    text, start and end."""
    from .speech import best_segment_per_frame, segment_frames

    shown = segments[segments.segment_id.isin(scores.index)]
    best = best_segment_per_frame(segment_frames(frames, shown, window), scores)
    said = shown.set_index("segment_id")
    return best.assign(text=best.segment_id.map(said.text).astype(str), start=best.segment_id.map(said.start).astype(float),
                       end=best.segment_id.map(said.end).astype(float))  # fmt: skip


def _with_speech(run: RunPaths, hits: pd.DataFrame, matched: pd.DataFrame | None) -> pd.DataFrame:
    """Hits the speech channel scored get what was said there and when (`speech_text`, `speech_start`,
    `speech_end`, `speech_segment`): the utterance that matched (`matched`, from `_best_utterances`), or
    for a run without utterance vectors the speech around the frame (`tables/speech_frames.parquet`).
    Shown with the hit, and the bounds render cuts at."""
    if matched is not None:
        said = matched.set_index("frame_key").rename(
            columns={"start": "speech_start", "end": "speech_end", "segment_id": "segments"}
        )
    else:
        path = run.table("speech_frames")
        said = read_table(path) if path.exists() else pd.DataFrame(columns=SPEECH_FRAME_FALLBACK)
        said = said.set_index("frame_key")
        said["segments"] = said.segments.map(lambda ids: " ".join(ids) if ids is not None and len(ids) else "")
    scored = hits.score_speech.notna().to_numpy()
    hits = hits.copy()
    keys = hits.frame_key
    hits["speech_text"] = np.where(scored, keys.map(said.text).fillna("").astype(str), "")
    for column in ("speech_start", "speech_end"):
        hits[column] = np.where(scored, keys.map(said[column]).astype(float), np.nan)
    hits["speech_segment"] = np.where(scored, keys.map(said.segments).fillna("").astype(str), "")
    return hits


def _rank(frames: pd.DataFrame, scores: dict[str, pd.Series]) -> pd.DataFrame:
    """Every scored frame, best first (`_scored` in `_ranking` order), frame_key a column."""
    table = _scored(frames, scores)
    return table.iloc[_ranking(table)].reset_index()


def _ranking(table: pd.DataFrame) -> np.ndarray:
    """Row order of a `_scored` table: best score first; ties by video name, then time."""
    names = pd.Categorical(table.video_name.astype(str))  # sorted categories: codes compare as the names do
    return np.lexsort((table.timestamp.to_numpy(float), names.codes, -table.score.to_numpy(float)))


def _scored(frames: pd.DataFrame, scores: dict[str, pd.Series]) -> pd.DataFrame:
    """The frames any channel scored (indexed by frame_key, unsorted), each channel's score and the fused `score`."""
    table = frames.set_index("frame_key")[["video_id", "video_name", "timestamp", "thumbnail"]]
    for channel, series in scores.items():
        table[f"score_{channel}"] = series.reindex(table.index)
    if len(scores) == 1:
        [channel] = scores
        table["score"] = table[f"score_{channel}"]
    else:
        fused = np.zeros(len(table))
        for channel in scores:
            ranks = table[f"score_{channel}"].rank(ascending=False, method="first")
            fused += np.where(ranks.notna(), 1.0 / (RRF_K + ranks.fillna(0)), 0.0)
        table["score"] = fused
    present = table.score.notna().to_numpy()
    return table if present.all() else table[present]


def _filter(ranked: pd.DataFrame, videos: list[str] | None, time_range) -> pd.DataFrame:
    if videos:
        known = set(ranked.video_name) | set(ranked.video_id)
        missing = [v for v in videos if v not in known]
        if missing:
            raise SearchError(f"video(s) not in this run: {', '.join(missing)}; videos are {', '.join(sorted(set(ranked.video_name)))}")
        ranked = ranked[ranked.video_name.isin(videos) | ranked.video_id.isin(videos)]
    if time_range:
        start, end = time_range
        if start is not None:
            ranked = ranked[ranked.timestamp >= start]
        if end is not None:
            ranked = ranked[ranked.timestamp <= end]
    return ranked


def _thumbnail_sources(result: SearchResult, run: RunPaths) -> list[Path]:
    """Every hit's thumbnail resolved inside the run, or `UnsafePath` naming the table, row and path.

    A hit whose thumbnail is the frames table's own is named by its row there (where a crafted
    path would have come from); any other by its row in the hits table.
    """
    frames = read_table(run.table("frames")) if run.table("frames").exists() else pd.DataFrame(columns=["frame_key", "thumbnail"])
    frame_rows = {key: row for row, key in enumerate(frames.frame_key)}
    sources = []
    for row, hit in enumerate(result.hits.itertuples()):
        frame_row = frame_rows.get(hit.frame_key)
        if frame_row is not None and frames.thumbnail.iloc[frame_row] == hit.thumbnail:
            what = f"tables/frames.parquet row {frame_row}, column thumbnail"
        else:
            what = f"search hits row {row} (frame {hit.frame_key}), column thumbnail"
        try:
            sources.append(run.resolve(hit.thumbnail, what=what))
        except UnsafePath as error:
            raise UnsafeHitPath(str(error)) from None
    return sources


def _previous_export(dest: Path) -> list[str] | None:
    """The files a previous export wrote into `dest` (its marker's list); None if no export wrote `dest`."""
    marker = dest / EXPORT_MARKER
    if not marker.is_file():
        return None
    try:
        files = json.loads(marker.read_text())["files"]
        return [str(name) for name in files]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SearchError(f"{marker}: unreadable export marker ({error}); export into a new or empty folder") from None


def _claim_export_folder(dest: Path) -> list[str]:
    """Check that an export may write into `dest`: a folder it creates, an empty one, or one a
    previous frameatlas export wrote. Returns the files that previous export wrote (or [])."""
    if dest.exists() and not dest.is_dir():
        raise SearchError(f"{dest}: exists and is not a folder; export into a new or empty folder")
    if not dest.exists():
        dest.mkdir(parents=True)
        return []
    previous = _previous_export(dest)
    if previous is not None:
        return previous
    if any(dest.iterdir()):
        raise SearchError(
            f"{dest}: folder is not empty and no frameatlas export wrote it (no {EXPORT_MARKER}); "
            "refusing to write into it. Export into a new or empty folder, or into a previous export's folder"
        )
    return []


def _export_name(hit) -> str:
    return f"{hit.rank:04d}_{hit.score:.4f}_{Path(hit.video_name).stem}_{hit.timestamp:09.3f}s.jpg"


def export_hits(result: SearchResult, run: RunPaths | Path | str, dest: Path | str) -> Path:
    """Write the hits as `hits.csv` + `hits.parquet` and copy their thumbnails into `top_k/`
    and `above_threshold/` (file names start with the rank). Returns `dest`.

    `dest` must be a folder the export creates, an empty one, or a previous export's (marked by
    `.frameatlas-export.json`, which lists what it wrote); anything else is refused. Re-exporting
    removes only the files the previous export wrote. Every thumbnail path must lie inside the
    run (`UnsafePath` otherwise, before anything is written). When `dest` is inside the run
    folder, the run's lock is held while writing.
    """
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    dest = Path(dest).absolute()
    sources = _thumbnail_sources(result, run)
    writes_into_run = dest.resolve().is_relative_to(run.root)
    guard = run_lock(run.root, "frameatlas search --export") if writes_into_run else contextlib.nullcontext()
    with guard:
        previous = _claim_export_folder(dest)
        thumbnails = dict(zip(result.hits.frame_key, sources))
        planned: list[tuple[str, Path]] = []  # (file relative to dest, thumbnail to copy)
        for folder, subset in (("top_k", result.top_k), ("above_threshold", result.above_threshold)):
            planned += [(f"{folder}/{_export_name(hit)}", thumbnails[hit.frame_key]) for hit in subset.itertuples()]
        files = ["hits.csv", "hits.parquet", "query.txt", *(name for name, _ in planned)]
        # list old and new files first: an export killed halfway leaves nothing the next one cannot clean
        atomic_write_json(dest / EXPORT_MARKER, {"frameatlas_export": 1, "query": result.query,
                                                  "files": sorted(set(previous) | set(files))})  # fmt: skip
        for name in sorted(set(previous) - set(files)):  # a previous query's frames must not mix in
            _remove_exported(dest, name)
        for folder in EXPORT_FOLDERS:
            (dest / folder).mkdir(exist_ok=True)
        atomic_write_text(dest / "hits.csv", result.hits.to_csv(index=False))
        write_table(result.hits, dest / "hits.parquet")
        for name, source in planned:
            atomic_write_bytes(dest / name, source.read_bytes())
        atomic_write_text(
            dest / "query.txt",
            f"query: {result.query}\nchannels: {', '.join(result.channels)}\n"
            + (f"threshold score: {result.threshold_value:.4f}\n" if result.threshold_value is not None else "")
            + "".join(f"note: {n}\n" for n in result.notes),
        )
        atomic_write_json(dest / EXPORT_MARKER, {"frameatlas_export": 1, "query": result.query, "files": files})
    return dest


def _remove_exported(dest: Path, name: str) -> None:
    """Remove one file a previous export listed in its marker, if it is one an export writes
    (a frame in top_k/ or above_threshold/, or the tables); a sub-folder left empty goes too."""
    path = contained_path(name, [dest], what=f"{dest / EXPORT_MARKER} entry")
    relative = path.relative_to(dest.resolve())
    exported_frame = len(relative.parts) == 2 and relative.parts[0] in EXPORT_FOLDERS and relative.suffix == ".jpg"
    if not (exported_frame or relative.as_posix() in {"hits.csv", "hits.parquet", "query.txt"}):
        return  # not a name an export writes: a hand-edited marker cannot make us delete it
    path.unlink(missing_ok=True)
    if exported_frame:
        with contextlib.suppress(OSError):  # not empty: the user put something there; keep it
            path.parent.rmdir()


def write_text_channel(
    run: RunPaths | Path | str, channel: str, frame_keys: list[str], texts: list[str], encoder
) -> Path:
    """Embed one text per frame (captions, on-screen text, speech) into `<channel>_embeddings`.

    Vectors already in that table for the same text and model are reused, not recomputed.

    Example:
        >>> write_text_channel(run, "caption", keys, ["a rabbit", "a bird"], text_encoder(cfg.models))  # doctest: +SKIP
    """
    if channel not in TEXT_CHANNELS:
        raise ValueError(f"channel {channel!r}: text channels are {', '.join(TEXT_CHANNELS)}")
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    path = run.table(f"{channel}_embeddings")
    model_id = encoder.record.model_id
    known: dict[str, np.ndarray] = {}
    if path.exists():
        previous = read_table(path)
        previous = previous[previous.model_id == model_id]
        known = dict(zip(previous.text, previous.vector))
    texts = [str(text) for text in texts]
    missing = sorted(set(texts) - set(known))
    if missing:
        known.update(zip(missing, encoder.encode(missing)))
    vectors = [known[text] for text in texts]
    log.info("%s channel: %d texts, %d distinct new ones encoded with %s", channel, len(texts), len(missing), model_id)
    table = pd.DataFrame({"frame_key": list(frame_keys), "model_id": model_id, "text": texts, "vector": vectors})
    return write_table(table, path)


def format_hits(result: SearchResult) -> str:
    """A readable table of search hits for the terminal (`frameatlas search`, here or through `frameatlas serve`)."""
    hits = result.hits
    header = f"{result.query!r} — {len(result.top_k)} in top-k"
    if result.threshold_value is not None:
        header += f", {len(result.above_threshold)} at or above {result.threshold_value:.4f}"
    header += f" (channels: {', '.join(result.channels)})"
    if hits.empty:
        return header + "\nno frames match"
    shown = hits.assign(
        time=hits.timestamp.map(lambda t: f"{int(t // 60):02d}:{t % 60:06.3f}"),
        mark=["*" if a else "" for a in hits.above_threshold],
    )
    columns = ["rank", "score", *[c for c in hits.columns if c.startswith("score_") and c != "score"], "video_name", "time", "mark"]
    if "speech_text" in hits:  # what was said at the speech channel's hits, and when
        from .plots import format_time

        shown["said"] = [f"{format_time(a)}-{format_time(b)} {text}" if text else ""
                         for a, b, text in zip(hits.speech_start, hits.speech_end, hits.speech_text)]  # fmt: skip
        columns.append("said")
    table = shown[columns].rename(columns={"video_name": "video", "mark": ">=thr"})
    return header + "\n" + table.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def gallery(result: SearchResult, run: RunPaths | Path | str, *, columns: int = 8, tile_width: int = 150, limit: int = 24):
    """The hits as an image grid, best first, labelled with rank, score, video and time."""
    from .plots import Tile, format_time, image_grid

    run = run if isinstance(run, RunPaths) else RunPaths(run)
    shown = SearchResult(result.hits.head(limit), result.query, result.channels)
    tiles = [
        Tile(source, f"#{hit.rank} {hit.score:.3f} {Path(hit.video_name).stem[:8]} {format_time(hit.timestamp)}")
        for hit, source in zip(shown.hits.itertuples(), _thumbnail_sources(shown, run))
    ]
    return image_grid(tiles, columns=columns, tile_width=tile_width)


def configured_searches(run: RunPaths | Path | str, cfg: PipelineConfig) -> list[tuple[str, SearchResult | str]]:
    """Run every query of `search.queries` with the configured options.

    Returns (query, result) pairs; a query no channel can answer gets the reason as a string.
    """
    options = cfg.search
    outcomes: list[tuple[str, SearchResult | str]] = []
    for query in options.queries:
        try:
            outcomes.append((query, search(
                run, query, top_k=options.top_k, threshold=options.threshold, relative=options.relative,
                suppress_seconds=options.suppress_seconds, min_text_score=options.min_text_score,
            )))  # fmt: skip
        except SearchError as error:
            outcomes.append((query, str(error)))
    return outcomes
