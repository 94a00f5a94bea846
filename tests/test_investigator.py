"""The investigator's curves, the offline pages 05_visualize writes (opened from file:// in real
Chromium), and `frameatlas.investigate` for notebooks; all on the shared finished run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import frameatlas
import numpy as np
import pandas as pd
import pytest
from browser import watch
from frameatlas.config import config_from_dict
from frameatlas.investigator import Prompt, RunView
from frameatlas.investigator.pages import write_investigator_pages

pytestmark = pytest.mark.slow  # every test reads the shared finished run (one whole pipeline run)


@pytest.fixture(scope="module")
def view(finished_run) -> RunView:
    return RunView(finished_run)


def fallback_config(run: Path):
    """The run's config with the weight-free image model: no CLIP text side."""
    data = json.loads((run / "config.json").read_text())
    data["models"]["image"] = {"name": "fallback"}
    return config_from_dict(data)


def test_curves_equal_the_similarity_timelines_of_the_visualize_stage(view, finished_run):
    timelines = pd.read_parquet(finished_run / "tables" / "timelines.parquet")
    queries = list(dict.fromkeys(timelines["query"]))
    assert queries == view.settings()["queries"]
    for video in view.videos:
        curves = view.curves(video.video_id, [Prompt(q) for q in queries])
        assert [line.channel for line in curves.lines] == ["visual"] * len(queries)
        assert list(curves.timestamps) == sorted(curves.timestamps) and len(curves.timestamps) == video.frames
        for line in curves.lines:
            expected = timelines[(timelines.video_id == video.video_id) & (timelines["query"] == line.prompt.text)]
            expected = expected.set_index("frame_key").similarity.reindex(curves.frame_keys).to_numpy()
            np.testing.assert_allclose(line.scores, expected, rtol=1e-5, atol=1e-5)


def test_a_negative_prompt_subtracts_its_weighted_similarity(view):
    video = view.videos[0].video_id
    plain = {line.prompt.text: line.scores for line in view.curves(video, [Prompt("a red car"), Prompt("a blue sky")]).lines}
    [line] = view.curves(video, [Prompt("a red car", "a blue sky", 0.5)]).lines
    assert line.label == "a red car − 0.5·a blue sky"
    np.testing.assert_allclose(line.scores, plain["a red car"] - 0.5 * plain["a blue sky"], atol=1e-6)


def test_without_a_text_side_the_text_channels_score_and_say_so(finished_run):
    view = RunView(finished_run, config=fallback_config(finished_run))
    gamma = next(v for v in view.videos if v.name == "gamma.mp4")  # shows HELLO, nothing, WORLD
    curves = view.curves(gamma.video_id, [Prompt("HELLO")])
    assert any("visual channel off" in note for note in curves.notes)
    channels = {line.channel for line in curves.lines}
    assert "ocr" in channels and "visual" not in channels
    ocr = next(line for line in curves.lines if line.channel == "ocr")
    assert ocr.label == "HELLO [ocr]"
    read = pd.read_parquet(finished_run / "tables" / "ocr_embeddings.parquet").frame_key
    has_text = np.isin(curves.frame_keys, read)
    assert np.isnan(ocr.scores[~has_text]).all() and not np.isnan(ocr.scores[has_text]).any()
    first_second = curves.timestamps < 1.0
    assert np.nanmax(ocr.scores[first_second & has_text]) > np.nanmax(ocr.scores[~first_second & has_text])


def test_a_page_says_why_when_no_channel_can_score_the_prompts(finished_run, tmp_path, browser):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    for table in ("caption_embeddings", "ocr_embeddings", "speech_embeddings"):
        (run / "tables" / f"{table}.parquet").unlink(missing_ok=True)
    pages = write_investigator_pages(run, fallback_config(run))
    assert pages.scored == 0 and any("no curves" in note for note in pages.notes)
    page_file = next(iter(pages.files.values()))
    text = page_file.read_text()
    assert "No channel can score these prompts" in text and "visual channel off for text prompts" in text
    page = browser.new_page()
    seen = watch(page)
    page.goto(page_file.as_uri())
    page.wait_for_function("window.frameatlasViewer !== undefined")
    assert "No channel can score these prompts" in page.locator("#fa-chart").inner_text()
    assert page.evaluate("document.getElementById('fa-chart').data") is None  # no empty chart drawn
    assert seen.problems() == []
    page.close()


def test_visualize_wrote_a_page_per_video_linked_from_the_dashboard_and_the_report(view, finished_run):
    plots = finished_run / "plots"
    pages = sorted(p.name for p in plots.glob("investigate_*.html"))
    assert pages == sorted(f"investigate_{Path(v.name).stem}.html" for v in view.videos)
    for name in pages:
        html = (plots / name).read_text()
        assert '<script src="plotly.min.js"></script>' in html and "cdn" not in html.lower()
        assert str(finished_run) not in html, f"{name} names a local folder (the page is meant to be shared)"
    assert (plots / "plotly.min.js").stat().st_size > 1_000_000
    dashboard = (finished_run / "index.html").read_text()
    assert all(f"plots/{name}" in dashboard for name in pages)
    report = (finished_run / "reports" / "05_visualize.html").read_text()
    assert f'src="../plots/{pages[0]}"' in report.replace("&quot;", '"') or f"../plots/{pages[0]}" in report
    manifest = json.loads((finished_run / "manifest.json").read_text())
    assert json.dumps(manifest).count('"investigator_pages": 3') == 1


def test_the_offline_page_plays_and_seeks_from_file(finished_run, browser):
    page_file = finished_run / "plots" / "investigate_alpha.html"
    page = browser.new_page()
    seen = watch(page)
    page.goto(page_file.as_uri())
    page.wait_for_function("window.frameatlasViewer && window.frameatlasViewer.plotted")
    page.wait_for_function("document.getElementById('fa-video').readyState >= 1")
    assert page.evaluate("document.getElementById('fa-video').src").startswith("file://")
    page.click("#fa-play")
    page.wait_for_function("document.getElementById('fa-video').currentTime > 0.4")
    page.click("#fa-play")
    page.wait_for_function("document.getElementById('fa-video').paused")
    times = page.evaluate("window.frameatlasViewer.curves.x")
    step = times[1] - times[0]
    page.locator("#fa-chart").scroll_into_view_if_needed()
    box = page.locator("#fa-chart .nsewdrag").first.bounding_box()
    for target in (times[-1] * 0.8, times[1] + step / 3):
        x = page.evaluate(f"document.getElementById('fa-chart')._fullLayout.xaxis.l2p({target})")
        page.mouse.click(box["x"] + x, box["y"] + box["height"] / 2)
        page.wait_for_function(f"Math.abs(document.getElementById('fa-video').currentTime - {target}) <= {step}")
        page.wait_for_function("!document.getElementById('fa-video').seeking")
        assert abs(page.evaluate("document.getElementById('fa-video').currentTime") - target) <= step
    cursor = page.evaluate("document.getElementById('fa-chart').layout.shapes[0].x0")
    assert abs(cursor - page.evaluate("document.getElementById('fa-video').currentTime")) < 1e-3
    assert seen.problems() == []
    page.close()


def test_investigate_shows_the_offline_page_or_the_running_app(finished_run, tmp_path):
    frame = frameatlas.investigate(finished_run, "beta.mp4", base=finished_run / "reports")
    assert frame.src == "../plots/investigate_beta.html"
    assert frameatlas.investigate(finished_run, base=finished_run / "plots").src == "investigate_alpha.html"
    with pytest.raises(ValueError, match="'nope.mp4' is not in .*alpha.mp4, beta.mp4, gamma.mp4"):
        frameatlas.investigate(finished_run, "nope.mp4")
    run = Path(shutil.copytree(finished_run, tmp_path / "run", ignore=shutil.ignore_patterns("frames", "plots", "reports")))
    video_id = pd.read_parquet(run / "tables" / "videos.parquet").set_index("video_name").video_id["beta.mp4"]
    address = {"url": "http://127.0.0.1:8765/", "pid": os.getpid()}  # a live process: this one
    (run / ".frameatlas-serve.json").write_text(json.dumps(address))
    assert frameatlas.investigate(run, "beta.mp4").src == f"http://127.0.0.1:8765/?video={video_id}"
    (run / ".frameatlas-serve.json").write_text(json.dumps({**address, "pid": 2**22 + 12345}))  # gone: the page again
    with pytest.raises(FileNotFoundError, match="no investigator page yet; run the visualize stage"):
        frameatlas.investigate(run, "beta.mp4")
