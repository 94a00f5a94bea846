"""Offline investigator pages: `plots/investigate_<video>.html`, one per video, written by 05_visualize.

Each page is the investigator's player and chart with the curves of the configured prompts
(`search.queries`) computed in advance: play and pause, a cursor following playback, click the
chart to seek, the threshold line and shading, the keyboard (space, left/right one sampled
frame, Home). It opens from `file://` with no server: the video is referenced relative to the
page (the source in the corpus folder), plotly.js is the run's one copy, `plots/plotly.min.js`,
and the player's script and style are inside the page. When no channel can score the prompts,
the page says why instead of drawing an empty chart.

Example:
    >>> pages = write_investigator_pages("outputs/demo")  # doctest: +SKIP
    >>> sorted(p.name for p in pages.files.values())  # doctest: +SKIP
    ['investigate_bbb.html', ...]
"""

from __future__ import annotations

import html
import logging
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..config import PipelineConfig
from ..files import atomic_write_text
from ..plots import PLOTLY_BUNDLE, format_time, plotly_bundle
from ..speech import spoken_languages, subtitle_files, subtitle_track
from ..store import RunPaths
from .data import Prompt, RunView, dumps

log = logging.getLogger(__name__)

__all__ = ["InvestigatorPages", "page_name", "write_investigator_pages"]

PAGE_PREFIX = "investigate_"


def _static(name: str) -> str:
    return (resources.files("frameatlas.investigator") / "static" / name).read_text(encoding="utf-8")


def page_name(video_name: str, video_id: str, taken: set[str]) -> str:
    """`investigate_<video stem>.html`, made file-name safe (the id's start added when two videos share a stem)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(video_name).stem).strip("._")[:60] or "video"
    name = f"{PAGE_PREFIX}{stem}.html"
    if name in taken:
        name = f"{PAGE_PREFIX}{stem}_{video_id[:8]}.html"
    return name


@dataclass
class InvestigatorPages:
    """What `write_investigator_pages` wrote: a page per video id, and notes (e.g. why no curves)."""

    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    scored: int = 0  # pages with at least one curve


def _page(view: RunView, video, curves, reason: str | None, src: str | None, threshold: float, vtt: Path | None,
          language: str | None) -> str:  # fmt: skip
    data = {"threshold": threshold, "curves": curves.as_json(), "reason": reason or ""}
    prompts = ", ".join(html.escape(p) for p in view.settings()["queries"]) or "none configured"
    channels = sorted({line.channel for line in curves.lines})
    missing = "" if src else '<p class="fa-error">The source video is not available: ' + html.escape(video.problem or "") + "</p>"
    player = (
        f'<video id="fa-video" controls preload="auto" src="{html.escape(src, quote=True)}">'
        f"{subtitle_track(vtt, language)}</video>"  # what is said, toggled by the Subtitles button
        if src
        else ('<video id="fa-video" controls></video>')
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>frameatlas investigator: {html.escape(video.name)}</title>
<style>{_static("investigator.css")}</style>
<script src="{PLOTLY_BUNDLE}"></script>
</head><body>
<header><h1>frameatlas investigator</h1><span>{html.escape(view.name)}</span></header>
<main><section>
<h2 id="fa-title">{html.escape(video.name)} <small>{format_time(video.duration)}</small></h2>
{missing}{player}
<div class="fa-controls"><button id="fa-play" type="button">Play</button>
<button id="fa-reset" type="button">Reset</button>
<button id="fa-subtitles" type="button" title="show or hide what is said (key C)" hidden>Subtitles</button><span id="fa-time"></span>
<span class="fa-keys"><kbd>space</kbd> play/pause · <kbd>←</kbd>/<kbd>→</kbd> one sampled frame · <kbd>Home</kbd> start ·
<kbd>C</kbd> subtitles · click the chart to seek</span></div>
<p class="fa-keys">Prompts (search.queries): {prompts}. Scored by: {", ".join(channels) or "no channel"}.
Dashed line: {round(threshold * 100)}% of the best score; shaded: frames at or above it.
For live prompts, search and clip export, serve the run folder (the folder above this page's <code>plots/</code>):
<code>frameatlas serve {html.escape(f"{view.run.root.parent.name}/{view.run.root.name}")}</code></p>
<div id="fa-chart"></div>
<p id="fa-notes">{html.escape(" ".join(curves.notes))}</p>
</section></main>
<script>{_static("investigator.js")}</script>
<script>FrameAtlasInvestigator.offline({dumps(data)});</script>
</body></html>
"""


def write_investigator_pages(run: RunPaths | Path | str, cfg: PipelineConfig | None = None) -> InvestigatorPages:
    """Write `plots/investigate_<video>.html` for every video with sampled frames (and `plots/plotly.min.js`).

    `cfg` defaults to the config the run last ran with. Pages of videos no longer in the run are removed.
    """
    view = RunView(run.root if isinstance(run, RunPaths) else run, config=cfg)
    plots = view.run.root / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plotly_bundle(plots)
    result = InvestigatorPages()
    settings = view.settings()
    prompts = [Prompt(text) for text in settings["queries"]]
    taken: set[str] = set()
    said, languages = subtitle_files(view.run), spoken_languages(view.run)
    for video in view.videos:
        curves = view.curves(video.video_id, prompts)
        reason = None
        if not curves.lines:
            reason = "No prompts configured (search.queries)." if not prompts else view.reason_without_lines(curves)
        else:
            result.scored += 1
        src = Path(os.path.relpath(video.source, plots)).as_posix() if video.source is not None else None
        name = page_name(video.name, video.video_id, taken)
        taken.add(name)
        path = plots / name
        atomic_write_text(
            path,
            _page(
                view, video, curves, reason, src, settings["threshold"], said.get(video.video_id), languages.get(video.video_id)
            ),
        )
        result.files[video.video_id] = path
    if view.videos and not result.scored:
        first = view.curves(view.videos[0].video_id, prompts)
        result.notes.append("investigator pages have no curves: " + view.reason_without_lines(first) if prompts
                            else "investigator pages have no curves: no prompts configured (search.queries)")  # fmt: skip
    keep = {p.resolve() for p in result.files.values()}
    for old in plots.glob(f"{PAGE_PREFIX}*.html"):
        if old.resolve() not in keep:
            old.unlink(missing_ok=True)
    log.info("investigator: %d page(s), %d with curves", len(result.files), result.scored)
    return result
