"""On-screen text of every frame (part of the caption stage), for the `ocr` search channel.

Each thumbnail is read by `models.ocr.OcrReader` (RapidOCR, weights inside its package). The
result is `tables/ocr.parquet`: one row per frame with its lines joined by newlines (empty when
the frame shows no text), how many lines, their mean confidence and the engine. Work is cached
per video and settings under ``ocr/<settings>/``, so a re-run reads nothing it has read before;
`03_embed` then embeds the non-empty texts with the sentence encoder into the `ocr` channel.

With `caption.ocr.reuse_distance` set, a frame whose perceptual signature (the frames table's
`signature`) is within that many changed cells of the last frame read in the same video is not read:
it takes that frame's text, and its `reused_from` names the frame ("" for frames read).

With `caption.ocr.gate_short_side` set, a cheap detection at that size runs first and a frame on
which it finds no text candidate is not read at full size (`models.ocr.OcrReader`); its text is
empty. The stage summary counts those frames (`ocr_frames_gated`).

Example:
    >>> from frameatlas.ocr import read_frame_text
    >>> summary = read_frame_text(cfg, "outputs/demo")  # doctest: +SKIP
    >>> summary.table[summary.table.text != ""][["timestamp", "text"]].head()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .config import OcrConfig, PipelineConfig
from .corpus import SkippedInput, failure_reason
from .executor import Failed, open_executor
from .models.base import ModelRecord
from .models.ocr import OcrReader, OcrUnavailable, unavailable_record
from .progress import progress_bar
from .signature import NearDuplicates
from .store import RunPaths, frame_shards, in_frame_order, read_table, read_thumbnail, write_table
from .summary import StageSummary

log = logging.getLogger(__name__)

__all__ = ["OCR_COLUMNS", "OcrSummary", "ocr_sample_html", "read_frame_text"]

OCR_COLUMNS = ["frame_key", "video_id", "timestamp", "text", "lines", "score", "engine", "reused_from"]


@dataclass(kw_only=True)
class OcrSummary(StageSummary):
    """What the OCR pass did; it goes to the caption stage's manifest entry (`CombinedSummary.of(captions, ocr)`).

    `seconds` is the time spent reading text (not counting cached frames); `read` counts the frames
    done this run, `reused` those of them that took an earlier near-identical frame's text, `gated`
    those the text gate found no text candidate on (not read at full size; their text is empty).
    """

    table: pd.DataFrame
    record: ModelRecord | None = None  # None: OCR is off in the config
    reuse_distance: int | None = None
    frames: int = 0
    read: int = 0
    cached: int = 0
    reused: int = 0
    gate_short_side: int | None = None
    gated: int = 0
    unread: int = 0  # frames left out this run: thumbnail unreadable or the reader failed on them

    @property
    def counts(self) -> dict[str, Any]:
        if self.record is None:
            return {"ocr": "off"}
        with_text = int((self.table.text != "").sum()) if len(self.table) else 0
        return {
            "ocr_engine": self.record.model_id,
            "ocr_frames_read": self.read,
            "ocr_frames_cached": self.cached,
            "ocr_frames_reused": self.reused,
            "ocr_reuse_distance": "off" if self.reuse_distance is None else self.reuse_distance,
            "ocr_frames_gated": self.gated,
            "ocr_gate_short_side": "off" if self.gate_short_side is None else self.gate_short_side,
            "ocr_frames_with_text": with_text,
            "ocr_seconds": round(self.seconds, 2),
            "ocr_seconds_per_frame": round(self.seconds / self.read, 4) if self.read else 0.0,
            "ocr_frames_skipped": self.unread,
        }

    @property
    def model_records(self) -> list[dict[str, Any]]:
        return [self.record.as_dict()] if self.record is not None else []


def _settings_key(cfg: PipelineConfig, engine: str) -> str:
    options = cfg.caption.ocr
    settings = f"{engine}|{options.min_score}|{options.min_chars}|{options.detect_short_side}"
    if options.reuse_distance is not None:  # reused texts are never mixed with another threshold's (or exact) ones
        settings += f"|reuse {options.reuse_distance}"
    if options.gate_short_side is not None:  # a gated frame's text is empty without a full read: its own cache
        settings += f"|gate {options.gate_short_side} {options.gate_score}"
    return hashlib.sha256(settings.encode()).hexdigest()[:12]


def _read_group(
    reader: OcrReader, group: pd.DataFrame, thumbnails: list[Path], bar, reuse_distance: int | None = None
) -> tuple[pd.DataFrame, list[str], int]:
    """The OCR table of one video's frames, why each frame left out could not be read, and how many
    frames the reader's text gate passed over.

    Frames go in time order; with `reuse_distance`, a frame near-identical to the last frame read
    takes its text (see the module docstring). A frame whose thumbnail cannot be read, or on which
    the reader fails, is left out; the rest of the video is still read.
    """
    signatures = group.signature.tolist() if "signature" in group else [None] * len(group)
    keys = group.frame_key.tolist()
    positions = {key: position for position, key in enumerate(keys)}
    near = NearDuplicates(reuse_distance)
    found: dict[int, tuple[str, int, float, str]] = {}  # position -> (text, lines, score, reused from)
    problems = []
    gated_before = reader.gated
    for position in sorted(range(len(group)), key=lambda i: group.timestamp.iat[i]):
        frame_key = keys[position]
        bar.update(1)
        anchor = near.anchor_for(signatures[position])
        if anchor is not None:
            found[position] = (*found[positions[anchor]][:3], anchor)
            continue
        try:
            lines = reader.read(read_thumbnail(thumbnails[position]))
        except MemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - one frame's failure must not stop the pass
            log.debug("caption: on-screen text of %s failed", frame_key, exc_info=True)
            problems.append(f"frame {frame_key}: {failure_reason(error)}")
            continue
        near.computed(frame_key, signatures[position])
        score = round(sum(line.score for line in lines) / len(lines), 4) if lines else 0.0
        found[position] = ("\n".join(line.text for line in lines), len(lines), score, "")
    kept = sorted(found)
    rows = group.iloc[kept]
    texts, counts, scores, reused_from = (list(column) for column in zip(*(found[i] for i in kept))) if kept else ([],) * 4
    table = pd.DataFrame({
        "frame_key": rows.frame_key.to_numpy(), "video_id": rows.video_id.to_numpy(), "timestamp": rows.timestamp.to_numpy(),
        "text": texts, "lines": counts, "score": scores, "engine": reader.record.model_id, "reused_from": reused_from,
    })  # fmt: skip
    return table, problems, reader.gated - gated_before


def _skipped_frames(group: pd.DataFrame, problems: list[str]) -> SkippedInput:
    """One manifest entry per video whose frames were (partly) left out, with the first reason."""
    video = (
        str(group.video_path.iloc[0]) if "video_path" in group and str(group.video_path.iloc[0]) else str(group.video_id.iloc[0])
    )
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    reason = f"on-screen text of {len(problems)} of {len(group)} frames not read: {problems[0]}{more}"
    return SkippedInput(video, reason, stage="caption", status="partial" if len(problems) < len(group) else "skipped")


def read_frame_text(
    cfg: PipelineConfig, run: RunPaths | Path | str, *, force: bool = False, reader: OcrReader | None = None
) -> OcrSummary:
    """Read the on-screen text of every frame into `tables/ocr.parquet` (see the module docstring).

    With `caption.ocr.enabled: false` the table is removed, so no stale text outlives the setting.
    Without the OCR package the run goes on: the summary's record says why there is no text.
    A frame whose thumbnail cannot be read (or that the reader fails on) gets no row and its
    video is listed in `summary.skipped`; its video is read again next run. A thumbnail path
    leading outside the run is refused (`UnsafePath`).
    """
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    table_path = run.table("ocr")
    if not cfg.caption.ocr.enabled:
        table_path.unlink(missing_ok=True)
        return OcrSummary(table=pd.DataFrame(columns=OCR_COLUMNS))
    frames = read_table(run.table("frames"))
    summary = OcrSummary(table=pd.DataFrame(columns=OCR_COLUMNS), frames=len(frames))
    if reader is None:
        try:
            reader = OcrReader(cfg.caption.ocr, cfg.models.threads)
        except OcrUnavailable as error:
            log.warning("caption: %s", error)
            summary.record = unavailable_record(str(error))
            summary.notes.append(f"no on-screen text: {error}")
            table_path.unlink(missing_ok=True)
            return summary
    reader.follow_gate(cfg.caption.ocr)  # a reader handed in reads with this config's gate, which the cache key names
    summary.record = reader.record
    summary.reuse_distance = cfg.caption.ocr.reuse_distance
    summary.gate_short_side = cfg.caption.ocr.gate_short_side
    key = _settings_key(cfg, reader.record.model_id)
    tables, todo = frame_shards(frames, run.root / "ocr" / key, force=force)
    tables = [table if "reused_from" in table else table.assign(reused_from="") for table in tables]  # read before reuse existed
    summary.cached = sum(map(len, tables))
    if todo and cfg.run.executor == "ray":  # each video read by a Ray worker; what they wrote is gathered here
        todo = _read_on_workers(cfg, run, reader, todo, tables, summary)
    if todo:
        started = time.perf_counter()
        thumbnails = {shard: run.thumbnails(group) for shard, group in todo}  # refuse crafted paths first
        bar = progress_bar(total=sum(len(g) for _, g in todo), desc="on-screen text", unit="frame")
        try:
            for shard, group in todo:
                table, problems, gated = _read_group(reader, group, thumbnails[shard], bar, summary.reuse_distance)
                summary.gated += gated
                if problems:  # an incomplete shard is not cached: the video is read again next run
                    summary.unread += len(problems)
                    summary.skipped.append(_skipped_frames(group, problems))
                    log.warning("caption: %s: %s", summary.skipped[-1].path, summary.skipped[-1].reason)
                else:
                    write_table(table, shard)  # finished videos survive an interrupted run
                tables.append(table)
                summary.read += len(table)
                summary.reused += int((table.reused_from != "").sum())
        finally:
            bar.close()
        summary.seconds = time.perf_counter() - started
    table = in_frame_order(tables, frames, OCR_COLUMNS)
    write_table(table, table_path)
    summary.table = table
    log.info("caption: on-screen text of %d frames (%d read, of which %d reused a near-identical frame's and %d had no "
             "text candidate at the gate, %d cached), %d with text, %.3f s per frame read", summary.frames, summary.read,
             summary.reused, summary.gated, summary.cached, summary.counts["ocr_frames_with_text"],
             summary.counts["ocr_seconds_per_frame"])  # fmt: skip
    return summary


@dataclass(frozen=True)
class _WorkerOcrReader:
    """The OCR reader as a Ray worker loads it, once, with ONNX Runtime's threads at the worker's CPUs."""

    options: OcrConfig

    def __call__(self, threads: int) -> OcrReader:
        return OcrReader(self.options, threads)


class _Uncounted:
    def update(self, n: float = 1) -> None:
        pass


@dataclass(frozen=True)
class _OcrUnit:
    shard: Path
    group: pd.DataFrame
    thumbnails: list[Path]
    reuse_distance: int | None


def _read_on_worker(reader: OcrReader, unit: _OcrUnit) -> tuple[pd.DataFrame | None, list[str], int]:
    """One video's on-screen text on a Ray worker: a whole video's table goes to its shard (None comes
    back); a video with frames left out is not cached, so its few text rows come back with the reasons.
    The last item counts the frames the text gate passed over."""
    table, problems, gated = _read_group(reader, unit.group, unit.thumbnails, _Uncounted(), unit.reuse_distance)
    if problems:
        return table, problems, gated
    write_table(table, unit.shard)
    return None, [], gated


def _read_on_workers(cfg: PipelineConfig, run: RunPaths, reader: OcrReader, todo: list, tables: list,
                     summary: OcrSummary) -> list:  # fmt: skip
    """`read_frame_text`'s videos read by Ray workers (`run.executor: ray`), gathered into `tables` and
    `summary` as the local loop does; a video whose worker failed every try is skipped with its error.
    Returns what is left to read here: nothing."""
    started = time.perf_counter()
    columns = [c for c in ("frame_key", "video_id", "video_path", "timestamp", "signature") if c in todo[0][1]]
    units = [_OcrUnit(shard, group[columns], run.thumbnails(group), summary.reuse_distance) for shard, group in todo]
    bar = progress_bar(total=sum(len(g) for _, g in todo), desc="on-screen text", unit="frame")
    try:
        with open_executor(cfg.run, run.root) as executor:
            outcomes = executor.map(_read_on_worker, units, setup=_WorkerOcrReader(cfg.caption.ocr),
                                    on_done=lambda i, result: bar.update(len(units[i].group)))  # fmt: skip
    finally:
        bar.close()
    for (shard, group), outcome in zip(todo, outcomes):
        if isinstance(outcome, Failed):
            summary.unread += len(group)
            video = _skipped_frames(group, [""]).path
            summary.skipped.append(SkippedInput(video, f"on-screen text not read: {outcome.reason}", stage="caption"))
            log.warning("caption: %s: %s", summary.skipped[-1].path, summary.skipped[-1].reason)
            continue
        table, problems, gated = outcome
        summary.gated += gated
        if problems:
            summary.unread += len(problems)
            summary.skipped.append(_skipped_frames(group, problems))
            log.warning("caption: %s: %s", summary.skipped[-1].path, summary.skipped[-1].reason)
        else:
            table = read_table(shard)
        tables.append(table)
        summary.read += len(table)
        summary.reused += int((table.reused_from != "").sum())
    summary.seconds = time.perf_counter() - started
    return []


def ocr_sample_html(run: RunPaths | Path | str, table: pd.DataFrame, count: int = 12, width: int = 200) -> str:
    """An HTML table of up to `count` frames that show text, spread evenly over the run, each with its lines."""
    import html

    from .plots import frame_text_sample

    run = run if isinstance(run, RunPaths) else RunPaths(run)
    with_text = table[table.text.fillna("") != ""]
    if with_text.empty:
        return "<p>No frame shows text that the reader could read.</p>"
    return frame_text_sample(run, with_text, lambda row: "<br>".join(map(html.escape, str(row.text).split("\n"))),
                             count=count, heading="on-screen text", width=width)  # fmt: skip
