"""A run as one zip file to send: `frameatlas share RUN_DIR`.

The archive holds one folder, named after the run, that opens anywhere once unzipped: the
dashboard (`index.html`), the reports (HTML and notebooks), the plots (3D maps, timelines,
investigator pages, montages, contact sheets, the run's one plotly.js), the frame thumbnails the
pages show, the rendered videos (optional), the tables as Parquet and CSV, the manifest, the
resolved config and the logs. Caches, the vector index and the source videos stay behind. Every
page links relatively, so the links work inside the unzipped folder; a page's media that would be
read from outside it (an investigator page's source video) is left out with a note on the page,
and any other link leaving the folder is reported.

The run is only read (no lock needed); the archive is written atomically, outside the run.

Example:
    >>> from frameatlas.share import share_run
    >>> shared = share_run("outputs/demo", videos=False)  # doctest: +SKIP
    >>> shared.archive.name, shared.size > 0  # doctest: +SKIP
    ('demo.zip', True)
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

from .files import atomic_path, is_temp_name
from .store import RunPaths

log = logging.getLogger(__name__)

__all__ = ["SHARED_ENTRIES", "ShareError", "SharedRun", "share_run"]

# What of a run folder is shared (anything else, e.g. cache/, index/, vectors/, ocr/, stages/, stays).
SHARED_ENTRIES = ("index.html", "manifest.json", "config.json", "reports", "plots", "frames", "tables", "videos", "logs")
VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv", ".m4v", ".avi"}
STORED_SUFFIXES = VIDEO_SUFFIXES | {".jpg", ".jpeg", ".png", ".zip", ".gz"}  # already compressed
PAGE_SUFFIXES = {".html", ".htm"}
README_NAME = "README.txt"


class ShareError(ValueError):
    """The run folder or the destination cannot be used (named in the message)."""


@dataclass
class SharedRun:
    """What `share_run` wrote: the archive, its size in bytes, what went in and what stayed behind."""

    archive: Path
    size: int = 0
    files: int = 0
    content_bytes: int = 0  # before compression
    videos: bool = True
    left_out: list[str] = field(default_factory=list)  # top-level entries of the run not shared
    tables_as_csv: list[str] = field(default_factory=list)
    outside_links: list[str] = field(default_factory=list)  # "page: link" that leave the shared folder
    missing_links: list[str] = field(default_factory=list)  # "page: link" to a file the archive lacks
    detached_media: list[str] = field(default_factory=list)  # "page: link" of media outside the run, left out

    def describe(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"{self.archive}: {_megabytes(self.size)} ({self.files} files, {_megabytes(self.content_bytes)} before compression)",
            "  unzip it and open the run folder's index.html in a browser (no server, no network needed)",
        ]
        if not self.videos:
            lines.append("  rendered videos left out (--no-videos)")
        if self.left_out:
            lines.append(f"  not shared: {', '.join(self.left_out)} (caches, index, stage state)")
        if self.detached_media:
            lines.append(f"  {len(self.detached_media)} page(s) play source videos, which are not shared (their players say so)")
        if self.outside_links:
            lines.append(
                f"  {len(self.outside_links)} link(s) point outside the run (source videos, not shared), e.g. {self.outside_links[0]}"
            )
        if self.missing_links:
            lines.append(f"  {len(self.missing_links)} link(s) to files not in the archive, e.g. {self.missing_links[0]}")
        return "\n".join(lines)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _shared_files(run: RunPaths, videos: bool) -> Iterator[tuple[Path, str]]:
    """(file, archive name relative to the run) of everything shared, in a stable order."""
    for entry in SHARED_ENTRIES:
        path = run.root / entry
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        for file in candidates:
            if is_temp_name(file.name) or file.name.startswith("."):
                continue
            if not videos and file.suffix.lower() in VIDEO_SUFFIXES:
                continue
            try:
                relative = file.resolve().relative_to(run.root)
            except ValueError:
                log.warning("share: %s points outside the run; left out", file)
                continue
            yield file, relative.as_posix()


def _csv_tables(run: RunPaths, present: set[str]) -> Iterator[tuple[str, bytes]]:
    """CSV copies of the run's Parquet tables that have none; columns of vectors are left out."""
    import pandas as pd

    for table in sorted(run.tables.glob("*.parquet")):
        name = f"tables/{table.stem}.csv"
        if name in present or is_temp_name(table.name):
            continue
        try:
            frame = pd.read_parquet(table)
        except (OSError, ValueError) as error:
            log.warning("share: %s cannot be read (%s); shared as Parquet only", table, error)
            continue
        arrays = [c for c in frame.columns if frame[c].map(lambda v: hasattr(v, "__len__") and not isinstance(v, str)).any()]
        yield name, frame.drop(columns=arrays).to_csv(index=False).encode("utf-8")


class _LinkCollector(HTMLParser):
    """The href/src of a page's elements (script bodies are not looked into)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links.extend(value for name, value in attrs if name in {"href", "src"} and value)


def _links(page: str) -> Iterator[str]:
    """Relative links of `page` (no scheme, host, absolute path or fragment-only link)."""
    collector = _LinkCollector()
    collector.feed(page)
    for link in collector.links:
        parsed = urlparse(link.strip())
        if parsed.scheme or parsed.netloc or not parsed.path or parsed.path.startswith("/"):
            continue
        yield unquote(parsed.path)


def _check_links(pages: dict[str, str], names: set[str], result: SharedRun) -> None:
    """Every relative href/src of the shared pages must name a file of the archive."""
    for page_name, page in sorted(pages.items()):
        folder = Path(page_name).parent
        for link in sorted(set(_links(page))):
            target = os.path.normpath(folder / link).replace(os.sep, "/")
            if target.startswith("../") or target == "..":
                result.outside_links.append(f"{page_name}: {link}")
            elif not result.videos and Path(target).suffix.lower() in VIDEO_SUFFIXES:
                continue  # left out on purpose (--no-videos)
            elif target not in names and target.rstrip("/") + "/index.html" not in names:
                result.missing_links.append(f"{page_name}: {link}")


_MEDIA = re.compile(r"""<(video|audio|source)\b[^>]*?\ssrc=(["'])([^"']*)\2[^>]*>""", re.IGNORECASE)


def _outside(page_name: str, link: str) -> bool:
    parsed = urlparse(link.strip())
    if parsed.scheme or parsed.netloc or not parsed.path or parsed.path.startswith("/"):
        return False
    target = os.path.normpath(Path(page_name).parent / unquote(parsed.path)).replace(os.sep, "/")
    return target == ".." or target.startswith("../")


def _detach_outside_media(page_name: str, page: str) -> tuple[str, list[str]]:
    """`page` with media that would be read from outside the shared folder (an investigator page's
    source video) left without a source, and a note saying so: a missing file would only be an
    error in the browser's console. Returns the page and the links detached."""
    detached: list[str] = []

    def detach(match: re.Match[str]) -> str:
        link = match.group(3)
        if not _outside(page_name, link):
            return match.group(0)
        detached.append(link)
        tag = match.group(0).replace(
            f" src={match.group(2)}{link}{match.group(2)}", f" data-frameatlas-source={match.group(2)}{link}{match.group(2)}", 1
        )
        note = (
            f'<p class="fa-error frameatlas-not-shared">The source video ({html.escape(Path(unquote(link)).name)}) is not part of '
            "this shared folder: the curves and frames below still work.</p>"
        )
        return note + tag if match.group(1).lower() != "source" else tag

    return _MEDIA.sub(detach, page), detached


def _readme(run_name: str, result: SharedRun) -> str:
    videos = "rendered videos (videos/)" if result.videos else "no rendered videos (shared with --no-videos)"
    return (
        f"frameatlas run '{run_name}'\n\n"
        "Open index.html in a browser: the dashboard links every report, map and video. Nothing needs\n"
        "a server or the network.\n\n"
        "  index.html        the dashboard\n"
        "  reports/          each stage's report (HTML) and executed notebook (.ipynb)\n"
        "  plots/            3D maps, similarity timelines, investigator pages, cluster montages,\n"
        "                    contact sheets (plotly.min.js is the one copy every page loads)\n"
        "  frames/           the sampled frames' thumbnails\n"
        f"  videos/           {videos}\n"
        "  tables/           the tables as Parquet, and as CSV (vector columns in Parquet only)\n"
        "  manifest.json     config, versions, models that ran, timings, skipped inputs\n\n"
        "Not included: caches, the vector index, and the source videos (investigator pages play\n"
        "them only where the corpus folder sits at the same place relative to the run).\n"
    )


def share_run(run_dir: Path | str, out: Path | str | None = None, *, videos: bool = True) -> SharedRun:
    """Write `run_dir` as a zip (default `<run folder>.zip` beside it); see the module docstring.

    Raises `ShareError` when `run_dir` is not a run folder or `out` lies inside it.
    """
    run = RunPaths(run_dir)
    if not run.root.is_dir():
        raise ShareError(f"{run.root}: no such run folder")
    if not run.manifest.exists() and not run.dashboard.exists():
        raise ShareError(f"{run.root}: not a frameatlas run folder (no manifest.json or index.html); give outputs/<run>")
    archive = Path(out) if out is not None else run.root.with_name(f"{run.root.name}.zip")
    archive = archive.resolve()
    if archive.suffix.lower() != ".zip":
        raise ShareError(f"--out {archive}: the archive's name must end in .zip")
    if archive == run.root or run.root in archive.parents:
        raise ShareError(f"--out {archive}: inside the run folder it would share itself; choose a path outside {run.root}")
    top = run.root.name
    result = SharedRun(archive=archive, videos=videos)
    result.left_out = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in run.root.iterdir()
        if p.name not in SHARED_ENTRIES and not is_temp_name(p.name) and not p.name.startswith(".")
    )
    names: set[str] = set()
    pages: dict[str, str] = {}
    with atomic_path(archive) as partial, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zipped:

        def add(name: str, data: bytes | None = None, file: Path | None = None) -> None:
            compress = zipfile.ZIP_STORED if Path(name).suffix.lower() in STORED_SUFFIXES else zipfile.ZIP_DEFLATED
            if file is not None:
                zipped.write(file, f"{top}/{name}", compress_type=compress)
                result.content_bytes += file.stat().st_size
            else:
                zipped.writestr(f"{top}/{name}", data or b"", compress_type=compress)
                result.content_bytes += len(data or b"")
            names.add(name)
            result.files += 1

        for file, name in _shared_files(run, videos):
            if file.suffix.lower() not in PAGE_SUFFIXES:
                add(name, file=file)
                continue
            page = file.read_text(encoding="utf-8", errors="replace")
            page, detached = _detach_outside_media(name, page)
            result.detached_media.extend(f"{name}: {link}" for link in detached)
            pages[name] = page
            add(name, page.encode("utf-8"))
        for name, data in _csv_tables(run, names):
            add(name, data)
            result.tables_as_csv.append(name)
        manifest_name = top
        try:
            manifest_name = json.loads(run.manifest.read_text(encoding="utf-8")).get("run") or top
        except (OSError, ValueError):
            pass
        add(README_NAME, _readme(str(manifest_name), result).encode("utf-8"))
    result.size = archive.stat().st_size
    _check_links(pages, names, result)
    for problem in result.missing_links[:5]:
        log.warning("share: a page links to a file not in the archive: %s", problem)
    return result
