"""Visualize on a re-run that adds frames: kept fits, new frames placed, refits when they must happen."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import videogen
from frameatlas import models
from frameatlas import project as project_module
from frameatlas.config import config_from_dict
from frameatlas.embed import embed_frames
from frameatlas.frames import extract_corpus
from frameatlas.project import fit_or_place, load_fit, place_near_neighbours
from frameatlas.store import RunPaths, read_table
from frameatlas.visualize import write_visualizations
from runs import copy_project, embedded_run, run_pipeline

# Eight videos of 6 s, each its own scenes (12 frames each at 0.5 s): the 96-frame base run; the ninth (a
# copy of one.mp4 at another frame rate: other bytes, the same pictures) is 11% of the 108 frames afterwards.
BASE_VIDEOS = {f"{name}.mp4": {"seconds": 6, "fps": 10, "scene_cuts": [1.0 + 0.5 * k, 4.0], "first_scene": k}
               for k, name in enumerate(("one", "two", "three", "four", "five", "six", "seven", "eight"))}  # fmt: skip


def clusters(n: int, dim: int = 32, seed: int = 0, groups: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim))
    vectors = centres[np.arange(n) % groups] + 0.25 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def near_copies(vectors: np.ndarray, seed: int = 1) -> np.ndarray:
    noisy = vectors + 0.01 * np.random.default_rng(seed).normal(size=vectors.shape)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def keys(n: int, prefix: str = "f") -> list[str]:
    return [f"{prefix}:{i}" for i in range(n)]


# --------------------------------------------------------------------------- fit_or_place (library)


def test_a_new_frame_lands_among_the_frames_it_resembles():
    old = clusters(80)
    points = np.repeat(np.arange(4, dtype=np.float32)[:, None] * 10, 3, axis=1)[np.arange(80) % 4]  # cluster c at (10c,)*3
    twin = place_near_neighbours(old, points, old[[5, 6]])  # exact duplicates land on their twins
    np.testing.assert_allclose(twin, points[[5, 6]], atol=1e-3)
    placed = place_near_neighbours(old, points, near_copies(old[:8]))
    assert np.isfinite(placed).all()
    assert (np.abs(placed - points[:8]) < 1.0).all()  # every copy near its group's point, far from the others (10 apart)


def test_a_new_frame_lands_beside_its_twin_when_the_layout_set_identical_frames_far_apart():
    old = clusters(80)
    old[40] = old[0]  # two identical frames ...
    points = np.repeat(np.arange(4, dtype=np.float32)[:, None] * 10, 3, axis=1)[np.arange(80) % 4]
    points[40] = [30.0, 30.0, 30.0]  # ... that the layout (t-SNE can) put in different groups, 30 apart
    placed = place_near_neighbours(old, points, near_copies(old[[0]]))[0]
    assert np.linalg.norm(placed - points[0]) < 1.0, placed  # beside the first twin, not halfway between the two


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_added_frames_are_placed_and_old_points_stay_exactly_where_they_were(tmp_path, method):
    vectors = clusters(100)
    fit_path = tmp_path / f"{method}.npz"
    first = fit_or_place(keys(100), vectors, method, fit_path=fit_path, perplexity=10)
    assert first.mode == "fitted" and "no earlier fit" in first.message and fit_path.is_file()

    copies = near_copies(vectors[:6])  # 6 new frames (5.7%), each a near copy of an old one
    grown = np.concatenate([vectors, copies])
    second = fit_or_place(keys(100) + keys(6, "new"), grown, method, fit_path=fit_path, perplexity=10)
    assert second.mode == "placed" and second.placed == 6 and second.fitted_on == 100
    assert "placed 6 new frames into the projection fitted on 100 frames" in second.message
    assert list(second.rows) == list(range(106))
    assert np.array_equal(second.points[:100], first.points)  # old frames: the very same coordinates
    new = second.points[100:]
    assert np.isfinite(new).all()
    spread = np.linalg.norm(first.points - first.points.mean(axis=0), axis=1).mean()
    twins = np.linalg.norm(new - first.points[:6], axis=1)
    assert (twins < 0.25 * spread).all(), (twins, spread)
    for n, point in enumerate(new):  # nearest old point (in 3D) is in the twin's group
        assert np.argmin(np.linalg.norm(first.points - point, axis=1)) % 4 == n % 4

    # the next run: nothing new; every point kept, placed ones included, nothing computed
    third = fit_or_place(keys(100) + keys(6, "new"), grown, method, fit_path=fit_path, perplexity=10)
    assert third.mode == "kept" and third.cached and np.array_equal(third.points, second.points)
    # new frames since the fit add up: 6 + 6 more is 11% of 112 frames, more than 10%: every frame fitted again
    more = np.concatenate([grown, near_copies(vectors[10:16], seed=2)])
    fourth = fit_or_place(keys(100) + keys(12, "new"), more, method, fit_path=fit_path, perplexity=10)
    assert fourth.mode == "fitted" and fourth.fitted_on == 112
    assert "refitted: 11% of frames new since the fit, more than refit_new_fraction 0.1" in fourth.message


def test_refits_when_parameters_vectors_or_frames_change_or_when_forced(tmp_path):
    vectors = clusters(60)
    fit_path = tmp_path / "pca.npz"
    fit_or_place(keys(60), vectors, "pca", fit_path=fit_path)
    grown, grown_keys = np.concatenate([vectors, near_copies(vectors[:2])]), keys(60) + keys(2, "new")
    cases = {
        "changed since the fit: seed 0 -> 1": dict(seed=1),
        "changed since the fit: model 'a' -> 'b'": dict(identity={"model": "b"}),
        "changed since the fit: max_points 20000 -> 5000": dict(max_points=5000),
        "forced": dict(force=True),
        "refit_new_fraction is 0": dict(refit_new_fraction=0),
    }
    for reason, options in cases.items():
        baseline = {"identity": {"model": "a"}}
        fit_or_place(keys(60), vectors, "pca", fit_path=tmp_path / "case.npz", **baseline)
        outcome = fit_or_place(grown_keys, grown, "pca", fit_path=tmp_path / "case.npz", **{**baseline, **options})
        assert outcome.mode == "fitted" and outcome.fitted_on == 62 and f"refitted: {reason}" in outcome.message, reason
        (tmp_path / "case.npz").unlink()
    # a frame of the fit removed (two added): refit
    removed = fit_or_place(keys(60)[1:] + keys(2, "new"), np.concatenate([vectors[1:], grown[60:]]), "pca", fit_path=fit_path)
    assert removed.mode == "fitted" and "refitted: frames of the fit removed (1)" in removed.message
    # the fitted frames' vectors changed (another model's vectors under the same keys): refit
    fit_or_place(keys(60), vectors, "pca", fit_path=fit_path)
    changed = fit_or_place(keys(60), clusters(60, seed=5), "pca", fit_path=fit_path)
    assert changed.mode == "fitted" and "refitted: the fitted frames' vectors changed" in changed.message


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong shape"])
def test_an_unreadable_saved_fit_means_a_refit_and_a_log_line(tmp_path, caplog, damage):
    vectors = clusters(50)
    fit_path = tmp_path / "tsne.npz"
    fit_or_place(keys(50), vectors, "tsne", fit_path=fit_path, perplexity=8)
    if damage == "garbage":
        fit_path.write_bytes(b"not a zip at all")
    elif damage == "truncated":
        fit_path.write_bytes(fit_path.read_bytes()[:300])
    else:
        saved = load_fit(fit_path)
        saved.points = saved.points[:10]
        with open(fit_path, "wb") as handle:  # written as a broken writer would
            np.savez(handle, identity=np.array(json.dumps(saved.identity)), seen=saved.seen, keys=saved.keys,
                     points=saved.points, counts=np.array([50, 50]), fit_digest=np.array(saved.fit_digest))  # fmt: skip
    grown = np.concatenate([vectors, near_copies(vectors[:2])])
    with caplog.at_level(logging.WARNING, logger="frameatlas.project"):
        outcome = fit_or_place(keys(50) + keys(2, "new"), grown, "tsne", fit_path=fit_path, perplexity=8)
    assert outcome.mode == "fitted" and outcome.fitted_on == 52 and "refitted: the saved fit could not be read" in outcome.message
    assert any("tsne.npz is unreadable" in r.getMessage() and "fitting again" in r.getMessage() for r in caplog.records)
    assert load_fit(fit_path).mapped_at_fit == 52  # written anew, readable


def test_a_fit_sampled_to_max_points_places_new_frames_at_its_rate(tmp_path):
    vectors = clusters(300)
    fit_path = tmp_path / "pca.npz"
    first = fit_or_place(keys(300), vectors, "pca", fit_path=fit_path, max_points=100)
    assert first.fitted_on == len(first.rows) == 100
    grown = np.concatenate([vectors, near_copies(vectors[:20])])
    second = fit_or_place(keys(300) + keys(20, "new"), grown, "pca", fit_path=fit_path, max_points=100)
    assert second.mode == "placed" and second.placed == 7  # 20 new frames sampled at 100 / 300, rounded up
    old = np.isin(second.rows, first.rows)
    assert old.sum() == 100 and np.array_equal(second.points[old], first.points)
    assert (second.rows[~old] >= 300).all() and len(set(second.rows.tolist())) == 107
    # the 20 new frames count as new since the fit (6%), though only 7 are drawn; the next run keeps all 107
    assert fit_or_place(keys(300) + keys(20, "new"), grown, "pca", fit_path=fit_path, max_points=100).mode == "kept"


# --------------------------------------------------------------------------- the stage, on a run that grows


def grow(root: Path, base: RunPaths, video: str, **make) -> RunPaths:
    """A copy of `base` with one more generated video, extracted and embedded (not visualized)."""
    run = RunPaths(root / "out" / "grown")
    shutil.copytree(base.root, run.root)
    videos = root / "videos"
    shutil.copytree(base.root.parent.parent / "videos", videos)
    videogen.make_video(videos / video, **make)
    data = json.loads(run.config_file.read_text())
    data["run"] = {"output_dir": str(root / "out"), "name": "grown"}
    data["corpus"]["videos"] = str(videos)
    grown = config_from_dict(data)
    extract_corpus(grown, run.root)
    embed_frames(grown, run.root)
    models.clear_loaded()
    return run


@pytest.fixture(scope="module")
def visualized_run(tmp_path_factory):
    """Eight generated videos (96 frames), extracted, embedded and visualized (PCA and t-SNE)."""
    root = tmp_path_factory.mktemp("incremental")
    for name, spec in BASE_VIDEOS.items():  # made here: embedded_run's own videos have no first_scene
        videogen.make_video(root / "videos" / name, **spec)
    cfg, run = embedded_run(root, {"name": "fallback"}, name="base",
                            extract={"thumbnail_long_side": 64},
                            visualize={"projections": ["pca", "tsne"], "timelines": False})  # fmt: skip
    models.clear_loaded()
    summary = write_visualizations(cfg, run)
    assert summary.counts["projections_fitted"] == "pca,tsne"
    return cfg, run


def picture_of(run: RunPaths, thumbnail: str) -> int:
    """Which of videogen's scene colours a frame's thumbnail shows (its median pixel: the background)."""
    from PIL import Image

    pixels = np.asarray(Image.open(run.absolute(thumbnail)).convert("RGB")).reshape(-1, 3)
    colours = np.array(videogen.SCENE_COLOURS, dtype=float)
    return int(np.argmin(np.linalg.norm(colours - np.median(pixels, axis=0), axis=1)))


def projections_of(run: RunPaths) -> dict[str, dict[str, np.ndarray]]:
    table = read_table(run.table("projections"))
    return {method: {key: np.array([x, y, z]) for key, x, y, z in rows[["frame_key", "x", "y", "z"]].itertuples(index=False)}
            for method, rows in table.groupby("method")}  # fmt: skip


def stage_config(run: RunPaths, **visualize):
    data = json.loads(run.config_file.read_text())
    data["run"] = {"output_dir": str(run.root.parent), "name": run.root.name}
    data["visualize"] = {**data["visualize"], **visualize}
    return config_from_dict(data)


def test_rerun_with_an_added_copy_of_a_video_keeps_old_points_and_puts_the_copy_beside_its_twin(visualized_run, tmp_path):
    _, base = visualized_run
    before = projections_of(base)
    run = grow(tmp_path, base, "one_again.mp4", **{**BASE_VIDEOS["one.mp4"], "fps": 20})
    frames = read_table(run.table("frames"))
    copy = frames[frames.video_name == "one_again.mp4"]
    assert len(copy) == 12 and len(frames) == 108  # 11% new: above the default 0.1
    summary = write_visualizations(stage_config(run, refit_new_fraction=0.2), run)
    assert summary.counts["projections_placed"] == "pca,tsne" and summary.counts["frames_placed"] == 12
    assert summary.counts["projections_fitted"] == "" and summary.counts["map_points"] == 108
    assert any("t-SNE: placed 12 new frames into the projection fitted on 96 frames" in n for n in summary.notes)
    after = projections_of(run)
    picture = {key: picture_of(run, thumb) for key, thumb in zip(frames.frame_key, frames.thumbnail)}
    for method in ("pca", "tsne"):
        assert set(after[method]) == set(frames.frame_key)
        for key, point in before[method].items():
            assert np.array_equal(after[method][key], point), (method, key)  # the same coordinates, to the bit
        old_keys, old = list(before[method]), np.stack(list(before[method].values()))
        spread = np.linalg.norm(old - old.mean(axis=0), axis=1).mean()
        for key in copy.frame_key:  # each copied frame lands beside an old frame showing the same picture
            assert np.isfinite(after[method][key]).all()
            distance = np.linalg.norm(old - after[method][key], axis=1)
            # (not "among" them: t-SNE may set frames of one picture, even identical ones, far apart)
            nearest_picture = picture[old_keys[distance.argmin()]]
            assert nearest_picture == picture[key] and distance.min() < 0.3 * spread, (method, key, distance.min() / spread)
    page = summary.map_files["tsne"].read_text()
    assert all(page.count(f'"{key}"') == 1 for key in frames.frame_key)  # the new frames are drawn, once each

    # the default fraction (0.1) and the forced stage refit every frame
    for options, reason in (({}, "refitted: 11% of frames new since the fit"), ({"force": True}, "refitted: forced")):
        shutil.rmtree(run.cache / "projection_fits")
        shutil.copytree(base.cache / "projection_fits", run.cache / "projection_fits")
        force = options.pop("force", False)
        again = write_visualizations(stage_config(run, **options), run, force=force)
        assert again.counts["projections_fitted"] == "pca,tsne" and again.counts["frames_placed"] == 0
        assert all(reason in again.projection_fits[m].message for m in ("pca", "tsne")), again.notes
        assert again.projection_fits["pca"].fitted_on == 108


@pytest.mark.slow
def test_umap_places_an_added_video_without_importing_umap(visualized_run, tmp_path, monkeypatch):
    cfg, base = visualized_run
    base = RunPaths(shutil.copytree(base.root, tmp_path / "base" / "out" / "base"))
    shutil.copytree(visualized_run[1].root.parent.parent / "videos", tmp_path / "base" / "videos")
    first = write_visualizations(stage_config(base, projections=["umap"]), base)
    assert first.projection_fits["umap"].mode == "fitted"
    before = projections_of(base)["umap"]
    run = grow(tmp_path / "grown", base, "two_again.mp4", **{**BASE_VIDEOS["two.mp4"], "fps": 20})
    monkeypatch.setattr(project_module, "_import_umap", lambda: pytest.fail("umap imported to place frames"))
    summary = write_visualizations(stage_config(run, projections=["umap"], refit_new_fraction=0.2), run)
    assert summary.projection_fits["umap"].mode == "placed" and summary.projection_fits["umap"].placed == 12
    after = projections_of(run)["umap"]
    assert all(np.array_equal(after[key], point) for key, point in before.items())
    assert len(after) == 108 and np.isfinite(np.stack(list(after.values()))).all()


@pytest.mark.slow
def test_the_pipeline_places_a_new_video_in_the_maps_says_so_and_force_refits(finished_run, tmp_path):
    """Through run_pipeline.py: the visualize notebook places a new short video's frames into the kept PCA fit
    (manifest counts and notes, the report), old points unchanged; --force visualize fits anew."""
    config, run_dir = copy_project(finished_run, tmp_path, visualize={"refit_new_fraction": 0.2})
    run = RunPaths(run_dir)
    before = projections_of(run)["pca"]
    videogen.make_video(tmp_path / "videos" / "delta.mp4", seconds=1.5, fps=10, scene_cuts=[])

    def pipeline(*extra: str) -> dict:
        run_pipeline(config, "--stages", "extract,caption,embed,cluster,visualize", *extra)
        return json.loads((run.root / "manifest.json").read_text())["stages"]["visualize"]

    entry = pipeline()
    frames = read_table(run.table("frames"))
    new = frames[frames.video_name == "delta.mp4"].frame_key
    assert len(new) == 3 and entry["counts"]["projections_placed"] == "pca" and entry["counts"]["frames_placed"] == 3
    note = f"PCA: placed 3 new frames into the projection fitted on {len(before)} frames, by its transform"
    assert note in entry["notes"]
    report = (run.root / "reports" / "05_visualize.html").read_text()
    assert note in report and "<li>projections placed: <b>pca</b></li>" in report
    assert "projections fitted:" not in report  # no map was refitted: no empty count in the summary
    after = projections_of(run)["pca"]
    assert set(after) == set(frames.frame_key) and all(np.array_equal(after[k], p) for k, p in before.items())
    assert all(np.isfinite(after[key]).all() for key in new)

    forced = pipeline("--force", "visualize")
    assert forced["counts"]["projections_fitted"] == "pca" and forced["counts"]["frames_placed"] == 0
    assert any(n.startswith(f"PCA: fitted on {len(frames)} frames (refitted: forced)") for n in forced["notes"])
