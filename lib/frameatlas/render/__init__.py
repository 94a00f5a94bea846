"""Cut new videos out of the sources: one per cluster, one per search query (the render stage).

Hits (the frames of a cluster, or the frames a query found) become **segments**
(`segments`): adjacent hits of one video merge, padding is added, and the best segments are
kept within `max_segments_per_video` and `max_total_seconds`, in time or score order, behind a
title card (the cluster name or the query, with counts).

How a video is made (`video.render_job`; the fastest way measured, see BENCHMARKS.md
"Rendering"): each segment is cut with one call of the bundled ffmpeg and encoded once at the
output size and frame rate, cuts are cached under ``cache/render/`` and shared between outputs,
and the pieces are joined without re-encoding the video, the joined PCM audio encoded to AAC
once. Every ffmpeg call goes through `ffmpeg.run_ffmpeg`: a time limit
(`render.timeout_seconds`), always reaped, killed with its parent. Every file goes through the
one atomic writer.

Output: H.264 (yuv420p) + AAC MP4 with the index at the front (``+faststart``), which browsers
play, under ``outputs/<run>/videos/``; ``videos/<name>.png`` is its contact sheet (frames
decoded from the output itself, one per segment) and ``videos/<name>.json`` its fingerprint.
A re-run with the same segments and options reuses the file. Tables:
``tables/render_videos.parquet`` (one row per output) and ``tables/render_segments.parquet``
(one row per segment: source, start, end, score, where it sits in the output).

A source that is gone, a source path outside the corpus and the run, or any error while cutting
one source fails only the outputs that need it, with its reason (`stage.render_run`).

Example:
    >>> from frameatlas.render import render_run
    >>> summary = render_run(cfg, "outputs/demo")  # doctest: +SKIP
    >>> summary.videos[["name", "duration", "segments", "status"]]  # doctest: +SKIP
"""

from .cards import output_contact_sheet, title_card
from .errors import RenderError
from .ffmpeg import ffmpeg_exe, run_ffmpeg
from .segments import RenderJob, Segment, hit_segments, select_segments
from .stage import (
    RenderSummary,
    cluster_jobs,
    query_job,
    query_jobs,
    render_run,
    render_search,
    source_files,
    source_roots,
    video_html,
)
from .video import RenderedVideo, render_job, run_source_roots

__all__ = [
    "RenderError",
    "RenderJob",
    "RenderSummary",
    "RenderedVideo",
    "Segment",
    "cluster_jobs",
    "ffmpeg_exe",
    "hit_segments",
    "output_contact_sheet",
    "query_job",
    "query_jobs",
    "render_job",
    "render_run",
    "render_search",
    "run_ffmpeg",
    "run_source_roots",
    "select_segments",
    "source_files",
    "source_roots",
    "title_card",
    "video_html",
]
