"""Decode videos and sample frames: the extract stage.

Decoding streams through PyAV one frame at a time (memory stays flat however long the
video is), with FFmpeg's frame threading on every core. In interval and fps modes the
decoder skips non-reference frames that no sample needs (lossless: no other frame depends on
them). Only frames that are kept are converted to RGB and resized.

Sampling modes (`extract.mode`):

* ``interval``: one frame every `every_seconds`. For each target time ``t = k * interval``
  the frame on screen at ``t`` is kept (the last frame whose PTS is <= t), so a 10 s clip
  sampled every second gives exactly 10 frames, at 0, 1, ..., 9 s.
* ``fps``: the same with ``interval = 1 / fps``.
* ``keyframes``: only the stream's keyframes; the decoder skips every other frame.
* ``shots``: the interval samples plus the first frame of every shot found by
  PySceneDetect's ContentDetector (cuts are searched on small copies of every frame).

Timestamps come from each frame's PTS (seconds from the stream's start), so they stay right
for variable-frame-rate files. Rotation metadata (display matrix) is applied to thumbnails.
Each thumbnail's perceptual signature (a 32 x 18 grey miniature, `frameatlas.signature`) goes into
the frames table's `signature` column: per-frame models reuse results across near-identical frames.

A `SampleSink` (the embed pass) can take a second output of every kept frame, scaled straight
from the decoded picture (`model_input`): one decode, two outputs. `iter_frames_at` decodes a
video again at given frame times (linearly, or seeking for a few frames far apart).

Example:
    >>> from frameatlas.config import ExtractConfig
    >>> from frameatlas.frames import iter_samples
    >>> for sample in iter_samples("clip.mp4", ExtractConfig(every_seconds=2)):  # doctest: +SKIP
    ...     print(sample.timestamp, sample.frame_index)
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np
import pandas as pd
from PIL import Image

from .config import ExtractConfig, PipelineConfig
from .corpus import (
    CorpusListing,
    SkippedInput,
    VideoFile,
    content_hash,
    demo_missing,
    discover_videos,
    failure_reason,
    fetch_demo,
    video_in_corpus,
)
from .executor import Failed, open_executor, worker_threads
from .files import HashCache, atomic_write_json, fsync_folder, save_image
from .progress import progress_bar
from .signature import frame_signature, frame_signatures
from .store import RunPaths, read_table, read_thumbnail, write_table
from .summary import StageSummary

log = logging.getLogger(__name__)

__all__ = [
    "ExtractSummary",
    "Sample",
    "SampleSink",
    "VideoError",
    "VideoInfo",
    "contact_sheet",
    "extract_corpus",
    "extract_video",
    "iter_frames_at",
    "iter_samples",
    "model_input",
    "probe_video",
    "read_videos",
    "sampling_key",
]

FRAME_COLUMNS = [
    "frame_key", "video_id", "video_name", "video_path", "timestamp", "frame_index", "thumbnail",
    "width", "height", "shot_id", "is_shot_start", "sampling", "signature",
]  # fmt: skip

# Bump when sampling or thumbnail code changes in a way that changes its output.
EXTRACT_VERSION = 1


class VideoError(Exception):
    """A file that cannot be used as a video; `reason` is one line for people."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class VideoInfo:
    """What a video's container says about it (no decoding)."""

    path: str
    duration: float
    fps: float
    frame_count: int
    codec: str
    width: int  # as displayed: after rotation and pixel aspect ratio
    height: int
    rotation: int
    has_audio: bool
    audio_codec: str | None


@dataclass
class Sample:
    """One kept frame, still as decoded (YUV), plus where it sits in the video."""

    timestamp: float
    frame_index: int
    frame: av.VideoFrame
    shot_id: int | None = None
    is_shot_start: bool = False


def _av_reason(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error)
    if isinstance(error, av.error.InvalidDataError):
        return f"not a readable video (FFmpeg: {text})"
    return f"cannot decode ({type(error).__name__}: {text})"


def _display_rotation(frame: av.VideoFrame) -> int:
    """Counter-clockwise degrees, 0/90/180/270, from the frame's display matrix side data."""
    return int(round((frame.rotation or 0) / 90.0)) * 90 % 360


def _display_size(width: int, height: int, sar: Fraction | None, rotation: int) -> tuple[int, int]:
    if sar and sar > 0 and sar != 1:
        width = int(round(width * float(sar)))
    return (height, width) if rotation % 180 == 90 else (width, height)


def probe_video(path: Path | str) -> VideoInfo:
    """Read a video's metadata; raises `VideoError` with a one-line reason if it is unusable."""
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(path, "no video stream (audio-only or data file)")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            first = _first_frame(container, stream)
            if first is None:
                raise VideoError(path, "no decodable video frame (truncated or corrupt)")
            rotation = _display_rotation(first)
            duration = _duration_seconds(container, stream)
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            width, height = _display_size(ctx.width, ctx.height, ctx.sample_aspect_ratio, rotation)
            audio = container.streams.audio
            return VideoInfo(
                path=str(path),
                duration=duration,
                fps=float(rate) if rate else 0.0,
                frame_count=int(stream.frames or 0),
                codec=ctx.name,
                width=width,
                height=height,
                rotation=rotation,
                has_audio=bool(audio),
                audio_codec=audio[0].codec_context.name if audio else None,
            )
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError) as error:
        raise VideoError(path, _av_reason(error)) from None


def _first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> av.VideoFrame | None:
    try:
        for frame, _ in _decode(container, stream):
            return frame
    except _DecodingStopped:
        return None
    return None


def _duration_seconds(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def _interval_fraction(seconds: float) -> Fraction:
    return Fraction(seconds).limit_denominator(1_000_000)


@contextmanager
def _video_stream(path: Path, decode_threads: int) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """The open container and its first video stream, set up for threaded decoding; `VideoError`
    naming the file when it cannot be opened or has no video."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as error:
        raise VideoError(path, _av_reason(error)) from None
    with container:
        if not container.streams.video:
            raise VideoError(path, "no video stream (audio-only or data file)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = decode_threads
        yield container, stream


def iter_samples(path: Path | str, cfg: ExtractConfig, time_range: TimeRange | None = None) -> Iterator[Sample]:
    """Decode `path` once, yielding the frames the sampling mode keeps, in time order.

    Raises `VideoError` if the file cannot be opened; a decode error after some frames were
    yielded ends the iteration with `VideoError` as well (the caller keeps what it got).
    With `time_range` (interval and fps modes), only the frames a whole pass keeps for the range's
    targets, decoded from the keyframe before it (see `TimeRange`).
    """
    path = Path(path)
    if time_range is not None and (cfg.mode not in ("interval", "fps") or not cfg.interval_seconds):
        raise ValueError(f"time ranges need interval or fps sampling, not {cfg.mode}")
    with _video_stream(path, cfg.decode_threads) as (container, stream):
        if cfg.mode == "keyframes":
            stream.codec_context.skip_frame = "NONKEY"
        yield from _sample_stream(path, container, stream, cfg, time_range)


@dataclass(frozen=True)
class TimeRange:
    """A part of a video for range extraction: the sample targets `start_target` <= k < `end_target`
    (k * interval seconds; `end_target` None: to the video's end).

    A range keeps exactly the frames a whole pass keeps for its targets (the frame on screen at each
    target, each frame once, where its first target lies), with the same timestamps and frame indices:
    it decodes from the keyframe at `seek_pts` (the last at or before its first target; None: from the
    start), and numbers frames by their rank among all the stream's packets (`packet_pts`, sorted, from
    `scan_packets`). Anything a range cannot do exactly (a frame without a timestamp, a stream that ends
    early, a decoding error) raises `VideoError`: the video is then sampled whole.
    """

    start_target: int
    end_target: int | None
    seek_pts: int | None
    packet_pts: tuple[int, ...]
    first_pts: int  # the stream's first frame: every target up to it is the first range's

    @property
    def label(self) -> str:
        return f"{self.start_target:09d}"


def scan_packets(path: Path | str) -> tuple[tuple[int, ...], tuple[int, ...], int | None, Fraction]:
    """(Every video packet's PTS, sorted; the keyframes' PTS; the stream's start time; its time base) of
    `path`, read without decoding (demuxing only; about 0.3 s for ten minutes of 720p H.264)."""
    path = Path(path)
    pts: list[int] = []
    keyframes: list[int] = []
    with _video_stream(path, 1) as (container, stream):
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keyframes.append(packet.pts)
        return tuple(sorted(pts)), tuple(sorted(keyframes)), stream.start_time, Fraction(stream.time_base or Fraction(1, 90000))


class _RangeInexact(VideoError):
    """A time range that cannot be sampled exactly as a whole pass would: sample the video whole."""


class _DecodingStopped(Exception):
    def __init__(self, error: av.error.FFmpegError):
        self.error = error


def _decode(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    needed: Callable[[av.Packet], bool] | None = None,
    packet_pts: Sequence[int] | None = None,
) -> Iterator[tuple[av.VideoFrame, int | None]]:
    """Frames in presentation order, each with its frame index (its rank among all the
    stream's packets by PTS, so it stays exact when frames are skipped).

    `needed(packet)` lets the caller skip decoding non-reference frames it will not keep:
    other frames never depend on them, so this is lossless and saves most of the work on
    streams with B-frames. On a read or decode error (a truncated or damaged file) the frames
    still inside the decoder are flushed out first, then `_DecodingStopped` is raised.
    `packet_pts`: every packet's PTS, sorted, known beforehand (a decode that starts mid-stream).
    """
    context = stream.codec_context
    known = packet_pts is not None
    packet_pts = packet_pts if known else []

    def indexed(frames: list[av.VideoFrame]) -> Iterator[tuple[av.VideoFrame, int | None]]:
        for frame in frames:
            yield frame, (bisect.bisect_left(packet_pts, frame.pts) if frame.pts is not None else None)

    try:
        for packet in container.demux(stream):
            if packet.pts is not None and not known:
                bisect.insort(packet_pts, packet.pts)
            if needed is not None:
                context.skip_frame = "DEFAULT" if packet.size == 0 or needed(packet) else "NONREF"
            yield from indexed(stream.decode(packet))
    except av.error.FFmpegError as error:
        try:
            yield from indexed(stream.decode(None))
        except av.error.FFmpegError:
            pass
        raise _DecodingStopped(error) from None


def _covers_a_target(origin: int, time_base: Fraction, step: Fraction) -> Callable[[av.Packet], bool]:
    """Whether a packet's frame is on screen at some sample time k * step."""

    def needed(packet: av.Packet) -> bool:
        if packet.pts is None or not packet.duration:
            return True  # unknown span: decode to be safe
        start = (packet.pts - origin) * time_base
        end = start + packet.duration * time_base
        first_target = -(-start // step) * step  # the first k * step >= start
        return first_target < end

    return needed


def _sample_stream(
    path: Path, container: av.container.InputContainer, stream: av.video.stream.VideoStream, cfg: ExtractConfig,
    time_range: TimeRange | None = None,
) -> Iterator[Sample]:  # fmt: skip
    time_base = stream.time_base or Fraction(1, 90000)
    origin = stream.start_time
    rate = stream.average_rate or stream.guessed_rate
    step = _interval_fraction(cfg.interval_seconds) if cfg.interval_seconds else None
    next_target = Fraction(0)
    end: Fraction | None = None  # a range's end: the first target of the next range
    if time_range is not None:
        if origin is None or step is None:
            raise _RangeInexact(path, "no stream start time: sampled whole")
        next_target = range_start = time_range.start_target * step
        end = time_range.end_target * step if time_range.end_target is not None else None
        if time_range.seek_pts is not None:
            container.seek(time_range.seek_pts, stream=stream, backward=True)
    detector = _ShotDetector(cfg, rate, time_base) if cfg.mode == "shots" else None
    shot_id = 0 if detector else None
    held: Sample | None = None  # the previous frame: it is on screen until this one
    held_emitted = False
    held_time = Fraction(0)  # exact PTS time of `held`
    decoded = 0
    t = Fraction(0)

    # Non-reference frames that no sample needs are not decoded (interval and fps modes).
    needed = _covers_a_target(origin, time_base, step) if step is not None and detector is None and origin is not None else None
    try:
        for frame, packet_index in _decode(container, stream, needed, time_range.packet_pts if time_range is not None else None):
            if frame.pts is None and time_range is not None:
                raise _RangeInexact(path, "a frame without a timestamp: sampled whole")
            if frame.pts is None:  # rare; assume the nominal rate
                t = t + (1 / Fraction(rate) if rate else Fraction(1, 25)) if decoded else Fraction(0)
            else:
                if origin is None:
                    origin = frame.pts
                t = (frame.pts - origin) * time_base
            if t < 0:
                continue  # pre-roll before the stream's start (edit lists)
            index = packet_index if packet_index is not None else decoded
            decoded += 1
            if cfg.mode == "keyframes":
                yield Sample(float(t), index, frame)
                continue
            if end is not None and t >= end:  # the next range's: the held frame may still cover targets of this one
                if held is None:
                    raise _RangeInexact(path, f"no frame before {float(end):.2f} s: sampled whole")
                if not held_emitted and next_target < end:
                    yield held
                return

            # Targets before this frame were on screen while the held frame was.
            while step is not None and held is not None and next_target < t:
                if not held_emitted:
                    yield held
                    held_emitted = True
                next_target += step

            is_cut = detector.is_cut(frame, t) if detector else False
            if is_cut:
                shot_id += 1  # type: ignore[operator]
            current = Sample(float(t), index, frame, shot_id, is_cut)
            earlier_range = False  # a frame that a range before this one keeps, or that no target of this one needs
            if time_range is not None and time_range.start_target > 0:
                earlier_range = frame.pts == time_range.first_pts or t <= range_start - step
            if held is None and time_range is not None and time_range.start_target > 0:
                if t > next_target and not earlier_range:  # the seek landed after the frame on screen at the first target
                    raise _RangeInexact(path, f"decoding from the keyframe before {float(next_target):.2f} s started later")
                emit = t == next_target and not earlier_range
                while next_target <= t:
                    next_target += step
            elif held is None and step is not None:
                emit = True  # targets up to the first frame map to the first frame
                while next_target <= t:
                    next_target += step
            elif step is not None and t == next_target:
                emit = True
                next_target += step
            else:
                emit = is_cut
            if emit:
                yield current
            held, held_emitted, held_time = current, emit or earlier_range, t
        if end is not None:
            raise _RangeInexact(path, f"the stream ended before {float(end):.2f} s: sampled whole")
        # The last frame stays on screen for its duration: it also covers targets in that span.
        if step is not None and held is not None:
            span = held.frame.duration * time_base if held.frame.duration else (1 / Fraction(rate) if rate else 0)
            if not held_emitted and next_target < held_time + span:
                yield held
            # A file cut short often just ends early: compare with the length its header promises.
            expected = stream.duration * time_base if stream.duration else None
            if decoded and expected and expected - (held_time + span) > max(Fraction(1, 2), 2 * span):
                raise VideoError(
                    path, f"decoding stopped at {float(held_time):.2f} s of {float(expected):.2f} s (truncated file?)"
                )
    except _DecodingStopped as stopped:
        if decoded == 0:
            raise VideoError(path, f"no decodable video frame: {_av_reason(stopped.error)}") from None
        raise VideoError(path, f"decoding stopped at {float(t):.2f} s: {_av_reason(stopped.error)}") from None
    if decoded == 0:
        raise VideoError(path, "no decodable video frame (truncated or corrupt)")


class _ShotDetector:
    """PySceneDetect's ContentDetector fed with small BGR copies of every frame."""

    def __init__(self, cfg: ExtractConfig, rate: Fraction | None, time_base: Fraction):
        from scenedetect.common import FrameTimecode, Timecode
        from scenedetect.detector import FlashFilter
        from scenedetect.detectors import ContentDetector

        self._frame_timecode = FrameTimecode
        self._timecode = Timecode
        self._rate = Fraction(rate) if rate else Fraction(25)
        self._time_base = Fraction(time_base)
        self._width = cfg.shot_analysis_width
        # SUPPRESS reports a cut on the frame where it happens (MERGE may report it late).
        self._detector = ContentDetector(
            threshold=cfg.shot_threshold,
            min_scene_len=float(cfg.min_shot_seconds),
            filter_mode=FlashFilter.Mode.SUPPRESS,
        )
        self._seen_first = False

    def is_cut(self, frame: av.VideoFrame, t: Fraction) -> bool:
        height = max(2, int(round(frame.height * self._width / frame.width / 2)) * 2)
        small = frame.reformat(width=self._width, height=height, format="bgr24").to_ndarray()
        pts = int(round(t / self._time_base))
        timecode = self._frame_timecode(self._timecode(pts, self._time_base), fps=self._rate)
        cuts = self._detector.process_frame(timecode, small)
        first, self._seen_first = not self._seen_first, True
        return bool(cuts) and not first


# --- thumbnails and per-video shards ------------------------------------------------------


def sampling_key(cfg: ExtractConfig) -> str:
    """Short hash of the parameters that change which frames are kept or how they look."""
    relevant = {
        "version": EXTRACT_VERSION,
        "mode": cfg.mode,
        "interval": str(_interval_fraction(cfg.interval_seconds)) if cfg.interval_seconds else None,
        "thumbnail_long_side": cfg.thumbnail_long_side,
        "jpeg_quality": cfg.jpeg_quality,
    }
    if cfg.mode == "shots":
        relevant |= {"threshold": cfg.shot_threshold, "min_shot": cfg.min_shot_seconds, "width": cfg.shot_analysis_width}
    blob = json.dumps(relevant, sort_keys=True).encode()
    return f"{cfg.mode}-{hashlib.sha256(blob).hexdigest()[:10]}"


def thumbnail(frame: av.VideoFrame, long_side: int, rotation: int) -> Image.Image:
    """Resize (never enlarge) so the long side is `long_side`, then apply the display rotation."""
    width, height = frame.width, frame.height
    sar = frame.sample_aspect_ratio if hasattr(frame, "sample_aspect_ratio") else None
    display_w = width * float(sar) if sar and sar > 0 else width
    scale = min(1.0, long_side / max(display_w, height))
    out_w = max(2, int(round(display_w * scale)))
    out_h = max(2, int(round(height * scale)))
    rgb = frame.reformat(width=out_w, height=out_h, format="rgb24", interpolation="AREA").to_ndarray()
    if rotation:
        rgb = np.rot90(rgb, k=rotation // 90)
    return Image.fromarray(np.ascontiguousarray(rgb))


def model_input(frame: av.VideoFrame, size: tuple[int, int], rotation: int) -> Image.Image:
    """The frame scaled by FFmpeg straight from the decoded picture to `size` (width, height as
    displayed), then rotated for display: an image model's input without a JPEG round trip."""
    width, height = size
    if rotation % 180 == 90:
        width, height = height, width
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
    if rotation:
        rgb = np.rot90(rgb, k=rotation // 90)
    return Image.fromarray(np.ascontiguousarray(rgb))


class SampleSink(Protocol):
    """Takes a second output from each kept frame while the extract stage decodes (the embed
    pass: `frameatlas.embed.FrameEmbedder`). It must not raise: extraction goes on regardless."""

    def input_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The image size wanted for a video displayed at width x height (None: nothing wanted)."""

    def add(self, video_id: str, frame_key: str, image: Image.Image) -> None:
        """One kept frame, as `model_input` made it."""

    def video_done(self, video_id: str, frames: pd.DataFrame) -> None:
        """Every frame of the video was given; `frames` is its finished frames table."""

    def video_failed(self, video_id: str) -> None:
        """The video's shard was abandoned: forget its frames."""


def iter_frames_at(
    path: Path | str, timestamps: Sequence[float], *, decode_threads: int = 0, seek: bool = False
) -> Iterator[tuple[float, av.VideoFrame]]:
    """Decode `path` again and yield (timestamp, frame) for the frames whose PTS time is one of
    `timestamps` (as the frames table holds them), in time order.

    Packets whose frame is no target and that no other frame depends on are not decoded, and
    decoding stops after the last target. `seek=True` jumps to the keyframe before each target
    instead of decoding the stretches in between: for a few frames far apart. Raises `VideoError`
    when the file cannot be decoded or a target is not found.
    """
    path = Path(path)
    wanted = sorted({float(t) for t in timestamps})
    if not wanted:
        return
    with _video_stream(path, decode_threads) as (container, stream):
        time_base = stream.time_base or Fraction(1, 90000)
        origin = stream.start_time
        if seek and origin is not None:
            for target in wanted:
                container.seek(origin + int(Fraction(target) / time_base), stream=stream, backward=True)
                yield from _frames_at(path, container, stream, [target], origin, time_base)
        else:
            yield from _frames_at(path, container, stream, wanted, origin, time_base)


def _frames_at(
    path: Path, container, stream, wanted: list[float], origin: int | None, time_base: Fraction
) -> Iterator[tuple[float, av.VideoFrame]]:
    tolerance = 1e-6
    pending = list(wanted)

    def needed(packet: av.Packet) -> bool:
        if packet.pts is None or not packet.duration or origin is None:
            return True
        start = float((packet.pts - origin) * time_base)
        end = float((packet.pts - origin + packet.duration) * time_base)
        i = bisect.bisect_left(pending, start - tolerance)
        return i < len(pending) and pending[i] < end

    try:
        for frame, _ in _decode(container, stream, needed):
            if frame.pts is None:
                continue
            if origin is None:
                origin = frame.pts
            t = float((frame.pts - origin) * time_base)
            i = bisect.bisect_left(pending, t - tolerance)
            if i < len(pending) and abs(pending[i] - t) <= tolerance:
                yield pending.pop(i), frame
                if not pending:
                    return
            elif pending and t > pending[-1] + 1.0:
                break  # past every target: they are not in this stream
    except _DecodingStopped as stopped:
        raise VideoError(path, f"cannot decode again: {_av_reason(stopped.error)}") from None
    if pending:
        raise VideoError(path, f"no frame at {pending[0]:.3f} s any more (the video changed since extraction?)")


@dataclass
class VideoResult:
    video_id: str
    path: str
    frames: pd.DataFrame
    info: VideoInfo | None
    cached: bool
    problem: SkippedInput | None = None
    decoded_seconds: float = 0.0


def _shard_dir(run: RunPaths, video_id: str, key: str) -> Path:
    return run.frames / video_id / key


def extract_video(
    video: VideoFile,
    video_id: str,
    cfg: ExtractConfig,
    run: RunPaths,
    *,
    force: bool = False,
    position: int = 1,
    sink: SampleSink | None = None,
) -> VideoResult:
    """Sample one video into its shard (`frames/<video_id>/<sampling key>/`), or reuse the shard.

    The shard's `frames.parquet` is written last, after its thumbnails and `video.json`, so it
    only exists for finished work: a run killed halfway redoes just the unfinished video. Any
    error while sampling removes the unfinished shard and propagates (`VideoError` when the file
    is not a usable video; the stage skips the video whatever the error).

    With a `sink`, each kept frame also goes to it as `model_input` made it, from the same decoded
    picture (a cached shard is not decoded, so it gives the sink nothing).
    """
    key = sampling_key(cfg)
    shard = _shard_dir(run, video_id, key)
    table_path, meta_path = shard / "frames.parquet", shard / "video.json"
    if not force and table_path.exists():
        cached = _cached_result(video, video_id, table_path, meta_path, run)
        if cached is not None:
            return cached

    info = probe_video(video.path)  # raises VideoError: nothing decodable
    if shard.exists():
        shutil.rmtree(shard)  # leftovers of an interrupted run
    shard.mkdir(parents=True)
    try:
        return _sample_into_shard(video, video_id, cfg, run, info, shard, key, position, sink)
    except Exception:
        shutil.rmtree(shard, ignore_errors=True)  # never leave a shard that looks started
        if sink is not None:
            sink.video_failed(video_id)
        raise


def _cached_result(video: VideoFile, video_id: str, table_path: Path, meta_path: Path, run: RunPaths) -> VideoResult | None:
    """The finished shard's result, or None when it cannot be read (then the video is sampled again)."""
    try:
        meta = json.loads(meta_path.read_text())
        frames = read_table(table_path)
        info = VideoInfo(**meta["info"]) if meta.get("info") else None
        if "signature" not in frames:
            frames = _add_signatures(frames, run, table_path)
    except Exception as error:  # noqa: BLE001 - any damage to a cache means: redo the work
        log.warning("%s: cached frames unreadable (%s); sampling the video again", table_path.parent, failure_reason(error))
        return None
    frames["video_path"] = str(video.path)
    frames["video_name"] = video.path.name
    problem = SkippedInput(str(video.path), meta["problem"], status="partial") if meta.get("problem") else None
    return VideoResult(video_id, str(video.path), frames, info, cached=True, problem=problem)


def _add_signatures(frames: pd.DataFrame, run: RunPaths, table_path: Path) -> pd.DataFrame:
    """A shard made before frames had signatures gets them from its thumbnails, saved once into the shard."""
    frames = frames.assign(signature=frame_signatures(read_thumbnail(path) for path in run.thumbnails(frames)))
    write_table(frames, table_path)
    log.info("%s: signatures added to %d frames sampled before signatures existed", table_path.parent, len(frames))
    return frames


def _sample_into_shard(
    video: VideoFile,
    video_id: str,
    cfg: ExtractConfig,
    run: RunPaths,
    info: VideoInfo,
    shard: Path,
    key: str,
    position: int,
    sink: SampleSink | None = None,
) -> VideoResult:
    table_path, meta_path = shard / "frames.parquet", shard / "video.json"
    rows: list[dict] = []
    problem: SkippedInput | None = None
    started = time.perf_counter()
    bar = progress_bar(
        total=round(info.duration, 1) or None, desc=video.path.name[:30], unit="s", position=position, leave=False, detail=True
    )
    done_seconds = 0.0
    input_size = sink.input_size(info.width, info.height) if sink is not None else None
    try:
        for sample in iter_samples(video.path, cfg):
            rows.append(_keep_sample(sample, video, video_id, cfg, run, info, shard, key, sink, input_size))
            bar.update(round(sample.timestamp - done_seconds, 1))
            done_seconds = round(sample.timestamp, 1)
    except VideoError as error:
        if not rows:
            raise
        problem = SkippedInput(str(video.path), f"partial: {error.reason}; kept {len(rows)} frames", status="partial")
        log.warning("%s: %s", video.path, problem.reason)
    finally:
        bar.close()
    frames = pd.DataFrame(rows, columns=FRAME_COLUMNS).astype({"shot_id": "Int64"})
    fsync_folder(shard)
    atomic_write_json(meta_path, {"info": asdict(info), "problem": problem.reason if problem else None})
    write_table(frames.drop(columns=["video_path", "video_name"]), table_path)  # last: the shard is whole
    if input_size is not None:
        sink.video_done(video_id, frames)
    return VideoResult(
        video_id, str(video.path), frames, info, cached=False, problem=problem, decoded_seconds=time.perf_counter() - started
    )


def _keep_sample(
    sample: Sample, video: VideoFile, video_id: str, cfg: ExtractConfig, run: RunPaths, info: VideoInfo, shard: Path, key: str,
    sink: SampleSink | None, input_size: tuple[int, int] | None,
) -> dict:  # fmt: skip
    """A kept frame's thumbnail saved into `shard` (and its model input given to `sink`); its frames table row."""
    image = thumbnail(sample.frame, cfg.thumbnail_long_side, info.rotation)
    millis = int(round(sample.timestamp * 1000))
    if input_size is not None:  # one decode, two outputs: the model's input from the full picture
        sink.add(video_id, f"{video_id}:{millis}", model_input(sample.frame, input_size, info.rotation))  # type: ignore[union-attr]
    thumb_path = shard / f"t{millis:010d}.jpg"
    # One folder fsync for the whole shard, before its table commits it.
    save_image(image, thumb_path, format="JPEG", quality=cfg.jpeg_quality, sync_folder=False)
    return {
        "frame_key": f"{video_id}:{millis}",
        "video_id": video_id,
        "video_name": video.path.name,
        "video_path": str(video.path),
        "timestamp": sample.timestamp,
        "frame_index": sample.frame_index,
        "thumbnail": run.relative(thumb_path),
        "width": image.width,
        "height": image.height,
        "shot_id": sample.shot_id,
        "is_shot_start": sample.is_shot_start,
        "sampling": key,
        "signature": frame_signature(image),  # near-duplicate frames reuse per-frame results
    }


# --- the stage ------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ExtractSummary(StageSummary):
    """What the extract stage did; `counts` and `skipped` go to the run manifest."""

    videos: int = 0
    processed: int = 0
    cached: int = 0
    frames: int = 0
    video_seconds: float = 0.0
    decode_seconds: float = 0.0
    embedded: dict[str, float | int | str] = field(default_factory=dict)  # the embed pass fed while decoding
    ranges: int = 0  # time ranges sampled as units of their own (Ray: long videos split, `run.ray_unit_seconds`)

    @property
    def counts(self) -> dict[str, float | int | str]:
        return {
            **self.embedded,
            "videos": self.videos,
            "videos_processed": self.processed,
            "videos_cached": self.cached,
            "frames": self.frames,
            "skipped_inputs": len(self.skipped),
            "video_seconds": round(self.video_seconds, 2),
            "decode_seconds": round(self.decode_seconds, 2),
            **({"video_ranges": self.ranges} if self.ranges else {}),
        }


def prepare_corpus(cfg: PipelineConfig) -> CorpusListing:
    """List the corpus, fetching the demo videos first when the config asks for them."""
    corpus = cfg.corpus
    if corpus.demo and demo_missing(corpus.videos):
        fetch_demo(corpus.videos)
    return discover_videos(corpus.videos, corpus.extensions, corpus.recursive)


def extract_corpus(
    cfg: PipelineConfig, run: RunPaths | Path | str, *, force: bool = False, sink: SampleSink | None = None,
    worker_sink: Callable[[int], Any] | None = None,
) -> ExtractSummary:  # fmt: skip
    """Run the extract stage: sample every video, then write `tables/frames` and `tables/videos`.

    Videos already sampled with the same parameters are reused (by content hash), and the
    tables cover exactly the current corpus. Any error on one video (not a video, truncated, a
    decoder or image library failure, a disk error) skips that video with its reason in the
    summary; the others are sampled regardless. `sink` gets a second output of every frame
    decoded (see `extract_video`).

    With `run.executor: ray` the videos are sampled by Ray workers (`_extract_on_workers`);
    `worker_sink(threads)`, run once per worker, then stands for `sink` there (see
    `frameatlas.embed.WorkerFrameEmbedder`).
    """
    started = time.perf_counter()
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    listing = prepare_corpus(cfg)
    summary = ExtractSummary(skipped=list(listing.skipped))
    hashes = HashCache(run.cache / "content_hashes.json")
    remote: dict[str, VideoResult | str] = {}
    if cfg.run.executor == "ray":
        with open_executor(cfg.run, run.root) as executor:
            remote = _extract_on_workers(executor, cfg, run, listing.videos, hashes, summary, force, worker_sink)
    seen: dict[str, str] = {}
    frame_tables: list[pd.DataFrame] = []
    video_rows: list[dict] = []
    overall = progress_bar(total=len(listing.videos), desc="extract", unit="video", position=0)
    try:
        for video in listing.videos:
            try:
                video_id = content_hash(video.path, hashes)
                if video_id in seen:
                    summary.skipped.append(SkippedInput(str(video.path), f"same content as {seen[video_id]}; sampled once"))
                    overall.update(1)
                    continue
                seen[video_id] = str(video.path)
                if video_id in remote:  # done by a Ray worker: its result, or why it was skipped
                    result = remote.pop(video_id)
                    if isinstance(result, str):
                        raise VideoError(video.path, result)
                else:
                    result = extract_video(video, video_id, cfg.extract, run, force=force, sink=sink)
            except VideoError as error:
                _skip_video(summary, video, error.reason)
                overall.update(1)
                continue
            except MemoryError:
                raise
            except Exception as error:  # noqa: BLE001 - one odd file must not stop the corpus
                log.debug("extract: %s failed", video.path, exc_info=True)
                _skip_video(summary, video, failure_reason(error))
                overall.update(1)
                continue
            finally:
                hashes.save()
            if result.problem:
                summary.skipped.append(result.problem)
            summary.videos += 1
            summary.cached += result.cached
            summary.processed += not result.cached
            summary.frames += len(result.frames)
            summary.decode_seconds += result.decoded_seconds
            if result.info:
                summary.video_seconds += result.info.duration
            frame_tables.append(result.frames)
            video_rows.append(_video_row(video, video_id, result))
            overall.update(1)
            log.info("%s: %d frames (%s)", video.path.name, len(result.frames), "cached" if result.cached else "extracted")
    finally:
        overall.close()
    frames = pd.concat(frame_tables, ignore_index=True)[FRAME_COLUMNS] if frame_tables else pd.DataFrame(columns=FRAME_COLUMNS)
    frames = frames.astype({"shot_id": "Int64"})
    write_table(frames, run.table("frames"))
    write_table(pd.DataFrame(video_rows, columns=VIDEO_COLUMNS), run.table("videos"))
    for item in summary.skipped:
        log.warning("skipped input %s: %s", item.path, item.reason)
    log.info(
        "extract: %d videos (%d new, %d cached), %d frames, %d inputs skipped",
        summary.videos, summary.processed, summary.cached, summary.frames, len(summary.skipped),
    )  # fmt: skip
    summary.seconds = time.perf_counter() - started
    return summary


@dataclass(frozen=True)
class _ExtractUnit:
    """One video for a Ray worker (`_extract_on_worker`): where it is and where its shard goes."""

    video: VideoFile
    video_id: str
    cfg: ExtractConfig
    run_root: str
    force: bool


def _extract_on_worker(state: Any, unit: _ExtractUnit) -> dict[str, Any]:
    """Sample one video into its shard on a Ray worker (and embed its frames when the worker's `state`
    makes sinks); returns counts, or why the video is not usable (`skipped`). Other errors propagate:
    the executor tries the video again, then skips it with the error."""
    cfg = unit.cfg
    if not cfg.decode_threads:  # FFmpeg's threads: the CPUs this worker was given, not every core of the node
        cfg = cfg.model_copy(update={"decode_threads": worker_threads() or 1})
    sink = state.new_sink() if state is not None else None
    try:
        result = extract_video(unit.video, unit.video_id, cfg, RunPaths(unit.run_root), force=unit.force, sink=sink)
    except VideoError as error:
        return {"skipped": error.reason}
    finally:
        embedded = state.close_sink(sink) if sink is not None else {}
    return {"cached": result.cached, "decoded_seconds": result.decoded_seconds, "embedded": embedded,
            "sink_error": getattr(state, "error", None)}  # fmt: skip


@dataclass(frozen=True)
class _RangeUnit:
    """A time range of a long video for a Ray worker (`_extract_range_on_worker`); the driver joins the ranges."""

    unit: _ExtractUnit
    time_range: TimeRange
    info: VideoInfo

    @property
    def video_id(self) -> str:
        return self.unit.video_id


def _parts_dir(run: RunPaths, video_id: str, key: str) -> Path:
    """Where the ranges of a video being sampled in parts put their frames tables (beside its shard)."""
    return run.frames / video_id / f"{key}.parts"


def _extract_range_on_worker(state: Any, item: _RangeUnit) -> dict[str, Any]:
    """Sample one time range of a video on a Ray worker: its thumbnails into the video's shard folder (the driver
    made it), its rows into a part table, its vectors (when the worker's `state` makes sinks) into a vector part.
    Returns counts; `inexact`: why the range cannot match a whole pass (the driver then samples the video whole).
    Other errors propagate: the executor tries the range again, then the video is skipped with the error."""
    unit, time_range = item.unit, item.time_range
    cfg = unit.cfg
    if not cfg.decode_threads:
        cfg = cfg.model_copy(update={"decode_threads": worker_threads() or 1})
    run, key = RunPaths(unit.run_root), sampling_key(cfg)
    shard = _shard_dir(run, unit.video_id, key)
    sink = state.new_sink(part=time_range.label) if state is not None else None
    input_size = sink.input_size(item.info.width, item.info.height) if sink is not None else None
    started = time.perf_counter()
    rows: list[dict] = []
    try:
        for sample in iter_samples(unit.video.path, cfg, time_range):
            rows.append(_keep_sample(sample, unit.video, unit.video_id, cfg, run, item.info, shard, key, sink, input_size))
        frames = pd.DataFrame(rows, columns=FRAME_COLUMNS).astype({"shot_id": "Int64"})
        write_table(
            frames.drop(columns=["video_path", "video_name"]), _parts_dir(run, unit.video_id, key) / f"{time_range.label}.parquet"
        )
        if input_size is not None and len(frames):
            sink.video_done(unit.video_id, frames)  # type: ignore[union-attr]
    except VideoError as error:
        if sink is not None:
            sink.video_failed(unit.video_id)
            state.close_sink(sink)
        return {"inexact": error.reason}
    except BaseException:
        if sink is not None:
            sink.video_failed(unit.video_id)
            state.close_sink(sink)
        raise
    embedded = state.close_sink(sink) if sink is not None else {}
    return {"frames": len(rows), "decoded_seconds": time.perf_counter() - started, "embedded": embedded,
            "sink_error": getattr(state, "error", None)}  # fmt: skip


def _plan_ranges(
    unit: _ExtractUnit, cfg: PipelineConfig, run: RunPaths, unit_seconds: float, workers: int = 2
) -> tuple[float, list[_RangeUnit]]:
    """(The video's duration, its time ranges) for a video to sample on Ray workers: no ranges (one unit) when
    it is short, already sampled, not sampled by interval or fps, or cannot be split exactly, or when the pass
    has one worker (ranges only cost it the decoding from their keyframes). Ranges hold a multiple of the image
    model's batch of targets, so the embedding batches are those of a whole pass."""
    extract = cfg.extract
    try:
        info = probe_video(unit.video.path)
    except Exception:  # noqa: BLE001 - the worker reports why (as a whole unit)
        return 0.0, []
    shard = _shard_dir(run, unit.video_id, sampling_key(extract))
    step = _interval_fraction(extract.interval_seconds) if extract.interval_seconds else None
    if (not unit_seconds or workers < 2 or step is None or extract.mode not in ("interval", "fps") or info.duration < 1.5 * unit_seconds
            or (not unit.force and (shard / "frames.parquet").exists())):  # fmt: skip
        return info.duration, []
    batch = cfg.models.image.batch_size
    targets = max(batch, round(unit_seconds / step / batch) * batch)  # per range
    try:
        packet_pts, keyframes, origin, time_base = scan_packets(unit.video.path)
    except Exception:  # noqa: BLE001 - sampled whole; the worker reports any problem
        return info.duration, []
    if origin is None or not packet_pts or not keyframes:
        return info.duration, []
    first_pts = min((pts for pts in packet_pts if pts >= origin), default=None)
    last = int(Fraction(info.duration) / step)  # the last target within the header's duration
    starts = list(range(0, last + 1, targets))
    if len(starts) > 1 and last - starts[-1] < targets // 2:
        starts.pop()  # a short tail joins the range before it
    if len(starts) < 2 or first_pts is None:
        return info.duration, []
    ranges = []
    for start, following in zip(starts, [*starts[1:], None]):
        seek = None
        if start:
            target_pts = origin + int(start * step / time_base)
            seek = keyframes[max(0, bisect.bisect_right(keyframes, target_pts) - 1)]
        ranges.append(_RangeUnit(unit, TimeRange(start, following, seek, packet_pts, first_pts), info))
    return info.duration, ranges


def _extract_on_workers(
    executor, cfg: PipelineConfig, run: RunPaths, videos: list[VideoFile], hashes: HashCache, summary: ExtractSummary,
    force: bool, worker_sink: Callable[[int], Any] | None,
) -> dict[str, VideoResult | str]:  # fmt: skip
    """Every video's shard made by Ray workers; by video id, its result (read back from the shard it
    wrote) or the reason it is skipped. Workers return counts only, never frames. The embedding
    counts of `worker_sink` go to `summary.embedded`.

    With more than one worker, a video longer than 1.5 x `run.ray_unit_seconds` is sampled in time ranges of
    about that length (interval and fps sampling), each a unit, so that a few long videos still keep every worker busy; the
    driver joins the ranges into the video's shard (and their vectors into its vector shard). A range that
    fails skips its video with the worker's error; one that cannot match a whole pass exactly (a damaged
    stream) has the video sampled whole instead. Units go out longest first."""
    executor.start(worker_sink)  # the workers start and load their models while the videos are hashed and split
    units: dict[str, _ExtractUnit] = {}
    for video in videos:
        try:
            video_id = content_hash(video.path, hashes)
        except Exception:  # noqa: BLE001 - the stage's loop hashes it again and reports why it cannot
            continue
        units.setdefault(video_id, _ExtractUnit(video, video_id, cfg.extract, str(run.root), force))
    hashes.save()
    key = sampling_key(cfg.extract)
    planned: list[tuple[float, Any]] = []
    for unit in units.values():
        seconds, ranges = _plan_ranges(unit, cfg, run, cfg.run.ray_unit_seconds, executor.workers)
        if not ranges:
            planned.append((seconds, unit))
            continue
        _clear_parts(run, unit.video_id, key)
        shard = _shard_dir(run, unit.video_id, key)
        if shard.exists():
            shutil.rmtree(shard)  # leftovers of an interrupted run
        shard.mkdir(parents=True)
        _parts_dir(run, unit.video_id, key).mkdir()
        step = cfg.extract.interval_seconds
        for item in ranges:
            end = item.time_range.end_target * step if item.time_range.end_target is not None else seconds
            planned.append((end - item.time_range.start_target * step, item))
    planned.sort(key=lambda pair: -pair[0])  # longest first: the last units to finish are short ones
    work = [item for _, item in planned]
    results: dict[str, VideoResult | str] = {}
    embedded: dict[str, Any] = {"frames_embedded": 0, "embed_model_seconds": 0.0}
    sink_errors: set[str] = set()
    whole_again: list[_ExtractUnit] = []
    outcomes = _map_units(executor, work, worker_sink)
    by_video: dict[str, list[tuple[_RangeUnit, Any]]] = {}
    for item, outcome in zip(work, outcomes):
        if isinstance(item, _RangeUnit):
            by_video.setdefault(item.video_id, []).append((item, outcome))
        else:
            _whole_outcome(item, outcome, run, key, results, embedded, sink_errors)
    for video_id, parts in by_video.items():
        parts.sort(key=lambda pair: pair[0].time_range.start_target)
        unit = parts[0][0].unit
        failed = next((outcome for _, outcome in parts if isinstance(outcome, Failed)), None)
        inexact = next(
            (outcome["inexact"] for _, outcome in parts if not isinstance(outcome, Failed) and outcome.get("inexact")), None
        )
        if failed is not None or inexact is not None:
            _clear_parts(
                run,
                video_id,
                key,
                vectors=[p for _, o in parts if isinstance(o, dict) for p in o.get("embedded", {}).get("vector_files", [])],
            )
            shutil.rmtree(_shard_dir(run, video_id, key), ignore_errors=True)  # never a shard that looks started
            if failed is not None:
                results[video_id] = failed.reason
            else:
                log.info("extract: %s is sampled whole (%s)", unit.video.path.name, inexact)
                whole_again.append(unit)
            continue
        result = _join_ranges(run, unit, key, parts, embedded, sink_errors)
        summary.ranges += len(parts)
        results[video_id] = (
            result if result is not None else f"the ranges Ray workers sampled of {unit.video.path} cannot be joined"
        )
    if whole_again:
        for unit, outcome in zip(whole_again, _map_units(executor, whole_again, worker_sink)):
            _whole_outcome(unit, outcome, run, key, results, embedded, sink_errors)
    for error in sorted(sink_errors):
        log.warning("extract: not embedding while decoding on the Ray workers: %s", error)
    if worker_sink is not None and "embed_model" in embedded:
        embedded["embed_model_seconds"] = round(embedded["embed_model_seconds"], 2)
        summary.embedded = embedded
    return results


def _map_units(executor, work: list, worker_sink) -> list[Any]:
    """The units (whole videos, time ranges) on the workers, with a progress bar."""
    bar = progress_bar(total=len(work), desc=f"extract on {executor.describe()}"[:40], unit="unit", position=0)
    try:
        return executor.map(_extract_unit_on_worker, work, setup=worker_sink, on_done=lambda i, result: bar.update(1))
    finally:
        bar.close()


def _extract_unit_on_worker(state: Any, item: _ExtractUnit | _RangeUnit) -> dict[str, Any]:
    """A whole video (`_extract_on_worker`) or a time range of one (`_extract_range_on_worker`)."""
    if isinstance(item, _RangeUnit):
        return _extract_range_on_worker(state, item)
    return _extract_on_worker(state, item)


def _add_embedded(embedded: dict[str, Any], counts: dict[str, Any]) -> None:
    for name, value in counts.items():
        if name == "vector_files":
            continue
        embedded[name] = embedded.get(name, 0) + value if name != "embed_model" else value


def _whole_outcome(
    unit: _ExtractUnit, outcome: Any, run: RunPaths, key: str, results: dict, embedded: dict, sink_errors: set
) -> None:
    """A whole video's outcome on a worker: its result read back from its shard, or why it is skipped."""
    if isinstance(outcome, Failed):
        results[unit.video_id] = outcome.reason
        return
    if outcome.get("skipped"):
        results[unit.video_id] = outcome["skipped"]
        return
    shard = _shard_dir(run, unit.video_id, key)
    result = _cached_result(unit.video, unit.video_id, shard / "frames.parquet", shard / "video.json", run)
    if result is None:
        results[unit.video_id] = f"the shard a Ray worker wrote in {shard} cannot be read"
        return
    result.cached, result.decoded_seconds = outcome["cached"], outcome["decoded_seconds"]
    results[unit.video_id] = result
    if outcome["sink_error"]:
        sink_errors.add(outcome["sink_error"])
    _add_embedded(embedded, outcome["embedded"])


def _join_ranges(run: RunPaths, unit: _ExtractUnit, key: str, parts: list[tuple[_RangeUnit, dict]], embedded: dict,
                 sink_errors: set) -> VideoResult | None:  # fmt: skip
    """The ranges of a video joined into its shard, as a whole pass writes it (the table last), and their vector
    parts into its vector shard when every range with frames made one; the video's result read back."""
    shard, parts_dir = _shard_dir(run, unit.video_id, key), _parts_dir(run, unit.video_id, key)
    tables = [read_table(parts_dir / f"{item.time_range.label}.parquet") for item, _ in parts]
    kept = [table for table in tables if len(table)] or tables[:1]
    frames = pd.concat(kept, ignore_index=True).astype({"shot_id": "Int64"})
    info = parts[0][0].info
    fsync_folder(shard)
    atomic_write_json(shard / "video.json", {"info": asdict(info), "problem": None})
    write_table(frames, shard / "frames.parquet")  # last: the shard is whole
    vector_files = [outcome["embedded"].get("vector_files", []) for _, outcome in parts]
    with_frames = [files for files, table in zip(vector_files, tables) if len(table)]
    if with_frames and all(len(files) == 1 for files in with_frames):
        target = Path(with_frames[0][0].rsplit(".part-", 1)[0])
        write_table(pd.concat([pd.read_parquet(files[0]) for files in with_frames], ignore_index=True), target)
        for _, outcome in parts:
            _add_embedded(embedded, outcome["embedded"])
    for _, outcome in parts:
        if outcome["sink_error"]:
            sink_errors.add(outcome["sink_error"])
    _clear_parts(run, unit.video_id, key, vectors=[path for files in vector_files for path in files])
    result = _cached_result(unit.video, unit.video_id, shard / "frames.parquet", shard / "video.json", run)
    if result is not None:
        result.cached = False
        result.decoded_seconds = sum(outcome["decoded_seconds"] for _, outcome in parts)
    return result


def _clear_parts(run: RunPaths, video_id: str, key: str, vectors: Sequence[str] = ()) -> None:
    """Removes a video's range parts: the frames tables, and the vector parts named (or left by an earlier run)."""
    shutil.rmtree(_parts_dir(run, video_id, key), ignore_errors=True)
    leftovers = (run.root / "vectors").glob(f"*/{video_id}/{key}.*.part-*") if (run.root / "vectors").exists() else []
    for path in {*map(Path, vectors), *leftovers}:
        path.unlink(missing_ok=True)


def _skip_video(summary: ExtractSummary, video: VideoFile, reason: str) -> None:
    log.warning("skipped %s: %s", video.path, reason)
    summary.skipped.append(SkippedInput(str(video.path), reason))


VIDEO_COLUMNS = [
    "video_id", "video_name", "video_path", "size_bytes", "duration", "fps", "frame_count", "codec",
    "width", "height", "rotation", "has_audio", "audio_codec", "frames_sampled", "status", "note",
]  # fmt: skip


def _video_row(video: VideoFile, video_id: str, result: VideoResult) -> dict:
    info = asdict(result.info) if result.info else {}
    info.pop("path", None)
    return {
        "video_id": video_id,
        "video_name": video.path.name,
        "video_path": str(video.path),
        "size_bytes": video.size,
        **info,
        "frames_sampled": len(result.frames),
        "status": "partial" if result.problem else "ok",
        "note": result.problem.reason if result.problem else "",
    }


# --- looking at the result ------------------------------------------------------------------


def contact_sheet(
    frames: pd.DataFrame, run: RunPaths | Path | str, *, columns: int = 8, tile_width: int = 160, max_frames: int = 48
) -> Image.Image:
    """A grid of thumbnails (time order, evenly thinned to `max_frames`) with timestamps.

    Example:
        >>> sheet = contact_sheet(frames[frames.video_name == "bikes.mp4"], "outputs/demo")  # doctest: +SKIP
    """
    from .plots import Tile, format_time, image_grid

    run = run if isinstance(run, RunPaths) else RunPaths(run)
    frames = frames.sort_values("timestamp")
    if len(frames) > max_frames:
        picks = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = frames.iloc[np.unique(picks)]
    aspect = float((frames["height"] / frames["width"]).median()) if len(frames) else 0.5
    tiles = [Tile(path, format_time(time)) for path, time in zip(run.thumbnails(frames), frames.timestamp)]
    return image_grid(tiles, columns=columns, tile_width=tile_width, aspect=aspect)


def read_videos(run: RunPaths | Path | str, corpus_root: Path | str) -> pd.DataFrame:
    """`tables/videos.parquet` with every `video_path` checked to lie under `corpus_root` (the
    config's `corpus.videos`) and made absolute; a path elsewhere is refused (`UnsafePath` naming
    the table, the row and the path).
    """
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    videos = read_table(run.table("videos"))
    videos["video_path"] = [
        str(video_in_corpus(path, corpus_root, what=f"tables/videos.parquet row {row}, column video_path"))
        for row, path in zip(videos.index, videos.video_path)
    ]
    return videos


def summary_table(run: RunPaths | Path | str) -> pd.DataFrame:
    """One row per video: duration, resolution, audio, frames sampled."""
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    videos = read_table(run.table("videos"))
    columns = ["video_name", "duration", "fps", "codec", "width", "height", "rotation", "has_audio",
               "frames_sampled", "status", "note"]  # fmt: skip
    return videos[columns].sort_values("video_name").reset_index(drop=True)


def save_contact_sheets(run: RunPaths | Path | str, **sheet_options) -> list[tuple[dict, Path]]:
    """Write one contact-sheet JPEG per video of the run (`plots/contact_sheets/`); returns (video, path).

    A video whose thumbnails cannot be read gets no sheet (a warning says why); the others do.
    A thumbnail path leading outside the run is refused (`UnsafePath`).
    """
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    frames = read_table(run.table("frames"))
    videos = read_table(run.table("videos")).sort_values("video_name")
    keys_file = run.contact_sheet("_").with_name(SHEET_KEYS)
    try:
        known = json.loads(keys_file.read_text())
    except (OSError, ValueError):
        known = {}
    saved = []
    for video in videos.to_dict("records"):
        video_frames = frames[frames.video_id == video["video_id"]]
        thumbnails = run.thumbnails(video_frames)  # refuse a crafted path before reading anything
        key = _sheet_key(video_frames, thumbnails, sheet_options)
        target = run.contact_sheet(video["video_id"])
        if known.get(video["video_id"]) == key and target.is_file():  # the same thumbnails: the same sheet
            saved.append((video, target))
            continue
        try:
            sheet = contact_sheet(video_frames, run, **sheet_options)
        except MemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - one damaged video must not hide the others' sheets
            log.warning("no contact sheet for %s: %s", video["video_name"], failure_reason(error))
            continue
        path = save_image(sheet, target, format="JPEG", quality=85)
        known[video["video_id"]] = key
        saved.append((video, path))
    if saved:
        atomic_write_json(keys_file, known)
    return saved


SHEET_KEYS = "sheets.json"  # beside the sheets: what each was made from, so an unchanged video's sheet is kept


def _sheet_key(frames: pd.DataFrame, thumbnails: list[Path], options: dict[str, Any]) -> str:
    """What a contact sheet is made of: its frames' times and sizes, each thumbnail file's size and
    modification time, the sheet's options, and the code that draws it."""
    digest = hashlib.sha256(json.dumps([_drawing_code(), options], sort_keys=True, default=str).encode())
    for path, row in zip(thumbnails, frames[["timestamp", "width", "height"]].itertuples(index=False)):
        try:
            stat = path.stat()
            digest.update(f"{path}|{row.timestamp}|{row.width}|{row.height}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|missing\n".encode())
    return digest.hexdigest()[:24]


@functools.lru_cache(maxsize=1)
def _drawing_code() -> str:
    """The code that draws a sheet (this module and `plots`): a change there redraws every sheet."""
    from . import plots

    return hashlib.sha256(Path(__file__).read_bytes() + Path(plots.__file__).read_bytes()).hexdigest()[:16]
