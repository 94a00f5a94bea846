"""Hits become segments: pure logic, no files and no processes.

A hit covers its source from its own timestamp to the next sampled frame's; hits that are
adjacent samples of the same video merge, and `padding_before` / `padding_after` seconds are
added around each run of hits (segments that then overlap merge too). A hit that carries the
bounds of what was said there (`speech_start`, `speech_end`: the speech channel's hits) widens its
segment to the whole utterance plus the padding, so no sentence is cut mid-word; limits that
shorten segments keep such an utterance whole. `select_segments` keeps the best ones within the
per-video and total limits, in time or score order.

Example:
    >>> segments = hit_segments(hits, frames, videos, padding_before=0.5, padding_after=0.5)  # doctest: +SKIP
    >>> select_segments(segments, max_total_seconds=20, max_segments_per_video=4)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = ["FRAMES_TABLE", "RenderJob", "Segment", "frame_spans", "hit_segments", "replace_segment", "select_segments", "slug"]

# Where segments' sources and thumbnails are read from; errors name it with the row.
FRAMES_TABLE = "tables/frames.parquet"


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
    # Rows of the frames table the paths came from, so a refused path can be traced to its row:
    source_row: int | None = None  # the row `source` was read from (the best hit's)
    frame_rows: tuple[int, ...] = ()  # the hits' rows, in the order of `thumbnails`
    speech: tuple[float, float] | None = None  # (start, end) of the utterances the hits were found in

    @property
    def duration(self) -> float:
        return self.end - self.start

    def source_origin(self) -> str:
        """Where `source` was read from, for errors (e.g. "tables/frames.parquet row 12, column video_path")."""
        if self.source_row is None:
            return f"the source path of {self.video_name}"
        return f"{FRAMES_TABLE} row {self.source_row}, column video_path"

    def thumbnail_origin(self, index: int) -> str:
        """Where the `index`-th thumbnail path was read from, for errors."""
        if index < len(self.frame_rows):
            return f"{FRAMES_TABLE} row {self.frame_rows[index]}, column thumbnail"
        return f"a thumbnail of {self.video_name}"


def replace_segment(segment: Segment, **changes: Any) -> Segment:
    """A copy of `segment` with some fields changed."""
    return Segment(**{**asdict(segment), **changes})


def _frame_spans(frames: pd.DataFrame, videos: pd.DataFrame) -> pd.DataFrame:
    """Each sampled frame's span: from its timestamp to the next sample of its video (or its end)."""
    frames = frames.sort_values(["video_id", "timestamp"], kind="stable")
    duration = frames.video_id.map(videos.set_index("video_id").duration) if len(videos) else pd.Series(np.nan, frames.index)
    following = frames.groupby("video_id", sort=False).timestamp.shift(-1)
    gaps = frames.groupby("video_id", sort=False).timestamp.diff()
    typical = gaps.groupby(frames.video_id).transform("median").fillna(1.0)
    last_end = np.minimum(duration.fillna(np.inf), frames.timestamp + typical)
    return frames.assign(span_end=following.fillna(last_end).astype(float), duration=duration.astype(float))


def frame_spans(frames: pd.DataFrame, videos: pd.DataFrame) -> pd.DataFrame:
    """The frames table with each frame's span (`span_end`), its video's `duration` and its `position` in the video:
    what `hit_segments` needs, computed once for many jobs over the same frames."""
    spans = _frame_spans(frames, videos)
    spans["position"] = spans.groupby("video_id", sort=False).cumcount()
    return spans


def hit_segments(
    hits: pd.DataFrame, frames: pd.DataFrame, videos: pd.DataFrame, *, padding_before: float = 0.5,
    padding_after: float = 0.5, slideshow: bool = False, spans: pd.DataFrame | None = None,
) -> list[Segment]:  # fmt: skip
    """Turn scored hits into segments of their source videos.

    Args:
        hits: rows with `frame_key` and `score` (higher is better); optional `speech_start` and
            `speech_end` (NaN when none): the utterance a hit was found in, which its segment then covers.
        frames: the run's frames table (`video_id`, `video_name`, `video_path`, `timestamp`, ...),
            with its row numbers as index (as read), so errors can name a row.
        videos: the run's videos table (for each video's `duration`).
        padding_before / padding_after: seconds added around each run of adjacent hits.
        slideshow: one still segment per hit instead (no merging, no padding).
        spans: `frame_spans(frames, videos)`, when already computed (many jobs over the same frames).

    Returns:
        Segments in (video name, start) order; their score is their best hit's.

    Example:
        >>> hit_segments(pd.DataFrame({"frame_key": keys, "score": 1.0}), frames, videos)  # doctest: +SKIP
    """
    if hits.empty:
        return []
    spans = frame_spans(frames, videos) if spans is None else spans
    unique = hits.drop_duplicates("frame_key").set_index("frame_key")
    scores = unique.score
    chosen = spans[spans.frame_key.isin(scores.index)].assign(score=lambda t: t.frame_key.map(scores).astype(float))
    for column in ("speech_start", "speech_end"):
        values = unique[column].astype(float) if column in unique else pd.Series(dtype=float)
        chosen[column] = chosen.frame_key.map(values).astype(float)
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
            speech = _speech_bounds(rows)
            if slideshow:
                start, end = rows[0].timestamp, rows[0].timestamp
            else:
                start = max(0.0, min(rows[0].timestamp, speech[0] if speech else math.inf) - padding_before)
                end = min(duration, max(rows[-1].span_end, speech[1] if speech else -math.inf) + padding_after)
            if merged and not slideshow and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
                merged[-1][2].extend(rows)
            else:
                merged.append([start, end, list(rows)])
        for start, end, rows in merged:
            speech = None if slideshow else _speech_bounds(rows)
            best = max(rows, key=lambda r: (r.score, -r.timestamp))
            segments.append(Segment(
                video_id=str(video_id), video_name=str(best.video_name), source=str(best.video_path),
                start=float(start), end=float(end), score=float(best.score), hits=len(rows),
                best_timestamp=float(best.timestamp), thumbnails=tuple(str(r.thumbnail) for r in rows),
                hit_timestamps=tuple(float(r.timestamp) for r in rows), still=slideshow,
                source_row=int(best.Index), frame_rows=tuple(int(r.Index) for r in rows), speech=speech,
            ))  # fmt: skip
    return sorted(segments, key=lambda s: (s.video_name, s.start))


def _speech_bounds(rows: list[Any]) -> tuple[float, float] | None:
    """The earliest start and latest end of the utterances some of `rows` were found in, or None."""
    starts = [r.speech_start for r in rows if not math.isnan(r.speech_start)]
    ends = [r.speech_end for r in rows if not math.isnan(r.speech_end)]
    return (float(min(starts)), float(max(ends))) if starts and ends else None


def select_segments(
    segments: Sequence[Segment], *, max_total_seconds: float, max_segments_per_video: int,
    order: Literal["time", "score"] = "time", still_seconds: float = 1.0, max_segment_seconds: float | None = None,
) -> list[Segment]:  # fmt: skip
    """Keep the best segments within the limits, in the requested order.

    Segments longer than `max_segment_seconds` are shortened around their best hit. The best
    `max_segments_per_video` of each source are candidates; then, best first, segments are kept
    until `max_total_seconds`; the one that crosses the limit is shortened around its best hit
    (when at least half a second is left). Stills count `still_seconds` each. A segment found in
    speech is never shortened below its utterance: it keeps the whole utterance, or is left out
    of the total when the utterance no longer fits.
    """
    if max_segment_seconds:
        segments = [_trim(s, max(max_segment_seconds, _spoken(s))) if not s.still and s.duration > max_segment_seconds else s
                    for s in segments]  # fmt: skip
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
            if segment.still or left < max(0.5, _spoken(segment)):
                continue  # a shorter one further down may still fit
            segment, length = _trim(segment, left), left
        kept.append(segment)
        per_video[segment.video_id] = per_video.get(segment.video_id, 0) + 1
        total += length
    if order == "time":
        kept.sort(key=lambda s: (s.video_name, s.start))
    return kept


def _spoken(segment: Segment) -> float:
    """How long the utterances of a segment last (0 without speech)."""
    return segment.speech[1] - segment.speech[0] if segment.speech else 0.0


def _trim(segment: Segment, length: float) -> Segment:
    """The `length` seconds of a segment around its best hit (starting a little before it), or, for a
    segment found in speech, around its utterance (`length` is then at least the utterance's)."""
    start = min(max(segment.start, segment.best_timestamp - length / 3), segment.end - length)
    if segment.speech:  # centre the window on the utterance, inside the segment
        spare = length - _spoken(segment)
        start = min(max(segment.start, segment.speech[0] - spare / 2), segment.end - length)
    end = start + length
    inside = [i for i, t in enumerate(segment.hit_timestamps) if start - 1e-9 <= t < end] if segment.hit_timestamps else []
    if not inside:  # no per-hit detail: keep the counts as they were
        return replace_segment(segment, start=start, end=end)
    return replace_segment(
        segment, start=start, end=end, hits=len(inside), thumbnails=tuple(segment.thumbnails[i] for i in inside),
        hit_timestamps=tuple(segment.hit_timestamps[i] for i in inside),
        frame_rows=tuple(segment.frame_rows[i] for i in inside) if segment.frame_rows else (),
    )  # fmt: skip


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
        parts = [
            f"{self.frames} frame{'s' * (self.frames != 1)}",
            f"{len(self.segments)} segment{'s' * (len(self.segments) != 1)}",
        ]
        if self.candidates > len(self.segments):
            parts[-1] += f" (best of {self.candidates})"
        parts.append(f"{sources} video{'s' * (sources != 1)}")
        if seconds:
            parts.append(f"{seconds:.1f} s")
        return " · ".join(parts)

    def with_segments(self, segments: list[Segment]) -> RenderJob:
        """The same job with other segments (e.g. aligned to the frame grid)."""
        return RenderJob(**{**self.__dict__, "segments": segments})


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe stem made of `text` (lower case, dashes)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug[:limit].rstrip("-") or "untitled"
