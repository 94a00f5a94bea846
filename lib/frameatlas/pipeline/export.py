"""HTML reports from executed stage notebooks, written to be read and sent.

The `.ipynb` keeps everything; its HTML export (template `templates/nbconvert/frameatlas_report`):

* opens with a summary of the stage (what it does, status, time, counts, notes, skipped inputs,
  warnings) and links to the previous and next reports and the run dashboard;
* shows the injected parameters as one line (run, config file, overrides), the whole config
  behind a toggle, and hides code behind a "show code" toggle per cell and for the page;
* stays light: plotly.js, which a notebook inlines once, is referenced from the run's one copy
  (`plots/plotly.min.js`, relative, so the report opens offline and from an unzipped archive),
  and images become JPEG at display size, linking to their full file when it is in the run.

Example:
    >>> from frameatlas.pipeline.export import flat_differences
    >>> flat_differences({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}})
    {'a.c': 2}
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import io
import json
import logging
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from ..store import RunPaths
from .registry import STAGES, Stage

log = logging.getLogger(__name__)

__all__ = ["DISPLAY_WIDTH", "export_html", "flat_differences", "refresh_report_links", "report_links", "stage_of"]

PACKAGE_DIR = Path(__file__).resolve().parent.parent
DISPLAY_WIDTH = 960  # px: the widest an image is shown in a report
JPEG_QUALITY = 72  # montages of 16 frames stay legible; the link opens the full file
STYLESHEET = "frameatlas-report.css"  # in reports/, shared by a run's reports
_CSS_START, _CSS_END = "<!--frameatlas-css-->", "<!--/frameatlas-css-->"  # around the template's stylesheet
NAV_META = "frameatlas-nav"  # <meta> holding the report's previous/next links, to spot stale ones
_IMAGE_FOLDERS_SKIPPED = {"cache", "index", "frames", "tables", "reports", "logs", "stages", "vectors"}


def stage_of(notebook: Path) -> Stage | None:
    """The stage whose report `notebook` is (by file name), or None."""
    return next((stage for stage in STAGES if stage.notebook == notebook.name), None)


def _run_of(notebook: Path) -> RunPaths | None:
    """The run a report belongs to: `<run>/reports/NN_stage.ipynb` with a manifest or config beside."""
    reports = notebook.resolve().parent
    if reports.name != "reports":
        return None
    run = RunPaths(reports.parent)
    return run if run.manifest.exists() or run.config_file.exists() else None


def _load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------- links


def _stage_enabled(stage: Stage, config: dict[str, Any]) -> bool:
    section = config.get(stage.name)
    return not isinstance(section, dict) or bool(section.get("enabled", True))


def report_links(run: RunPaths, stage: Stage, config: dict[str, Any], *, planned: bool = True) -> dict[str, str | None]:
    """`previous` / `next` report file names (relative to `reports/`) for `stage`'s report.

    Previous: the nearest earlier stage whose report exists. Next: the nearest later stage whose
    report exists or, when `planned`, that the config enables (the runner makes it next).
    """
    index = STAGES.index(stage)
    previous = next((s for s in reversed(STAGES[:index]) if (run.reports / s.notebook).with_suffix(".html").exists()), None)
    following = None
    for later in STAGES[index + 1 :]:
        exists = (run.reports / later.notebook).with_suffix(".html").exists()
        if exists or (planned and _stage_enabled(later, config)):
            following = later
            break
    return {
        "previous": f"{previous.report_stem}.html" if previous else None,
        "next": f"{following.report_stem}.html" if following else None,
    }


def _recorded_links(report: Path) -> str | None:
    """The links a report was exported with (its NAV_META), read from the start of the file."""
    try:
        with report.open(encoding="utf-8", errors="replace") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    tag = re.search(rf'<meta[^>]*name="{NAV_META}"[^>]*>', head)
    found = re.search(r'content="([^"]*)"', tag.group(0)) if tag else None
    return html.unescape(found.group(1)) if found else None


def _links_key(links: dict[str, str | None]) -> str:
    return f"{links['previous'] or ''}|{links['next'] or ''}"


def _refresh_neighbours(run: RunPaths, exported: Stage, config: dict[str, Any]) -> None:
    """Re-export other reports of the run whose previous/next links point to the wrong report
    (a stage that did not run, or a report that appeared since)."""
    for stage in STAGES:
        report = (run.reports / stage.notebook).with_suffix(".html")
        if stage is exported or not report.exists() or not (run.reports / stage.notebook).exists():
            continue
        recorded = _recorded_links(report)
        if recorded is None:
            continue  # exported by an older frameatlas: left as it is
        wanted = report_links(run, stage, config)
        if recorded != _links_key(wanted) and _links_key(report_links(run, stage, config, planned=False)) != recorded:
            _export(run.reports / stage.notebook, None, None, refresh=False)


def refresh_report_links(run: RunPaths | Path | str) -> list[Path]:
    """Re-export the reports of `run` whose previous/next links do not match the reports that
    exist (the runner calls it when it ends: a stage that did not run leaves no dead link)."""
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    redone = []
    for stage in STAGES:
        notebook = run.reports / stage.notebook
        report = notebook.with_suffix(".html")
        if not notebook.exists() or not report.exists():
            continue
        recorded = _recorded_links(report)
        if recorded is not None and recorded != _links_key(report_links(run, stage, {}, planned=False)):
            _export(notebook, None, None, refresh=False, planned=False)
            redone.append(report)
    return redone


# --------------------------------------------------------------------------- parameters and summary


def flat_differences(values: dict[str, Any], reference: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys whose value in `values` differs from `reference` (nested dicts compared key by key)."""
    found: dict[str, Any] = {}
    for key, value in values.items():
        other = reference.get(key) if isinstance(reference, dict) else None
        if isinstance(value, dict) and isinstance(other, dict):
            found.update(flat_differences(value, other, f"{prefix}{key}."))
        elif value != other:
            found[f"{prefix}{key}"] = value
    return found


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _changed_since(path: Path, nb: Any) -> bool:
    """Whether `path` was modified after the notebook started running (its overrides would be wrong)."""
    import datetime as dt

    started = nb.metadata.get("papermill", {}).get("start_time")
    try:
        return path.stat().st_mtime > dt.datetime.fromisoformat(started).timestamp()
    except (TypeError, ValueError, OSError):
        return False


def _parameters(nb: Any, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The injected parameters as a one-line summary and the whole config as YAML."""
    import yaml

    parameters = nb.metadata.get("papermill", {}).get("parameters") or {}
    config = parameters.get("config")
    if not isinstance(config, dict):
        return None
    config = json.loads(json.dumps(config))  # plain dicts (a notebook's are NotebookNodes)
    config_file = manifest.get("config_file")
    overrides: dict[str, Any] | None = None  # None: unknown (the file is gone, or changed since the run)
    if config_file and Path(config_file).is_file() and not _changed_since(Path(config_file), nb):
        from ..config import ConfigError, load_config

        try:
            overrides = flat_differences(config, load_config(config_file).to_parameters())
        except (ConfigError, OSError, ValueError) as error:
            log.debug("report: cannot compare with %s: %s", config_file, error)
    return {
        "run": str(config.get("run", {}).get("name", "")),
        "config_file": Path(config_file).name if config_file else None,
        "config_path": config_file,
        "overrides": None if overrides is None else [f"{key}={_short(value)}" for key, value in overrides.items()],
        "force": bool(parameters.get("force")),
        "config_yaml": yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=100),
    }


def _notes_in(nb: Any) -> list[str]:
    """Warnings and errors the stage logged into its notebook (one-line notes on stderr)."""
    notes = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                notes.extend(line for line in output.get("text", "").splitlines() if line.startswith(("warning:", "error:")))
    return notes


def _format_count(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _summary(nb: Any, run: RunPaths | None, stage: Stage | None) -> dict[str, Any]:
    papermill = nb.metadata.get("papermill", {})
    heading = next(
        (cell.source.splitlines()[0].lstrip("# ").strip() for cell in nb.cells if cell.cell_type == "markdown" and cell.source.startswith("#")),
        "",
    )  # fmt: skip
    result: dict[str, Any] = {}
    if run is not None and stage is not None:
        result = _load_json(run.stage_result(stage.name))
        if result.get("stage") != stage.name:
            result = {}
    counts = {
        k: _format_count(v)
        for k, v in (result.get("counts") or {}).items()
        if isinstance(v, (int, float, str)) and not isinstance(v, bool) and v != ""  # "": none (no map refitted)
    }
    duration = papermill.get("duration")
    return {
        "heading": heading,
        "status": "failed" if papermill.get("exception") else "done",
        "seconds": f"{duration:.1f}" if isinstance(duration, (int, float)) else None,
        "finished": (papermill.get("end_time") or "")[:19].replace("T", " ") or None,
        "counts": counts,
        "notes": [str(note) for note in result.get("notes") or []],
        "skipped": [f"{item.get('path', '?')}: {item.get('reason', '')}" for item in result.get("skipped") or []],
        "warnings": _notes_in(nb),
    }


# --------------------------------------------------------------------------- light pages


def _without_plotly_js(markup: str, script: str) -> str:
    """`markup` without the `<script>` elements whose body is exactly plotly.js (`script`)."""
    while (start := markup.find(script)) >= 0:
        opening = markup.rfind("<script", 0, start)
        closing = markup.find("</script>", start + len(script))
        if opening < 0 or closing < 0 or markup[markup.find(">", opening) + 1 : start].strip():
            break  # not a script element of its own: leave the markup as it is
        markup = markup[:opening] + markup[closing + len("</script>") :]
    return markup


def _reference_plotly(nb: Any) -> bool:
    """Drop plotly.js inlined in HTML outputs; True when an output draws a plotly figure."""
    from plotly.offline import get_plotlyjs

    script = None
    uses_plotly = False
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            markup = output.get("data", {}).get("text/html")
            if not markup:
                continue
            markup = "".join(markup) if isinstance(markup, list) else markup
            if "Plotly.newPlot" in markup:
                uses_plotly = True
            if len(markup) > 1_000_000:
                script = script or get_plotlyjs()
                output["data"]["text/html"] = _without_plotly_js(markup, script)
    return uses_plotly


def _run_images(run: RunPaths) -> dict[str, str]:
    """SHA-256 of every PNG/JPEG the run made (plots, montages, contact sheets) -> run-relative path."""
    found: dict[str, str] = {}
    for folder in sorted(p for p in run.root.iterdir() if p.is_dir() and p.name not in _IMAGE_FOLDERS_SKIPPED):
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in {".png", ".jpg", ".jpeg"} and path.is_file():
                found.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), run.relative(path))
    return found


def _display_jpeg(data: bytes) -> tuple[bytes, int, int] | None:
    """`data` as a JPEG at most DISPLAY_WIDTH wide: (bytes, width, height), None if unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.width > DISPLAY_WIDTH:
                image = image.resize((DISPLAY_WIDTH, max(1, round(image.height * DISPLAY_WIDTH / image.width))), Image.LANCZOS)
            if image.mode in {"RGBA", "LA", "P"}:
                image = image.convert("RGBA")
                flat = Image.new("RGB", image.size, "white")
                flat.paste(image, mask=image.getchannel("A"))
                image = flat
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True)
            return buffer.getvalue(), image.width, image.height
    except (OSError, ValueError) as error:
        log.debug("report: image left as it is (%s)", error)
        return None


def _light_images(nb: Any, run: RunPaths | None) -> None:
    """PNG/JPEG outputs as display-size JPEG (when smaller), linked to the run's file they show."""
    files: dict[str, str] | None = None
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            kind = "image/png" if "image/png" in data else "image/jpeg" if "image/jpeg" in data else None
            if kind is None:
                continue
            raw = base64.b64decode("".join(data[kind]) if isinstance(data[kind], list) else data[kind])
            if files is None:
                files = _run_images(run) if run is not None else {}
            source = files.get(hashlib.sha256(raw).hexdigest())
            converted = _display_jpeg(raw)
            if converted is None:
                continue
            jpeg, width, _ = converted
            metadata = output.setdefault("metadata", {})
            if source is not None:
                metadata["frameatlas"] = {"href": "../" + source}
            if len(jpeg) < len(raw):
                data.pop("image/png", None)
                data["image/jpeg"] = base64.b64encode(jpeg).decode()
                shown = metadata.get(kind, {})
                metadata.pop("image/png", None)
                metadata["image/jpeg"] = {**shown, "width": min(int(shown.get("width") or width), width)}


def _shared_stylesheet(body: str, folder: Path) -> str:
    """JupyterLab's stylesheet (about 260 kB) moved out of `body` into one file shared by the
    run's reports (`STYLESHEET`, rewritten only when it changes), linked relatively."""
    start, end = body.find(_CSS_START), body.find(_CSS_END)
    if start < 0 or end < start:
        return body
    styles = re.findall(r"<style[^>]*>(.*?)</style>", body[start:end], flags=re.S)
    css = "\n".join(style.strip() for style in styles) + "\n"
    sheet = folder / STYLESHEET
    if not sheet.exists() or sheet.read_text(encoding="utf-8") != css:
        atomic_write_text(sheet, css)
    return body[:start] + f'<link rel="stylesheet" href="{STYLESHEET}">' + body[end + len(_CSS_END) :]


# --------------------------------------------------------------------------- export


def export_html(notebook: Path, title: str = "", banners: Iterable[str] = ()) -> Path | None:
    """Export an executed notebook to HTML next to it (see the module docstring); no CDN scripts.

    A report of a run (`<run>/reports/`) gets its summary, links and the run's plotly.js; other
    reports of the run whose previous/next links changed are exported again.
    """
    return _export(Path(notebook), title, list(banners), refresh=True)


@functools.lru_cache(maxsize=1)
def _html_exporter():
    """One exporter per process: its template environment (compiled Jinja templates) is reused
    by every report, where a new exporter compiles them all again (seconds per report)."""
    from nbconvert import HTMLExporter

    return HTMLExporter(
        template_name="frameatlas_report",
        extra_template_basedirs=[str(PACKAGE_DIR / "templates" / "nbconvert")],
        embed_images=True,
    )


_EXPORTER_LOCK = threading.Lock()  # the runner exports in a background thread; others may too


def _export(
    notebook: Path, title: str | None, banners: list[str] | None, *, refresh: bool, planned: bool | None = None
) -> Path | None:
    import nbformat

    if not notebook.exists():
        return None
    target = notebook.with_suffix(".html")
    nb = nbformat.read(notebook, as_version=4)
    run, stage = _run_of(notebook), stage_of(notebook)
    manifest = _load_json(run.manifest) if run is not None else {}
    config = (nb.metadata.get("papermill", {}).get("parameters") or {}).get("config") or manifest.get("config") or {}
    summary = _summary(nb, run, stage)
    if title is None:  # a re-export: the title and banners the runner gives
        name = manifest.get("run") or config.get("run", {}).get("name", "")
        title = f"{name} · {notebook.name}" + (" (failed)" if summary["status"] == "failed" else "")
    if banners is None:
        from ..report import model_banners

        banners = model_banners(manifest)
    context: dict[str, Any] = {
        "title": title,
        "banners": list(banners),
        "summary": summary,
        "parameters": _parameters(nb, manifest),
        "dashboard": "../index.html" if run is not None else None,
        "links": {"previous": None, "next": None},
        "plotly": None,
    }
    if run is not None and stage is not None:
        if planned is None:  # a failed stage ends the run: no link to a report that will not come
            planned = context["summary"]["status"] != "failed"
        context["links"] = report_links(run, stage, config, planned=planned)
    context["nav_key"] = _links_key(context["links"])
    if run is not None and _reference_plotly(nb):
        from ..plots import plotly_bundle

        bundle = plotly_bundle(run.root / "plots")
        context["plotly"] = Path(os.path.relpath(bundle, notebook.parent)).as_posix()
    _light_images(nb, run)
    nb.metadata["title"] = title or notebook.stem
    with _EXPORTER_LOCK:
        body, _ = _html_exporter().from_notebook_node(nb, resources={"frameatlas": context, "frameatlas_title": title})
    if run is not None:
        body = _shared_stylesheet(body, notebook.parent)
    atomic_write_text(target, body)
    if refresh and run is not None and stage is not None:
        _refresh_neighbours(run, stage, config)
    return target
