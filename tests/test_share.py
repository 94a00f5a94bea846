"""`frameatlas share`: one zip of a run that opens anywhere, without caches, index or sources.

The pages of a real run opened from an unzipped archive in Chromium are in test_pages.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
from frameatlas.share import ShareError, share_run


@pytest.fixture
def small_run(tmp_path):
    """A run folder with a page of every kind, tables (one with vectors), caches and an index."""
    run = tmp_path / "outputs" / "small"
    for folder in ("reports", "plots", "frames/v1", "tables", "videos", "cache/projections", "index", "logs", "stages"):
        (run / folder).mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"run": "small", "stages": {}}))
    (run / "index.html").write_text(
        '<a href="reports/01_extract.html">r</a><a href="videos/c.mp4">v</a><img src="frames/v1/0.jpg">'
        '<a href="https://example.org/x">outside web link</a><a href="#top">top</a>'
    )
    (run / "reports" / "01_extract.html").write_text(
        '<script src="../plots/plotly.min.js"></script><link rel="stylesheet" href="frameatlas-report.css">'
        '<a href="../index.html">dashboard</a><script>var s = "src=\'nowhere.js\'";</script>'
    )
    (run / "reports" / "frameatlas-report.css").write_text("body {}")
    (run / "reports" / "01_extract.ipynb").write_text("{}")
    (run / "plots" / "plotly.min.js").write_text("/* plotly */")
    (run / "plots" / "investigate_v1.html").write_text('<video src="../../../videos/v1.mp4"></video>')
    (run / "frames" / "v1" / "0.jpg").write_bytes(b"\xff\xd8jpeg")
    (run / "videos" / "c.mp4").write_bytes(b"\x00" * 1000)
    (run / "cache" / "projections" / "pca.npy").write_bytes(b"cached")
    (run / "index" / "chroma.sqlite3").write_bytes(b"index")
    (run / "logs" / "extract.log").write_text("INFO done\n")
    (run / "stages" / "extract.json").write_text("{}")
    (run / ".frameatlas.lock").write_text("")
    pd.DataFrame({"frame_key": ["a", "b"], "vector": [np.ones(3, np.float32), np.zeros(3, np.float32)]}).to_parquet(
        run / "tables" / "embeddings.parquet"
    )
    pd.DataFrame({"frame_key": ["a", "b"], "timestamp": [0.5, 1.0]}).to_parquet(run / "tables" / "frames.parquet")
    return run


def test_the_archive_holds_the_pages_tables_and_videos_but_no_caches_index_or_state(small_run):
    shared = share_run(small_run)
    assert shared.archive == small_run.with_name("small.zip") and shared.size == shared.archive.stat().st_size
    with zipfile.ZipFile(shared.archive) as archive:
        names = set(archive.namelist())
        frames_csv = pd.read_csv(io.BytesIO(archive.read("small/tables/frames.csv")))
        embeddings_csv = pd.read_csv(io.BytesIO(archive.read("small/tables/embeddings.csv")))
        readme = archive.read("small/README.txt").decode()
        investigator = archive.read("small/plots/investigate_v1.html").decode()
    assert {
        "small/index.html", "small/manifest.json", "small/reports/01_extract.html", "small/reports/01_extract.ipynb",
        "small/reports/frameatlas-report.css", "small/plots/plotly.min.js", "small/frames/v1/0.jpg", "small/videos/c.mp4",
        "small/tables/frames.parquet", "small/tables/embeddings.parquet", "small/logs/extract.log",
    } <= names  # fmt: skip
    assert not [n for n in names if n.startswith(("small/cache/", "small/index/", "small/stages/")) or "lock" in n]
    assert frames_csv.to_dict("list") == {"frame_key": ["a", "b"], "timestamp": [0.5, 1.0]}
    assert list(embeddings_csv.columns) == ["frame_key"]  # vectors stay in the Parquet table
    assert "index.html" in readme
    assert shared.left_out == ["cache/", "index/", "stages/"]
    assert shared.missing_links == []  # a link inside a script is no link, web links are not files
    # the source video of an investigator page is not shared: its player says so instead of failing to load
    assert shared.detached_media == ["plots/investigate_v1.html: ../../../videos/v1.mp4"] and shared.outside_links == []
    assert "not part of this shared folder" in investigator and " src=" not in investigator
    assert (small_run / "plots" / "investigate_v1.html").read_text() == '<video src="../../../videos/v1.mp4"></video>'


def test_other_links_leaving_the_run_are_reported(small_run):
    (small_run / "reports" / "notes.html").write_text('<a href="../../elsewhere/notes.txt">notes</a>')
    assert share_run(small_run).outside_links == ["reports/notes.html: ../../elsewhere/notes.txt"]


def test_no_videos_leaves_rendered_videos_out_and_does_not_call_their_links_missing(small_run, tmp_path):
    shared = share_run(small_run, tmp_path / "light.zip", videos=False)
    with zipfile.ZipFile(shared.archive) as archive:
        names = archive.namelist()
    assert "small/videos/c.mp4" not in names and "small/index.html" in names
    assert shared.missing_links == [] and not shared.videos


def test_a_link_to_a_file_the_run_lacks_is_reported(small_run):
    (small_run / "index.html").write_text('<a href="plots/map_pca.html">map</a>')
    assert share_run(small_run).missing_links == ["index.html: plots/map_pca.html"]


def test_refusals_name_the_path_and_what_would_do(small_run, tmp_path):
    with pytest.raises(ShareError, match=r"inside the run folder it would share itself"):
        share_run(small_run, small_run / "reports" / "x.zip")
    with pytest.raises(ShareError, match=r"must end in \.zip"):
        share_run(small_run, tmp_path / "x.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShareError, match=r"not a frameatlas run folder .*give outputs/<run>"):
        share_run(tmp_path / "empty")
    with pytest.raises(ShareError, match=r"no such run folder"):
        share_run(tmp_path / "missing")
    assert not list(tmp_path.glob("*.zip")) and not (small_run / "reports" / "x.zip").exists()


def test_cli_prints_the_archive_and_its_size(small_run, tmp_path):
    out = tmp_path / "sent" / "small-run.zip"
    result = subprocess.run(
        [sys.executable, "-m", "frameatlas.cli", "share", str(small_run), "--out", str(out), "--no-videos"],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    size_mb = f"{out.stat().st_size / 1e6:.1f} MB"
    assert result.stdout.startswith(f"{out}: {size_mb} (") and "index.html" in result.stdout
    assert "rendered videos left out" in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "frameatlas.cli", "share", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "no such run folder" in bad.stderr
