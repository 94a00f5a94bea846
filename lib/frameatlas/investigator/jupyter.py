"""`investigate(run, video=None)`: the investigator inline in JupyterLab (and in executed reports).

When `frameatlas serve` is running on the run (its `.frameatlas-serve.json` names a live
process), the live app is shown, opened on `video`; otherwise the offline page
`plots/investigate_<video>.html` that 05_visualize wrote. Offline pages are referenced relative
to the kernel's working folder (a notebook's own folder in JupyterLab, `reports/` for the
stage reports), so the output keeps working when the run folder is moved or zipped.

Example:
    >>> import frameatlas
    >>> frameatlas.investigate("outputs/demo", "bbb.mp4")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

from ..store import RunPaths
from .data import NotARun, RunView
from .pages import page_name

__all__ = ["ADDRESS_FILE", "investigate", "running_app", "investigator_source"]

ADDRESS_FILE = ".frameatlas-serve.json"  # written by `frameatlas serve` while it runs


def running_app(run_dir: Path | str) -> dict | None:
    """The address of a `frameatlas serve` running on this run (`url`, `pid`, `port`, ...), or None
    (no address file, or its process is gone)."""
    try:
        data = json.loads((Path(run_dir) / ADDRESS_FILE).read_text())
        pid, data["url"] = int(data["pid"]), str(data["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return data


def investigator_source(run, video: str | None = None, *, base: Path | str | None = None, live: bool = True) -> str:
    """Where the investigator for `video` (a name or id; default the first video) is: the running
    app's URL, or the offline page's path relative to `base` (default the working folder)."""
    root = run.root if isinstance(run, RunPaths) else Path(run)
    view = RunView(root) if (root / "tables/frames.parquet").exists() else None
    if view is None:
        raise NotARun(f"{root}: not a frameatlas run (no tables/frames.parquet); run the pipeline first")
    chosen = view.videos[0] if view.videos and video is None else next(
        (v for v in view.videos if video in (v.name, v.video_id)), None)  # fmt: skip
    if chosen is None:
        names = ", ".join(v.name for v in view.videos) or "none"
        raise ValueError(f"video {video!r} is not in {root}; its videos: {names}")
    app = running_app(root) if live else None
    if app:
        return f"{app['url']}?video={quote(chosen.video_id)}"
    taken: set[str] = set()
    for other in view.videos:  # the names write_investigator_pages gave, in the same order
        name = page_name(other.name, other.video_id, taken)
        taken.add(name)
        if other.video_id == chosen.video_id:
            break
    page = root / "plots" / name
    if not page.exists():
        raise FileNotFoundError(f"{page}: no investigator page yet; run the visualize stage (or `frameatlas serve {root}`)")
    return Path(os.path.relpath(page, Path(base) if base is not None else Path.cwd())).as_posix()


def investigate(run, video: str | None = None, *, width: str = "100%", height: int = 720, base: Path | str | None = None):
    """Show the investigator for one video of `run` (a run folder or `RunPaths`) inline in a notebook.

    Returns an `IPython.display.IFrame`: the live app when `frameatlas serve` runs on the run,
    else the offline page. `video`: a video name or id (default: the first).
    """
    from IPython.display import IFrame

    return IFrame(investigator_source(run, video, base=base), width=width, height=height)
