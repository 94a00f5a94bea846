"""The pages a run leaves, opened in real Chromium as the colleague it is sent to would, and what
goes into them: reports without progress bars or INFO logs, which go to the terminal and the log."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import nbformat
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
