"""Clips the investigator exports: a hit or a stretch of one video, cut with padding by the render library.

The clip goes to ``RUN_DIR/exports/<video>_<start>-<end>.mp4`` (with the render library's
contact sheet ``.png`` and fingerprint ``.json`` beside it), written under the run's lock: while
another process writes into the run, the export is refused naming it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..lock import RunLocked, run_lock
from ..render import RenderError, RenderJob, hit_segments, render_job
from ..render.segments import slug

log = logging.getLogger(__name__)

__all__ = ["EXPORT_COMMAND", "ExportRefused", "ExportedClip", "export_clip"]

EXPORT_COMMAND = "frameatlas serve (clip export)"


class ExportRefused(RuntimeError):
    """An export that cannot be made; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class ExportedClip:
    path: Path
    duration: float
    segments: list[dict]


def export_clip(view, *, frame_key: str | None = None, video_id: str | None = None, start: float | None = None,
                end: float | None = None, segment_id: str | None = None) -> ExportedClip:  # fmt: skip
    """Cut one clip into the run's `exports/` folder: around a frame (`frame_key`; with `segment_id`, an
    utterance of `tables/speech.parquet` said there, the clip covers it whole), or the sampled frames of
    `video_id` between `start` and `end` seconds; `render.padding_before/after` added.

    `view` is an `investigator.data.RunView`. Raises `ExportRefused` (409 when another process
    holds the run's lock, 400 when there is nothing to cut or the source cannot be cut).
    """
    frames = view.frames
    if frame_key is not None:
        chosen = frames[frames.frame_key == frame_key]
    else:
        rows = view.video_frames(video_id)
        chosen = rows[(rows.timestamp >= start - 1e-6) & (rows.timestamp <= end + 1e-6)]
        if chosen.empty and len(rows):  # a selection between two samples: the sample nearest its middle
            middle = (start + end) / 2
            chosen = rows.iloc[[int((rows.timestamp - middle).abs().to_numpy().argmin())]]
    if chosen.empty:
        raise ExportRefused("nothing to export: no sampled frame there")
    options = view.config.render.model_copy(update={"title_seconds": 0.0, "mode": "clips"})
    hits = pd.DataFrame({"frame_key": chosen.frame_key.to_numpy(), "score": 1.0})
    if segment_id is not None:
        said = _utterance(view, segment_id, str(chosen.video_id.iloc[0]))
        hits["speech_start"], hits["speech_end"] = said
    segments = hit_segments(hits, frames, view.videos_table, padding_before=options.padding_before,
                            padding_after=options.padding_after)  # fmt: skip
    first = segments[0]
    name = f"{slug(Path(first.video_name).stem, 30)}_{first.start:.2f}-{segments[-1].end:.2f}s".replace(".", "_") + ".mp4"
    dest = view.run.root / "exports" / name
    job = RenderJob(name=dest.stem, kind="query", title=name, segments=segments, frames=len(hits))
    try:
        with run_lock(view.run.root, EXPORT_COMMAND):
            dest.parent.mkdir(exist_ok=True)
            rendered = render_job(job, view.run, options, dest=dest,
                                  source_roots=[view.config.corpus.videos, view.run.root])  # fmt: skip
    except RunLocked as error:
        raise ExportRefused(str(error), status=409) from None
    except RenderError as error:
        raise ExportRefused(f"the clip cannot be cut: {error}") from None
    log.info("serve: exported %s (%.1f s)", dest, rendered.duration)
    segments_out = [{"start": s.start, "end": s.end, "video_name": s.video_name} for s in segments]
    return ExportedClip(dest, float(rendered.duration), segments_out)


def _utterance(view, segment_id: str, video_id: str) -> tuple[float, float]:
    """(start, end) of utterance `segment_id` of `video_id`, from the run's speech table; `ExportRefused` otherwise."""
    from ..store import read_table

    path = view.run.table("speech")
    said = read_table(path) if path.exists() else pd.DataFrame()
    row = said[(said.segment_id == segment_id) & (said.video_id == video_id)] if len(said) else said
    if row.empty:
        raise ExportRefused(f"segment_id={segment_id!r}: not an utterance of this frame's video (tables/speech.parquet)")
    return float(row.start.iloc[0]), float(row.end.iloc[0])
