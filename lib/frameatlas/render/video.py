"""One output video from one job: check its sources, cut (or draw) its pieces, join them.

1. every segment is cut with one ffmpeg call and encoded once at the output size and frame
   rate, to exactly ``round(seconds * fps)`` frames, with exact-length PCM audio (silence when
   the source has none). Cuts are cached under ``cache/render/`` and shared between outputs;
2. title cards and stills (slideshow mode) are drawn with Pillow and encoded the same way;
3. the pieces are joined without re-encoding the video, and the joined PCM track is encoded to
   AAC once, so sound stays aligned to the frame.

Every file is written through `files.atomic_path` (cuts, the joined video, its audio track and
listing, the contact sheet, the fingerprint), so a killed render leaves only temporary files
that the next start removes. A source path read from a table must lie in the corpus folder or
the run (thumbnails in the run), or the output fails naming the table, row and path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image

from ..config import RenderConfig
from ..files import UnsafePath, atomic_path, atomic_write_json, atomic_write_text, contained_path, save_image
from ..speech import write_rendered_subtitles
from ..store import RunPaths, read_table
from .cards import letterbox, output_contact_sheet, title_card
from .errors import RenderError
from .ffmpeg import (
    AUDIO_CHANNELS,
    AUDIO_RATE,
    SAMPLE_BYTES,
    concat_command,
    concat_listing,
    cut_command,
    run_ffmpeg,
    stills_command,
)
from .segments import RenderJob, Segment, replace_segment

log = logging.getLogger(__name__)

__all__ = ["SEGMENT_COLUMNS", "RenderedVideo", "render_job", "run_source_roots"]

# Bump when the way pieces or outputs are encoded changes (invalidates cuts and outputs).
RENDER_VERSION = 1

SEGMENT_COLUMNS = ["name", "position", "video_id", "video_name", "source", "start", "end", "duration", "score", "hits",
                   "best_timestamp", "mode", "output_start", "output_end"]  # fmt: skip


@dataclass(frozen=True)
class _Piece:
    """An encoded part of an output: video of exactly `frames` frames, and PCM audio (or silence)."""

    video: Path
    audio: Path | None
    frames: int


@dataclass
class RenderedVideo:
    """The result of rendering one job: where it went, what is in it, or why it failed."""

    job: RenderJob
    path: Path | None
    duration: float = 0.0
    frames: int = 0
    segments: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SEGMENT_COLUMNS))
    contact_sheet: Path | None = None
    status: Literal["rendered", "cached", "empty", "failed"] = "rendered"
    error: str = ""
    seconds: float = 0.0
    title_seconds: float = 0.0


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _format_key(options: RenderConfig) -> dict[str, Any]:
    return {"v": RENDER_VERSION, "w": options.width, "h": options.height, "fps": options.fps, "crf": options.crf,
            "preset": options.preset}  # fmt: skip


def _frame_count(seconds: float, fps: float) -> int:
    return max(1, int(round(seconds * fps)))


def _audio_samples(frames: int, fps: float) -> int:
    return int(round(frames * AUDIO_RATE / fps))


# --- sources --------------------------------------------------------------------------------------


def run_source_roots(run: RunPaths) -> list[Path]:
    """Where a run's source videos may lie: the corpus folder of the config it ran with, and the run."""
    try:
        corpus = json.loads(run.config_file.read_text())["corpus"]["videos"]
    except (OSError, ValueError, KeyError, TypeError):
        return [run.root]
    return [Path(corpus), run.root]


def _refused_source(segment: Segment, roots: Sequence[Path | str], run_root: Path) -> str | None:
    """Why the segment's source path may not be read (outside every root), or None.

    A link inside the corpus folder that points elsewhere is the user's own and is followed (as
    corpus discovery does); links inside the run folder, which may come from someone else, are not.
    """
    opened = Path(os.path.abspath(segment.source))  # what ffmpeg opens: a relative path is taken from here
    try:
        contained_path(segment.source if os.path.isabs(segment.source) else opened, roots, what=segment.source_origin())
    except UnsafePath as error:
        corpora = [Path(os.path.abspath(root)) for root in roots if Path(root).resolve() != run_root]
        if any(opened.is_relative_to(corpus) for corpus in corpora):
            return None
        return str(error)
    return None


def _source_problem(segment: Segment, expected_size: int | None) -> str | None:
    path = Path(segment.source)
    try:
        if not path.is_file():
            return ("source video not found (it was there when its frames were extracted); restore it, "
                    "or set render.mode to slideshow or auto to show its frames as stills")  # fmt: skip
        size = path.stat().st_size
    except OSError as error:
        return f"source video cannot be read ({error})"
    if expected_size is not None and size != expected_size:
        return f"source video changed since extraction (now {size} bytes, was {expected_size}); re-run the extract stage"
    return None


def _resolve_sources(
    job: RenderJob, videos: pd.DataFrame, mode: str, roots: Sequence[Path | str], run_root: Path
) -> tuple[RenderJob, dict[str, str]]:
    """Check every source the job needs. A path outside the corpus and the run always fails the
    job. In auto mode a lost source's segments become stills; otherwise the problems are
    returned, by source (the job cannot be rendered)."""
    problems: dict[str, str] = {}
    segments: list[Segment] = []
    seen: dict[str, str | None] = {}
    for segment in job.segments:
        if segment.still:
            segments.append(segment)
            continue
        refused = _refused_source(segment, roots, run_root)
        if refused:
            problems.setdefault(segment.source, refused)
            segments.append(segment)
            continue
        if segment.source not in seen:
            size = videos.size_bytes.get(segment.video_id) if "size_bytes" in videos else None
            seen[segment.source] = _source_problem(segment, int(size) if size is not None and not pd.isna(size) else None)
        problem = seen[segment.source]
        if problem and mode == "auto":
            if segment.source not in problems:
                log.warning("%s: %s; %s shows its frames as stills", segment.source, problem, job.name)
            segments.append(replace_segment(segment, still=True))
            continue
        if problem:
            problems[segment.source] = problem
        segments.append(segment)
    return job.with_segments(segments), problems


_AUDIO_PROBES: dict[tuple[str, float], bool] = {}


def _probe_has_audio(path: str) -> bool:
    """Whether the file has an audio stream now (the videos table may predate a re-encode)."""
    import av

    key = (path, os.stat(path).st_mtime)
    if key not in _AUDIO_PROBES:
        try:
            with av.open(path) as container:
                _AUDIO_PROBES[key] = bool(container.streams.audio)
        except (av.error.FFmpegError, OSError) as error:
            raise RenderError(f"{path}: cannot open the source video ({error})") from None
    return _AUDIO_PROBES[key]


# --- pieces ---------------------------------------------------------------------------------------


def _cut_clip(segment: Segment, frames: int, has_audio: bool, options: RenderConfig, cache: Path) -> _Piece:
    """Cut one segment from its source: exactly `frames` frames at the output size and rate, plus PCM audio."""
    key = _digest({"fmt": _format_key(options), "source": segment.video_id, "start": round(segment.start, 6),
                   "frames": frames, "audio": has_audio})  # fmt: skip
    video, audio = cache / f"clip-{key}.mp4", cache / f"clip-{key}.wav"
    if video.exists() and (audio.exists() or not has_audio):
        return _Piece(video, audio if has_audio else None, frames)
    what = f"{segment.source} {segment.start:.2f}-{segment.end:.2f} s"
    with atomic_path(video) as video_tmp:
        if not has_audio:
            run_ffmpeg(cut_command(segment.source, segment.start, frames, options, video_tmp), output=video,
                       timeout=options.timeout_seconds, what=what)  # fmt: skip
        else:
            with atomic_path(audio) as audio_tmp:
                args = cut_command(segment.source, segment.start, frames, options, video_tmp, audio_out=audio_tmp,
                                   audio_samples=_audio_samples(frames, options.fps))  # fmt: skip
                run_ffmpeg(args, output=video, timeout=options.timeout_seconds, what=what)
    return _Piece(video, audio if has_audio else None, frames)


def _encode_stills(stills: list[tuple[Image.Image, int]], key: str, options: RenderConfig, cache: Path, what: str) -> _Piece:
    """Encode still pictures, each for a number of frames, as one silent piece (raw frames piped to ffmpeg)."""
    video = cache / f"stills-{key}.mp4"
    total = sum(n for _, n in stills)
    if video.exists():
        return _Piece(video, None, total)
    size = (options.width, options.height)

    def feed(stdin) -> None:
        for image, count in stills:
            data = np.asarray(letterbox(image, size), dtype=np.uint8).tobytes()
            for _ in range(count):
                stdin.write(data)

    with atomic_path(video) as tmp:
        run_ffmpeg(stills_command(total, options, tmp), output=video, timeout=options.timeout_seconds, what=what, feed=feed)
    return _Piece(video, None, total)


def _still_piece(segment: Segment, frames: int, run: RunPaths, options: RenderConfig, cache: Path) -> _Piece:
    """A segment shown as its hits' thumbnails, sharing its frames equally."""
    thumbs = list(segment.thumbnails) or []
    if not thumbs:
        raise RenderError(f"{segment.source}: no thumbnails to show for {segment.start:.2f}-{segment.end:.2f} s")
    paths = []
    for index, thumb in enumerate(thumbs):  # refuse a path outside the run before anything is read or cached
        try:
            paths.append(run.resolve(thumb, what=segment.thumbnail_origin(index)))
        except UnsafePath as error:
            raise RenderError(str(error), {thumb: str(error)}) from None
    counts = [frames * (i + 1) // len(thumbs) - frames * i // len(thumbs) for i in range(len(thumbs))]
    pairs = [(t, n) for t, n in zip(thumbs, counts) if n > 0]
    key = _digest({"fmt": _format_key(options), "stills": pairs})
    if (cache / f"stills-{key}.mp4").exists():
        return _Piece(cache / f"stills-{key}.mp4", None, frames)
    images = []
    for path, count in zip(paths, counts):
        if count <= 0:
            continue
        try:
            with Image.open(path) as opened:
                images.append((opened.convert("RGB"), count))
        except OSError as error:
            raise RenderError(f"{path}: cannot read the thumbnail ({error}); re-run the extract stage") from None
    return _encode_stills(images, key, options, cache, f"stills of {segment.video_name}")


def _title_piece(job: RenderJob, options: RenderConfig, cache: Path) -> _Piece | None:
    if options.title_seconds <= 0:
        return None
    frames = _frame_count(options.title_seconds, options.fps)
    subtitle = job.subtitle()
    key = _digest({"fmt": _format_key(options), "title": job.title, "subtitle": subtitle, "frames": frames})
    if (cache / f"stills-{key}.mp4").exists():
        return _Piece(cache / f"stills-{key}.mp4", None, frames)
    card = title_card(job.title, subtitle, (options.width, options.height))
    return _encode_stills([(card, frames)], key, options, cache, f"title card of {job.name}")


def _make_pieces(segments: Sequence[Segment], frames: Sequence[int], videos: pd.DataFrame, run: RunPaths,
                 options: RenderConfig, cache: Path) -> list[_Piece]:  # fmt: skip
    """Cut (or draw) every segment, `options.workers` ffmpeg processes at a time, in order.

    Whatever goes wrong with one segment (ffmpeg, PyAV, Pillow, the file system) is raised as a
    `RenderError` naming its source, so the stage can list that source as skipped.
    """
    from concurrent.futures import ThreadPoolExecutor

    def make(segment: Segment, count: int) -> _Piece:
        try:
            if segment.still:
                return _still_piece(segment, count, run, options, cache)
            has_audio = bool(videos.has_audio.get(segment.video_id, True)) if "has_audio" in videos else True
            return _cut_clip(segment, count, has_audio and _probe_has_audio(segment.source), options, cache)
        except RenderError as error:
            if error.sources:
                raise
            raise RenderError(str(error), {segment.source: str(error)}) from error
        except Exception as error:  # any other failure on one odd source fails only the outputs that need it
            reason = f"cannot cut {segment.start:.2f}-{segment.end:.2f} s: {type(error).__name__}: {error}"
            raise RenderError(f"{segment.source}: {reason}", {segment.source: reason}) from error

    if options.workers <= 1 or len(segments) <= 1:
        return [make(segment, count) for segment, count in zip(segments, frames)]
    with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="render-cut") as pool:
        futures = [pool.submit(make, segment, count) for segment, count in zip(segments, frames)]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()  # the ones already running finish (and are reaped) before the pool closes
            raise


def _write_audio(pieces: Sequence[_Piece], fps: float, path: Path) -> None:
    """One PCM track for the whole output: each piece's audio (or silence), exactly as long as its frames."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(AUDIO_CHANNELS)
        out.setsampwidth(2)
        out.setframerate(AUDIO_RATE)
        frames_done = 0
        for piece in pieces:
            # sample boundaries from the cumulative frame count: no drift over many pieces
            start, end = _audio_samples(frames_done, fps), _audio_samples(frames_done + piece.frames, fps)
            frames_done += piece.frames
            wanted = end - start
            written = 0
            if piece.audio is not None:
                with wave.open(str(piece.audio), "rb") as source:
                    while written < wanted:
                        chunk = source.readframes(min(wanted - written, 1 << 16))
                        if not chunk:
                            break
                        out.writeframes(chunk)
                        written += len(chunk) // SAMPLE_BYTES
            while written < wanted:
                n = min(wanted - written, 1 << 16)
                out.writeframes(b"\0" * (n * SAMPLE_BYTES))
                written += n


def _join(pieces: Sequence[_Piece], options: RenderConfig, target: Path, cache: Path, key: str, what: str) -> None:
    """Concatenate the pieces' video without re-encoding, encode the joined audio once, write `target` atomically.

    The listing and the joined PCM track are made in the cut cache (named by the output's
    fingerprint) and removed afterwards; a killed render leaves them for the cache pruning.
    """
    listing, audio = cache / f"join-{key}.txt", cache / f"join-{key}.wav"
    try:
        atomic_write_text(listing, concat_listing([(piece.video, piece.frames / options.fps) for piece in pieces]))
        with atomic_path(audio) as tmp:
            _write_audio(pieces, options.fps, tmp)
        with atomic_path(target) as tmp:
            run_ffmpeg(concat_command(listing, audio, options, tmp), output=target, timeout=options.timeout_seconds, what=what)
    finally:
        listing.unlink(missing_ok=True)
        audio.unlink(missing_ok=True)


# --- one output -----------------------------------------------------------------------------------


def _job_fingerprint(job: RenderJob, options: RenderConfig, frames_per_piece: list[int], subtitle: str) -> str:
    return _digest({
        "fmt": _format_key(options), "title": job.title, "subtitle": subtitle, "title_seconds": options.title_seconds,
        "audio_bitrate": options.audio_bitrate,
        "segments": [[s.video_id, round(s.start, 6), round(s.end, 6), s.still, list(s.thumbnails) if s.still else []]
                     for s in job.segments],
        "frames": frames_per_piece,
    })  # fmt: skip


def _segment_table(job: RenderJob, piece_frames: list[int], title_frames: int, fps: float) -> pd.DataFrame:
    rows, offset = [], title_frames
    for position, (segment, count) in enumerate(zip(job.segments, piece_frames), start=1):
        rows.append({
            "name": job.name, "position": position, "video_id": segment.video_id, "video_name": segment.video_name,
            "source": segment.source, "start": segment.start, "end": segment.end, "duration": count / fps,
            "score": segment.score, "hits": segment.hits, "best_timestamp": segment.best_timestamp,
            "mode": "still" if segment.still else "clip", "output_start": offset / fps, "output_end": (offset + count) / fps,
        })  # fmt: skip
        offset += count
    return pd.DataFrame(rows, columns=SEGMENT_COLUMNS)


def _videos_meta(run: RunPaths) -> pd.DataFrame:
    path = run.table("videos")
    return read_table(path).set_index("video_id") if path.exists() else pd.DataFrame()


def _on_frame_grid(segment: Segment, frames: int, videos: pd.DataFrame, fps: float) -> Segment:
    """Start a clip on the source frame on screen at its start, and end it `frames` output frames later."""
    if segment.still and segment.duration == 0:
        return segment
    start = segment.start
    source_fps = videos.fps.get(segment.video_id) if "fps" in videos else None
    if source_fps and not pd.isna(source_fps) and source_fps > 0:
        start = math.floor(start * source_fps + 1e-6) / source_fps
    return replace_segment(segment, start=round(start, 6), end=round(start + frames / fps, 6))


def is_render_metadata(path: Path) -> bool:
    """True if `path` is the fingerprint file `render_job` writes next to a video."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("fingerprint"), str) and isinstance(data.get("segments"), list)


def render_job(
    job: RenderJob, run: RunPaths | Path | str, options: RenderConfig, *, dest: Path | None = None, force: bool = False,
    source_roots: Sequence[Path | str] | None = None,
) -> RenderedVideo:  # fmt: skip
    """Render one job to `dest` (default `videos/<job.name>.mp4` in the run), with its contact sheet.

    `source_roots`: the folders source videos may be read from (default: the corpus folder of
    the config the run ran with, and the run folder).

    Raises `RenderError` (naming the file) when a source is gone or refused or ffmpeg fails;
    the file at `dest` is then left as it was.
    """
    started = time.perf_counter()
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    target = Path(dest) if dest is not None else run.videos / f"{job.name}.mp4"
    if not job.segments:
        return RenderedVideo(job, None, status="empty", error="no hits to render", seconds=time.perf_counter() - started)
    videos = _videos_meta(run)
    roots = list(source_roots) if source_roots is not None else run_source_roots(run)
    job, problems = _resolve_sources(job, videos, options.mode, roots, run.root)
    if problems:
        raise RenderError("; ".join(f"{source}: {reason}" for source, reason in problems.items()), problems)
    still_frames = _frame_count(options.slideshow_seconds, options.fps)
    # a slideshow hit shows for slideshow_seconds; a lost source's segment keeps its length
    piece_frames = [_frame_count(s.duration, options.fps) if s.duration > 0 else still_frames * max(1, len(s.thumbnails))
                    for s in job.segments]  # fmt: skip
    job = job.with_segments([_on_frame_grid(s, n, videos, options.fps) for s, n in zip(job.segments, piece_frames)])
    title_frames = _frame_count(options.title_seconds, options.fps) if options.title_seconds > 0 else 0
    subtitle = job.subtitle()
    fingerprint = _job_fingerprint(job, options, piece_frames, subtitle)
    meta_path = target.with_suffix(".json")
    sheet_path = target.with_suffix(".png")
    table = _segment_table(job, piece_frames, title_frames, options.fps)
    total_frames = title_frames + sum(piece_frames)
    if not force and target.exists() and meta_path.exists() and sheet_path.exists():
        try:
            cached = json.loads(meta_path.read_text()).get("fingerprint") == fingerprint
        except ValueError:
            cached = False
        if cached:
            write_rendered_subtitles(run, table, target)
            return RenderedVideo(job, target, total_frames / options.fps, total_frames, table, sheet_path, "cached",
                                 seconds=time.perf_counter() - started, title_seconds=title_frames / options.fps)  # fmt: skip
    cache = run.cache / "render"
    cache.mkdir(parents=True, exist_ok=True)
    pieces: list[_Piece] = []
    title = _title_piece(job, options, cache)
    if title is not None:
        pieces.append(title)
    pieces.extend(_make_pieces(job.segments, piece_frames, videos, run, options, cache))
    _join(pieces, options, target, cache, fingerprint, what=str(target))
    contact = output_contact_sheet(target, table, title_frames / options.fps)
    save_image(contact, sheet_path, "PNG", optimize=True)
    atomic_write_json(meta_path, {
        "fingerprint": fingerprint, "kind": job.kind, "title": job.title, "subtitle": subtitle, "frames": total_frames,
        "fps": options.fps, "pieces": sorted({p.video.name for p in pieces} | {p.audio.name for p in pieces if p.audio}),
        "segments": table.to_dict("records"),
    })  # fmt: skip
    write_rendered_subtitles(run, table, target)  # the speech heard in it, as a sidecar .vtt
    return RenderedVideo(job, target, total_frames / options.fps, total_frames, table, sheet_path, "rendered",
                         seconds=time.perf_counter() - started, title_seconds=title_frames / options.fps)  # fmt: skip
