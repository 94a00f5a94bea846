"""End to end: run_pipeline.py executes the stage notebooks with papermill on a tiny corpus."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import videogen
import yaml
from conftest import REPO

pytestmark = pytest.mark.slow


def run_pipeline(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), *args, "--no-progress"],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


@pytest.fixture
def project(tmp_path) -> Path:
    videos = tmp_path / "videos"
    videogen.make_video(videos / "alpha.mp4", seconds=3, fps=25, audio=True)
    videogen.make_video(videos / "beta.mp4", seconds=2, fps=10, scene_cuts=[1.0])
    videogen.make_text_file_with_video_extension(videos / "broken.mp4")
    config = {
        "run": {"name": "tiny", "output_dir": "out"},
        "corpus": {"videos": "videos", "demo": False},
        "extract": {"every_seconds": 0.5, "thumbnail_long_side": 96},
        # CLIP weights are not in this (empty) cache and HF_HUB_OFFLINE is set: the demo's fallback
        "models": {"cache_dir": "hub-cache", "image": {"on_missing_weights": "fallback"}},
        # the default caption model, blip-large, is not cached: CLIP-only; on-screen text is read (there is none)
        "caption": {"term_limit": 20, "ocr": {"enabled": True}},
        "cluster": {"k": 3},
        "visualize": {"projections": ["pca", "tsne"]},  # UMAP has its own (slow) unit test
    }
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_full_run_reports_manifest_dashboard_and_reuse(project):
    result = run_pipeline(str(project / "pipeline.yaml"))
    assert result.returncode == 3, result.stderr  # done, one input skipped
    run = project / "out" / "tiny"
    assert f"Dashboard: {run / 'index.html'}" in result.stdout.splitlines()  # then the next steps

    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["extract", "caption", "embed", "cluster", "visualize", "render"]
    assert {entry["status"] for entry in manifest["stages"].values()} == {"done"}
    assert manifest["stages"]["cluster"]["counts"]["clusters"] == 3
    assert manifest["stages"]["visualize"]["counts"]["map_points"] == 10
    render = manifest["stages"]["render"]["counts"]
    # one video per cluster; none per query: the fallback descriptor cannot read text
    assert (render["videos"], render["cluster_videos"], render["query_videos"], render["failed"]) == (3, 3, 0, 0)
    assert render["segments"] >= 3 and render["output_seconds"] > 3 * 1.5
    extract = manifest["stages"]["extract"]
    assert extract["status"] == "done"
    assert extract["counts"]["frames"] == 6 + 4
    assert extract["counts"]["videos"] == 2
    assert extract["seconds"] > 0 and extract["work_seconds"] > 0
    assert manifest["config"]["extract"]["every_seconds"] == 0.5
    assert manifest["config"]["corpus"]["videos"] == str(project / "videos")
    assert {"python", "av", "papermill", "frameatlas"} <= set(manifest["versions"])
    [skipped] = manifest["skipped_inputs"]
    assert skipped["path"] == str(project / "videos" / "broken.mp4")
    assert skipped["reason"].startswith("not a readable video")
    assert "broken.mp4" in result.stdout

    notebook = nbformat.read(run / "reports" / "01_extract.ipynb", as_version=4)
    injected = [c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and f'run_dir = "{run}"' in injected[0].source
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    images = [o for c in notebook.cells for o in c.get("outputs", []) if "image/jpeg" in o.get("data", {})]
    assert len(images) == 2  # one contact sheet per video

    embed = manifest["stages"]["embed"]
    assert embed["status"] == "done" and embed["counts"]["frames_embedded"] == 10
    assert embed["counts"]["model"] == "fallback-colour-texture-v2"
    image_model, caption_model = (next(m for m in manifest["models"] if m["kind"] == k) for k in ("image", "caption"))
    assert image_model["requested"] == "ViT-B-32/laion2b_s34b_b79k"
    assert image_model["fallback_reason"] == "CLIP weights missing: not in the cache, and HF_HUB_OFFLINE is set"
    assert caption_model["requested"] == "blip-large" and "HF_HUB_OFFLINE is set" in caption_model["fallback_reason"]
    # neither CLIP nor BLIP: no captions, said in the report, and the run goes on
    assert manifest["stages"]["caption"]["counts"]["frames_captioned"] == 0
    caption_counts = manifest["stages"]["caption"]["counts"]
    assert (caption_counts["ocr_frames_read"], caption_counts["ocr_frames_with_text"]) == (10, 0)
    assert next(m for m in manifest["models"] if m["kind"] == "ocr")["model_id"] == "rapidocr-ppocrv4"
    assert "No frame shows text that the reader could read" in (run / "reports" / "02_caption.html").read_text()
    assert "no captions: the image model fallback-colour-texture-v2 has no text side" in (run / "reports" / "02_caption.html").read_text()
    assert (run / "index" / "chroma.sqlite3").exists()

    html = (run / "reports" / "01_extract.html").read_text()
    assert "alpha.mp4" in html and "data:image/jpeg;base64" in html
    for report in ("01_extract.html", "02_caption.html", "03_embed.html", "04_cluster.html", "05_visualize.html", "06_render.html"):
        text = (run / "reports" / report).read_text()
        assert not re.search(r"<script[^>]+src=\"https?://", text), f"{report} must open offline"
        assert "could not be loaded (CLIP weights missing" in text and "text-to-image search" in text, report
    dashboard = (run / "index.html").read_text()
    for report in ("01_extract", "02_caption", "03_embed", "04_cluster", "05_visualize", "06_render"):
        assert f'href="reports/{report}.html"' in dashboard
    videos = sorted(p.name for p in (run / "videos").glob("*.mp4"))
    assert len(videos) == 3 and all(name.startswith("cluster_") for name in videos)
    for name in videos:
        assert f'href="videos/{name}"' in dashboard
        assert f'src="videos/{name[:-4]}.png"' in dashboard
    render_html = (run / "reports" / "06_render.html").read_text()
    assert f'src="../videos/{videos[0]}"' in render_html and "no video for query" in render_html
    assert 'href="plots/map_pca.html"' in dashboard and 'href="plots/map_tsne.html"' in dashboard
    assert "broken.mp4" in dashboard and "not a readable video" in dashboard
    assert "Model substituted" in dashboard and "fallback-colour-texture-v2" in dashboard
    assert len(list((run / "plots" / "contact_sheets").glob("*.jpg"))) == 2

    report_mtime = (run / "reports" / "01_extract.ipynb").stat().st_mtime_ns
    again = run_pipeline(str(project / "pipeline.yaml"))
    assert again.returncode == 3
    manifest = json.loads((run / "manifest.json").read_text())
    assert {entry["status"] for entry in manifest["stages"].values()} == {"unchanged"}
    assert (run / "reports" / "01_extract.ipynb").stat().st_mtime_ns == report_mtime

    # A changed parameter re-executes the stage; cached videos are not decoded again.
    changed = run_pipeline(str(project / "pipeline.yaml"), "--stages", "extract", "--set", "extract.thumbnail_long_side=64")
    assert changed.returncode == 3
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["extract"]["status"] == "done"
    assert manifest["stages"]["extract"]["counts"]["videos_processed"] == 2

    # Turning on-screen text off: no OCR table, and the manifest no longer lists the OCR model as one that ran.
    off = run_pipeline(str(project / "pipeline.yaml"), "--stages", "caption", "--set", "caption.ocr.enabled=false")
    assert off.returncode == 3, off.stderr  # broken.mp4 is still skipped
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["caption"]["counts"]["ocr"] == "off" and not (run / "tables" / "ocr.parquet").exists()
    assert {m["kind"] for m in manifest["models"]} == {"image", "caption"}


def test_a_failing_cell_stops_the_run_and_the_next_run_resumes(project, tmp_path):
    broken_notebooks = tmp_path / "broken_notebooks"
    broken_notebooks.mkdir()
    notebook = nbformat.read(REPO / "notebooks" / "01_extract.ipynb", as_version=4)
    notebook.cells.insert(3, nbformat.v4.new_code_cell('raise RuntimeError("disk on fire")'))
    nbformat.write(notebook, broken_notebooks / "01_extract.ipynb")

    for later in ("02_caption.ipynb", "03_embed.ipynb", "04_cluster.ipynb", "05_visualize.ipynb", "06_render.ipynb"):
        shutil.copy(REPO / "notebooks" / later, broken_notebooks)
    failed = run_pipeline(str(project / "pipeline.yaml"), env={"FRAMEATLAS_NOTEBOOKS": str(broken_notebooks)})
    run = project / "out" / "tiny"
    assert failed.returncode == 1
    assert "stage 'extract' failed: RuntimeError: disk on fire" in failed.stderr
    assert f"partial notebook: {run / 'reports' / '01_extract.ipynb'}" in failed.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["extract"]["status"] == "failed"
    assert "embed" not in manifest["stages"]  # nothing after the failed stage ran
    assert "disk on fire" in (run / "index.html").read_text()
    assert (run / "reports" / "01_extract.html").exists()

    resumed = run_pipeline(str(project / "pipeline.yaml"), "--stages", "extract")
    assert resumed.returncode == 3, resumed.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["extract"]["status"] == "done"


def test_invalid_config_stops_before_any_work(project):
    result = run_pipeline(str(project / "pipeline.yaml"), "--set", "extract.mode=sometimes")
    assert result.returncode == 2
    assert "extract.mode" in result.stderr and '"sometimes"' in result.stderr and "'keyframes'" in result.stderr
    assert not (project / "out").exists()
    unknown = run_pipeline(str(project / "pipeline.yaml"), "--stages", "extrct")
    assert unknown.returncode == 2 and "unknown stage(s) extrct; stages are extract, caption, embed, cluster, visualize, render" in unknown.stderr
    commas = run_pipeline(str(project / "pipeline.yaml"), "--stages", "extract,captoin", "--force", "embed,nope")
    assert commas.returncode == 2 and "unknown stage(s) captoin;" in commas.stderr


def test_notebook_runs_by_hand_from_its_config_path(project):
    """What JupyterLab does: no injected config, the notebook reads its config_path."""
    import papermill

    notebooks = project / "notebooks"
    shutil.copytree(REPO / "notebooks", notebooks)
    papermill.execute_notebook(
        str(notebooks / "01_extract.ipynb"),
        str(project / "by_hand.ipynb"),
        parameters={"config_path": "../pipeline.yaml"},
        cwd=str(notebooks),
        kernel_name="python3",
        progress_bar=False,
    )
    frames = project / "out" / "tiny" / "tables" / "frames.parquet"
    assert frames.exists()
    import pandas as pd

    assert len(pd.read_parquet(frames)) == 10


def test_tiny_clip_run_records_the_model_that_ran(project, tmp_path):
    import hashlib

    import tinyclip

    folder = tinyclip.save_tiny_local_dir(tmp_path / "tiny-clip")
    result = run_pipeline(str(project / "pipeline.yaml"), "--set", f"models.image.name=local-dir:{folder}",
                          "--set", "models.image.pretrained=null", "--set", "models.image.on_missing_weights=error")  # fmt: skip
    assert result.returncode == 3, result.stderr
    manifest = json.loads((project / "out" / "tiny" / "manifest.json").read_text())
    image_model = next(m for m in manifest["models"] if m["kind"] == "image")
    weights = folder / "open_clip_model.safetensors"
    assert image_model["weights"] == str(weights)
    assert image_model["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert image_model["fallback_reason"] is None and image_model["backend"] == "open_clip"
    # the caption stage made the frame vectors; the embed stage reuses them
    assert manifest["stages"]["embed"]["counts"]["frames_cached"] == 10
    assert manifest["stages"]["embed"]["counts"]["frames_embedded"] == 0
    report = (project / "out" / "tiny" / "reports" / "03_embed.html").read_text()
    assert "could not be loaded (CLIP weights missing" not in report  # no substitution banner
    # with a text side, frames get CLIP-ranked prompts (blip-large is not cached), embedded for the caption
    # channel; clusters are named from them, and timelines are drawn
    caption = manifest["stages"]["caption"]["counts"]
    assert caption["frames_captioned"] == 10 and caption["caption_model"] == "clip-only" and caption["terms_encoded"] > 0
    assert manifest["stages"]["embed"]["counts"]["caption_vectors"] == 10
    assert {m["kind"] for m in manifest["models"]} == {"image", "caption", "text", "ocr"}
    assert "prompts hold CLIP-ranked terms only" in (project / "out" / "tiny" / "reports" / "02_caption.html").read_text()
    assert manifest["stages"]["cluster"]["counts"]["name_source"] == "captions"
    assert manifest["stages"]["visualize"]["counts"]["timeline_videos"] == 2
    timelines = sorted(p.name for p in (project / "out" / "tiny" / "plots").glob("timeline_*.html"))
    assert timelines == ["timeline_alpha.html", "timeline_beta.html"]
    # and a video per query (random weights: the hits are arbitrary, but there are hits)
    render = manifest["stages"]["render"]["counts"]
    assert (render["cluster_videos"], render["query_videos"], render["failed"]) == (3, 3, 0)
    videos = sorted(p.name for p in (project / "out" / "tiny" / "videos").glob("query_*.mp4"))
    assert videos == ["query_a-bird-flying.mp4", "query_a-city-street-at-night.mp4", "query_a-rabbit-in-a-meadow.mp4"]
