"""Visualize: projections and their cache, offline 3D maps with thumbnails, similarity timelines."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tinyclip
from frameatlas import models
from frameatlas import project as project_module
from frameatlas.config import config_from_dict
from frameatlas.files import UnsafePath
from frameatlas.project import even_sample, project
from frameatlas.store import RunPaths, load_vectors, read_table, write_table
from frameatlas.visualize import NO_CLUSTERS_NOTE, map_3d, similarity_timelines, write_standalone_html, write_visualizations
from runs import embedded_run

QUERIES = ["a red square", "a blue sky", "a checkerboard"]


def build_run(root: Path, image_model: dict) -> RunPaths:
    run = embedded_run(root, image_model, name="v", extract={"thumbnail_long_side": 64}, search={"queries": QUERIES})[1]
    models.clear_loaded()
    return run


@pytest.fixture(scope="module")
def fallback_run(tmp_path_factory) -> RunPaths:
    return build_run(tmp_path_factory.mktemp("fallback"), {"name": "fallback"})


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tinyclip.save_tiny_local_dir(tmp_path_factory.mktemp("tiny") / "tiny-clip")


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory, tiny_dir) -> RunPaths:
    return build_run(tmp_path_factory.mktemp("clip"), {"name": f"local-dir:{tiny_dir}", "pretrained": None})


def copy_run(run: RunPaths, dest: Path) -> RunPaths:
    """What the visualize stage reads (tables, thumbnails, config), copied so tests may write."""
    dest.mkdir(parents=True)
    for name in ("tables", "frames"):
        shutil.copytree(run.root / name, dest / name)
    shutil.copy(run.config_file, dest / "config.json")
    return RunPaths(dest)


def stage_cfg(run: RunPaths, **visualize):
    data = json.loads(run.config_file.read_text())
    data["run"] = {"output_dir": str(run.root.parent), "name": run.root.name}
    data["visualize"] = {**data["visualize"], **visualize}
    return config_from_dict(data)


def unit_vectors(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dim))
    vectors = centres[np.arange(n) % 4] + 0.3 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def plotted_traces(page: str) -> list[dict]:
    """The trace list handed to Plotly.newPlot in a written HTML file."""
    start = page.index("Plotly.newPlot(")
    start = page.index("[", page.index(",", start))
    traces, _ = json.JSONDecoder().raw_decode(page, start)
    return traces


# --------------------------------------------------------------------------- projections


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_projection_shapes_and_determinism(method):
    vectors = unit_vectors(40)
    points = project(vectors, method, seed=3, perplexity=30)
    assert points.shape == (40, 3) and points.dtype == np.float32 and np.isfinite(points).all()
    assert np.array_equal(points, project(vectors, method, seed=3, perplexity=30))
    assert points.std(axis=0).min() > 0  # a real 3D layout, not a degenerate one
    for n in (1, 2, 5):  # tiny corpora still give (n, 3) points (perplexity clipped below n)
        assert project(vectors[:n], method).shape == (n, 3)
    with pytest.raises(ValueError, match="choose one of pca, tsne, umap"):
        project(vectors, "mds")


def test_even_sample_spreads_over_the_table():
    picks = even_sample(1000, 100, seed=1)
    assert len(picks) == 100 and len(set(picks)) == 100 and (np.diff(picks) > 0).all()
    assert picks[0] < 10 and picks[-1] >= 990  # start to end, evenly
    assert np.array_equal(picks, even_sample(1000, 100, seed=1))
    assert np.array_equal(even_sample(50, 100), np.arange(50))


def test_projection_cache_is_hit_without_recomputing(tmp_path, monkeypatch):
    vectors = unit_vectors(30)
    first = project(vectors, "tsne", seed=0, perplexity=5, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("tsne-*.npy"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("projection recomputed despite the cache")

    monkeypatch.setattr(project_module, "_compute", fail)
    assert np.array_equal(project(vectors, "tsne", seed=0, perplexity=5, cache_dir=tmp_path), first)
    with pytest.raises(AssertionError, match="recomputed"):  # other parameters: another cache entry
        project(vectors, "tsne", seed=1, perplexity=5, cache_dir=tmp_path)


# --------------------------------------------------------------------------- maps


def test_maps_are_offline_html_with_every_frame_once_and_relative_thumbnails(fallback_run, tmp_path, monkeypatch):
    run = copy_run(fallback_run, tmp_path / "run")
    frames = read_table(run.table("frames"))
    summary = write_visualizations(stage_cfg(run, projections=["pca", "tsne"], color_by="cluster"), run)

    assert summary.counts["frames"] == summary.counts["map_points"] == len(frames)
    assert summary.color_by == "video" and NO_CLUSTERS_NOTE in summary.notes  # no cluster table yet
    projections = read_table(run.table("projections"))
    assert list(projections.columns) == ["frame_key", "method", "x", "y", "z"]
    assert projections.groupby("method").frame_key.apply(sorted).to_dict() == {
        m: sorted(frames.frame_key) for m in ("pca", "tsne")
    }

    for method in ("pca", "tsne"):
        path = run.root / "plots" / f"map_{method}.html"
        assert summary.map_files[method] == path
        page = path.read_text(encoding="utf-8")
        bundle = run.root / "plots" / "plotly.min.js"  # the run's one copy of plotly.js, referenced relatively
        assert "plotly.js v" in bundle.read_text(encoding="utf-8")[:500] and "plotly.js v" not in page.lower()
        assert len(page) < bundle.stat().st_size / 10
        assert re.findall(r"<script[^>]*\bsrc=[\"']([^\"']+)", page) == ["plotly.min.js"]
        assert 'id="fa-thumb"' in page and "plotly_hover" in page and "plotly_click" in page
        for key in frames.frame_key:
            assert page.count(f'"{key}"') == 1, key
        traces = plotted_traces(page)
        assert sorted(t["name"].split(" (")[0] for t in traces) == ["one.mp4", "two.mp4"]
        rows = [row for trace in traces for row in trace["customdata"]]
        assert sorted(key for _, key in rows) == sorted(frames.frame_key)
        thumbs = dict(zip(frames.frame_key, frames.thumbnail))
        for thumb, key in rows:
            assert thumb.startswith("../frames/") and (path.parent / thumb).is_file()
            assert (path.parent / thumb).resolve() == run.absolute(thumbs[key])

    # a second run of the stage reads every projection from the cache
    monkeypatch.setattr(project_module, "_compute", lambda *a, **k: pytest.fail("projection recomputed"))
    again = write_visualizations(stage_cfg(run, projections=["pca", "tsne"]), run)
    assert again.counts["projections_cached"] == 2
    # a projection no longer configured loses its file
    write_visualizations(stage_cfg(run, projections=["pca"]), run)
    # Only the finished page is left: no temporary file of the atomic writer, nothing else.
    # (besides the run's plotly.js and the investigator pages)
    written = sorted(p.name for p in (run.root / "plots").iterdir() if not p.name.startswith("investigate_"))
    assert written == ["map_pca.html", "plotly.min.js"]
    cached = sorted(p.name for p in (run.cache / "projections").iterdir())
    assert len(cached) == 2 and all(re.fullmatch(r"(pca|tsne)-[0-9a-f]{24}\.npy", name) for name in cached), cached


def test_maps_colour_by_cluster_when_the_cluster_table_exists(fallback_run, tmp_path):
    run = copy_run(fallback_run, tmp_path / "run")
    frames = read_table(run.table("frames"))
    cluster = np.array([0, 1, -1])[np.arange(len(frames)) % 3]
    names = {0: "red scenes", 1: "blue scenes", -1: "noise"}
    annotated = frames.assign(cluster=cluster, cluster_name=[names[c] for c in cluster])
    write_table(annotated.iloc[:-1], run.table("frames_annotated"))  # stale: the last frame is missing
    cluster[-1] = -2

    summary = write_visualizations(stage_cfg(run, projections=["pca"], color_by="cluster", timelines=False), run)
    fig = summary.maps["pca"]
    assert summary.color_by == "cluster" and summary.counts["clusters"] == 2 and NO_CLUSTERS_NOTE not in summary.notes
    assert [t.name.split(" (")[0] for t in fig.data] == ["0: red scenes", "1: blue scenes", "noise", "not clustered"]
    assert [len(t.customdata) for t in fig.data] == [int((cluster == c).sum()) for c in (0, 1, -1, -2)]
    assert any("cluster 1: blue scenes" in text for text in fig.data[1].text)
    page = summary.map_files["pca"].read_text()
    assert all(page.count(f'"{key}"') == 1 for key in frames.frame_key)

    by_video = write_visualizations(stage_cfg(run, projections=["pca"], color_by="video", timelines=False), run)
    assert [t.name.split(" (")[0] for t in by_video.maps["pca"].data] == ["one.mp4", "two.mp4"]


@pytest.mark.parametrize("outside", ["../../etc/passwd", "/etc/passwd"])
def test_a_thumbnail_outside_the_run_is_refused_naming_table_row_and_path(fallback_run, tmp_path, outside):
    run = copy_run(fallback_run, tmp_path / "run")
    frames = read_table(run.table("frames"))
    frames.loc[3, "thumbnail"] = outside
    write_table(frames, run.table("frames"))
    expected = rf"tables/frames.parquet row 3, column thumbnail: path '{re.escape(outside)}' resolves to \S+, outside {run.root}; refused"
    with pytest.raises(UnsafePath, match=expected):
        write_visualizations(stage_cfg(run, projections=["pca"]), run)
    assert not (run.root / "plots").exists() or not any((run.root / "plots").iterdir())  # no page points there

    # A figure built elsewhere is checked too when written as a page.
    fig = map_3d(np.zeros((len(frames), 3)), frames, color_by="video")
    with pytest.raises(UnsafePath, match=r"figure 'Frames in 3D' trace 0 \(one.mp4 \(\d+\)\) point 3, customdata thumbnail: "
                       rf"path '{re.escape(outside)}'"):  # fmt: skip
        write_standalone_html(fig, run.root / "plots" / "crafted.html", run)
    assert not (run.root / "plots" / "crafted.html").exists()


def test_table_paths_resolve_like_run_resolve_symlinks_included(tmp_path):
    run = RunPaths(tmp_path / "run")
    (run.root / "frames" / "v").mkdir(parents=True)
    (run.root / "frames" / "v" / "a.jpg").write_bytes(b"")
    (run.root / "frames" / "v" / "inside.jpg").symlink_to(run.root / "frames" / "v" / "a.jpg")
    (run.root / "frames" / "v" / "escape.jpg").symlink_to("/etc/passwd")
    (run.root / "frames" / "etc").symlink_to("/etc")
    inside = ["frames/v/a.jpg", "frames/v/inside.jpg", "frames/v/missing.jpg", "frames/v/..", "frames//v/./a.jpg",
              str(run.root / "frames" / "v" / "a.jpg"), f"../{run.root.name}/frames/v/a.jpg"]  # fmt: skip
    assert run.table_paths(inside, table="frames", column="thumbnail") == [run.resolve(p) for p in inside]
    for outside in ["frames/v/escape.jpg", "frames/etc/passwd", "frames/v/../../..", "/etc/passwd"]:
        with pytest.raises(UnsafePath, match=rf"tables/frames.parquet row 7, column thumbnail: path '{re.escape(outside)}'"):
            run.table_paths([*inside, outside], table="frames", column="thumbnail")  # the row after the 7 good ones


def test_map_3d_hover_and_customdata():
    frames = pd.DataFrame({
        "frame_key": ["a:0", "a:1500", "b:0"], "video_id": ["a", "a", "b"], "video_name": ["x<y>.mp4", "x<y>.mp4", "b.mp4"],
        "timestamp": [0.0, 65.5, 2.0], "thumbnail": ["frames/a/0.jpg", "frames/a/1.jpg", "frames/b/0.jpg"],
        "caption": ["a cat", None, "a dog"],
    })  # fmt: skip
    fig = map_3d(np.arange(9, dtype=float).reshape(3, 3), frames, color_by="cluster", title="t")
    assert fig.layout.meta["frameatlas"]["color_by"] == "video" and "coloured by video" in fig.layout.title.text
    first = fig.data[0]
    assert [list(row) for row in first.customdata] == [["frames/a/0.jpg", "a:0"], ["frames/a/1.jpg", "a:1500"]]
    assert first.text[1] == "<b>x&lt;y&gt;.mp4</b> 01:05.50" and first.text[0].endswith("<i>a cat</i>")
    with pytest.raises(ValueError, match="do not match"):
        map_3d(np.zeros((2, 3)), frames)


# --------------------------------------------------------------------------- timelines


def independent_text_vectors(folder: Path, texts: list[str]) -> np.ndarray:
    """The tiny CLIP's text vectors, computed with open_clip directly (not through frameatlas)."""
    import open_clip
    import torch
    from safetensors.torch import load_file

    model = open_clip.CLIP(**tinyclip.TINY_CONFIG)
    model.load_state_dict(load_file(folder / "open_clip_model.safetensors"))
    with torch.no_grad():
        features = model.eval().encode_text(open_clip.tokenize(texts)).float().numpy()
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def test_timelines_match_the_similarity_computed_directly(clip_run, tiny_dir, tmp_path):
    run = copy_run(clip_run, tmp_path / "run")
    cfg = stage_cfg(run, projections=["pca"])
    timelines = similarity_timelines(run, cfg)
    assert timelines.reason is None and timelines.queries == QUERIES

    table, vectors = load_vectors(run)
    expected = vectors @ independent_text_vectors(tiny_dir, QUERIES).T
    got = timelines.table.pivot(index="frame_key", columns="query", values="similarity").loc[table.frame_key, QUERIES]
    np.testing.assert_allclose(got.to_numpy(), expected, atol=1e-5)

    frames = read_table(run.table("frames"))
    assert len(timelines.table) == len(frames) * len(QUERIES)
    assert set(timelines.figures) == set(frames.video_id)
    for video_id, fig in timelines.figures.items():
        assert [t.name for t in fig.data] == QUERIES  # one figure per video, one line per query
        own = frames[frames.video_id == video_id].sort_values("timestamp")
        for trace in fig.data:
            assert list(trace.x) == list(own.timestamp)
            assert [row[1] for row in trace.customdata] == list(own.frame_key)

    summary = write_visualizations(cfg, run)
    assert summary.counts["timeline_videos"] == 2 and summary.counts["timeline_queries"] == 3
    assert sorted(p.name for p in summary.timeline_files.values()) == ["timeline_one.html", "timeline_two.html"]
    saved = read_table(run.table("timelines"))
    assert list(saved.columns) == ["video_id", "video_name", "frame_key", "timestamp", "query", "similarity", "channel"]
    assert set(saved.channel) == {"visual"}  # no speech channel in this run
    assert len(saved) == len(timelines.table)
    assert list(saved[saved.video_name == "one.mp4"].drop_duplicates("query")["query"]) == QUERIES  # configured order
    page = (run.root / "plots" / "timeline_one.html").read_text()
    assert not re.search(r"""src=["']https?:""", page) and "plotly_click" in page
    thumbs = [thumb for trace in plotted_traces(page) for thumb, _ in trace["customdata"]]
    assert thumbs and all(t.startswith("../frames/") and (run.root / "plots" / t).is_file() for t in thumbs)
    assert set(summary.figures) == {"map_pca", "timeline_one", "timeline_two"}


def test_the_fallback_descriptor_gives_no_timelines_and_says_why(fallback_run, tmp_path):
    run = copy_run(fallback_run, tmp_path / "run")
    cfg = stage_cfg(run, projections=["pca"])
    timelines = similarity_timelines(run, cfg, ["a rabbit"])
    assert timelines.figures == {} and timelines.table.empty
    assert "cannot encode text queries" in timelines.reason

    summary = write_visualizations(cfg, run)
    assert summary.counts["timeline_videos"] == 0 and not summary.timeline_files
    assert any("cannot encode text queries" in note for note in summary.notes)
    assert not list((run.root / "plots").glob("timeline_*.html"))
    assert read_table(run.table("timelines")).empty


# --------------------------------------------------------------------------- UMAP (numba compile: slow once)


@pytest.mark.slow
def test_umap_projection_is_deterministic_and_cached(tmp_path, monkeypatch):
    vectors = unit_vectors(60)
    points = project(vectors, "umap", seed=0, neighbors=10, cache_dir=tmp_path)
    assert points.shape == (60, 3) and np.isfinite(points).all()
    assert Path(project_module.os.environ["NUMBA_CACHE_DIR"]).is_dir()
    assert np.array_equal(project(vectors, "umap", seed=0, neighbors=10), points)
    monkeypatch.setattr(project_module, "_compute", lambda *a, **k: pytest.fail("projection recomputed"))
    assert np.array_equal(project(vectors, "umap", seed=0, neighbors=10, cache_dir=tmp_path), points)
