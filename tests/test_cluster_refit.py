"""Stable clusters on a re-run: a few new frames are placed into the saved k-means fit (old frames keep
their labels, distances and names), more than `cluster.refit_new_fraction` of them (or a changed
setting, a removed frame, `force`, an unreadable saved fit) refits; and the render stage then remakes
only the videos of clusters that changed, cutting only new segments."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pytest
import videogen
from frameatlas.cluster import cluster_run, cluster_vectors, place_vectors
from frameatlas.cluster.fitted import fit_path
from frameatlas.config import ClusterConfig, RenderConfig
from frameatlas.embed import embed_frames
from frameatlas.frames import extract_corpus
from frameatlas.render import render_run
from frameatlas.store import RunPaths, read_table
from runs import copy_project, embedded_run, run_pipeline
from test_cluster import blobs

# 8 s + 6 s sampled every 0.5 s: 28 frames; scene colours repeat across the two videos
VIDEOS = {"one.mp4": (8, 10, [2.0, 4.0, 6.0]), "two.mp4": (6, 10, [2.0, 4.0])}
FAST_RENDER = {"fps": 10, "width": 96, "height": 64, "title_seconds": 0.3, "preset": "ultrafast", "max_total_seconds": 30,
               "max_segments_per_video": 100, "max_segment_seconds": None, "padding_before": 0.0, "padding_after": 0.0}  # fmt: skip


def make_run(tmp_path, **cluster):
    options = {"k": 4, "reduce": "pca", "reduce_dims": 4, "montage_frames": 3, "keyframes_per_video": 3, **cluster}
    return embedded_run(tmp_path, {"name": "fallback"}, videos=VIDEOS, name="r", cluster=options,
                        render=FAST_RENDER, search={"queries": []})  # fmt: skip


def add_video(cfg, name: str, seconds: float, scene_cuts=()) -> pd.DataFrame:
    """A new video in the corpus, extracted and embedded (earlier videos come from the caches); its frames."""
    videogen.make_video(cfg.corpus.videos / name, seconds=seconds, fps=10, scene_cuts=list(scene_cuts))
    extract_corpus(cfg, cfg.run_dir)
    embed_frames(cfg, cfg.run_dir)
    frames = read_table(cfg.run_dir / "tables" / "frames.parquet")
    return frames[frames.video_name == name]


def rows(run, keys=None) -> pd.DataFrame:
    table = read_table(run.table("clusters")).set_index("frame_key").sort_index()
    return table if keys is None else table.loc[sorted(keys)]


def test_placing_reproduces_the_fit_for_its_own_vectors():
    vectors, _ = blobs(groups=6, per_group=30, spread=0.3, seed=2)
    for reduce in ("none", "pca"):
        clusters = cluster_vectors(vectors, ClusterConfig(k=6, reduce=reduce, reduce_dims=8))
        labels, distances = place_vectors(vectors, clusters.fitted, clusters.centroids)
        assert (labels == clusters.labels).all() and np.allclose(distances, clusters.distances, atol=1e-6)
    assert cluster_vectors(vectors, ClusterConfig(method="hdbscan", reduce="none")).fitted is None


def test_a_new_short_video_is_placed_and_old_frames_keep_labels_distances_and_names(tmp_path):
    cfg, run = make_run(tmp_path)
    first = cluster_run(cfg, run)
    assert first.fit == "fitted" and first.counts["fit"] == "fitted" and fit_path(run, first.labelling).exists()
    before = rows(run)
    montages = {p: p.stat().st_mtime_ns for p in first.montages.values()}
    strips = {p: p.stat().st_mtime_ns for p in first.keyframe_strips.values()}

    # one scene, the colour of scene 0 of one.mp4 and two.mp4: 2 frames, 2 / 30 = 7% <= 10%
    new = add_video(cfg, "three.mp4", 1.0)
    assert len(new) == 2
    second = cluster_run(cfg, run)
    assert second.fit == "placed" and second.placed == 2 and second.counts["placed_frames"] == 2
    assert "placed 2 new frames into the clustering fitted on 28 frames" in second.notes
    after = rows(run)
    pd.testing.assert_frame_equal(after.loc[before.index], before)  # labels, names, distances: identical
    assert len(after) == 30 and after.loc[new.frame_key, "distance"].notna().all()
    # the new frames join the cluster of the frames of the same scene colour
    scene_zero = read_table(run.table("frames")).query("video_name == 'one.mp4' and timestamp < 2").frame_key
    assert set(after.loc[new.frame_key, "label"]) == set(before.loc[scene_zero, "label"])
    assert set(after.loc[new.frame_key, "name"]) == set(before.loc[scene_zero, "name"])
    annotated = read_table(run.table("frames_annotated")).set_index("frame_key")
    assert annotated.cluster.notna().all() and (annotated.cluster.loc[after.index] == after.label).all()
    # the earlier videos' keyframe strips are kept; the new video has its own
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in strips.items())
    assert len(second.keyframe_strips) == 3 and set(read_table(run.table("keyframes")).video_id) == set(annotated.video_id)
    # only montages whose nearest frames now include a new one are redrawn
    redrawn = {p for p, stamp in montages.items() if p.stat().st_mtime_ns != stamp}
    representatives = {int(r.label): set(r.representatives) for r in second.table.itertuples()}
    expected = {second.montages[label] for label, keys in representatives.items() if keys & set(new.frame_key)}
    assert redrawn == expected

    # placed frames count towards the share next time: 2 + 3 of 33 = 15% > 10%
    add_video(cfg, "four.mp4", 1.5)
    third = cluster_run(cfg, run)
    assert third.fit == "refitted" and third.placed == 0
    assert any("15% of frames new since the fit on 28 (above cluster.refit_new_fraction 0.1)" in n for n in third.notes)


def test_more_new_frames_than_the_fraction_other_settings_or_force_refit(tmp_path):
    cfg, run = make_run(tmp_path)
    cluster_run(cfg, run)
    add_video(cfg, "three.mp4", 3.0, scene_cuts=[1.0])  # 6 frames: 6 / 34 = 18%
    refitted = cluster_run(cfg, run)
    assert refitted.fit == "refitted" and refitted.counts["fit"] == "refitted"
    assert any("18% of frames new since the fit on 28 (above cluster.refit_new_fraction 0.1)" in n for n in refitted.notes)

    cfg.cluster.refit_new_fraction = 0.5
    assert cluster_run(cfg, run).fit == "placed"  # nothing new since the refit: every frame keeps its row
    assert cluster_run(cfg, run, force=True).fit_reason == "refitted on 34 frames: forced (--force cluster)"
    cfg.cluster.seed = 3
    changed = cluster_run(cfg, run)
    assert changed.fit == "fitted" and changed.labelling.endswith("seed3")  # another labelling: its own first fit
    cfg.cluster.seed, cfg.cluster.keyframes_per_video = 0, 2
    kept = cluster_run(cfg, run)  # drawing settings do not change the clustering, but keyframes are made anew
    assert kept.fit == "placed" and read_table(run.table("keyframes")).groupby("video_id").size().max() == 2
    cfg.cluster.refit_new_fraction = 0
    assert cluster_run(cfg, run).fit_reason == "refitted on 34 frames: cluster.refit_new_fraction is 0"


def test_removed_frames_and_an_unreadable_saved_fit_refit_and_say_so(tmp_path, caplog):
    cfg, run = make_run(tmp_path)
    first = cluster_run(cfg, run)
    state = fit_path(run, first.labelling)
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a torn file
    with caplog.at_level(logging.WARNING, logger="frameatlas.cluster"):
        again = cluster_run(cfg, run)
    assert (
        again.fit == "refitted"
        and "the saved clustering is unusable (cache/cluster/kmeans-k4-pca4.npz: cannot be read" in again.fit_reason
        and again.fit_reason in again.notes
    )
    assert any("cache/cluster/kmeans-k4-pca4.npz" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert cluster_run(cfg, run).fit == "placed"  # the refit saved a good one

    state.write_bytes(b"not a numpy file")
    assert "cannot be read" in cluster_run(cfg, run).fit_reason

    frames = read_table(run.table("frames"))
    frames[frames.timestamp != 0.5].to_parquet(run.table("frames"))  # one frame of each video left the run
    assert cluster_run(cfg, run).fit_reason == "refitted on 26 frames: 2 frame(s) of the saved clustering are gone"


def test_render_after_placing_remakes_only_the_videos_of_clusters_that_gained_frames(tmp_path):
    cfg, run = make_run(tmp_path)
    cluster_run(cfg, run)
    first = render_run(cfg, run)
    assert set(first.videos.status) == {"rendered"} and len(first.videos) == 4
    cache = run.cache / "render"
    pieces_before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}

    new = add_video(cfg, "three.mp4", 1.0)
    placed = cluster_run(cfg, run)
    assert placed.fit == "placed"
    gained = set(placed.assignments.set_index("frame_key").label.loc[new.frame_key])
    second = render_run(cfg, run)
    status = dict(zip(second.videos.name, second.videos.status))
    names = {job.job.label: job.job.name for job in second.rendered}
    assert status == {names[label]: "rendered" if label in gained else "cached" for label in names}
    assert read_table(run.table("render_videos")).set_index("name").status.to_dict() == status

    # earlier cuts are reused as they were; the only new clips are the new video's segments
    segments = second.segments
    new_clips = {p.name for p in cache.iterdir() if p.name.startswith("clip-") and p.name not in pieces_before}
    assert all(p.name not in pieces_before or p.stat().st_mtime_ns == pieces_before[p.name] for p in cache.iterdir())
    assert len({n.rsplit(".", 1)[0] for n in new_clips}) == int((segments.video_name == "three.mp4").sum()) > 0
    assert os.path.exists(run.videos / f"{names[min(gained)]}.mp4")

    # the contact sheets of the remade videos: frames found by seeking to each piece are those a full decode finds
    from frameatlas.render.cards import _grab_frames

    for item in (r for r in second.rendered if r.status == "rendered"):
        wanted = [(0.15, "title")] + [((r.output_start + r.output_end) / 2, f"#{r.position}") for r in item.segments.itertuples()]
        wanted = sorted(wanted) + [(item.duration + 5.0, "after the end")]
        grabs = [(np.asarray(image), label) for image, label in _grab_frames(item.path, wanted)]
        expected = sequential_grabs(item.path, wanted)
        assert [label for _, label in grabs] == [label for _, label in expected] == [label for _, label in wanted][:-1]
        assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(grabs, expected))


@pytest.fixture(autouse=True)
def _render_options_are_valid():
    RenderConfig(**FAST_RENDER)  # a typo in the test options fails here, not deep in a render


def sequential_grabs(video, wanted):
    """The frames a contact sheet shows, found by decoding the whole video (what seeking must reproduce)."""
    import av

    grabs, index = [], 0
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        half_frame = 0.5 / float(stream.average_rate)
        for frame in container.decode(stream):
            t = float(frame.pts * frame.time_base)
            while index < len(wanted) and t + 1e-6 >= wanted[index][0] - half_frame:
                grabs.append((np.asarray(frame.to_image()), wanted[index][1]))
                index += 1
    return grabs


@pytest.mark.slow
def test_the_pipeline_places_a_new_video_and_says_so_and_force_refits(finished_run, tmp_path):
    """Through run_pipeline.py: the cluster notebook places a new short video's frames (the manifest's counts and
    notes and the report say so), and --force cluster fits anew."""
    import json

    config, run_dir = copy_project(finished_run, tmp_path, cluster={"refit_new_fraction": 0.2})
    before = rows(RunPaths(run_dir))
    videogen.make_video(tmp_path / "videos" / "delta.mp4", seconds=1.5, fps=10, scene_cuts=[])

    def pipeline(*extra: str) -> dict:
        run_pipeline(config, "--stages", "extract,caption,embed,cluster", *extra)
        return json.loads((run_dir / "manifest.json").read_text())["stages"]["cluster"]

    entry = pipeline()
    assert entry["counts"]["fit"] == "placed" and entry["counts"]["placed_frames"] == 3
    assert any(note.startswith("placed 3 new frames into the clustering fitted on") for note in entry["notes"])
    after = rows(RunPaths(run_dir))
    pd.testing.assert_frame_equal(after.loc[before.index], before)
    assert "placed 3 new frames into the clustering" in (run_dir / "reports" / "04_cluster.html").read_text()

    forced = pipeline("--force", "cluster")
    assert forced["counts"]["fit"] == "refitted" and any("forced (--force cluster)" in note for note in forced["notes"])
