"""The render stage: what to render (a job per cluster and per query), render it, record it.

`render_run` is the stage (06_render); `render_search` renders the hits of one search for
`frameatlas search --export-video`, under the run's lock because it writes into the run's cut
cache.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import PipelineConfig, RenderConfig
from ..corpus import SkippedInput
from ..files import atomic_write_text
from ..lock import run_lock
from ..progress import progress_bar
from ..store import RunPaths, read_table, write_table
from ..summary import StageSummary
from .errors import RenderError
from .segments import RenderJob, frame_spans, hit_segments, select_segments, slug
from .video import SEGMENT_COLUMNS, RenderedVideo, is_render_metadata, render_job

log = logging.getLogger(__name__)

__all__ = [
    "VIDEO_COLUMNS",
    "RenderSummary",
    "cluster_jobs",
    "query_job",
    "query_jobs",
    "render_run",
    "render_search",
    "source_files",
    "source_roots",
    "video_html",
]

VIDEO_COLUMNS = ["name", "kind", "title", "path", "contact_sheet", "duration", "frames", "segments", "sources",
                 "title_seconds", "mode", "status", "error", "seconds"]  # fmt: skip
EXPORT_COMMAND = "frameatlas search --export-video"


def source_roots(cfg: PipelineConfig, run: RunPaths) -> list[Path]:
    """Where the run's source videos may lie: the corpus folder, then the run folder."""
    return [Path(cfg.corpus.videos), run.root]


# --- jobs: what to render -------------------------------------------------------------------------


def _frames_with_paths(run: RunPaths) -> tuple[pd.DataFrame, pd.DataFrame]:
    frames = read_table(run.table("frames"))
    videos = read_table(run.table("videos"))
    return frames, videos


def _make_job(kind, name, title, hits, frames, videos, options: RenderConfig, spans=None, **extra) -> RenderJob:
    slideshow = options.mode == "slideshow"
    candidates = hit_segments(hits, frames, videos, padding_before=options.padding_before,
                              padding_after=options.padding_after, slideshow=slideshow, spans=spans)  # fmt: skip
    chosen = select_segments(candidates, max_total_seconds=options.max_total_seconds,
                             max_segments_per_video=options.max_segments_per_video, order=options.order,
                             still_seconds=options.slideshow_seconds, max_segment_seconds=options.max_segment_seconds)  # fmt: skip
    return RenderJob(name=name, kind=kind, title=title, segments=chosen, candidates=len(candidates),
                     frames=int(hits.frame_key.nunique()), **extra)  # fmt: skip


def cluster_jobs(run: RunPaths | Path | str, options: RenderConfig) -> list[RenderJob]:
    """One job per cluster of the latest labelling (noise excluded); hits score 1 - distance to the centroid."""
    from ..cluster import NOISE

    run = run if isinstance(run, RunPaths) else RunPaths(run)
    clusters = read_table(run.table("clusters"))
    if clusters.empty:
        return []
    latest = clusters[clusters.labelling == clusters.labelling.iloc[-1]]
    frames, videos = _frames_with_paths(run)
    latest = latest[latest.frame_key.isin(frames.frame_key) & (latest.label != NOISE)]
    spans = frame_spans(frames, videos)  # once for every cluster
    jobs = []
    for label, group in latest.groupby("label", sort=True):
        name = str(group["name"].iloc[0])
        hits = pd.DataFrame({"frame_key": group.frame_key, "score": 1.0 - group.distance.fillna(1.0)})
        jobs.append(_make_job("cluster", f"cluster_{int(label):02d}_{slug(name)}", f"Cluster {int(label)} · {name}",
                              hits, frames, videos, options, spans=spans, label=int(label)))  # fmt: skip
    return jobs


def query_job(result: Any, run: RunPaths | Path | str, options: RenderConfig, *, name: str | None = None) -> RenderJob:
    """The job for one `search.SearchResult`: every hit it kept (top-k and above the threshold)."""
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    frames, videos = _frames_with_paths(run)
    columns = [c for c in ("frame_key", "score", "speech_start", "speech_end") if c in result.hits]  # speech: utterance bounds
    return _make_job("query", name or f"query_{slug(result.query)}", result.query, result.hits[columns],
                     frames, videos, options, query=result.query)  # fmt: skip


def query_jobs(run: RunPaths | Path | str, cfg: PipelineConfig) -> tuple[list[RenderJob], list[str]]:
    """One job per `search.queries` entry, with the configured top-k and threshold.

    Neighbour suppression is off here: adjacent hits are what merges into segments. Returns the
    jobs and notes for the queries no channel could answer (e.g. the weight-free fallback model
    has no text side).
    """
    from ..search import SearchError, search

    run = run if isinstance(run, RunPaths) else RunPaths(run)
    jobs, notes, names = [], [], set()
    for query in cfg.search.queries:
        try:
            result = search(run, query, top_k=cfg.search.top_k, threshold=cfg.search.threshold, relative=cfg.search.relative,
                            min_text_score=cfg.search.min_text_score)  # fmt: skip
        except SearchError as error:
            notes.append(f"no video for query {query!r}: {error}")
            continue
        name = f"query_{slug(query)}"
        while name in names:  # two queries with the same slug
            name += "_"
        names.add(name)
        jobs.append(query_job(result, run, cfg.render, name=name))
    return jobs, notes


# --- the stage ------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class RenderSummary(StageSummary):
    """What the render stage did: one `RenderedVideo` per output, tables, notes, problems."""

    rendered: list[RenderedVideo] = field(default_factory=list)

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
    def rel(path: Path | None) -> str:
        if path is None:
            return ""
        return run.relative(path) if run is not None else str(path)

    rows = []
    for r in rendered:
        rows.append({
            "name": r.job.name, "kind": r.job.kind, "title": r.job.title, "path": rel(r.path) if r.status in {"rendered", "cached"} else "",
            "contact_sheet": rel(r.contact_sheet), "duration": round(r.duration, 3), "frames": r.frames,
            "segments": len(r.segments), "sources": int(r.segments.video_id.nunique()) if len(r.segments) else 0,
            "title_seconds": r.title_seconds, "mode": ",".join(sorted(set(r.segments["mode"]))) if len(r.segments) else "",
            "status": r.status, "error": r.error, "seconds": round(r.seconds, 2),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=VIDEO_COLUMNS)


def _render_or_fail(job: RenderJob, run: RunPaths, options: RenderConfig, roots: list[Path], force: bool,
                    skipped: dict[str, SkippedInput]) -> RenderedVideo:  # fmt: skip
    """Render one job; any failure fails only this output, its inputs at fault are added to `skipped`."""
    try:
        return render_job(job, run, options, force=force, source_roots=roots)
    except RenderError as error:
        log.error("render %s: %s", job.name, error)
        for source, reason in error.sources.items():
            skipped.setdefault(source, SkippedInput(source, reason, stage="render"))
        return RenderedVideo(job, None, status="failed", error=str(error))
    except Exception as error:  # an unforeseen failure (joining, the contact sheet): this output only
        log.error("render %s: %s: %s", job.name, type(error).__name__, error, exc_info=True)
        return RenderedVideo(job, None, status="failed", error=f"{type(error).__name__}: {error}")


def render_run(cfg: PipelineConfig, run: RunPaths | Path | str, *, force: bool = False) -> RenderSummary:
    """The render stage: a video per cluster and per configured query, tables, contact sheets.

    One output failing (a lost or refused source, an ffmpeg error, any error on one source) is
    recorded with its reason and the others still render. Outputs of earlier runs that are no
    longer wanted are removed, and so are cached cuts no output uses any more.

    Writes ``videos/<name>.mp4|.png|.json``, ``tables/render_videos.parquet`` and
    ``tables/render_segments.parquet`` (+ ``.csv``).
    """
    started = time.perf_counter()
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    options = cfg.render
    roots = source_roots(cfg, run)
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
            result = _render_or_fail(job, run, options, roots, force, skipped)
            rendered.append(result)
            if result.status in {"rendered", "cached"}:
                log.info("%s: %s (%d segments, %.1f s)", job.name, result.status, len(result.segments), result.duration)
            bar.update(1)
    finally:
        bar.close()
    _remove_stale(run, {r.job.name for r in rendered if r.status in {"rendered", "cached"}} | {j.name for j in jobs})
    _prune_cache(run, rendered)
    summary = RenderSummary(rendered=rendered, notes=notes, skipped=list(skipped.values()), seconds=time.perf_counter() - started)
    write_table(_video_rows(rendered, run), run.table("render_videos"))
    segments = summary.segments
    write_table(segments, run.table("render_segments"))
    atomic_write_text(run.tables / "render_segments.csv", segments.to_csv(index=False))
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
        for suffix in (".mp4", ".png", ".json", ".vtt"):
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


# --- one search, from the command line ------------------------------------------------------------


def _refuse_foreign_files(dest: Path) -> None:
    """An export replaces only what an earlier export wrote: the video and sidecars next to the
    fingerprint file (`.json`) that `render_job` writes. Anything else at those names is refused."""
    meta = dest.with_suffix(".json")
    if is_render_metadata(meta):
        return
    for path in (dest, dest.with_suffix(".png"), meta, dest.with_suffix(".csv"), dest.with_suffix(".vtt")):
        if path.exists() or path.is_symlink():
            raise RenderError(
                f"{path}: already exists and was not written by frameatlas (no {meta.name} from an earlier "
                "--export-video next to it); refusing to overwrite it: choose another file name, or move it away"
            )


def render_search(
    result: Any, run: RunPaths | Path | str, dest: Path | str, options: RenderConfig | None = None
) -> RenderedVideo:
    """Render the hits of one search (`search.SearchResult`) to `dest` (an .mp4), e.g. for `frameatlas search --export-video`.

    Uses the run's `render` options unless `options` are given. Holds the run's lock while it
    works (it writes cut clips into the run's cache): raises `lock.RunLocked` if another process
    is writing into the run. Refuses (`RenderError`) to overwrite files at `dest` that an earlier
    export did not write. Writes `dest`, its contact sheet (`.png`), fingerprint (`.json`) and
    segments (`.csv`).

    Example:
        >>> render_search(search("outputs/demo", "a red car"), "outputs/demo", "red_car.mp4")  # doctest: +SKIP
    """
    from ..search import _run_config

    run = run if isinstance(run, RunPaths) else RunPaths(run)
    dest = Path(dest)
    if dest.suffix.lower() != ".mp4":
        raise RenderError(f"{dest}: the video must be an .mp4 file")
    with run_lock(run.root, EXPORT_COMMAND):
        options = options or _run_config(run).render
        _refuse_foreign_files(dest)
        job = query_job(result, run, options, name=dest.stem)
        rendered = render_job(job, run, options, dest=dest)
        if rendered.status == "empty":
            raise RenderError(f"{result.query!r}: no hits, so no video")
        atomic_write_text(dest.with_suffix(".csv"), rendered.segments.to_csv(index=False))
    return rendered


def video_html(path: Path | str, base: Path | str, *, width: int = 640) -> str:
    """An HTML5 player for a rendered video, with its path relative to `base` (the page's folder), and the
    speech heard in it (its `.vtt` sidecar) as a subtitle track the player's captions button toggles."""
    import html

    from ..speech import subtitle_track

    relative = Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()
    src = html.escape(relative, quote=True)
    return (f'<video controls preload="metadata" width="{width}" src="{src}">{subtitle_track(Path(path).with_suffix(".vtt"))}'
            f'</video><div><a href="{src}">{html.escape(Path(path).name)}</a></div>')  # fmt: skip
