"""Clustering: known groups recovered, k by silhouette, HDBSCAN noise, names, and the stage end to end."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tinyclip
import videogen
from frameatlas import models
from frameatlas.cluster import (
    EVERYDAY_VOCABULARY,
    MONTAGE_TILE_WIDTH,
    NOISE,
    ClusterError,
    ClusterLabels,
    cluster_montage,
    cluster_run,
    cluster_table,
    cluster_vectors,
    distinctive_terms,
    labelling_id,
    labellings,
    name_clusters,
    time_ranges,
    video_keyframes,
)
from frameatlas.config import ClusterConfig, ImageModelConfig, ModelsConfig
from frameatlas.files import UnsafePath
from frameatlas.models import ColourTextureEncoder, ModelRecord
from frameatlas.plots import LABEL_HEIGHT
from frameatlas.store import read_table, write_table
from PIL import Image
from runs import embedded_run
from sklearn.metrics import adjusted_rand_score


def blobs(groups: int = 5, per_group: int = 40, dim: int = 64, spread: float = 0.08, seed: int = 0):
    """Unit vectors around `groups` random, well separated directions, and the true groups."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim))
    truth = np.repeat(np.arange(groups), per_group)
    points = centres[truth] / np.linalg.norm(centres[truth], axis=1, keepdims=True) + spread * rng.normal(size=(len(truth), dim))
    return points / np.linalg.norm(points, axis=1, keepdims=True), truth


# --- clustering -----------------------------------------------------------------------------------


@pytest.mark.parametrize("reduce", ["none", "pca"])
def test_kmeans_recovers_well_separated_groups(reduce):
    vectors, truth = blobs()
    clusters = cluster_vectors(vectors, ClusterConfig(k=5, reduce=reduce, reduce_dims=8))
    assert adjusted_rand_score(truth, clusters.labels) > 0.95
    assert clusters.centroids.shape == (5, 64)  # original space, even after PCA
    assert np.allclose(np.linalg.norm(clusters.centroids, axis=1), 1.0, atol=1e-5)
    for label in range(5):  # the centroid is the normalised mean of its members
        mean = vectors[clusters.labels == label].mean(axis=0)
        assert np.allclose(clusters.centroids[label], mean / np.linalg.norm(mean), atol=1e-5)
    expected = 1 - np.einsum("ij,ij->i", vectors, clusters.centroids[clusters.labels])
    assert np.allclose(clusters.distances, expected, atol=1e-5) and (clusters.distances >= 0).all()
    assert clusters.reduction == ("pca8" if reduce == "pca" else "none")
    assert clusters.description == f"kmeans k=5 reduce={clusters.reduction}"
    assert clusters.silhouette == {} and clusters.noise == 0


def test_labels_are_numbered_by_size_and_members_come_nearest_first():
    vectors, truth = blobs(groups=3, per_group=10)
    vectors = np.concatenate([vectors[:10], vectors[10:20][:4], vectors[20:]])  # sizes 10, 4, 10
    clusters = cluster_vectors(vectors, ClusterConfig(k=3, reduce="none"))
    assert np.bincount(clusters.labels).tolist() == [10, 10, 4]
    members = clusters.members(1)
    assert np.all(np.diff(clusters.distances[members]) >= 0)


def test_k_none_chooses_the_true_k_by_silhouette():
    vectors, truth = blobs(groups=5, per_group=30, seed=1)
    clusters = cluster_vectors(vectors, ClusterConfig(k=None, k_range=(2, 9), reduce="pca", reduce_dims=16))
    assert clusters.params["k"] == 5 and clusters.params["k_chosen_by"] == "silhouette"
    assert sorted(clusters.silhouette) == list(range(2, 10))
    assert max(clusters.silhouette, key=clusters.silhouette.get) == 5 == clusters.n_clusters
    assert clusters.best_silhouette == clusters.silhouette[5] > 0.5
    assert adjusted_rand_score(truth, clusters.labels) > 0.95
    assert "silhouette 2-9" in clusters.description


def test_k_and_dims_are_clipped_to_small_data():
    vectors, _ = blobs(groups=2, per_group=3, dim=16)
    auto = cluster_vectors(vectors, ClusterConfig(k=None, k_range=(4, 30), reduce="pca", reduce_dims=32))
    assert sorted(auto.silhouette) == [4, 5]  # k up to n - 1 = 5
    assert auto.reduction == "pca5" and auto.params["reduce_dims"] == 5  # at most n - 1 dims
    assert any("clipped" in note for note in auto.notes)
    fixed = cluster_vectors(vectors, ClusterConfig(k=15, reduce="none"))
    assert fixed.params["k"] == 6 and fixed.n_clusters == 6 and any("using k=6" in n for n in fixed.notes)
    single = cluster_vectors(vectors[:1], ClusterConfig(k=3, reduce="pca"))
    assert single.labels.tolist() == [0] and single.reduction == "none"
    with pytest.raises(ClusterError, match="at least one row"):
        cluster_vectors(np.zeros((0, 8)), ClusterConfig())


def test_hdbscan_marks_scattered_outliers_as_noise_and_keeps_dense_groups():
    dense, truth = blobs(groups=3, per_group=30, spread=0.05, seed=2)
    rng = np.random.default_rng(3)
    outliers = rng.normal(size=(6, 64))
    vectors = np.concatenate([dense, outliers / np.linalg.norm(outliers, axis=1, keepdims=True)])
    clusters = cluster_vectors(vectors, ClusterConfig(method="hdbscan", min_cluster_size=10, reduce="none"))
    assert clusters.labels[-6:].tolist() == [NOISE] * 6
    assert clusters.n_clusters == 3 and clusters.noise == 6
    assert adjusted_rand_score(truth, clusters.labels[:-6]) > 0.95
    assert np.isnan(clusters.distances[-6:]).all() and not np.isnan(clusters.distances[:-6]).any()
    assert np.allclose(np.linalg.norm(clusters.centroids, axis=1), 1.0, atol=1e-5)
    assert clusters.description == "hdbscan min_cluster_size=10 reduce=none"
    few = cluster_vectors(vectors[:5], ClusterConfig(method="hdbscan", min_cluster_size=10, reduce="none"))
    assert few.noise == 5 and few.n_clusters == 0 and few.centroids.shape == (0, 64)


def test_labelling_ids_are_stable_and_distinct():
    assert labelling_id(ClusterConfig(k=15)) == "kmeans-k15-pca32"
    assert labelling_id(ClusterConfig(k=8)) != labelling_id(ClusterConfig(k=15))
    assert labelling_id(ClusterConfig(k=None, reduce="none", seed=3)) == "kmeans-kauto4-30-seed3"
    assert labelling_id(ClusterConfig(method="hdbscan", vectors="caption")) == "hdbscan-min10-pca32-caption"


def test_time_ranges_merge_consecutive_sampled_frames():
    frames = pd.DataFrame({
        "video_id": ["a"] * 6 + ["b"] * 2, "video_name": ["a.mp4"] * 6 + ["b.mp4"] * 2,
        "frame_key": [f"k{i}" for i in range(8)], "timestamp": [0, 1, 2, 3, 4, 5, 0, 1],
        "cluster": pd.array([0, 0, 1, None, 0, 0, 0, 0], dtype="Int64"),
    })  # fmt: skip
    ranges = time_ranges(frames.sample(frac=1, random_state=0))  # order of the input does not matter
    assert ranges[["label", "video_name", "start", "end", "frames"]].values.tolist() == [
        [0, "a.mp4", 0, 1, 2],
        [1, "a.mp4", 2, 2, 1],
        [0, "a.mp4", 4, 5, 2],
        [0, "b.mp4", 0, 1, 2],
    ]  # the unlabelled frame at 3 s splits a.mp4's cluster 0, the video change splits it too


def test_keyframes_per_video_are_clipped_to_the_video_length():
    vectors, truth = blobs(groups=3, per_group=6, dim=16)
    frames = pd.DataFrame({"video_id": ["long"] * 15 + ["short"] * 3, "frame_key": [f"f{i}" for i in range(18)],
                           "timestamp": [float(i) for i in range(15)] + [0.0, 1.0, 2.0]})  # fmt: skip
    keyframes = video_keyframes(frames, vectors, per_video=4, seed=0)
    assert keyframes.groupby("video_id").size().to_dict() == {"long": 4, "short": 3}
    long = keyframes[keyframes.video_id == "long"]
    assert sorted(long["rank"]) == [1, 2, 3, 4] and long.represents.sum() == 15
    assert long.timestamp.is_monotonic_increasing  # listed in time order; rank says importance
    assert long.sort_values("rank").represents.is_monotonic_decreasing


# --- names ----------------------------------------------------------------------------------------


def test_names_from_captions_use_distinctive_terms():
    vectors, _ = blobs(groups=2, per_group=6, dim=16)
    clusters = cluster_vectors(vectors, ClusterConfig(k=2, reduce="none"))
    rabbit = ["a rabbit in a green meadow", "a picture of a rabbit eating grass in a meadow", "rabbit on a meadow"]
    car = ["a red car on a city street", "cars parked along the street", "a car driving down a street at night"]
    first = clusters.labels[0]
    captions = [(rabbit if label == first else car)[i % 3] for i, label in enumerate(clusters.labels)]
    captions[1] = None  # a frame without caption changes nothing
    names = name_clusters(clusters, captions=captions).set_index("label")
    assert set(names.name_source) == {"captions"}
    rabbit_name, car_name = names.name[first], names.name[1 - first]
    assert "rabbit" in rabbit_name and "meadow" in rabbit_name and "car" not in rabbit_name
    assert "street" in car_name and "car" in car_name and "picture" not in rabbit_name
    assert len(rabbit_name.split(", ")) <= 3


def test_c_tf_idf_prefers_terms_unique_to_a_cluster():
    terms = distinctive_terms({
        0: ["a dog in the park", "a dog running in the park"], 1: ["a cat in the park", "a cat sleeping"],
    }, top=1)  # fmt: skip
    assert terms[0][0][0] == "dog" and terms[1][0][0] == "cat"  # "park" is in both clusters
    assert distinctive_terms({0: ["the", "a"], 1: []}) == {0: [], 1: []}


@pytest.fixture
def scene_thumbnails(tmp_path) -> tuple[list[Path], np.ndarray]:
    """JPEG thumbnails of generated frames in two scene colours: dark blue and bright yellow."""
    paths, scenes = [], []
    for index in range(12):
        scene = index % 2
        path = tmp_path / "thumbs" / f"{index}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(videogen.render_frame(index, scene=scene, size=(96, 72))).save(path, quality=90)
        paths.append(path)
        scenes.append(scene)
    return paths, np.array(scenes)


def test_names_by_colour_without_a_text_side(scene_thumbnails):
    paths, scenes = scene_thumbnails
    encoder = ColourTextureEncoder()
    vectors = encoder.encode_images([Image.open(p) for p in paths])
    clusters = cluster_vectors(vectors, ClusterConfig(k=2, reduce="none"))
    assert adjusted_rand_score(scenes, clusters.labels) == 1.0
    names = name_clusters(clusters, encoder=encoder, thumbnails=paths).set_index("label")
    assert set(names.name_source) == {"colour"}
    blue_label = clusters.labels[scenes == 0][0]
    assert "blue" in names.name[blue_label] and "dark" in names.name[blue_label]
    assert "yellow" in names.name[1 - blue_label]
    # Two clusters of the same colour still get different names: the second adds its next colour.
    same = ClusterLabels(labels=np.array([0, 0, 1, 1]), centroids=np.eye(2), distances=np.zeros(4), method="kmeans")
    twins = name_clusters(same, thumbnails=[paths[0], paths[2], paths[4], paths[6]])
    first, second = twins.name.tolist()
    assert second.startswith(f"{first}, ") and "(" not in second


def test_names_from_the_clip_vocabulary_with_a_text_side(tmp_path, scene_thumbnails):
    paths, scenes = scene_thumbnails
    folder = tinyclip.save_tiny_local_dir(tmp_path / "tiny-clip")
    encoder = models.image_encoder(ModelsConfig(image=ImageModelConfig(name=f"local-dir:{folder}", pretrained=None)))
    assert encoder.has_text
    vectors = encoder.encode_images([Image.open(p) for p in paths])
    clusters = cluster_vectors(vectors, ClusterConfig(k=3, reduce="none"))
    names = name_clusters(clusters, encoder=encoder, thumbnails=paths)
    assert set(names.name_source) == {"clip-vocabulary"} and len(names) == 3
    assert names.name.is_unique
    phrases = {phrase.split(" ", 1)[1] if phrase.startswith(("a ", "an ", "the ")) else phrase for phrase in EVERYDAY_VOCABULARY}
    for name in names.name:  # random weights: which phrases is arbitrary, but they come from the vocabulary
        base = name.split(" (")[0]
        assert all(part in phrases for part in base.split(", ")), name
    assert len(EVERYDAY_VOCABULARY) == len(set(EVERYDAY_VOCABULARY)) >= 140


def test_noise_is_named_noise():
    clusters = ClusterLabels(labels=np.array([0, 0, NOISE]), centroids=np.eye(3)[:1], distances=np.array([0, 0, np.nan]),
                             method="hdbscan")  # fmt: skip
    names = name_clusters(clusters)
    assert names.values.tolist() == [[0, "cluster 0", "none"], [NOISE, "noise", "noise"]]


# --- the stage ------------------------------------------------------------------------------------


def build_run(tmp_path: Path, image_model: dict, **cluster) -> tuple:
    """Two generated videos whose scenes repeat colours, extracted every 0.5 s and embedded."""
    videos = {"one.mp4": (4, 10, [1.0, 2.0, 3.0]), "two.mp4": (2, 20, [1.0])}  # scenes 0-3 and 0-1
    options = {"k": 4, "reduce": "pca", "reduce_dims": 4, "montage_frames": 3, "keyframes_per_video": 3, **cluster}
    return embedded_run(tmp_path, image_model, videos=videos, name="c", cluster=options)


def expected_montage_size(count: int, aspect: float = 0.75) -> tuple[int, int]:
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    return min(columns, count) * MONTAGE_TILE_WIDTH, rows * (round(MONTAGE_TILE_WIDTH * aspect) + LABEL_HEIGHT)


def test_cluster_run_writes_tables_montages_keyframes_and_keeps_other_labellings(tmp_path):
    cfg, run = build_run(tmp_path, {"name": "fallback"})
    frames = read_table(run.table("frames"))
    assert len(frames) == 12

    summary = cluster_run(cfg, run)
    assert summary.labelling == "kmeans-k4-pca4"
    counts = summary.counts
    assert counts["frames"] == 12 and counts["clusters"] == 4 and counts["noise"] == 0
    assert counts["labelling"] == "kmeans-k4-pca4" and counts["name_source"] == "colour" and "silhouette" not in counts

    clusters = read_table(run.table("clusters"))
    assert list(clusters.columns) == ["frame_key", "labelling", "method", "params", "label", "name", "name_source", "distance"]
    assert len(clusters) == 12 and clusters.frame_key.is_unique and set(clusters.frame_key) == set(frames.frame_key)
    assert set(clusters.params) == {"kmeans k=4 reduce=pca4"} and set(clusters.name_source) == {"colour"}
    assert clusters.groupby("label").name.nunique().eq(1).all() and clusters.drop_duplicates("label").name.is_unique

    # Frames of one scene colour share a cluster: scene = time // 1 s in both videos.
    scene = (frames.timestamp // 1).astype(int).to_numpy()
    labels = clusters.set_index("frame_key").label[frames.frame_key].to_numpy()
    assert adjusted_rand_score(scene, labels) == 1.0

    annotated = read_table(run.table("frames_annotated"))
    assert list(annotated.columns) == list(frames.columns) + ["cluster", "cluster_name"]
    assert list(annotated.frame_key) == list(frames.frame_key) and annotated.cluster.notna().all()
    csv = pd.read_csv(run.tables / "frames_annotated.csv")
    assert len(csv) == 12 and csv.cluster.tolist() == annotated.cluster.tolist()

    table = summary.table
    assert table.label.tolist() == [0, 1, 2, 3] and table["size"].sum() == 12
    first_scene = table[table.video_names == "one.mp4, two.mp4"].iloc[0]  # scenes 0 and 1 are in both videos
    assert first_scene.videos == 2 and first_scene.time_ranges in (
        "one.mp4 00:00.00–00:00.50; two.mp4 00:00.00–00:00.50",
        "one.mp4 00:01.00–00:01.50; two.mp4 00:01.00–00:01.50",
    )
    for row in table.itertuples():
        assert len(row.representatives) == min(3, row.size)
        path = run.absolute(row.montage)
        assert path.parent == run.root / "plots" / "clusters" / "kmeans-k4-pca4" and path.name == f"cluster_{row.label}.jpg"
        with Image.open(path) as montage:
            assert montage.size == expected_montage_size(min(3, row.size))
    stored_table = cluster_table(run)
    assert stored_table.drop(columns="representatives").equals(table.drop(columns="representatives"))

    keyframes = read_table(run.table("keyframes"))
    assert list(keyframes.columns) == ["video_id", "frame_key", "timestamp", "rank", "represents"]
    assert keyframes.groupby("video_id").size().sort_values().tolist() == [3, 3]
    assert keyframes.groupby("video_id").represents.sum().sort_values().tolist() == [4, 8]
    strips = sorted((run.root / "plots" / "keyframes").glob("*.png"))
    assert [p.name.split("-")[0] for p in strips] == ["one", "two"]

    # Another k adds a labelling; the first one's rows stay as they were.
    cfg.cluster.k = 2
    second = cluster_run(cfg, run)
    assert second.labelling == "kmeans-k2-pca4"
    both = read_table(run.table("clusters"))
    assert len(both) == 24 and both.groupby("labelling").size().to_dict() == {"kmeans-k2-pca4": 12, "kmeans-k4-pca4": 12}
    pd.testing.assert_frame_equal(both[both.labelling == "kmeans-k4-pca4"].reset_index(drop=True), clusters)
    assert labellings(run).labelling.tolist() == ["kmeans-k4-pca4", "kmeans-k2-pca4"]  # the current one last
    assert read_table(run.table("frames_annotated")).cluster.nunique() == 2
    assert len(cluster_table(run)) == 2 and len(cluster_table(run, "kmeans-k4-pca4")) == 4
    assert (run.root / "plots" / "clusters" / "kmeans-k4-pca4" / "cluster_3.jpg").exists()

    # Re-running a labelling replaces its rows instead of adding more.
    cluster_run(cfg, run)
    assert len(read_table(run.table("clusters"))) == 24
    # Only finished files are left under plots/ (no temporary file of the atomic writer) and tables/.
    plots = sorted(p.relative_to(run.root / "plots").as_posix() for p in (run.root / "plots").rglob("*") if p.is_file())
    montages = [f"clusters/kmeans-k2-pca4/cluster_{n}.jpg" for n in range(2)] + [
        f"clusters/kmeans-k4-pca4/cluster_{n}.jpg" for n in range(4)
    ]
    assert plots == sorted(montages + [f"keyframes/{p.name}" for p in strips]), plots
    assert sorted(p.name for p in run.tables.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(ClusterError, match="stored labellings: kmeans-k4-pca4, kmeans-k2-pca4"):
        cluster_table(run, "kmeans-k99")


class FakeSentenceEncoder:
    """Deterministic word-hash sentence vectors: enough to cluster captions without a model."""

    def __init__(self):
        self.record = ModelRecord(kind="text", model_id="fake-sentences", requested="fake", backend="numpy")

    def encode(self, texts):
        vectors = np.zeros((len(texts), 64), np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                vectors[row, sum(map(ord, word)) % 64] += 1
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_cluster_run_on_caption_vectors_names_from_captions(tmp_path):
    cfg, run = build_run(tmp_path, {"name": "fallback"}, vectors="caption", k=2, method="kmeans")
    with pytest.raises(
        ClusterError, match=r"no caption vectors \(tables/caption_embeddings.parquet is missing; the caption stage has not "
        r"run\): enable the caption stage \(caption.enabled: true\) and run it with the embed stage"
    ):
        cluster_run(cfg, run)
    write_table(pd.DataFrame({"frame_key": [], "prompt": []}), run.table("captions"))  # captioned, but nothing could caption
    with pytest.raises(ClusterError, match=r"tables/captions.parquet holds no prompts: reports/02_caption.html says why\): "
                       r"give the caption stage a model that can caption"):  # fmt: skip
        cluster_run(cfg, run)
    from frameatlas.search import write_text_channel

    frames = read_table(run.table("frames"))
    texts = ["a rabbit hops across a sunny meadow" if t < 1 else "a red car drives down a busy street" for t in frames.timestamp]
    write_text_channel(run, "caption", list(frames.frame_key), texts, FakeSentenceEncoder())
    summary = cluster_run(cfg, run)
    assert summary.labelling == "kmeans-k2-pca4-caption" and summary.model_id == "fake-sentences"
    names = set(summary.names.name)
    assert set(summary.names.name_source) == {"captions"} and len(names) == 2
    assert any("rabbit" in n for n in names) and any("car" in n or "street" in n for n in names)


def test_cluster_run_names_with_the_clip_vocabulary_and_reports_missing_vectors(tmp_path):
    folder = tinyclip.save_tiny_local_dir(tmp_path / "tiny-clip")
    cfg, run = build_run(tmp_path, {"name": f"local-dir:{folder}", "pretrained": None})
    summary = cluster_run(cfg, run)
    assert set(summary.names.name_source) == {"clip-vocabulary"} and summary.model_id.startswith("clip-")
    run.table("embeddings").unlink()
    with pytest.raises(ClusterError, match="run the embed stage first"):
        cluster_run(cfg, run)


def test_stale_vectors_of_removed_frames_are_ignored(tmp_path):
    cfg, run = build_run(tmp_path, {"name": "fallback"}, k=2)
    frames = read_table(run.table("frames"))
    write_table(frames[frames.video_name == "one.mp4"], run.table("frames"))  # two.mp4 left the corpus
    summary = cluster_run(cfg, run)
    assert summary.counts["frames"] == 8
    assert set(read_table(run.table("keyframes")).video_id) == {frames.video_id[0]}
    assert len(list((run.root / "plots" / "keyframes").glob("*.png"))) == 1


@pytest.mark.parametrize("outside", ["../../etc/passwd", "/etc/passwd"])
def test_a_thumbnail_outside_the_run_is_refused_naming_table_row_and_path(tmp_path, outside):
    cfg, run = build_run(tmp_path, {"name": "fallback"}, k=2)
    frames = read_table(run.table("frames"))
    frames.loc[5, "thumbnail"] = outside
    write_table(frames, run.table("frames"))
    refused = rf"tables/frames.parquet row 5, column thumbnail: path '{re.escape(outside)}' resolves to \S+, outside {run.root}; refused"

    with pytest.raises(UnsafePath, match=refused):  # colour names read the central thumbnails first
        cluster_run(cfg, run)
    assert not run.table("clusters").exists() and not (run.root / "plots").exists()  # nothing written from it
    with pytest.raises(UnsafePath, match=refused):  # montages and keyframe strips
        cluster_montage(frames.iloc[[4, 5]], run)
    assert cluster_montage(frames.iloc[[4, 6]], run).size[0] == 2 * MONTAGE_TILE_WIDTH  # other rows draw as before


@pytest.mark.slow
def test_umap_reduction_before_hdbscan():
    vectors, truth = blobs(groups=3, per_group=40, spread=0.05, seed=4)
    clusters = cluster_vectors(vectors, ClusterConfig(method="hdbscan", min_cluster_size=10, reduce="umap", reduce_dims=4))
    assert clusters.reduction == "umap4" and clusters.centroids.shape == (clusters.n_clusters, 64)
    clustered = clusters.labels != NOISE
    assert clusters.n_clusters == 3 and clustered.mean() > 0.9
    assert adjusted_rand_score(truth[clustered], clusters.labels[clustered]) > 0.95
