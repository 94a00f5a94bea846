"""Cut new videos out of the sources: one per cluster, one per search query (the render stage).

Hits (the frames of a cluster, or the frames a query found) become **segments**: a hit covers
its source from its own timestamp to the next sampled frame's, hits that are adjacent samples
of the same video merge, and `padding_before` / `padding_after` seconds are added around each
run of hits (segments that then overlap merge too). The best `max_segments_per_video` segments
of each source are kept, then the best ones overall until `max_total_seconds`; they are put in
time or score order behind a title card (the cluster name or the query, with counts).

How a video is made (the fastest way measured, see BENCHMARKS.md "Rendering"):

1. every segment is cut with one call of the bundled ffmpeg (accurate seek, decoding only
   from the keyframe before the cut) and encoded once at the output size and frame rate, to
   exactly ``round(seconds * fps)`` frames; its audio is written as exact-length PCM (silence
   when the source has none). Cuts are cached under ``cache/render/`` and shared between
   outputs, so a segment used by a cluster and by a query is cut once;
2. title cards and stills (slideshow mode) are drawn with Pillow and encoded the same way;
3. the pieces are joined by ffmpeg's concat demuxer **without re-encoding the video**, and the
   joined PCM track is encoded to AAC once, so sound stays aligned to the frame.

Output: H.264 (yuv420p) + AAC MP4 with the index at the front (``+faststart``), which browsers
play, under ``outputs/<run>/videos/``; ``videos/<name>.png`` is its contact sheet (frames
decoded from the output itself, one per segment) and ``videos/<name>.json`` its fingerprint.
A re-run with the same segments and options reuses the file. Tables:
``tables/render_videos.parquet`` (one row per output) and ``tables/render_segments.parquet``
(one row per segment: source, start, end, score, where it sits in the output).

Every ffmpeg call has a timeout and is waited for (no zombies, no open pipes); a source that is
gone fails only the outputs that need it, with its path in the error.

Example:
    >>> from frameatlas.render import render_run
    >>> summary = render_run(cfg, "outputs/demo")  # doctest: +SKIP
    >>> summary.videos[["name", "duration", "segments", "status"]]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import subprocess
import tempfile
import time
import wave
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from .config import PipelineConfig, RenderConfig
from .corpus import SkippedInput
from .progress import progress_bar
from .store import RunPaths, read_table, write_table
from .files import atomic_write_json

log = logging.getLogger(__name__)

__all__ = [
    "RenderError",
    "RenderJob",
    "RenderSummary",
    "RenderedVideo",
    "Segment",
    "cluster_jobs",
    "ffmpeg_exe",
    "hit_segments",
    "query_job",
    "query_jobs",
    "render_job",
    "render_run",
    "render_search",
    "select_segments",
    "source_files",
    "title_card",
    "video_html",
]

# Bump when the way pieces or outputs are encoded changes (invalidates cuts and outputs).
RENDER_VERSION = 1
AUDIO_RATE = 48000
AUDIO_CHANNELS = 2
SAMPLE_BYTES = 2 * AUDIO_CHANNELS  # s16le stereo
STDERR_TAIL = 1500
SEEK_MARGIN = 0.0005  # seconds; shorter than any frame (1/240 s = 4 ms), longer than -ss's rounding

VIDEO_COLUMNS = ["name", "kind", "title", "path", "contact_sheet", "duration", "frames", "segments", "sources",
                 "title_seconds", "mode", "status", "error", "seconds"]  # fmt: skip
SEGMENT_COLUMNS = ["name", "position", "video_id", "video_name", "source", "start", "end", "duration", "score", "hits",
                   "best_timestamp", "mode", "output_start", "output_end"]  # fmt: skip


class RenderError(RuntimeError):
    """An output video that cannot be made; the message names the file and the reason.

    `sources` maps each source video that caused it (e.g. one that is gone) to the reason.
    """

    def __init__(self, message: str, sources: dict[str, str] | None = None):
        super().__init__(message)
        self.sources = dict(sources or {})


# --- segments -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A stretch of one source video to put in an output (`start`/`end` in source seconds)."""

    video_id: str
    video_name: str
    source: str  # the path the video was extracted from
    start: float
    end: float
    score: float  # the best hit's score
    hits: int
    best_timestamp: float
    thumbnails: tuple[str, ...] = ()  # run-relative thumbnails of the hits, in time order
    hit_timestamps: tuple[float, ...] = ()  # the hits' timestamps, in the same order
    still: bool = False  # shown as still thumbnails (slideshow) instead of cut from the source

    @property
    def duration(self) -> float:
        return self.end - self.start


def _frame_spans(frames: pd.DataFrame, videos: pd.DataFrame) -> pd.DataFrame:
    """Each sampled frame's span: from its timestamp to the next sample of its video (or its end)."""
    frames = frames.sort_values(["video_id", "timestamp"], kind="stable")
    duration = frames.video_id.map(videos.set_index("video_id").duration) if len(videos) else pd.Series(np.nan, frames.index)
    following = frames.groupby("video_id", sort=False).timestamp.shift(-1)
    gaps = frames.groupby("video_id", sort=False).timestamp.diff()
    typical = gaps.groupby(frames.video_id).transform("median").fillna(1.0)
    last_end = np.minimum(duration.fillna(np.inf), frames.timestamp + typical)
    return frames.assign(span_end=following.fillna(last_end).astype(float), duration=duration.astype(float))


def hit_segments(
    hits: pd.DataFrame, frames: pd.DataFrame, videos: pd.DataFrame, *, padding_before: float = 0.5,
    padding_after: float = 0.5, slideshow: bool = False,
) -> list[Segment]:  # fmt: skip
    """Turn scored hits into segments of their source videos.

    Args:
        hits: rows with `frame_key` and `score` (higher is better).
        frames: the run's frames table (`video_id`, `video_name`, `video_path`, `timestamp`, ...).
        videos: the run's videos table (for each video's `duration`).
        padding_before / padding_after: seconds added around each run of adjacent hits.
        slideshow: one still segment per hit instead (no merging, no padding).

    Returns:
        Segments in (video name, start) order; their score is their best hit's.

    Example:
        >>> hit_segments(pd.DataFrame({"frame_key": keys, "score": 1.0}), frames, videos)  # doctest: +SKIP
    """
    if hits.empty:
        return []
    spans = _frame_spans(frames, videos)
    spans["position"] = spans.groupby("video_id", sort=False).cumcount()
    scores = hits.drop_duplicates("frame_key").set_index("frame_key").score
    chosen = spans[spans.frame_key.isin(scores.index)].assign(score=lambda t: t.frame_key.map(scores).astype(float))
    segments: list[Segment] = []
    for video_id, group in chosen.groupby("video_id", sort=False):
        group = group.sort_values("timestamp")
        if slideshow:
            runs = [[row] for row in group.itertuples()]
        else:  # adjacent samples (consecutive positions) form one run
            runs, previous = [], None
            for row in group.itertuples():
                if previous is not None and row.position == previous + 1:
                    runs[-1].append(row)
                else:
                    runs.append([row])
                previous = row.position
        merged: list[list[Any]] = []  # [start, end, rows]
        for rows in runs:
            duration = rows[0].duration if not math.isnan(rows[0].duration) else math.inf
            if slideshow:
                start, end = rows[0].timestamp, rows[0].timestamp
            else:
                start = max(0.0, rows[0].timestamp - padding_before)
                end = min(duration, rows[-1].span_end + padding_after)
            if merged and not slideshow and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
                merged[-1][2].extend(rows)
            else:
                merged.append([start, end, list(rows)])
        for start, end, rows in merged:
            best = max(rows, key=lambda r: (r.score, -r.timestamp))
            segments.append(Segment(
                video_id=str(video_id), video_name=str(best.video_name), source=str(best.video_path),
                start=float(start), end=float(end), score=float(best.score), hits=len(rows),
                best_timestamp=float(best.timestamp), thumbnails=tuple(str(r.thumbnail) for r in rows),
                hit_timestamps=tuple(float(r.timestamp) for r in rows), still=slideshow,
            ))  # fmt: skip
    return sorted(segments, key=lambda s: (s.video_name, s.start))


def select_segments(
    segments: Sequence[Segment], *, max_total_seconds: float, max_segments_per_video: int,
    order: Literal["time", "score"] = "time", still_seconds: float = 1.0, max_segment_seconds: float | None = None,
) -> list[Segment]:  # fmt: skip
    """Keep the best segments within the limits, in the requested order.

    Segments longer than `max_segment_seconds` are shortened around their best hit. The best
    `max_segments_per_video` of each source are candidates; then, best first, segments are kept
    until `max_total_seconds`; the one that crosses the limit is shortened around its best hit
    (when at least half a second is left). Stills count `still_seconds` each.
    """
    if max_segment_seconds:
        segments = [_trim(s, max_segment_seconds) if not s.still and s.duration > max_segment_seconds else s for s in segments]
    by_score = sorted(segments, key=lambda s: (-s.score, s.video_name, s.start))
    per_video: dict[str, int] = {}
    kept: list[Segment] = []
    total = 0.0
    for segment in by_score:
        if per_video.get(segment.video_id, 0) >= max_segments_per_video:
            continue
        length = still_seconds if segment.still else segment.duration
        left = max_total_seconds - total
        if left < 1e-9:
            break
        if length > left + 1e-9:
            if segment.still or left < 0.5:
                continue  # a shorter one further down may still fit
            segment, length = _trim(segment, left), left
        kept.append(segment)
        per_video[segment.video_id] = per_video.get(segment.video_id, 0) + 1
        total += length
    if order == "time":
        kept.sort(key=lambda s: (s.video_name, s.start))
    return kept


def _trim(segment: Segment, length: float) -> Segment:
    """The `length` seconds of a segment around its best hit (starting a little before it)."""
    start = min(max(segment.start, segment.best_timestamp - length / 3), segment.end - length)
    end = start + length
    inside = [i for i, t in enumerate(segment.hit_timestamps) if start - 1e-9 <= t < end] if segment.hit_timestamps else []
    if not inside:  # no per-hit detail: keep the counts as they were
        return _replace(segment, start=start, end=end)
    return _replace(segment, start=start, end=end, hits=len(inside), thumbnails=tuple(segment.thumbnails[i] for i in inside),
                    hit_timestamps=tuple(segment.hit_timestamps[i] for i in inside))  # fmt: skip


def _replace(segment: Segment, **changes: Any) -> Segment:
    return Segment(**{**asdict(segment), **changes})


# --- jobs: what to render -------------------------------------------------------------------------


@dataclass
class RenderJob:
    """One output video: its file stem, title card text and segments."""

    name: str
    kind: Literal["cluster", "query"]
    title: str
    segments: list[Segment]
    label: int | None = None
    query: str | None = None
    candidates: int = 0  # segments before the limits
    frames: int = 0  # hits before the limits

    def subtitle(self) -> str:
        sources = len({s.video_id for s in self.segments})
        seconds = sum(s.duration for s in self.segments if not s.still)
        parts = [f"{self.frames} frame{'s' * (self.frames != 1)}", f"{len(self.segments)} segment{'s' * (len(self.segments) != 1)}"]
        if self.candidates > len(self.segments):
            parts[-1] += f" (best of {self.candidates})"
        parts.append(f"{sources} video{'s' * (sources != 1)}")
        if seconds:
            parts.append(f"{seconds:.1f} s")
        return " · ".join(parts)


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug[:limit].rstrip("-") or "untitled"


def _frames_with_paths(run: RunPaths) -> tuple[pd.DataFrame, pd.DataFrame]:
    frames = read_table(run.table("frames"))
    videos = read_table(run.table("videos"))
    return frames, videos


def _make_job(kind, name, title, hits, frames, videos, options: RenderConfig, **extra) -> RenderJob:
    slideshow = options.mode == "slideshow"
    candidates = hit_segments(hits, frames, videos, padding_before=options.padding_before,
                              padding_after=options.padding_after, slideshow=slideshow)  # fmt: skip
    chosen = select_segments(candidates, max_total_seconds=options.max_total_seconds,
                             max_segments_per_video=options.max_segments_per_video, order=options.order,
                             still_seconds=options.slideshow_seconds, max_segment_seconds=options.max_segment_seconds)  # fmt: skip
    return RenderJob(name=name, kind=kind, title=title, segments=chosen, candidates=len(candidates),
                     frames=int(hits.frame_key.nunique()), **extra)  # fmt: skip


def cluster_jobs(run: RunPaths | Path | str, options: RenderConfig) -> list[RenderJob]:
    """One job per cluster of the latest labelling (noise excluded); hits score 1 - distance to the centroid."""
    from .cluster import NOISE

    run = run if isinstance(run, RunPaths) else RunPaths(run)
    clusters = read_table(run.table("clusters"))
    if clusters.empty:
        return []
    latest = clusters[clusters.labelling == clusters.labelling.iloc[-1]]
    frames, videos = _frames_with_paths(run)
    latest = latest[latest.frame_key.isin(frames.frame_key) & (latest.label != NOISE)]
    jobs = []
    for label, group in latest.groupby("label", sort=True):
        name = str(group["name"].iloc[0])
        hits = pd.DataFrame({"frame_key": group.frame_key, "score": 1.0 - group.distance.fillna(1.0)})
        jobs.append(_make_job("cluster", f"cluster_{int(label):02d}_{_slug(name)}", f"Cluster {int(label)} · {name}",
                              hits, frames, videos, options, label=int(label)))  # fmt: skip
    return jobs


def query_job(result: Any, run: RunPaths | Path | str, options: RenderConfig, *, name: str | None = None) -> RenderJob:
    """The job for one `search.SearchResult`: every hit it kept (top-k and above the threshold)."""
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    frames, videos = _frames_with_paths(run)
    return _make_job("query", name or f"query_{_slug(result.query)}", result.query, result.hits[["frame_key", "score"]],
                     frames, videos, options, query=result.query)  # fmt: skip


def query_jobs(run: RunPaths | Path | str, cfg: PipelineConfig) -> tuple[list[RenderJob], list[str]]:
    """One job per `search.queries` entry, with the configured top-k and threshold.

    Neighbour suppression is off here: adjacent hits are what merges into segments. Returns the
    jobs and notes for the queries no channel could answer (e.g. the weight-free fallback model
    has no text side).
    """
    from .search import SearchError, search

    run = run if isinstance(run, RunPaths) else RunPaths(run)
    jobs, notes, names = [], [], set()
    for query in cfg.search.queries:
        try:
            result = search(run, query, top_k=cfg.search.top_k, threshold=cfg.search.threshold, relative=cfg.search.relative,
                            min_text_score=cfg.search.min_text_score)  # fmt: skip
        except SearchError as error:
            notes.append(f"no video for query {query!r}: {error}")
            continue
        name = f"query_{_slug(query)}"
        while name in names:  # two queries with the same slug
            name += "_"
        names.add(name)
        jobs.append(query_job(result, run, cfg.render, name=name))
    return jobs, notes


# --- ffmpeg ---------------------------------------------------------------------------------------


def ffmpeg_exe() -> str:
    """The ffmpeg binary bundled with imageio-ffmpeg (has libx264 and the AAC encoder)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _run_ffmpeg(args: list[str], *, timeout: float, what: str) -> None:
    """Run ffmpeg to completion (always reaped); raise `RenderError` with the tail of its log."""
    command = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise RenderError(f"{what}: ffmpeg took longer than {timeout:.0f} s (render.timeout_seconds) and was stopped") from None
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip()[-STDERR_TAIL:]
        raise RenderError(f"{what}: ffmpeg failed (exit {done.returncode}): {tail or 'no message'}")


def _encode_options(options: RenderConfig) -> list[str]:
    return ["-c:v", "libx264", "-preset", options.preset, "-crf", str(options.crf), "-pix_fmt", "yuv420p",
            "-r", _fps_text(options.fps), "-video_track_timescale", "90000"]  # fmt: skip


def _fps_text(fps: float) -> str:
    return repr(float(fps)).rstrip("0").rstrip(".") if float(fps) != int(fps) else str(int(fps))


def _scale_filter(options: RenderConfig) -> str:
    w, h = options.width, options.height
    return (f"scale={w}:{h}:force_original_aspect_ratio=decrease,pad={w}:{h}:(ow-iw)/2:(oh-ih)/2:color=black,"
            "setsar=1,format=yuv420p")  # fmt: skip


@dataclass(frozen=True)
class _Piece:
    """An encoded part of an output: video of exactly `frames` frames, and PCM audio (or silence)."""

    video: Path
    audio: Path | None
    frames: int


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _format_key(options: RenderConfig) -> dict[str, Any]:
    return {"v": RENDER_VERSION, "w": options.width, "h": options.height, "fps": options.fps, "crf": options.crf,
            "preset": options.preset}  # fmt: skip


def _frame_count(seconds: float, fps: float) -> int:
    return max(1, int(round(seconds * fps)))


def _audio_samples(frames: int, fps: float) -> int:
    return int(round(frames * AUDIO_RATE / fps))


def _source_problem(segment: Segment, expected_size: int | None) -> str | None:
    path = Path(segment.source)
    if not path.is_file():
        return ("source video not found (it was there when its frames were extracted); restore it, "
                "or set render.mode to slideshow or auto to show its frames as stills")  # fmt: skip
    if expected_size is not None and path.stat().st_size != expected_size:
        return (f"source video changed since extraction (now {path.stat().st_size} bytes, was {expected_size}); "
                "re-run the extract stage")  # fmt: skip
    return None


def _cut_clip(segment: Segment, frames: int, has_audio: bool, options: RenderConfig, cache: Path) -> _Piece:
    """Cut one segment from its source: exactly `frames` frames at the output size and rate, plus PCM audio."""
    key = _digest({"fmt": _format_key(options), "source": segment.video_id, "start": round(segment.start, 6),
                   "frames": frames, "audio": has_audio})  # fmt: skip
    video, audio = cache / f"clip-{key}.mp4", cache / f"clip-{key}.wav"
    if video.exists() and (audio.exists() or not has_audio):
        return _Piece(video, audio if has_audio else None, frames)
    samples = _audio_samples(frames, options.fps)
    tmp_video, tmp_audio = video.with_name(f".{video.name}.tmp.mp4"), audio.with_name(f".{audio.name}.tmp.wav")
    # Seek a hair before the start so the frame on screen at the start (pts <= start) is the first kept.
    args = ["-ss", f"{max(0.0, segment.start - SEEK_MARGIN):.6f}", "-i", segment.source,
            # pad with the last frame if the source ends early, so the count is always exact
            "-map", "0:v:0", "-vf", f"fps={_fps_text(options.fps)},{_scale_filter(options)},tpad=stop=-1:stop_mode=clone",
            "-frames:v", str(frames), "-an", "-sn", "-dn", *_encode_options(options), "-f", "mp4", str(tmp_video)]  # fmt: skip
    if has_audio:
        args += ["-map", "0:a:0", "-vn", "-sn", "-dn",
                 "-af", f"aresample={AUDIO_RATE},aformat=sample_fmts=s16:channel_layouts=stereo,apad,atrim=end_sample={samples}",
                 "-c:a", "pcm_s16le", "-f", "wav", str(tmp_audio)]  # fmt: skip
    try:
        _run_ffmpeg(args, timeout=options.timeout_seconds,
                    what=f"{segment.source} {segment.start:.2f}-{segment.end:.2f} s")  # fmt: skip
        os.replace(tmp_video, video)
        if has_audio:
            os.replace(tmp_audio, audio)
    finally:
        tmp_video.unlink(missing_ok=True)
        tmp_audio.unlink(missing_ok=True)
    return _Piece(video, audio if has_audio else None, frames)


def _make_pieces(segments: Sequence[Segment], frames: Sequence[int], videos: pd.DataFrame, run: RunPaths,
                 options: RenderConfig, cache: Path) -> list[_Piece]:  # fmt: skip
    """Cut (or draw) every segment, `options.workers` ffmpeg processes at a time, in order."""
    from concurrent.futures import ThreadPoolExecutor

    def make(segment: Segment, count: int) -> _Piece:
        if segment.still:
            return _still_piece(segment, count, run, options, cache)
        has_audio = bool(videos.has_audio.get(segment.video_id, True)) if "has_audio" in videos else True
        return _cut_clip(segment, count, has_audio and _probe_has_audio(segment.source), options, cache)

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


def _load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int, max_lines: int = 3) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(".") + "…"
    return lines


def title_card(title: str, subtitle: str, size: tuple[int, int]) -> Image.Image:
    """The opening card of an output video: the title (wrapped) and a line of counts."""
    width, height = size
    card = Image.new("RGB", size, (18, 22, 30))
    draw = ImageDraw.Draw(card)
    big, small = _load_font(max(12, height // 9)), _load_font(max(10, height // 17))
    lines = _wrap(draw, title, big, int(width * 0.88))
    line_height = int(max(12, height // 9) * 1.25)
    y = height // 2 - (len(lines) * line_height) // 2 - line_height // 3
    for line in lines:
        draw.text((width / 2, y), line, font=big, fill=(240, 242, 245), anchor="ma")
        y += line_height
    draw.text((width / 2, y + line_height // 3), subtitle, font=small, fill=(160, 170, 185), anchor="ma")
    return card


def _letterbox(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    image = image.convert("RGB")
    scale = min(size[0] / image.width, size[1] / image.height)
    resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", size, "black")
    canvas.paste(resized, ((size[0] - resized.width) // 2, (size[1] - resized.height) // 2))
    return canvas


def _encode_stills(stills: list[tuple[Image.Image, int]], key: str, options: RenderConfig, cache: Path, what: str) -> _Piece:
    """Encode still pictures, each for a number of frames, as one silent piece (raw frames piped to ffmpeg)."""
    video = cache / f"stills-{key}.mp4"
    total = sum(n for _, n in stills)
    if video.exists():
        return _Piece(video, None, total)
    size = (options.width, options.height)
    tmp = video.with_name(f".{video.name}.tmp.mp4")
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{size[0]}x{size[1]}", "-r", _fps_text(options.fps), "-i", "-",
               "-frames:v", str(total), *_encode_options(options), "-f", "mp4", str(tmp)]  # fmt: skip
    with tempfile.TemporaryFile() as log_file:
        try:
            with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log_file) as process:
                try:
                    assert process.stdin is not None
                    for image, count in stills:
                        data = np.asarray(_letterbox(image, size), dtype=np.uint8).tobytes()
                        for _ in range(count):
                            process.stdin.write(data)
                    process.stdin.close()
                    process.wait(timeout=options.timeout_seconds)
                except BrokenPipeError:
                    process.wait(timeout=options.timeout_seconds)
                except subprocess.TimeoutExpired:
                    process.kill()
                    raise RenderError(f"{what}: ffmpeg took longer than {options.timeout_seconds:.0f} s and was stopped") from None
                except BaseException:
                    process.kill()
                    raise
            if process.returncode != 0:
                log_file.seek(0)
                tail = log_file.read().decode("utf-8", "replace").strip()[-STDERR_TAIL:]
                raise RenderError(f"{what}: ffmpeg failed (exit {process.returncode}): {tail or 'no message'}")
            os.replace(tmp, video)
        finally:
            tmp.unlink(missing_ok=True)
    return _Piece(video, None, total)


def _still_piece(segment: Segment, frames: int, run: RunPaths, options: RenderConfig, cache: Path) -> _Piece:
    """A segment shown as its hits' thumbnails, sharing its frames equally."""
    thumbs = list(segment.thumbnails) or []
    if not thumbs:
        raise RenderError(f"{segment.source}: no thumbnails to show for {segment.start:.2f}-{segment.end:.2f} s")
    counts = [frames * (i + 1) // len(thumbs) - frames * i // len(thumbs) for i in range(len(thumbs))]
    pairs = [(t, n) for t, n in zip(thumbs, counts) if n > 0]
    key = _digest({"fmt": _format_key(options), "stills": pairs})
    if (cache / f"stills-{key}.mp4").exists():
        return _Piece(cache / f"stills-{key}.mp4", None, frames)
    images = []
    for thumb, count in pairs:
        path = run.absolute(thumb)
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


def _join(pieces: Sequence[_Piece], options: RenderConfig, target: Path, workdir: Path, what: str) -> None:
    """Concatenate the pieces' video without re-encoding, encode the joined audio once, write `target` atomically."""
    listing = workdir / "pieces.txt"
    lines = []
    for piece in pieces:
        quoted = str(piece.video).replace("'", "'\\''")
        lines.append(f"file '{quoted}'\nduration {piece.frames / options.fps:.6f}\n")
    listing.write_text("".join(lines), encoding="utf-8")
    audio = workdir / "audio.wav"
    _write_audio(pieces, options.fps, audio)
    tmp = target.with_name(f".{target.name}.tmp.mp4")
    try:
        _run_ffmpeg(["-f", "concat", "-safe", "0", "-i", str(listing), "-i", str(audio), "-map", "0:v:0", "-map", "1:a:0",
                     "-c:v", "copy", "-c:a", "aac", "-b:a", f"{options.audio_bitrate}k", "-movflags", "+faststart",
                     "-f", "mp4", str(tmp)], timeout=options.timeout_seconds, what=what)  # fmt: skip
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# --- rendering one output -------------------------------------------------------------------------


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
    return _replace(segment, start=round(start, 6), end=round(start + frames / fps, 6))


def _resolve_sources(job: RenderJob, videos: pd.DataFrame, mode: str) -> tuple[RenderJob, dict[str, str]]:
    """Check every source the job needs. In auto mode a lost source's segments become stills;
    otherwise the problems are returned, by source (the job cannot be rendered)."""
    problems: dict[str, str] = {}
    segments: list[Segment] = []
    seen: dict[str, str | None] = {}
    for segment in job.segments:
        if segment.still:
            segments.append(segment)
            continue
        if segment.source not in seen:
            size = videos.size_bytes.get(segment.video_id) if "size_bytes" in videos else None
            seen[segment.source] = _source_problem(segment, int(size) if size is not None and not pd.isna(size) else None)
        problem = seen[segment.source]
        if problem and mode == "auto":
            if segment.source not in problems:
                log.warning("%s: %s; %s shows its frames as stills", segment.source, problem, job.name)
            segments.append(_replace(segment, still=True))
            continue
        if problem:
            problems[segment.source] = problem
        segments.append(segment)
    if mode == "auto":
        return RenderJob(**{**job.__dict__, "segments": segments}), {}
    return RenderJob(**{**job.__dict__, "segments": segments}), problems


def render_job(
    job: RenderJob, run: RunPaths | Path | str, options: RenderConfig, *, dest: Path | None = None, force: bool = False
) -> RenderedVideo:
    """Render one job to `dest` (default `videos/<job.name>.mp4` in the run), with its contact sheet.

    Raises `RenderError` (naming the file) when a source is gone or ffmpeg fails; the file at
    `dest` is then left as it was.
    """
    started = time.perf_counter()
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    target = Path(dest) if dest is not None else run.videos / f"{job.name}.mp4"
    if not job.segments:
        return RenderedVideo(job, None, status="empty", error="no hits to render", seconds=time.perf_counter() - started)
    videos = _videos_meta(run)
    job, problems = _resolve_sources(job, videos, options.mode)
    if problems:
        raise RenderError("; ".join(f"{source}: {reason}" for source, reason in problems.items()), problems)
    still_frames = _frame_count(options.slideshow_seconds, options.fps)
    # a slideshow hit shows for slideshow_seconds; a lost source's segment keeps its length
    piece_frames = [_frame_count(s.duration, options.fps) if s.duration > 0 else still_frames * max(1, len(s.thumbnails))
                    for s in job.segments]  # fmt: skip
    job = RenderJob(**{**job.__dict__, "segments": [_on_frame_grid(s, n, videos, options.fps)
                                                    for s, n in zip(job.segments, piece_frames)]})  # fmt: skip
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
            return RenderedVideo(job, target, total_frames / options.fps, total_frames, table, sheet_path, "cached",
                                 seconds=time.perf_counter() - started, title_seconds=title_frames / options.fps)  # fmt: skip
    cache = run.cache / "render"
    cache.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    pieces: list[_Piece] = []
    title = _title_piece(job, options, cache)
    if title is not None:
        pieces.append(title)
    pieces.extend(_make_pieces(job.segments, piece_frames, videos, run, options, cache))
    with tempfile.TemporaryDirectory(prefix=".render-", dir=target.parent) as workdir:
        _join(pieces, options, target, Path(workdir), what=str(target))
    contact = output_contact_sheet(target, table, title_frames / options.fps)
    _save_png(contact, sheet_path)
    atomic_write_json(meta_path, {
        "fingerprint": fingerprint, "kind": job.kind, "title": job.title, "subtitle": subtitle, "frames": total_frames,
        "fps": options.fps, "pieces": sorted({p.video.name for p in pieces} | {p.audio.name for p in pieces if p.audio}),
        "segments": table.to_dict("records"),
    })  # fmt: skip
    return RenderedVideo(job, target, total_frames / options.fps, total_frames, table, sheet_path, "rendered",
                         seconds=time.perf_counter() - started, title_seconds=title_frames / options.fps)  # fmt: skip


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


def _save_png(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", optimize=True)
    os.replace(tmp, path)


def output_contact_sheet(video: Path, segments: pd.DataFrame, title_seconds: float = 0.0, *, tile_width: int = 192,
                         columns: int = 6) -> Image.Image:  # fmt: skip
    """A grid of frames decoded from a rendered video: its title card and the middle of each segment,
    labelled with the source and time they were cut from."""
    import av

    from .plots import format_time

    wanted = []
    if title_seconds > 0:
        wanted.append((title_seconds / 2, "title"))
    for row in segments.itertuples():
        middle = (row.output_start + row.output_end) / 2
        source_time = row.start + (middle - row.output_start) if row.mode == "clip" else row.best_timestamp
        wanted.append((middle, f"#{row.position} {Path(row.video_name).stem[:12]} {format_time(source_time)}"))
    wanted.sort()
    grabs: list[tuple[Image.Image, str]] = []
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = 0
        for frame in container.decode(stream):
            if index >= len(wanted):
                break
            t = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
            while index < len(wanted) and t + 1e-6 >= wanted[index][0] - 0.5 / max(1.0, float(stream.average_rate or 24)):
                grabs.append((frame.to_image(), wanted[index][1]))
                index += 1
    if not grabs:
        return Image.new("RGB", (tile_width, tile_width // 2), "white")
    aspect = grabs[0][0].height / grabs[0][0].width
    tile_height, label = int(round(tile_width * aspect)), 14
    cols = min(columns, len(grabs))
    rows = math.ceil(len(grabs) / cols)
    sheet = Image.new("RGB", (cols * tile_width, rows * (tile_height + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, text) in enumerate(grabs):
        x, y = (i % cols) * tile_width, (i // cols) * (tile_height + label)
        sheet.paste(image.resize((tile_width - 2, tile_height - 2), Image.Resampling.BILINEAR), (x + 1, y + 1))
        draw.text((x + 3, y + tile_height + 1), text, fill="black")
    return sheet


# --- the stage ------------------------------------------------------------------------------------


@dataclass
class RenderSummary:
    """What the render stage did: one `RenderedVideo` per output, tables, notes, problems."""

    rendered: list[RenderedVideo]
    notes: list[str]
    skipped: list[SkippedInput]
    seconds: float

    @property
    def videos(self) -> pd.DataFrame:
        return _video_rows(self.rendered)

    @property
    def segments(self) -> pd.DataFrame:
        parts = [r.segments for r in self.rendered if len(r.segments)]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=SEGMENT_COLUMNS)

    @property
    def counts(self) -> dict[str, int | float]:
        status = [r.status for r in self.rendered]
        ok = [r for r in self.rendered if r.status in {"rendered", "cached"}]
        return {
            "videos": len(ok),
            "cluster_videos": sum(r.job.kind == "cluster" for r in ok),
            "query_videos": sum(r.job.kind == "query" for r in ok),
            "rendered": status.count("rendered"),
            "cached": status.count("cached"),
            "failed": status.count("failed"),
            "empty": status.count("empty"),
            "segments": int(sum(len(r.segments) for r in ok)),
            "output_seconds": round(sum(r.duration for r in ok), 2),
            "render_seconds": round(self.seconds, 2),
        }


def _video_rows(rendered: Iterable[RenderedVideo], run: RunPaths | None = None) -> pd.DataFrame:
    rows = []
    for r in rendered:
        def rel(path: Path | None) -> str:
            if path is None:
                return ""
            return run.relative(path) if run is not None else str(path)

        rows.append({
            "name": r.job.name, "kind": r.job.kind, "title": r.job.title, "path": rel(r.path) if r.status in {"rendered", "cached"} else "",
            "contact_sheet": rel(r.contact_sheet), "duration": round(r.duration, 3), "frames": r.frames,
            "segments": len(r.segments), "sources": int(r.segments.video_id.nunique()) if len(r.segments) else 0,
            "title_seconds": r.title_seconds, "mode": ",".join(sorted(set(r.segments["mode"]))) if len(r.segments) else "",
            "status": r.status, "error": r.error, "seconds": round(r.seconds, 2),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=VIDEO_COLUMNS)


def render_run(cfg: PipelineConfig, run: RunPaths | Path | str, *, force: bool = False) -> RenderSummary:
    """The render stage: a video per cluster and per configured query, tables, contact sheets.

    One output failing (a lost source, an ffmpeg error) is recorded with its reason and the
    others still render. Outputs of earlier runs that are no longer wanted are removed, and so
    are cached cuts no output uses any more.

    Writes ``videos/<name>.mp4|.png|.json``, ``tables/render_videos.parquet`` and
    ``tables/render_segments.parquet`` (+ ``.csv``).
    """
    started = time.perf_counter()
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    options = cfg.render
    jobs: list[RenderJob] = []
    notes: list[str] = []
    if options.clusters:
        if run.table("clusters").exists():
            jobs.extend(cluster_jobs(run, options))
        else:
            notes.append("no cluster videos: the cluster stage has not run (tables/clusters.parquet is missing)")
    if options.queries and cfg.search.queries:
        query_list, query_notes = query_jobs(run, cfg)
        jobs.extend(query_list)
        notes.extend(query_notes)
    rendered: list[RenderedVideo] = []
    skipped: dict[str, SkippedInput] = {}
    bar = progress_bar(total=len(jobs), desc="render", unit="video")
    try:
        for job in jobs:
            try:
                result = render_job(job, run, options, force=force)
            except RenderError as error:
                log.error("render %s: %s", job.name, error)
                result = RenderedVideo(job, None, status="failed", error=str(error))
                for source, reason in error.sources.items():
                    skipped.setdefault(source, SkippedInput(source, reason, stage="render"))
            rendered.append(result)
            if result.status in {"rendered", "cached"}:
                log.info("%s: %s (%d segments, %.1f s)", job.name, result.status, len(result.segments), result.duration)
            bar.update(1)
    finally:
        bar.close()
    _remove_stale(run, {r.job.name for r in rendered if r.status in {"rendered", "cached"}} | {j.name for j in jobs})
    _prune_cache(run, rendered)
    summary = RenderSummary(rendered, notes, list(skipped.values()), time.perf_counter() - started)
    videos_table = _video_rows(rendered, run)
    write_table(videos_table, run.table("render_videos"))
    segments = summary.segments
    write_table(segments, run.table("render_segments"))
    (run.tables / "render_segments.csv").write_text(segments.to_csv(index=False), encoding="utf-8")
    for note in notes:
        log.info("render: %s", note)
    log.info("render: %d videos (%d rendered, %d cached, %d failed) in %.1f s", summary.counts["videos"],
             summary.counts["rendered"], summary.counts["cached"], summary.counts["failed"], summary.seconds)  # fmt: skip
    return summary


def _remove_stale(run: RunPaths, wanted: set[str]) -> None:
    """Outputs of earlier runs (e.g. clusters that no longer exist); only files this stage made (with a .json)."""
    if not run.videos.is_dir():
        return
    for meta in run.videos.glob("*.json"):
        if meta.stem in wanted:
            continue
        for suffix in (".mp4", ".png", ".json"):
            meta.with_suffix(suffix).unlink(missing_ok=True)


def _prune_cache(run: RunPaths, rendered: list[RenderedVideo]) -> None:
    """Drop cached pieces of outputs that are not rendered any more (a failed output keeps its cuts)."""
    cache = run.cache / "render"
    if not cache.is_dir() or any(r.status == "failed" for r in rendered):
        return
    used = set()
    for r in rendered:
        if r.path is not None and r.path.with_suffix(".json").exists():
            used.update(json.loads(r.path.with_suffix(".json").read_text()).get("pieces", []))
    if not used:
        return
    for piece in cache.iterdir():
        if piece.name not in used:
            piece.unlink(missing_ok=True)


def source_files(run: RunPaths) -> list[list[Any]]:
    """Path, size and modification time of every source video of the run (None when it is gone)."""
    path = run.table("videos")
    if not path.exists():
        return []
    listing = []
    for source in sorted(read_table(path).video_path.astype(str)):
        try:
            stat = os.stat(source)
            listing.append([source, stat.st_size, stat.st_mtime_ns])
        except OSError:
            listing.append([source, None, None])
    return listing


def render_search(result: Any, run: RunPaths | Path | str, dest: Path | str, options: RenderConfig | None = None) -> RenderedVideo:
    """Render the hits of one search (`search.SearchResult`) to `dest` (an .mp4), e.g. for `frameatlas search --export-video`.

    Uses the run's `render` options unless `options` are given.

    Example:
        >>> render_search(search("outputs/demo", "a red car"), "outputs/demo", "red_car.mp4")  # doctest: +SKIP
    """
    from .search import _run_config

    run = run if isinstance(run, RunPaths) else RunPaths(run)
    options = options or _run_config(run).render
    dest = Path(dest)
    if dest.suffix.lower() != ".mp4":
        raise RenderError(f"{dest}: the video must be an .mp4 file")
    job = query_job(result, run, options, name=dest.stem)
    rendered = render_job(job, run, options, dest=dest)
    if rendered.status == "empty":
        raise RenderError(f"{result.query!r}: no hits, so no video")
    table = rendered.segments
    table.to_csv(dest.with_suffix(".csv"), index=False)
    return rendered


def video_html(path: Path | str, base: Path | str, *, width: int = 640) -> str:
    """An HTML5 player for a rendered video, with its path relative to `base` (the page's folder)."""
    import html

    relative = Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()
    src = html.escape(relative, quote=True)
    return (f'<video controls preload="metadata" width="{width}" src="{src}"></video>'
            f'<div><a href="{src}">{html.escape(Path(path).name)}</a></div>')  # fmt: skip
