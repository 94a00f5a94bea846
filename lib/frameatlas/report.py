"""The run dashboard (`outputs/<run>/index.html`): one page linking every report and output.

The page is static and uses relative links only, so the whole run folder can be zipped and
shared, or served from any web server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from .files import atomic_write_text
from .store import RunPaths

__all__ = ["model_banners", "write_dashboard"]

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("frameatlas", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def model_banners(manifest: dict[str, Any]) -> list[str]:
    """Warnings every report must show: models that were substituted, and what that turns off."""
    from .models import ModelRecord

    banners = []
    for record in manifest.get("models", []):
        banner = ModelRecord(**record).banner
        if banner:
            banners.append(banner)
    return banners


def _videos(run: RunPaths) -> list[dict[str, Any]]:
    path = run.table("videos")
    if not path.exists():
        return []
    videos = pd.read_parquet(path).sort_values("video_name")
    rows = []
    for video in videos.to_dict("records"):
        sheet = run.contact_sheet(video["video_id"])
        video["contact_sheet"] = run.relative(sheet) if sheet.exists() else None
        rows.append(video)
    return rows


def _rendered_videos(run: RunPaths) -> list[dict[str, Any]]:
    """The render stage's outputs that exist on disk, clusters first (from tables/render_videos)."""
    path = run.table("render_videos")
    if not path.exists():
        return []
    rows = []
    for video in pd.read_parquet(path).to_dict("records"):
        if video.get("path") and (run.root / video["path"]).exists():
            sheet = video.get("contact_sheet")
            video["contact_sheet"] = sheet if sheet and (run.root / sheet).exists() else None
            rows.append(video)
    return rows


def _interactive_pages(run: RunPaths) -> list[dict[str, str]]:
    """Standalone pages under plots/ (3D maps, timelines, investigator pages), maps first."""
    folder = run.root / "plots"
    patterns = ("map_*.html", "timeline_*.html", "investigate_*.html")
    pages = [page for pattern in patterns for page in sorted(folder.glob(pattern))] if folder.is_dir() else []
    return [{"href": run.relative(page), "title": page.stem.replace("_", " ")} for page in pages]


def write_dashboard(run: RunPaths, manifest: dict[str, Any]) -> Path:
    """Render `index.html` from the manifest and the run's tables."""
    stages = []
    for name, entry in manifest.get("stages", {}).items():
        report = entry.get("report")
        stages.append(
            {
                "name": name,
                **entry,
                "report": report if report and (run.root / report).exists() else None,
                "notebook": entry.get("notebook") if entry.get("notebook") and (run.root / entry["notebook"]).exists() else None,
            }
        )
    html = _ENV.get_template("dashboard.html.j2").render(
        manifest=manifest, stages=stages, videos=_videos(run), skipped=manifest.get("skipped_inputs", []),
        banners=model_banners(manifest), models=manifest.get("models", []), pages=_interactive_pages(run),
        rendered=_rendered_videos(run),
    )
    atomic_write_text(run.dashboard, html)
    return run.dashboard
