"""The pages a run leaves, opened in real Chromium as the colleague it is sent to would, and what
goes into them: reports without progress bars or INFO logs, which go to the terminal and the log."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import zipfile

import nbformat
import pandas as pd
import pytest
import videogen
import yaml
from browser import watch
from conftest import REPO

TQDM_LINE = re.compile(r"\d+%\|[^|\n]*\|\s*\d+/\d+")  # "40%|####      | 2/5"


@pytest.mark.slow
def test_dashboard_opens_offline_with_no_errors(finished_run, browser):
    page = browser.new_page()
    seen = watch(page)
    page.goto((finished_run / "index.html").as_uri())
    page.wait_for_load_state("load")
    assert "shared" in page.title() or "frameatlas" in page.title().lower()
    assert page.locator("a[href]").count() > 0
    assert seen.problems() == []
    page.close()


# --------------------------------------------------------------------------- progress and logs


def test_log_mode_bars_leave_lines_in_the_log_only(monkeypatch, caplog, capfd):
    from frameatlas.progress import PROGRESS_ENV, progress_bar

    monkeypatch.setattr("frameatlas.progress.LOG_EVERY_SECONDS", 0.0)
    monkeypatch.setenv(PROGRESS_ENV, "log")
    caplog.set_level(logging.INFO, logger="frameatlas.progress")
    with progress_bar(total=3, desc="counting", unit="step", mininterval=0) as bar:
        for _ in range(3):
            bar.update(1)
    lines = [r.getMessage() for r in caplog.records if r.name == "frameatlas.progress"]
    assert lines and "counting: 100%" in lines[-1] and "3/3" in lines[-1]
    assert all(getattr(r, "frameatlas_progress", False) for r in caplog.records if r.name == "frameatlas.progress")
    out, err = capfd.readouterr()
    assert "counting" not in out + err


STAGE_CELL = """
import logging, time
from tqdm import tqdm
from frameatlas import pipeline
from frameatlas.progress import progress_bar
from frameatlas.summary import StageSummary

ctx = pipeline.open_stage("extract", config=config, run_dir=run_dir, force=force)
log = logging.getLogger("frameatlas.test")
log.info("an info line for the log")
with progress_bar(total=4, desc="stage work", unit="step") as bar:
    for _ in range(4):
        time.sleep(0.05)
        bar.update(1)
for _ in tqdm(range(3), desc="a library's bar"):
    pass
log.warning("a warning for the report" + " and more" * 80)
ctx.finish(StageSummary(notes=["a note"]))
print("report content")
"""


@pytest.mark.slow
def test_runner_stage_progress_and_info_go_to_the_terminal_and_log_not_the_report(tmp_path):
    """A stage run by the runner (with progress on): its bar and INFO lines reach the runner's
    terminal and logs/<stage>.log; the report keeps its content and the warning as a one-line note."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    notebook = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}}
    )
    parameters = nbformat.v4.new_code_cell("config_path = None\nconfig = None\nrun_dir = None\nforce = False")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [nbformat.v4.new_markdown_cell("# 01 · Extract (test)"), parameters, nbformat.v4.new_code_cell(STAGE_CELL)]
    nbformat.write(notebook, notebooks / "01_extract.ipynb")
    videogen.make_video(tmp_path / "videos" / "one.mp4", seconds=1, fps=10)
    config = {
        "run": {"name": "progress", "output_dir": str(tmp_path / "out")},
        "corpus": {"videos": str(tmp_path / "videos"), "demo": False},
    }
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), str(tmp_path / "pipeline.yaml"), "--stages", "extract"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "FRAMEATLAS_NOTEBOOKS": str(notebooks)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = tmp_path / "out" / "progress"

    terminal = result.stderr
    assert "an info line for the log" in terminal
    assert "stage work: 100%" in terminal  # the live bar, on the runner's terminal
    assert terminal.count("a warning for the report") == 1
    log_text = (run / "logs" / "extract.log").read_text()
    assert "an info line for the log" in log_text and "stage work: 100%" in log_text

    executed = nbformat.read(run / "reports" / "01_extract.ipynb", as_version=4)
    streams = [o for cell in executed.cells for o in cell.get("outputs", []) if o.output_type == "stream"]
    texts = "".join(o.text for o in streams)
    assert "report content" in texts
    assert "info line" not in texts and "stage work" not in texts and "library's bar" not in texts
    assert not TQDM_LINE.search(texts)
    notes = [o.text for o in streams if o.name == "stderr"]
    assert len(notes) == 1 and notes[0].startswith("warning: a warning for the report")
    assert notes[0].count("\n") == 1 and "logs/extract.log" in notes[0]  # one line, the rest in the log
    html = (run / "reports" / "01_extract.html").read_text()
    assert "report content" in html and not TQDM_LINE.search(html)
    assert not re.search(r"an info line for the log\s*(</pre>|\n)", html)  # in the (hidden) code, not as output
    assert json.loads((run / "manifest.json").read_text())["stages"]["extract"]["status"] == "done"
    # only extract ran: its report links to the dashboard, and to no next report that does not exist
    assert 'href="../index.html"' in html and 'class="fa-next"' not in html and 'class="fa-previous"' not in html


# --------------------------------------------------------------------------- reports and pages of a real run


def _pages(root, *, investigator: bool = False):
    """Every report, map and timeline page of a run folder (and its investigator pages)."""
    plots = sorted(p for p in (root / "plots").glob("*.html") if investigator or not p.name.startswith("investigate_"))
    return sorted((root / "reports").glob("*.html")) + plots


def _open(browser, path):
    page = browser.new_page()
    seen = watch(page)
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, seen


def _plotted_points(page) -> int:
    """Points drawn by the plotly figures of a page (0 if plotly did not draw)."""
    page.wait_for_function(
        "() => !document.querySelector('.js-plotly-plot') || document.querySelector('.js-plotly-plot')._fullLayout"
    )
    return page.evaluate(
        "() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".reduce((n, plot) => n + (plot._fullData || []).reduce((m, t) => m + (t.x ? t.x.length : 0), 0), 0)"
    )


def _open_every_page(browser, pages, frames: int) -> None:
    """Each page in one tab, one after the other: no console error, nothing off the machine, maps drawn."""
    assert {p.name for p in pages} >= {"01_extract.html", "06_render.html", "map_pca.html"}
    tab = browser.new_page()
    seen = watch(tab)
    for path in pages:
        tab.goto(path.as_uri())
        tab.wait_for_load_state("load")
        if path.name.startswith("map_"):
            assert _plotted_points(tab) == frames, path.name  # every frame is a point of the map
            assert tab.locator(".js-plotly-plot canvas").count() > 0
        if path.name == "05_visualize.html":
            assert _plotted_points(tab) > 0  # the report's figures draw with the run's plotly.js
        assert seen.problems() == [], path
    tab.close()


@pytest.mark.slow
def test_every_report_and_map_opens_from_file_with_no_errors_and_no_request_off_the_machine(finished_run, browser):
    frames = len(pd.read_parquet(finished_run / "tables" / "frames.parquet"))
    _open_every_page(browser, _pages(finished_run), frames)


@pytest.mark.slow
def test_reports_hide_code_behind_toggles_and_open_with_summary_parameters_and_links(finished_run, browser):
    page, seen = _open(browser, finished_run / "reports" / "01_extract.html")
    cells = page.locator("details.fa-code")
    assert cells.count() >= 4
    code = page.locator("details.fa-code .jp-InputArea").first
    assert not code.is_visible()  # hidden by default
    page.locator("button.fa-toggle-code").click()
    assert all(page.locator("details.fa-code .jp-InputArea").nth(i).is_visible() for i in range(cells.count()))
    assert page.locator("button.fa-toggle-code").inner_text() == "hide code"
    page.locator("button.fa-toggle-code").click()
    assert not code.is_visible()
    cells.nth(1).locator("summary").click()  # one cell's own toggle
    assert cells.nth(1).locator(".jp-InputArea").is_visible() and not code.is_visible()

    summary = page.locator("#frameatlas-summary").inner_text()
    assert "01 · Extract" in summary and "done in" in summary and "frames" in summary
    parameters = page.locator("#frameatlas-parameters")
    assert "run shared" in " ".join(parameters.locator("div").first.inner_text().split())
    assert "config pipeline.yaml" in parameters.inner_text() and "no overrides" in parameters.inner_text()
    assert not parameters.locator("details pre").is_visible()  # the whole config behind its toggle
    parameters.locator("details summary").click()
    assert "name: shared" in parameters.locator("details pre").inner_text()
    assert page.locator("a.fa-previous").count() == 0 and page.locator("a.fa-next").get_attribute("href") == "02_caption.html"
    assert page.locator("a.fa-dashboard").get_attribute("href") == "../index.html"
    assert seen.problems() == []
    page.close()

    reports = sorted((finished_run / "reports").glob("*.html"))
    for before, after in zip(reports, reports[1:]):  # a chain from the first report to the last
        html = before.read_text(encoding="utf-8")
        assert f'href="{after.name}"' in html and f'href="{before.name}"' in after.read_text(encoding="utf-8")
    assert 'class="fa-next"' not in reports[-1].read_text(encoding="utf-8")


@pytest.mark.slow
def test_no_report_holds_progress_bars_or_info_logs(finished_run):
    for notebook in sorted((finished_run / "reports").glob("*.ipynb")):
        cells = nbformat.read(notebook, as_version=4).cells
        streams = "".join(o.text for cell in cells for o in cell.get("outputs", []) if o.output_type == "stream")
        assert not TQDM_LINE.search(streams) and "INFO" not in streams, notebook.name
        html = notebook.with_suffix(".html").read_text(encoding="utf-8")
        assert not TQDM_LINE.search(html) and "INFO frameatlas" not in html, notebook.name
    logs = (finished_run / "logs" / "extract.log").read_text()
    assert re.search(r"INFO frameatlas\.progress: extract: 100%", logs)  # progress went to the stage log


@pytest.mark.slow
def test_pages_are_light_relative_to_the_plotly_bundle(finished_run):
    """Targets, scaled by plotly.js's own size (4.8 MB when they were set): each report under 2 MB, each
    map page under 1 MB plus its data, reports + plots under 15 MB, and plotly.js in the run once."""
    bundle = finished_run / "plots" / "plotly.min.js"
    size = bundle.stat().st_size
    scale = size / 4.8e6
    for report in (finished_run / "reports").glob("*.html"):
        assert report.stat().st_size < 2e6 * scale, report.name
    for page in (finished_run / "plots").glob("map_*.html"):
        assert page.stat().st_size < 1e6 * scale, page.name
    files = [p for folder in ("reports", "plots") for p in (finished_run / folder).rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files if p.suffix != ".ipynb") < 15e6 * scale
    header = bundle.read_text(encoding="utf-8")[:200]
    assert "plotly.js v" in header
    holders = [
        p.name
        for p in files + [finished_run / "index.html"]
        if p.suffix in {".html", ".js"} and "plotly.js v" in p.read_text(encoding="utf-8", errors="replace")
    ]
    assert holders == ["plotly.min.js"]


@pytest.mark.slow
def test_a_shared_archive_opens_anywhere_with_working_links(finished_run, browser, tmp_path):
    from frameatlas.share import share_run

    shared = share_run(finished_run, tmp_path / "shared.zip")
    assert shared.missing_links == []
    with zipfile.ZipFile(shared.archive) as archive:
        archive.extractall(tmp_path / "unzipped")
    root = tmp_path / "unzipped" / finished_run.name
    assert not (root / "cache").exists() and not (root / "index").exists()
    assert (root / "tables" / "frames.csv").exists() and (root / "plots" / "plotly.min.js").exists()
    frames = len(pd.read_parquet(root / "tables" / "frames.parquet"))
    investigators = sorted((root / "plots").glob("investigate_*.html"))
    assert investigators and shared.detached_media  # their source videos are not shared: the players say so
    _open_every_page(browser, _pages(root) + investigators[:1], frames)
    assert "not part of this shared folder" in investigators[0].read_text(encoding="utf-8")

    page, seen = _open(browser, root / "index.html")
    links = page.eval_on_selector_all("a[href]", "links => links.map(a => a.getAttribute('href'))")
    local = [link for link in links if "://" not in link and not link.startswith(("#", "mailto:"))]
    assert local and all((root / link.split("#")[0]).exists() for link in local), local
    page.locator("a[href$='01_extract.html']").first.click()
    page.wait_for_load_state("load")
    assert page.url.endswith("reports/01_extract.html") and page.locator("#frameatlas-summary").count() == 1
    assert seen.problems() == []
    page.close()
