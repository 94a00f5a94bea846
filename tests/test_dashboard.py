"""The run dashboard in real Chromium: a summary, a sentence per stage, a legend, the clusters
gallery, players that load, links that stay inside the run, no local paths, no console errors;
and, for a run on the weight-free fallback, the banner with its remedy and the reasons for what
is absent."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest
from browser import watch
from frameatlas.pipeline.registry import STAGE_NAMES
from frameatlas.report import write_dashboard
from frameatlas.store import RunPaths

pytestmark = pytest.mark.slow

# an absolute path of this machine in the page's text or attributes
LOCAL_PATH = re.compile(r"(?<![\w.:/~])/(?:tmp|home|root|work|usr|var|opt|mnt|srv|media|data|Users|private)/")
ATTRIBUTES = """() => [...document.querySelectorAll('[href], [src], [poster]')].flatMap(el =>
    ['href', 'src', 'poster'].filter(a => el.hasAttribute(a)).map(a => el.getAttribute(a)))"""


def _open(browser, path: Path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    seen = watch(page)
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, seen


@pytest.fixture(scope="module")
def dashboard(finished_run, browser):
    page, seen = _open(browser, finished_run / "index.html")
    yield page, seen
    page.close()


def test_no_absolute_local_path_on_the_page(finished_run):
    html = (finished_run / "index.html").read_text()
    assert str(finished_run) not in html and str(Path.home()) + "/" not in html
    assert not LOCAL_PATH.search(html), LOCAL_PATH.search(html)
    assert "file:" not in html
    # the manifest beside it keeps the full paths (it is the record of this machine's run)
    assert str(finished_run) in (finished_run / "manifest.json").read_text()


def test_every_link_and_source_resolves_inside_the_run(finished_run, dashboard):
    page, seen = dashboard
    targets = page.evaluate(ATTRIBUTES)
    assert len(targets) >= 20
    root = finished_run.resolve()
    for target in targets:
        parsed = urlparse(target)
        assert not parsed.scheme and not parsed.netloc and not target.startswith("/"), target
        resolved = (finished_run / unquote(parsed.path)).resolve()
        assert resolved.is_relative_to(root) and resolved.is_file(), target
    for report in ("01_extract", "02_caption", "03_embed", "04_cluster", "05_visualize", "06_render"):
        assert f"reports/{report}.html" in targets
    assert seen.problems() == []


def test_rendered_videos_play_inline(finished_run, dashboard):
    page, seen = dashboard
    rendered = pd.read_parquet(finished_run / "tables" / "render_videos.parquet")
    rendered = rendered[rendered.status.isin(["rendered", "cached"])]
    players = page.locator("video")
    assert players.count() == len(rendered) >= 3
    page.wait_for_function("[...document.querySelectorAll('video')].every(v => v.readyState >= 1 || v.error)", timeout=30_000)
    states = page.evaluate("[...document.querySelectorAll('video')].map(v => [v.getAttribute('src'), v.readyState, "
                           "v.error && v.error.code, v.duration, v.videoWidth])")  # fmt: skip
    durations = dict(zip(rendered.path, rendered.duration))
    for src, ready, error, duration, width in states:
        assert error is None and ready >= 1 and width > 0, (src, ready, error)
        assert duration == pytest.approx(durations[src], abs=0.5), src
    # each player shows its best segment's best frame before it plays (not its title card)
    segments = pd.read_parquet(finished_run / "tables" / "render_segments.parquet")
    frames = pd.read_parquet(finished_run / "tables" / "frames.parquet")
    posters = dict(
        page.evaluate("[...document.querySelectorAll('video')].map(v => [v.getAttribute('src'), v.getAttribute('poster')])")
    )
    for video in rendered.itertuples():
        best = segments[segments.name == video.name].sort_values("score", ascending=False).iloc[0]
        own = frames[frames.video_id == best.video_id]
        nearest = own.iloc[(own.timestamp - best.best_timestamp).abs().to_numpy().argmin()]
        assert posters[video.path] == nearest.thumbnail, video.name
    first = players.first
    first.evaluate("v => { v.muted = true; return v.play(); }")
    page.wait_for_function("v => v.currentTime > 0.2", arg=first.element_handle(), timeout=20_000)
    assert seen.problems() == []


def test_summary_stage_sentences_legend_and_raw_counts(finished_run, dashboard):
    page, seen = dashboard
    manifest = json.loads((finished_run / "manifest.json").read_text())
    frames = len(pd.read_parquet(finished_run / "tables" / "frames.parquet"))
    summary = page.locator("#summary").inner_text()
    assert re.search(r"\b3\s+videos", summary) and re.search(rf"\b{frames}\s+frames sampled", summary)
    assert re.search(r"\b3\s+clusters", summary) and "total time" in summary
    rows = page.locator("#stages tr")
    assert rows.count() == 1 + 6
    extract = rows.nth(1).inner_text()
    assert f"Sampled {frames} frames from 3 videos" in extract
    assert "Grouped" in rows.nth(4).inner_text() and "into 3 clusters" in rows.nth(4).inner_text()
    # raw counts are there, folded away
    raw = page.locator("#stages details.raw")
    assert raw.count() == 6 and not raw.first.evaluate("d => d.open")
    assert not page.locator("#stages details.raw code").first.is_visible()
    raw.first.locator("summary").click()
    assert page.locator("#stages details.raw code").first.is_visible()
    assert "decode_seconds" in page.locator("#stages details.raw code").first.inner_text()
    legend = page.locator("#legend").inner_text()
    assert "unchanged" in legend and "inputs, parameters and code are the same" in legend
    assert manifest["cumulative_seconds"] > 0
    assert seen.problems() == []


def test_clusters_gallery_and_keyframe_strips(finished_run, dashboard):
    page, seen = dashboard
    cards = page.locator("#clusters .cluster")
    assert cards.count() == 3
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    for index in range(3):
        image = cards.nth(index).locator("img")
        image.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=10_000)
        assert image.get_attribute("src").startswith("plots/clusters/")
    strips = page.locator("img[alt^='keyframes of']")
    assert strips.count() == 3
    assert all(s.startswith("plots/keyframes/") for s in strips.evaluate_all("els => els.map(e => e.getAttribute('src'))"))
    assert seen.problems() == []


@pytest.fixture(scope="module")
def fallback_dashboard(finished_run, tmp_path_factory):
    """The shared run's dashboard as a run on the weight-free fallback would show it."""
    root = tmp_path_factory.mktemp("fallback-dashboard") / "shared"
    shutil.copytree(finished_run, root, symlinks=True)
    for timeline in (root / "plots").glob("timeline_*.html"):
        timeline.unlink()
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["config"]["models"]["image"].update({"name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"})
    image = next(m for m in manifest["models"] if m["kind"] == "image")
    image.update({"model_id": "fallback-colour-texture-v2", "requested": "ViT-B-32/laion2b_s34b_b79k", "weights": None,
                  "weights_sha256": None, "fallback_reason": f"CLIP weights missing: not in {root}/hub-cache",
                  "disabled_features": ["text-to-image search", "CLIP cluster naming", "CLIP captions"]})  # fmt: skip
    manifest["stages"]["cluster"]["status"] = "unchanged"
    write_dashboard(RunPaths(root), manifest, STAGE_NAMES)
    return root


def test_fallback_banner_gives_the_remedy_and_absences_have_reasons(fallback_dashboard, browser):
    page, seen = _open(browser, fallback_dashboard / "index.html")
    # the shared run's caption model (blip-large, not cached) was substituted too: one banner each
    assert page.locator(".remedy").count() == 2
    assert (
        "frameatlas models download blip-large --kind caption" in page.locator(".remedy", has_text="caption model").inner_text()
    )
    banner = page.locator(".remedy", has_text="the image model").inner_text()
    assert "fallback-colour-texture-v2" in banner and "text-to-image search" in banner
    assert "frameatlas models download ViT-B-32 --pretrained laion2b_s34b_b79k" in banner
    assert "models.image.pretrained" in banner and "HF_HOME" in banner and "frameatlas run pipeline.yaml" in banner
    absent = page.locator("#absent").inner_text()
    assert "Similarity timelines: timelines need CLIP" in absent
    cluster_row = page.locator("#stages tr").nth(4).inner_text()
    assert "unchanged" in cluster_row and "earlier" in cluster_row
    html = (fallback_dashboard / "index.html").read_text()
    assert str(fallback_dashboard) not in html and not LOCAL_PATH.search(html)  # the reason's path was made relative
    assert seen.problems() == []
    page.close()


def test_classes_of_unlabelled_videos_show_no_given_label(tmp_path):
    """A video the labels file leaves out is predicted: its 'label given' cell is a dash, never 'nan'."""
    from frameatlas.report import _classes
    from frameatlas.store import write_table

    run = RunPaths(tmp_path / "run")
    run.tables.mkdir(parents=True)
    common = {"level": "video", "source": "trained", "modality": "audio", "split": "cross-validated", "start": 0.0, "end": 10.0}
    write_table(pd.DataFrame([
        {**common, "video_id": "a", "video_name": "a.mp4", "label": "cat", "probability": 0.9, "true_label": "cat"},
        {**common, "video_id": "b", "video_name": "b.mp4", "label": "dog", "probability": 0.8, "true_label": None,
         "split": "predicted"},
    ]), run.table("predictions"))  # fmt: skip
    rows = _classes(run, {"stages": {"classify": {"status": "done"}}})
    assert [(r["video"], r["label"], r["truth"]) for r in rows] == [("a.mp4", "cat", "cat"), ("b.mp4", "dog", None)]
