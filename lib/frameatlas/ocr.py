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

`caption.ocr.workers` readers (each with its own ONNX Runtime sessions) read frames at once, from every
video; which frames are read and which reuse a text is settled per video in time order first, so the
table is the same with any number of readers.

Example:
    >>> from frameatlas.ocr import read_frame_text
    >>> summary = read_frame_text(cfg, "outputs/demo")  # doctest: +SKIP
    >>> summary.table[summary.table.text != ""][["timestamp", "text"]].head()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .config import OcrConfig, PipelineConfig
from .corpus import SkippedInput, failure_reason
from .executor import Failed, open_executor
from .models.base import ModelRecord
from .models.device import usable_cpus
from .models.ocr import OcrReader, OcrUnavailable, TextLine, unavailable_record
from .progress import progress_bar
from .signature import NearDuplicates
from .store import RunPaths, frame_shards, in_frame_order, read_table, read_thumbnail, write_table
from .summary import StageSummary

log = logging.getLogger(__name__)

__all__ = ["OCR_COLUMNS", "OcrSummary", "ocr_sample_html", "ocr_workers", "read_frame_text"]

# another reader takes about a second to load (five ONNX Runtime sessions) and saves about half of the reading
# time: with fewer frames to read than this per extra reader (a new short clip), it would cost more than it saves
FRAMES_PER_EXTRA_READER = 50

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
    workers: int = 0  # readers that read frames at once this run (0: nothing read here)
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
            "ocr_workers": self.workers,
        }

    @property
    def model_records(self) -> list[dict[str, Any]]:
        return [self.record.as_dict()] if self.record is not None else []


def _settings_key(cfg: PipelineConfig, engine: str, runtime: str = "onnxruntime") -> str:
    options = cfg.caption.ocr
    settings = f"{engine}|{options.min_score}|{options.min_chars}|{options.detect_short_side}"
    if runtime != "onnxruntime":  # another runtime's arithmetic differs in the last bits: its texts are kept apart
        settings += f"|{runtime}"
    if options.reuse_distance is not None:  # reused texts are never mixed with another threshold's (or exact) ones
        settings += f"|reuse {options.reuse_distance}"
    if options.gate_short_side is not None:  # a gated frame's text is empty without a full read: its own cache
        settings += f"|gate {options.gate_short_side} {options.gate_score}"
    return hashlib.sha256(settings.encode()).hexdigest()[:12]


class _Readers:
    """Frames read by one loaded reader per thread: ONNX Runtime releases the GIL while it computes, and
    RapidOCR's many small recogniser calls keep two single-threaded readers busier than one reader with
    two threads. One reader reads in the calling thread, one frame after another, as before workers."""

    def __init__(self, readers: Sequence[OcrReader]):
        self.readers = list(readers)
        self._free: queue.SimpleQueue[OcrReader] = queue.SimpleQueue()
        self._local = threading.local()
        for reader in self.readers:
            self._free.put(reader)
        self._pool = ThreadPoolExecutor(len(self.readers), "ocr", self._take_reader) if len(self.readers) > 1 else None

    @property
    def record(self) -> ModelRecord:
        return self.readers[0].record

    def _take_reader(self) -> None:
        self._local.reader = self._free.get_nowait()

    def _read(self, thumbnail: Path) -> tuple[list[TextLine], bool]:
        reader = getattr(self._local, "reader", None) or self.readers[0]
        gated_before = reader.gated
        lines = reader.read(read_thumbnail(thumbnail))
        return lines, reader.gated > gated_before

    def submit(self, thumbnail: Path) -> Future | _ReadLater:
        """The frame's (text lines, whether the gate passed over it), or the error reading it raised; one
        reader reads the frame when its result is asked for."""
        return self._pool.submit(self._read, thumbnail) if self._pool is not None else _ReadLater(self._read, thumbnail)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class _ReadLater:
    """A read done in the calling thread when its result is first asked for."""

    def __init__(self, read: Callable[[Path], tuple[list[TextLine], bool]], thumbnail: Path):
        self._read, self._thumbnail = read, thumbnail
        self._outcome: tuple[list[TextLine], bool] | None = None
        self._error: Exception | None = None

    def exception(self) -> Exception | None:
        if self._outcome is None and self._error is None:
            try:
                self._outcome = self._read(self._thumbnail)
            except MemoryError:
                raise
            except Exception as error:  # noqa: BLE001 - handed to the caller, as a worker thread's error is
                self._error = error
        return self._error

    def result(self) -> tuple[list[TextLine], bool]:
        if error := self.exception():
            raise error
        return self._outcome


def _in_time_order(group: pd.DataFrame) -> list[int]:
    return sorted(range(len(group)), key=lambda i: group.timestamp.iat[i])


def _reuse_plan(group: pd.DataFrame, reuse_distance: int | None, failed: set[int]) -> dict[int, int | None]:
    """Which frame each frame of one video takes its text from (the position of its anchor), or None for
    frames read: frames in time order, a frame near-identical to the last frame read takes its text (see
    the module docstring). A frame whose read failed (`failed`) is no anchor, as when frames were read one by
    one: the plan depends on signatures and failures only, so the reads can run in any order."""
    signatures = group.signature.tolist() if "signature" in group else [None] * len(group)
    positions = {key: position for position, key in enumerate(group.frame_key)}
    near = NearDuplicates(reuse_distance)
    plan: dict[int, int | None] = {}
    for position in _in_time_order(group):
        anchor = near.anchor_for(signatures[position])
        plan[position] = None if anchor is None else positions[anchor]
        if anchor is None and position not in failed:
            near.computed(group.frame_key.iat[position], signatures[position])
    return plan


def _submit_reads(readers: _Readers, group: pd.DataFrame, thumbnails: list[Path], reuse_distance: int | None,
                  reads: dict[int, Future | _ReadLater] | None = None, failed: frozenset[int] = frozenset()) -> dict[int, Future | _ReadLater]:  # fmt: skip
    """The reads one video's reuse plan needs (besides those in `reads`), handed to the readers."""
    reads = {} if reads is None else reads
    for position, anchor in _reuse_plan(group, reuse_distance, set(failed)).items():
        if anchor is None and position not in reads:
            reads[position] = readers.submit(thumbnails[position])
    return reads


def _read_group(readers: _Readers | OcrReader, group: pd.DataFrame, thumbnails: list[Path], bar,
                reuse_distance: int | None = None, reads: dict[int, Future | _ReadLater] | None = None
                ) -> tuple[pd.DataFrame, list[str], int]:  # fmt: skip
    """The OCR table of one video's frames, why each frame left out could not be read, and how many
    frames the readers' text gate passed over.

    Frames go in time order; with `reuse_distance`, a frame near-identical to the last frame read
    takes its text (see the module docstring). A frame whose thumbnail cannot be read, or on which
    the reader fails, is left out; the rest of the video is still read. `reads` holds reads already
    handed to the readers (`_submit_reads`); a failed read changes the plan after it, and the frames that
    would have reused the failed frame's text are read themselves, as one reader going frame by frame does.
    """
    readers = readers if isinstance(readers, _Readers) else _Readers([readers])
    keys = group.frame_key.tolist()
    failed: set[int] = set()
    outcomes: dict[int, tuple[list[TextLine], bool]] = {}
    reads = _submit_reads(readers, group, thumbnails, reuse_distance, reads)
    while len(outcomes) + len(failed) < len(reads):
        for position in sorted(set(reads) - set(outcomes) - failed, key=lambda i: group.timestamp.iat[i]):
            try:
                outcomes[position] = reads[position].result()
            except MemoryError:
                raise
            except Exception as error:  # noqa: BLE001 - one frame's failure must not stop the pass
                log.debug("caption: on-screen text of %s failed", keys[position], exc_info=error)
                failed.add(position)
            bar.update(1)
        if failed:
            _submit_reads(readers, group, thumbnails, reuse_distance, reads, frozenset(failed))
    problems = []
    found: dict[int, tuple[str, int, float, str]] = {}  # position -> (text, lines, score, reused from)
    gated = 0
    for position, anchor in _reuse_plan(group, reuse_distance, failed).items():  # time order: anchors come first
        if anchor is not None:
            found[position] = (*found[anchor][:3], keys[anchor])
            if position not in reads:
                bar.update(1)
        elif position in failed:
            problems.append(f"frame {keys[position]}: {failure_reason(reads[position].exception())}")
        else:
            lines, passed_over = outcomes[position]
            gated += passed_over
            score = round(sum(line.score for line in lines) / len(lines), 4) if lines else 0.0
            found[position] = ("\n".join(line.text for line in lines), len(lines), score, "")
    kept = sorted(found)
    rows = group.iloc[kept]
    texts, counts, scores, reused_from = (list(column) for column in zip(*(found[i] for i in kept))) if kept else ([],) * 4
    table = pd.DataFrame({
        "frame_key": rows.frame_key.to_numpy(), "video_id": rows.video_id.to_numpy(), "timestamp": rows.timestamp.to_numpy(),
        "text": texts, "lines": counts, "score": scores, "engine": readers.record.model_id, "reused_from": reused_from,
    })  # fmt: skip
    return table, problems, gated


def _skipped_frames(group: pd.DataFrame, problems: list[str]) -> SkippedInput:
    """One manifest entry per video whose frames were (partly) left out, with the first reason."""
    video = (
        str(group.video_path.iloc[0]) if "video_path" in group and str(group.video_path.iloc[0]) else str(group.video_id.iloc[0])
    )
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    reason = f"on-screen text of {len(problems)} of {len(group)} frames not read: {problems[0]}{more}"
    return SkippedInput(video, reason, stage="caption", status="partial" if len(problems) < len(group) else "skipped")


def ocr_workers(cfg: PipelineConfig) -> tuple[int, int]:
    """How many readers read frames at once (`caption.ocr.workers`, default the CPUs this process may use) and
    ONNX Runtime's threads for each (`models.threads` shared among them, at least 1; one reader keeps
    `models.threads` as it is, 0 = every core)."""
    cpus = usable_cpus()
    workers = cfg.caption.ocr.workers or cpus
    return workers, cfg.models.threads if workers == 1 else max(1, (cfg.models.threads or cpus) // workers)


def read_frame_text(
    cfg: PipelineConfig, run: RunPaths | Path | str, *, force: bool = False,
    reader: OcrReader | Sequence[OcrReader] | None = None,
) -> OcrSummary:  # fmt: skip
    """Read the on-screen text of every frame into `tables/ocr.parquet` (see the module docstring).

    With `caption.ocr.enabled: false` the table is removed, so no stale text outlives the setting.
    Without the OCR package the run goes on: the summary's record says why there is no text.
    A frame whose thumbnail cannot be read (or that the reader fails on) gets no row and its
    video is listed in `summary.skipped`; its video is read again next run. A thumbnail path
    leading outside the run is refused (`UnsafePath`).

    Frames are read by `caption.ocr.workers` readers at once (`ocr_workers`); `reader` hands in loaded
    readers instead (one, or one per worker). Which frames are read and which reuse a text does not depend
    on the number of readers, and each reader gives a frame the same text, so neither does the table.
    """
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    table_path = run.table("ocr")
    if not cfg.caption.ocr.enabled:
        table_path.unlink(missing_ok=True)
        return OcrSummary(table=pd.DataFrame(columns=OCR_COLUMNS))
    frames = read_table(run.table("frames"))
    summary = OcrSummary(table=pd.DataFrame(columns=OCR_COLUMNS), frames=len(frames))
    workers, threads = ocr_workers(cfg)
    readers = [reader] if isinstance(reader, OcrReader) else list(reader or [])
    if not readers:
        try:
            readers = [OcrReader(cfg.caption.ocr, threads)]
        except OcrUnavailable as error:
            log.warning("caption: %s", error)
            summary.record = unavailable_record(str(error))
            summary.notes.append(f"no on-screen text: {error}")
            table_path.unlink(missing_ok=True)
            return summary
    for one in readers:
        one.follow_gate(cfg.caption.ocr)  # a reader handed in reads with this config's gate, which the cache key names
    summary.record = readers[0].record
    summary.reuse_distance = cfg.caption.ocr.reuse_distance
    summary.gate_short_side = cfg.caption.ocr.gate_short_side
    key = _settings_key(cfg, summary.record.model_id, getattr(readers[0], "runtime", "onnxruntime"))
    tables, todo = frame_shards(frames, run.root / "ocr" / key, force=force)
    tables = [table if "reused_from" in table else table.assign(reused_from="") for table in tables]  # read before reuse existed
    summary.cached = sum(map(len, tables))
    if todo and cfg.run.executor == "ray":  # each video read by a Ray worker; what they wrote is gathered here
        todo = _read_on_workers(cfg, run, readers[0], todo, tables, summary)
    if todo:
        thumbnails = {shard: run.thumbnails(group) for shard, group in todo}  # refuse crafted paths first
        if reader is None:  # the other readers load only when there is work for them (about 1 s each to load)
            wanted = min(workers, 1 + sum(len(group) for _, group in todo) // FRAMES_PER_EXTRA_READER)
            readers += [OcrReader(cfg.caption.ocr, threads) for _ in range(wanted - len(readers))]
        started = time.perf_counter()  # reading time, as before there were more readers to load
        summary.workers = len(readers)
        pool = _Readers(readers)
        bar = progress_bar(total=sum(len(g) for _, g in todo), desc="on-screen text", unit="frame")
        try:
            # every video's reads are handed to the readers at once (kept busy from one video to the next); the
            # results are taken video by video in time order, and each finished video is cached at once
            reads = {shard: _submit_reads(pool, group, thumbnails[shard], summary.reuse_distance) for shard, group in todo}
            for shard, group in todo:
                table, problems, gated = _read_group(pool, group, thumbnails[shard], bar, summary.reuse_distance, reads[shard])
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
            pool.close()
            bar.close()
        summary.seconds = time.perf_counter() - started
    table = in_frame_order(tables, frames, OCR_COLUMNS)
    write_table(table, table_path)
    summary.table = table
    log.info("caption: on-screen text of %d frames (%d read, of which %d reused a near-identical frame's and %d had no "
             "text candidate at the gate, %d cached), %d with text, %.3f s per frame read, %d readers at once", summary.frames,
             summary.read, summary.reused, summary.gated, summary.cached, summary.counts["ocr_frames_with_text"],
             summary.counts["ocr_seconds_per_frame"], summary.workers)  # fmt: skip
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
