"""Group a run's frames into clusters, give each cluster a readable name, and pick keyframes.

What the original research notebooks did by hand (KMeans with k=15 on CLIP vectors, clusters
named by looking at them, montages, keyframes per video), as functions behind `04_cluster`:

* `cluster_vectors`: KMeans (fixed k, or k chosen by silhouette over `k_range`) or HDBSCAN
  (label -1 = noise), optionally after PCA or UMAP. Centroids always live in the original
  vector space, so they can be compared with CLIP text vectors and with frames.
* `name_clusters`: distinctive caption terms (class-based TF-IDF) when captions exist; else the
  best phrases of a built-in everyday vocabulary by CLIP's text side; else (the weight-free
  descriptor has no text side) the clusters' dominant colours. `name_source` says which.
* `cluster_run`: the stage. Writes `tables/clusters.parquet` (one row per frame and labelling;
  several labellings coexist), `tables/frames_annotated.parquet` + `.csv` (the frames with the
  current labelling), `tables/keyframes.parquet`, a montage per cluster and a keyframe strip
  per video under `plots/`.

Example:
    >>> from frameatlas.config import load_config
    >>> from frameatlas.cluster import cluster_run, cluster_table
    >>> cfg = load_config("pipeline.yaml", overrides=["cluster.k=15"])  # doctest: +SKIP
    >>> summary = cluster_run(cfg, cfg.run_dir)  # doctest: +SKIP
    >>> summary.table[["label", "name", "size", "time_ranges"]]  # doctest: +SKIP
    >>> cluster_table(cfg.run_dir, "kmeans-k15-pca32")  # any stored labelling, no recomputing  # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
import math
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from .config import ClusterConfig, PipelineConfig
from .models.base import l2_normalise
from .plots import Tile, image_grid
from .store import RunPaths, read_table, write_table
from .files import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "CLUSTER_COLUMNS",
    "EVERYDAY_VOCABULARY",
    "KEYFRAME_COLUMNS",
    "NOISE",
    "ClusterError",
    "ClusterLabels",
    "ClusterSummary",
    "cluster_montage",
    "cluster_run",
    "cluster_table",
    "cluster_vectors",
    "distinctive_terms",
    "labelling_id",
    "labellings",
    "name_clusters",
    "time_ranges",
    "video_keyframes",
]

NOISE = -1  # HDBSCAN's label for frames that belong to no cluster
NOISE_NAME = "noise"
KMEANS_N_INIT = 10  # fixed (not sklearn's "auto") so results do not change with the library version
KEYFRAME_N_INIT = 4  # per-video fits are many and small; fewer restarts keep the stage quick
SILHOUETTE_SAMPLE = 5000  # silhouette is O(n^2): score a fixed random sample beyond this size
MONTAGE_TILE_WIDTH = 160
KEYFRAME_TILE_WIDTH = 140
KEYFRAME_COLUMNS_PER_ROW = 8
COLOUR_SAMPLE_FRAMES = 24  # thumbnails read per cluster for colour names (the most central ones)
RANGES_SHOWN = 12  # time ranges spelled out per cluster in `cluster_table`; the rest are counted
_UNCLUSTERED = -2  # internal marker for frames without a label in the current labelling

CLUSTER_COLUMNS = ["frame_key", "labelling", "method", "params", "label", "name", "name_source", "distance"]
KEYFRAME_COLUMNS = ["video_id", "frame_key", "timestamp", "rank", "represents"]
SUMMARY_COLUMNS = ["label", "name", "name_source", "size", "share", "videos", "video_names", "time_ranges",
                   "representatives", "montage"]  # fmt: skip

VOCABULARY_PROMPT = "a photo of {}"

#: Everyday objects and scenes ranked against cluster centroids with CLIP's text side.
EVERYDAY_VOCABULARY: tuple[str, ...] = (
    # people and what they do
    "a person", "a man", "a woman", "a child", "a baby", "a crowd", "a group of people", "a face close-up",
    "hands", "a person talking", "a person walking", "a person running", "people dancing", "a person cooking",
    "a person playing music", "a person reading", "a person using a computer", "a speaker at a podium",
    "a news presenter", "people playing sport", "a football match", "a swimmer", "a cyclist", "a soldier",
    "a police officer", "a doctor", "a musician on stage", "a wedding", "a family at home", "an interview",
    # animals
    "a rabbit", "a dog", "a cat", "a bird", "a horse", "a cow", "a sheep", "a fish", "an insect", "a butterfly",
    "a squirrel", "a deer", "a bear", "an elephant", "a monkey", "a lion", "a snake", "a chicken", "a duck",
    # nature
    "a forest", "a tree", "flowers", "grass", "a meadow", "a field of crops", "a mountain", "a hill", "a river",
    "a lake", "the sea", "a beach", "waves", "water", "a waterfall", "the sky", "clouds", "a sunset", "snow",
    "rain", "fire", "a desert", "a cave", "rocks", "a garden", "a park", "night", "the moon", "stars",
    "underwater", "ice",
    # built places
    "a city street", "a crowded street", "a city skyline", "a building", "a skyscraper", "a house", "a room",
    "a kitchen", "a bedroom", "an office", "a classroom", "a shop", "a restaurant", "a market", "a church",
    "a bridge", "a road", "a highway", "a parking lot", "a train station", "an airport", "a factory",
    "a construction site", "a stadium", "a stage with lights", "a hospital", "a library", "a farm",
    "a village", "ruins", "a laboratory", "a swimming pool",
    # vehicles
    "a car", "a bus", "a truck", "a train", "a bicycle", "a motorcycle", "a boat", "a ship", "an airplane",
    "a helicopter", "a rocket", "traffic",
    # things
    "a table", "a chair", "a bed", "a computer", "a phone", "a television", "a book", "food", "a plate of food",
    "a drink", "a bottle", "a cup", "a ball", "a toy", "a flag", "a map", "a clock", "a painting", "a guitar",
    "a piano", "money", "a weapon", "clothes", "a door", "a window", "a lamp",
    # pictures on screens
    "text on a screen", "a title card", "a logo", "subtitles", "a chart", "a diagram", "a slide presentation",
    "a cartoon character", "an animation", "a video game", "a black screen", "a blurry image",
    "a black and white film", "a drawing", "a website", "a microscope image", "an explosion", "smoke",
    "lights in the dark", "fireworks",
)  # fmt: skip

# Words captioning models put in nearly every caption; they would otherwise crowd out real content.
CAPTION_STOP_WORDS = frozenset({
    "image", "picture", "photo", "photograph", "shot", "view", "shows", "showing", "shown", "depicts",
    "depicting", "features", "featuring", "visible", "background", "foreground", "appears", "seen",
})  # fmt: skip

# Named colours for the weight-free descriptor: hue sectors (degrees) for saturated pixels.
_HUE_NAMES = ((15, "red"), (40, "orange"), (70, "yellow"), (165, "green"), (195, "cyan"), (255, "blue"),
              (290, "purple"), (345, "pink"), (360, "red"))  # fmt: skip
COLOUR_NAMES = ("black", "grey", "white", "brown", "red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")


class ClusterError(ValueError):
    """Clustering that cannot run; the message says what is missing and how to get it."""


# --- clustering vectors -----------------------------------------------------------------------


@dataclass
class ClusterLabels:
    """One clustering of n vectors.

    Attributes:
        labels: (n,) cluster per vector, 0..m-1 by decreasing size; -1 (`NOISE`) for HDBSCAN noise.
        centroids: (m, dim) unit-length means of each cluster's members, in the ORIGINAL vector
            space (also when clustering ran on PCA/UMAP coordinates).
        distances: (n,) cosine distance of each vector to its cluster's centroid (NaN for noise).
        method: "kmeans" or "hdbscan".
        params: what actually ran (k used, reduction dims after clipping to the data, seed, ...).
        reduction: "none", "pca32", "umap16", ...
        silhouette: silhouette score per k tried (only when k was chosen by silhouette).
        notes: adjustments made to fit the data (k or dims clipped), for people to read.

    Example:
        >>> import numpy as np
        >>> clusters = cluster_vectors(np.eye(4)[[0, 0, 1, 1]] + 0.01, ClusterConfig(k=2, reduce="none"))
        >>> clusters.n_clusters, clusters.description
        (2, 'kmeans k=2 reduce=none')
    """

    labels: np.ndarray
    centroids: np.ndarray
    distances: np.ndarray
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    reduction: str = "none"
    silhouette: dict[int, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n_clusters(self) -> int:
        return len(self.centroids)

    @property
    def noise(self) -> int:
        return int((self.labels == NOISE).sum())

    @property
    def best_silhouette(self) -> float | None:
        """The silhouette of the chosen k, when k was chosen by silhouette."""
        return self.silhouette.get(self.params.get("k")) if self.silhouette else None

    @property
    def description(self) -> str:
        """A short string for tables and plots, e.g. ``kmeans k=15 reduce=pca32``."""
        if self.method == "kmeans":
            core = f"k={self.params['k']}"
            if self.params.get("k_chosen_by") == "silhouette":
                low, high = self.params["k_range"]
                core += f" (silhouette {low}-{high})"
        else:
            core = f"min_cluster_size={self.params['min_cluster_size']}"
        return f"{self.method} {core} reduce={self.reduction}"

    def members(self, label: int) -> np.ndarray:
        """Indices of the vectors in cluster `label`, nearest to the centroid first."""
        indices = np.flatnonzero(self.labels == label)
        if label == NOISE:
            return indices
        return indices[np.argsort(self.distances[indices], kind="stable")]


def labelling_id(cfg: ClusterConfig) -> str:
    """A stable, readable id for a clustering configuration (also a folder name).

    It depends only on the settings, not on the data, so re-running the same settings replaces
    that labelling, and other settings add one next to it.

    Example:
        >>> labelling_id(ClusterConfig(k=15, reduce="pca", reduce_dims=32))
        'kmeans-k15-pca32'
        >>> labelling_id(ClusterConfig(k=None, k_range=(4, 30), reduce="none", vectors="caption"))
        'kmeans-kauto4-30-caption'
        >>> labelling_id(ClusterConfig(method="hdbscan", min_cluster_size=10, reduce="umap", reduce_dims=16))
        'hdbscan-min10-umap16'
    """
    if cfg.method == "kmeans":
        parts = ["kmeans", f"k{cfg.k}" if cfg.k is not None else f"kauto{cfg.k_range[0]}-{cfg.k_range[1]}"]
    else:
        parts = ["hdbscan", f"min{cfg.min_cluster_size}"]
    if cfg.reduce != "none":
        parts.append(f"{cfg.reduce}{cfg.reduce_dims}")
    if cfg.vectors != "image":
        parts.append(cfg.vectors)
    if cfg.seed:
        parts.append(f"seed{cfg.seed}")
    return "-".join(parts)


def cluster_vectors(vectors: np.ndarray, cfg: ClusterConfig | None = None) -> ClusterLabels:
    """Cluster unit vectors with KMeans or HDBSCAN, after an optional PCA/UMAP reduction.

    Args:
        vectors: (n, dim) array; rows are L2-normalised here, so any scale is accepted.
        cfg: `ClusterConfig` (method, k or k_range, min_cluster_size, reduce, reduce_dims, seed).
            With `k=None`, every k in `k_range` (clipped to 2..n-1) is fitted and the one with the
            best silhouette wins (ties go to the smaller k).

    Returns:
        A `ClusterLabels`; labels are renumbered so cluster 0 is the largest.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> blobs = np.repeat(np.eye(8)[:3], 20, axis=0) + 0.05 * rng.normal(size=(60, 8))
        >>> clusters = cluster_vectors(blobs, ClusterConfig(k=None, k_range=(2, 6), reduce="none"))
        >>> clusters.params["k"], np.bincount(clusters.labels).tolist()
        (3, [20, 20, 20])
    """
    cfg = cfg or ClusterConfig()
    data = np.asarray(vectors, dtype=np.float32)
    if data.ndim != 2 or len(data) == 0:
        raise ClusterError(f"need an (n, dim) array with at least one row to cluster, got shape {data.shape}")
    data = l2_normalise(data)
    notes: list[str] = []
    space, reduction, reduce_dims = _reduce(data, cfg, notes)
    if cfg.method == "kmeans":
        raw_labels, params, silhouette = _kmeans(space, cfg, notes)
    else:
        raw_labels, params = _hdbscan(space, cfg, notes)
        silhouette = {}
    labels = _relabel_by_size(raw_labels)
    centroids = _centroids(data, labels)
    distances = _distances(data, labels, centroids)
    params.update(reduce=cfg.reduce, reduce_dims=reduce_dims, seed=cfg.seed)
    for note in notes:
        log.info("cluster: %s", note)
    return ClusterLabels(labels=labels, centroids=centroids, distances=distances, method=cfg.method, params=params,
                         reduction=reduction, silhouette=silhouette, notes=notes)  # fmt: skip


def _reduce(data: np.ndarray, cfg: ClusterConfig, notes: list[str]) -> tuple[np.ndarray, str, int | None]:
    if cfg.reduce == "none":
        return data, "none", None
    n, dim = data.shape
    # More components than points-1 (or than the vectors have) carry no information.
    dims = min(cfg.reduce_dims, dim, n - 1)
    if cfg.reduce == "umap":
        dims = min(dims, n - 2)  # UMAP's spectral initialisation needs n_components < n - 1
    if dims < 2 or (cfg.reduce == "pca" and dims >= dim):
        notes.append(f"{cfg.reduce} to {cfg.reduce_dims} dims skipped: {n} vectors of {dim} dims are too few to reduce")
        return data, "none", None
    if dims < cfg.reduce_dims:
        notes.append(f"{cfg.reduce} to {dims} dims instead of {cfg.reduce_dims}: only {n} vectors of {dim} dims")
    if cfg.reduce == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=dims, random_state=cfg.seed).fit_transform(data), f"pca{dims}", dims
    # Imported only here: umap's numba compilation costs tens of seconds on first use.
    import umap

    reducer = umap.UMAP(
        n_components=dims, n_neighbors=max(2, min(15, n - 1)), min_dist=0.0, metric="cosine",
        random_state=cfg.seed, n_jobs=1,  # a seed makes UMAP single-threaded anyway; saying so avoids its warning
    )  # fmt: skip
    return np.asarray(reducer.fit_transform(data), dtype=np.float32), f"umap{dims}", dims


def _fit_kmeans(space: np.ndarray, k: int, seed: int, n_init: int = KMEANS_N_INIT):
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # Duplicate vectors (a frozen picture) can leave fewer distinct clusters than k; the
        # labels are still right, and relabelling removes the empty numbers.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(space)


def _kmeans(space: np.ndarray, cfg: ClusterConfig, notes: list[str]) -> tuple[np.ndarray, dict, dict[int, float]]:
    n = len(space)
    if cfg.k is not None:
        k = min(cfg.k, n)
        if k < cfg.k:
            notes.append(f"k={cfg.k} is more than the {n} vectors; using k={k}")
        return _fit_kmeans(space, k, cfg.seed).labels_, {"k": k, "k_chosen_by": "config", "n_init": KMEANS_N_INIT}, {}

    from sklearn.metrics import silhouette_score

    low, high = cfg.k_range
    params: dict[str, Any] = {"k_chosen_by": "silhouette", "k_range": [low, high], "n_init": KMEANS_N_INIT}
    candidates = range(max(low, 2), min(high, n - 1) + 1)  # silhouette needs 2 <= k <= n-1
    if not candidates:
        k = max(1, min(low, n))
        notes.append(f"k_range {low}-{high} does not fit {n} vectors; using k={k} without silhouette")
        return _fit_kmeans(space, k, cfg.seed).labels_, {**params, "k": k, "k_chosen_by": "fallback"}, {}
    if candidates[-1] < high:
        notes.append(f"k_range {low}-{high} clipped to {candidates[0]}-{candidates[-1]} for {n} vectors")
    # The same random sample for every k keeps the scores comparable.
    sample = SILHOUETTE_SAMPLE if n > SILHOUETTE_SAMPLE else None
    scores: dict[int, float] = {}
    best_k, best_labels = None, None
    for k in candidates:
        labels = _fit_kmeans(space, k, cfg.seed).labels_
        if len(np.unique(labels)) < 2:
            continue
        scores[k] = float(silhouette_score(space, labels, sample_size=sample, random_state=cfg.seed))
        if best_k is None or scores[k] > scores[best_k]:
            best_k, best_labels = k, labels
    if best_k is None:  # every fit collapsed to one cluster (all vectors identical)
        notes.append("all vectors are identical; one cluster")
        return np.zeros(n, dtype=np.int64), {**params, "k": 1, "k_chosen_by": "fallback"}, scores
    return best_labels, {**params, "k": best_k}, scores


def _hdbscan(space: np.ndarray, cfg: ClusterConfig, notes: list[str]) -> tuple[np.ndarray, dict]:
    from sklearn.cluster import HDBSCAN

    n = len(space)
    params = {"min_cluster_size": cfg.min_cluster_size}
    if n < cfg.min_cluster_size:
        notes.append(f"{n} vectors are fewer than min_cluster_size={cfg.min_cluster_size}: all noise")
        return np.full(n, NOISE, dtype=np.int64), params
    return HDBSCAN(min_cluster_size=cfg.min_cluster_size, copy=True).fit_predict(space), params


def _relabel_by_size(raw: np.ndarray) -> np.ndarray:
    """Renumber clusters 0..m-1 from the largest down (ties: first seen first); noise stays -1."""
    raw = np.asarray(raw, dtype=np.int64)
    kept = raw[raw != NOISE]
    ids, first_seen, sizes = np.unique(kept, return_index=True, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-sizes[i], first_seen[i]))
    mapping = {int(ids[old]): new for new, old in enumerate(order)}
    return np.array([mapping.get(int(label), NOISE) for label in raw], dtype=np.int64)


def _centroids(data: np.ndarray, labels: np.ndarray) -> np.ndarray:
    count = int(labels.max()) + 1 if (labels >= 0).any() else 0
    sums = np.zeros((count, data.shape[1]), dtype=np.float64)
    clustered = labels >= 0
    np.add.at(sums, labels[clustered], data[clustered])
    return l2_normalise(sums.astype(np.float32))  # the direction of the mean, comparable with unit vectors


def _distances(data: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    distances = np.full(len(data), np.nan, dtype=np.float32)
    clustered = labels >= 0
    if clustered.any():
        similarity = np.einsum("ij,ij->i", data[clustered], centroids[labels[clustered]])
        distances[clustered] = np.clip(1.0 - similarity, 0.0, 2.0)
    return distances


# --- names --------------------------------------------------------------------------------------


def distinctive_terms(texts_by_cluster: Mapping[int, Sequence[str]], top: int = 3) -> dict[int, list[tuple[str, float]]]:
    """The terms that set each cluster's texts apart, by class-based TF-IDF (c-TF-IDF).

    Each cluster's texts are joined into one document; a term's weight is its frequency in that
    document (normalised by the document's length) times ``log(1 + clusters / clusters_with_term)``,
    so words every cluster uses weigh little. English stop words and captioning boilerplate
    ("image", "shows", ...) are ignored.

    Example:
        >>> terms = distinctive_terms({0: ["a rabbit in a meadow", "a rabbit eating"], 1: ["a car on a street"]}, top=2)
        >>> [term for term, _ in terms[0]]
        ['rabbit', 'eating']
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    labels = list(texts_by_cluster)
    documents = [" ".join(t for t in texts_by_cluster[label] if isinstance(t, str)) for label in labels]
    result: dict[int, list[tuple[str, float]]] = {label: [] for label in labels}
    vectorizer = CountVectorizer(
        stop_words=sorted(ENGLISH_STOP_WORDS | CAPTION_STOP_WORDS), token_pattern=r"(?u)\b[^\W\d_]{2,}\b"
    )
    try:
        counts = vectorizer.fit_transform(documents).toarray().astype(np.float64)
    except ValueError:  # nothing but stop words (or no text at all)
        return result
    terms = vectorizer.get_feature_names_out()
    term_frequency = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    clusters_with_term = (counts > 0).sum(axis=0)
    weights = term_frequency * np.log1p(len(documents) / np.maximum(clusters_with_term, 1))
    for row, label in enumerate(labels):
        # Ties (equal counts) keep alphabetical order so names do not depend on hash order.
        order = np.lexsort((terms.astype(str), -weights[row]))[:top]
        result[label] = [(str(terms[i]), float(weights[row, i])) for i in order if weights[row, i] > 0]
    return result


def _without_article(phrase: str) -> str:
    return re.sub(r"^(a|an|the) ", "", phrase)


def _vocabulary_names(centroids: np.ndarray, encoder: Any, vocabulary: Sequence[str], phrases: int) -> list[str]:
    text = np.asarray(encoder.encode_text([VOCABULARY_PROMPT.format(p) for p in vocabulary]), dtype=np.float32)
    if text.shape[1] != centroids.shape[1]:
        raise ClusterError(
            f"the encoder's text vectors have {text.shape[1]} dims but the centroids {centroids.shape[1]}: "
            "name clusters with the encoder the frames were embedded with"
        )
    scores = centroids @ l2_normalise(text).T
    if len(centroids) > 1:
        # CLIP similarities sit in a narrow band and some phrases match everything a little;
        # subtracting each phrase's mean over clusters keeps what sets a cluster apart.
        scores = scores - scores.mean(axis=0, keepdims=True)
    names = []
    for row in scores:
        order = np.argsort(-row, kind="stable")
        chosen = [order[0]]
        # A second phrase only when it is nearly as telling as the first.
        if phrases > 1 and row[order[1]] > 0 and row[order[1]] >= 0.5 * row[order[0]]:
            chosen.append(order[1])
        names.append(", ".join(_without_article(vocabulary[i]) for i in chosen))
    return names


def _pixel_colour_names(rgb: np.ndarray) -> np.ndarray:
    """Index into `COLOUR_NAMES` for each pixel of an (n, 3) array of 0..1 RGB values."""
    top, bottom = rgb.max(axis=1), rgb.min(axis=1)
    chroma = top - bottom
    saturation = np.where(top > 0, chroma / np.maximum(top, 1e-6), 0.0)
    red, green, blue = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    safe = np.maximum(chroma, 1e-6)
    hue = (
        np.select(
            [top == red, top == green],
            [((green - blue) / safe) % 6, (blue - red) / safe + 2],
            (red - green) / safe + 4,
        )
        * 60.0
    )
    names = np.zeros(len(rgb), dtype=np.int64)
    lower = 0
    for upper, name in _HUE_NAMES:
        names[(hue >= lower) & (hue < upper)] = COLOUR_NAMES.index(name)
        lower = upper
    # Dim oranges and reds are what people call brown.
    names = np.where(np.isin(names, [COLOUR_NAMES.index("orange"), COLOUR_NAMES.index("red")]) & (top < 0.6)
                     & (saturation > 0.25), COLOUR_NAMES.index("brown"), names)  # fmt: skip
    achromatic = np.where(top > 0.85, COLOUR_NAMES.index("white"), COLOUR_NAMES.index("grey"))
    names = np.where(saturation < 0.18, achromatic, names)
    return np.where(top < 0.18, COLOUR_NAMES.index("black"), names)


def _colour_name(paths: Sequence[Path | str]) -> str:
    """Dominant named colour(s) of some thumbnails, with light/dark, e.g. "dark blue, white"."""
    votes = np.zeros(len(COLOUR_NAMES))
    lightness = np.zeros(len(COLOUR_NAMES))
    for path in paths:
        try:
            with Image.open(path) as image:
                image.draft("RGB", (64, 64))  # JPEG decodes at reduced size: much faster
                small = image.convert("RGB").resize((32, 24), Image.Resampling.BOX)
        except OSError:
            continue  # a missing thumbnail only loses its vote
        rgb = np.asarray(small, dtype=np.float32).reshape(-1, 3) / 255.0
        names = _pixel_colour_names(rgb)
        # HSL lightness: pure blue and pure yellow both sit at 0.5, so "dark"/"light" mean the same
        # for every hue (luminance would call every yellow light and every blue dark).
        pixel_lightness = (rgb.max(axis=1) + rgb.min(axis=1)) / 2
        votes += np.bincount(names, minlength=len(COLOUR_NAMES))
        lightness += np.bincount(names, weights=pixel_lightness, minlength=len(COLOUR_NAMES))
    if not votes.any():
        return "unknown colour"
    order = np.argsort(-votes, kind="stable")

    def described(index: int) -> str:
        name = COLOUR_NAMES[index]
        if name in ("black", "white"):
            return name
        mean = lightness[index] / votes[index]
        return f"dark {name}" if mean < 0.35 else f"light {name}" if mean > 0.65 else name

    parts = [described(order[0])]
    if votes[order[1]] >= 0.5 * votes[order[0]]:
        parts.append(described(order[1]))
    return ", ".join(parts)


def _unique(names: list[str]) -> list[str]:
    """Append " (2)", " (3)", ... to repeats, in order (the largest cluster keeps the plain name)."""
    seen: set[str] = set()
    unique = []
    for name in names:
        candidate, number = name, 1
        while candidate in seen:
            number += 1
            candidate = f"{name} ({number})"
        seen.add(candidate)
        unique.append(candidate)
    return unique


def name_clusters(
    clusters: ClusterLabels,
    *,
    captions: Sequence[str | None] | None = None,
    encoder: Any = None,
    thumbnails: Sequence[Path | str] | None = None,
    vocabulary: Sequence[str] = EVERYDAY_VOCABULARY,
    terms: int = 3,
    phrases: int = 2,
) -> pd.DataFrame:
    """A readable, unique name per cluster, and where it came from.

    For each cluster the first source that can answer is used:

    1. ``captions``: its top `terms` c-TF-IDF terms (see `distinctive_terms`);
    2. ``clip-vocabulary``: with an image-text `encoder` (``encoder.has_text``) whose space the
       vectors are in, the best 1-`phrases` phrases of `vocabulary` for its centroid (prompt
       "a photo of {}");
    3. ``colour``: the dominant named colours of its most central `thumbnails` (the weight-free
       descriptor has no text side, so this is what it can offer);
    4. otherwise ``cluster <label>`` with name_source "none".

    Args:
        clusters: from `cluster_vectors`.
        captions: one caption (or None) per clustered vector, in the same order.
        encoder: the image encoder the vectors came from (only its text side is used).
        thumbnails: one thumbnail path per clustered vector, in the same order.

    Returns:
        DataFrame with label, name, name_source; the noise cluster (-1), when present, is named
        "noise" with name_source "noise".

    Example:
        >>> names = name_clusters(clusters, captions=["a rabbit in a meadow", "a red car"])  # doctest: +SKIP
        >>> names.loc[names.label == 0, "name"].item()  # doctest: +SKIP
        'rabbit, meadow'
    """
    labels = list(range(clusters.n_clusters))
    named: dict[int, tuple[str, str]] = {}

    if captions is not None:
        texts_by_cluster = {label: [captions[i] for i in clusters.members(label) if captions[i]] for label in labels}
        for label, found in distinctive_terms(texts_by_cluster, top=terms).items():
            if found:
                named[label] = (", ".join(term for term, _ in found), "captions")

    remaining = [label for label in labels if label not in named]
    if remaining and encoder is not None and getattr(encoder, "has_text", False):
        # Every centroid takes part, so "distinctive" means against all clusters, not only the rest.
        vocabulary_names = _vocabulary_names(clusters.centroids, encoder, vocabulary, phrases)
        for label in remaining:
            named[label] = (vocabulary_names[label], "clip-vocabulary")

    for label in labels:
        if label in named:
            continue
        if thumbnails is not None:
            central = [thumbnails[i] for i in clusters.members(label)[:COLOUR_SAMPLE_FRAMES]]
            named[label] = (_colour_name(central), "colour")
        else:
            named[label] = (f"cluster {label}", "none")

    names = _unique([named[label][0] for label in labels])
    table = pd.DataFrame({"label": labels, "name": names, "name_source": [named[label][1] for label in labels]})
    if clusters.noise:
        noise_row = pd.DataFrame({"label": [NOISE], "name": [NOISE_NAME], "name_source": [NOISE_NAME]})
        table = pd.concat([table, noise_row], ignore_index=True)
    return table.astype({"label": "int64"})


# --- time ranges, montages, keyframes -----------------------------------------------------------


def time_ranges(annotated: pd.DataFrame, column: str = "cluster") -> pd.DataFrame:
    """Consecutive sampled frames of a video with the same label, merged into time ranges.

    Args:
        annotated: frames with video_id, video_name, timestamp, frame_key and a label `column`
            (missing labels break ranges and are not reported).

    Returns:
        DataFrame with label, video_id, video_name, start, end (timestamps of the first and last
        frame of the range) and frames, ordered by video name and time.

    Example:
        >>> frames = pd.DataFrame({"video_id": "v", "video_name": "v.mp4", "frame_key": list("abcd"),
        ...                        "timestamp": [0.0, 1.0, 2.0, 3.0], "cluster": [0, 0, 1, 0]})
        >>> time_ranges(frames)[["label", "start", "end", "frames"]]
           label  start  end  frames
        0      0    0.0  1.0       2
        1      1    2.0  2.0       1
        2      0    3.0  3.0       1
    """
    columns = ["label", "video_id", "video_name", "start", "end", "frames"]
    if annotated.empty:
        return pd.DataFrame(columns=columns)
    ordered = annotated.sort_values(["video_name", "video_id", "timestamp"], kind="stable").reset_index(drop=True)
    label = pd.to_numeric(ordered[column], errors="coerce").astype("float64").fillna(_UNCLUSTERED).astype(np.int64).to_numpy()
    video = ordered["video_id"].to_numpy()
    starts_run = np.r_[True, (label[1:] != label[:-1]) | (video[1:] != video[:-1])]
    ranges = (
        ordered.assign(_run=np.cumsum(starts_run), _label=label)
        .groupby("_run", sort=True)
        .agg(label=("_label", "first"), video_id=("video_id", "first"), video_name=("video_name", "first"),
             start=("timestamp", "min"), end=("timestamp", "max"), frames=("frame_key", "size"))
    )  # fmt: skip
    return ranges[ranges.label != _UNCLUSTERED].reset_index(drop=True)[columns]


def _format_ranges(ranges: pd.DataFrame, limit: int = RANGES_SHOWN) -> str:
    """'one.mp4 00:00.00–00:01.50, 00:03.00; two.mp4 00:00.00 (+4 more)'."""
    from .plots import format_time

    parts, shown = [], 0
    for video_name, group in ranges.groupby("video_name", sort=True):
        spans = []
        for row in group.itertuples():
            if shown >= limit:
                break
            shown += 1
            spans.append(format_time(row.start) if row.start == row.end else f"{format_time(row.start)}–{format_time(row.end)}")
        if spans:
            parts.append(f"{video_name} {', '.join(spans)}")
    text = "; ".join(parts)
    return text + (f" (+{len(ranges) - shown} more)" if len(ranges) > shown else "")


def _aspect(frames: pd.DataFrame) -> float:
    if {"width", "height"} <= set(frames.columns) and len(frames):
        ratio = (pd.to_numeric(frames["height"], errors="coerce") / pd.to_numeric(frames["width"], errors="coerce")).median()
        if np.isfinite(ratio) and ratio > 0:
            return float(ratio)
    return 0.75


def cluster_montage(
    frames: pd.DataFrame,
    run: RunPaths | Path | str,
    *,
    columns: int | None = None,
    tile_width: int = MONTAGE_TILE_WIDTH,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """A grid of the given frames (in the given order), each labelled with video and time.

    Args:
        frames: rows with thumbnail, video_name, timestamp (and width/height for the aspect).
        columns: tiles per row; default: a square-ish grid (ceil of the square root).
        labels: tile labels instead of "<video> <mm:ss.ss>".

    Example:
        >>> image = cluster_montage(frames.head(16), "outputs/demo")  # a 4 x 4 grid  # doctest: +SKIP
    """
    from .plots import format_time

    run = run if isinstance(run, RunPaths) else RunPaths(run)
    if labels is None:
        labels = [f"{Path(str(row.video_name)).stem[:10]} {format_time(row.timestamp)}" for row in frames.itertuples()]
    tiles = [Tile(run.absolute(row.thumbnail), label) for row, label in zip(frames.itertuples(), labels)]
    columns = columns or max(1, math.ceil(math.sqrt(len(tiles))))
    return image_grid(tiles, columns=columns, tile_width=tile_width, aspect=_aspect(frames))


def _save_png(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())  # a viewer never sees half a file


def video_keyframes(frames: pd.DataFrame, vectors: np.ndarray, *, per_video: int = 32, seed: int = 0) -> pd.DataFrame:
    """Per video, the frame nearest each of `per_video` KMeans centroids of that video's vectors.

    Args:
        frames: one row per vector with video_id, frame_key, timestamp.
        vectors: (n, dim), aligned with `frames`.
        per_video: centroids per video, clipped to the video's frame count (a short video keeps
            every frame).

    Returns:
        DataFrame with video_id, frame_key, timestamp, rank (1 = the keyframe standing for the
        most frames) and represents (how many of the video's frames its centroid holds).

    Example:
        >>> keyframes = video_keyframes(frames, vectors, per_video=8)  # doctest: +SKIP
    """
    frames = frames.reset_index(drop=True)
    vectors = np.asarray(vectors, dtype=np.float32)
    rows = []
    for video_id, group in frames.groupby("video_id", sort=True):
        positions = group.index.to_numpy()
        k = min(per_video, len(positions))
        if k == len(positions):
            picks, represents = np.arange(len(positions)), np.ones(len(positions), dtype=np.int64)
        else:
            model = _fit_kmeans(vectors[positions], k, seed, n_init=KEYFRAME_N_INIT)
            sizes = np.bincount(model.labels_, minlength=k)
            nearest = model.transform(vectors[positions]).argmin(axis=0)  # one frame per centroid
            # Identical frames can be nearest to two centroids: keep the frame once, with both counts.
            picks, inverse = np.unique(nearest, return_inverse=True)
            represents = np.bincount(inverse, weights=sizes, minlength=len(picks)).astype(np.int64)
        chosen = group.iloc[picks]
        for row, count in zip(chosen.itertuples(), represents):
            rows.append({"video_id": video_id, "frame_key": row.frame_key, "timestamp": float(row.timestamp),
                         "represents": int(count)})  # fmt: skip
    table = pd.DataFrame(rows, columns=["video_id", "frame_key", "timestamp", "represents"])
    if table.empty:
        return pd.DataFrame(columns=KEYFRAME_COLUMNS)
    table = table.sort_values(["video_id", "represents", "timestamp"], ascending=[True, False, True], kind="stable")
    table["rank"] = table.groupby("video_id").cumcount() + 1
    return table.sort_values(["video_id", "timestamp"], kind="stable").reset_index(drop=True)[KEYFRAME_COLUMNS]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:40] or "video"


# --- the stage ------------------------------------------------------------------------------------


@dataclass
class ClusterSummary:
    """What `cluster_run` did: the clustering, its names and tables, and counts for the manifest."""

    labelling: str
    clusters: ClusterLabels
    names: pd.DataFrame
    table: pd.DataFrame  # `cluster_table` of this labelling
    assignments: pd.DataFrame  # this labelling's rows of tables/clusters.parquet
    keyframes: pd.DataFrame
    model_id: str
    vectors: str
    montages: dict[int, Path] = field(default_factory=dict)
    keyframe_strips: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, float | int | str]:
        counts: dict[str, float | int | str] = {
            "frames": len(self.assignments),
            "clusters": self.clusters.n_clusters,
            "noise": self.clusters.noise,
            "labelling": self.labelling,
            "params": self.clusters.description,
            "name_source": ", ".join(sorted(set(self.names.name_source) - {NOISE_NAME})),
            "keyframes": len(self.keyframes),
            "seconds": round(self.seconds, 2),
        }
        if self.clusters.best_silhouette is not None:
            counts["silhouette"] = round(self.clusters.best_silhouette, 4)
        return counts


def _load_cluster_vectors(run: RunPaths, kind: str, encoder: Any) -> tuple[pd.Series, np.ndarray, str]:
    """(frame keys, vectors, model id) of the image or caption vectors of the run."""
    if kind == "caption":
        path = run.table("caption_embeddings")
        if not path.exists():
            captions = run.table("captions")
            if captions.exists():  # captioned, but nothing to embed: no model could write a caption
                why = f"{run.relative(captions)} holds no prompts: reports/02_caption.html says why"
                fix = "give the caption stage a model that can caption (CLIP weights, or caption.caption_model)"
            else:
                why = "the caption stage has not run"
                fix = "enable the caption stage (caption.enabled: true)"
            raise ClusterError(
                f"cluster.vectors is 'caption' but this run has no caption vectors ({run.relative(path)} is missing; "
                f"{why}): {fix} and run it with the embed stage (python run_pipeline.py --stages caption,embed), "
                "or set cluster.vectors: image"
            )
    else:
        path = run.table("embeddings")
        if not path.exists():
            raise ClusterError(
                f"this run has no frame vectors ({run.relative(path)} is missing): "
                "run the embed stage first (python run_pipeline.py --stages embed)"
            )
    model_ids = list(pd.read_parquet(path, columns=["model_id"]).model_id.unique())
    if not model_ids:
        raise ClusterError(f"{run.relative(path)} is empty: no vectors to cluster")
    wanted = getattr(getattr(encoder, "record", None), "model_id", None) if kind == "image" else None
    model_id = wanted if wanted in model_ids else model_ids[0]
    table = read_table(path)
    table = table[table.model_id == model_id].drop_duplicates("frame_key", keep="last")
    return table.frame_key.reset_index(drop=True), np.stack(table.vector.to_numpy()).astype(np.float32), str(model_id)


def _load_captions(run: RunPaths) -> pd.Series | None:
    path = run.table("caption_embeddings")
    if not path.exists():
        return None
    table = pd.read_parquet(path, columns=["frame_key", "text"]).drop_duplicates("frame_key", keep="last")
    table = table[table.text.notna() & (table.text.astype(str).str.strip() != "")]  # blank captions name nothing
    return table.set_index("frame_key").text.astype(str)


def _naming_encoder(cfg: PipelineConfig, encoder: Any, model_id: str, notes: list[str]) -> Any:
    """The image encoder, if its text side lives in the space of the clustered vectors."""
    if encoder is None:
        from .models import ModelUnavailable, image_encoder

        try:
            encoder = image_encoder(cfg.models)
        except ModelUnavailable as error:
            notes.append(f"names from colours: the image model cannot be loaded ({error.detail or error})")
            return None
    if not getattr(encoder, "has_text", False):
        notes.append(f"names from colours: {encoder.record.model_id} has no text side")
        return None
    if encoder.record.model_id != model_id:
        notes.append(f"names from colours: vectors come from {model_id}, the encoder is {encoder.record.model_id}")
        return None
    return encoder


def _summarise(annotated: pd.DataFrame, names: pd.DataFrame, run: RunPaths, labelling: str, montage_frames: int) -> pd.DataFrame:
    """The cluster table from frames annotated with cluster, cluster_name and distance."""
    ranges = time_ranges(annotated, "cluster")
    clustered = annotated[annotated.cluster.notna()]
    total = max(len(clustered), 1)
    rows = []
    for name_row in names.itertuples():
        label = int(name_row.label)
        members = clustered[clustered.cluster == label].sort_values(["distance", "video_name", "timestamp"], kind="stable")
        montage = _montage_path(run, labelling, label)
        rows.append({
            "label": label, "name": name_row.name, "name_source": name_row.name_source, "size": len(members),
            "share": round(len(members) / total, 4), "videos": members.video_id.nunique(),
            "video_names": ", ".join(sorted(members.video_name.astype(str).unique())),
            "time_ranges": _format_ranges(ranges[ranges.label == label]),
            "representatives": [] if label == NOISE else list(members.frame_key.head(montage_frames)),
            "montage": run.relative(montage) if label != NOISE and montage.exists() else "",
        })  # fmt: skip
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _montage_path(run: RunPaths, labelling: str, label: int) -> Path:
    return run.root / "plots" / "clusters" / labelling / f"cluster_{label}.png"


def cluster_run(cfg: PipelineConfig, run: RunPaths | Path | str, *, encoder: Any = None) -> ClusterSummary:
    """The cluster stage: cluster, name, and write tables, montages and keyframes.

    Args:
        cfg: the pipeline config; `cfg.cluster` holds the settings.
        run: the run folder (`outputs/<run>`), with frames and vectors from earlier stages.
        encoder: the image encoder the frames were embedded with (loaded from `cfg.models` when
            needed and not given); only used to name clusters when there are no captions.

    Writes:
        * ``tables/clusters.parquet``: frame_key, labelling, method, params, label, name,
          name_source, distance; one row per clustered frame and labelling. Rows of this
          labelling are replaced, others kept; this labelling's rows come last.
        * ``tables/frames_annotated.parquet`` and ``.csv``: the frames table plus cluster
          (nullable int; -1 = noise) and cluster_name of this labelling.
        * ``tables/keyframes.parquet``: video_id, frame_key, timestamp, rank, represents.
        * ``plots/clusters/<labelling>/cluster_<label>.png`` and ``plots/keyframes/<video>.png``.

    Example:
        >>> summary = cluster_run(cfg, "outputs/demo")  # doctest: +SKIP
        >>> summary.counts  # doctest: +SKIP
        {'frames': 2400, 'clusters': 15, 'noise': 0, 'labelling': 'kmeans-k15-pca32', ...}
    """
    started = time.perf_counter()
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    options = cfg.cluster
    frames = read_table(run.table("frames"))
    keys, vectors, model_id = _load_cluster_vectors(run, options.vectors, encoder)
    # Vectors of frames no longer in the frames table are stale; the rest follow the frames' order.
    position = pd.Series(np.arange(len(keys)), index=keys.to_numpy())
    wanted = frames.frame_key[frames.frame_key.isin(position.index)]
    if wanted.empty:
        raise ClusterError("no frame of the frames table has a vector; re-run the embed stage")
    vectors = vectors[position.loc[wanted.to_numpy()].to_numpy()]
    members = frames.set_index("frame_key").loc[wanted.to_numpy()].reset_index()

    clusters = cluster_vectors(vectors, options)
    labelling = labelling_id(options)
    notes = list(clusters.notes)

    captions = _load_captions(run)
    caption_texts = None if captions is None else [captions.get(key) for key in members.frame_key]
    uncaptioned = caption_texts is None or any(
        not any(caption_texts[i] for i in clusters.members(label)) for label in range(clusters.n_clusters)
    )
    naming_encoder = _naming_encoder(cfg, encoder, model_id, notes) if uncaptioned and options.vectors == "image" else None
    names = name_clusters(
        clusters, captions=caption_texts, encoder=naming_encoder, thumbnails=[run.absolute(t) for t in members.thumbnail]
    )
    name_of = dict(zip(names.label, names.name))
    source_of = dict(zip(names.label, names.name_source))

    assignments = pd.DataFrame({
        "frame_key": members.frame_key.to_numpy(), "labelling": labelling, "method": clusters.method,
        "params": clusters.description, "label": clusters.labels.astype(np.int64),
        "name": [name_of[label] for label in clusters.labels], "name_source": [source_of[label] for label in clusters.labels],
        "distance": clusters.distances.astype(np.float64),
    })  # fmt: skip
    _write_assignments(run, labelling, assignments)

    annotated = frames.copy()
    by_key = assignments.set_index("frame_key")
    annotated["cluster"] = annotated.frame_key.map(by_key.label).astype("Int64")
    annotated["cluster_name"] = annotated.frame_key.map(by_key.name)
    write_table(annotated, run.table("frames_annotated"))
    atomic_write_text(run.tables / "frames_annotated.csv", annotated.to_csv(index=False))

    montages = _write_montages(run, labelling, clusters, members, options.montage_frames)
    with_distance = annotated.assign(distance=annotated.frame_key.map(by_key.distance))
    table = _summarise(with_distance, names, run, labelling, options.montage_frames)

    keyframes = video_keyframes(members, vectors, per_video=options.keyframes_per_video, seed=options.seed)
    write_table(keyframes, run.table("keyframes"))
    strips = _write_keyframe_strips(run, frames, keyframes)

    summary = ClusterSummary(
        labelling=labelling, clusters=clusters, names=names, table=table, assignments=assignments, keyframes=keyframes,
        model_id=model_id, vectors=options.vectors, montages=montages, keyframe_strips=strips, notes=notes,
        seconds=time.perf_counter() - started,
    )  # fmt: skip
    log.info("cluster: %d frames into %d clusters (%s, %d noise) in %.1f s; names from %s",
             len(assignments), clusters.n_clusters, clusters.description, clusters.noise, summary.seconds,
             summary.counts["name_source"])  # fmt: skip
    return summary


def _write_assignments(run: RunPaths, labelling: str, assignments: pd.DataFrame) -> None:
    path = run.table("clusters")
    parts = []
    if path.exists():
        previous = read_table(path)
        if "labelling" in previous.columns:
            parts.append(previous[previous.labelling != labelling].reindex(columns=CLUSTER_COLUMNS))
    parts.append(assignments[CLUSTER_COLUMNS])  # never empty: cluster_run stops earlier when nothing has a vector
    combined = pd.concat([part for part in parts if len(part)], ignore_index=True)
    write_table(combined.astype({"label": "int64", "distance": "float64"})[CLUSTER_COLUMNS], path)


def _write_montages(
    run: RunPaths, labelling: str, clusters: ClusterLabels, members: pd.DataFrame, montage_frames: int
) -> dict[int, Path]:
    folder = run.root / "plots" / "clusters" / labelling
    if folder.exists():
        for old in folder.glob("cluster_*.png"):  # a re-run with fewer clusters must not leave stale ones
            old.unlink()
    montages = {}
    for label in range(clusters.n_clusters):
        nearest = clusters.members(label)[:montage_frames]
        path = _montage_path(run, labelling, label)
        _save_png(cluster_montage(members.iloc[nearest], run), path)
        montages[label] = path
    return montages


def _write_keyframe_strips(run: RunPaths, frames: pd.DataFrame, keyframes: pd.DataFrame) -> dict[str, Path]:
    from .plots import format_time

    folder = run.root / "plots" / "keyframes"
    details = frames.set_index("frame_key")
    strips: dict[str, Path] = {}
    for video_id, group in keyframes.groupby("video_id", sort=True):
        rows = details.loc[group.frame_key.to_numpy()].reset_index()
        video_name = str(rows.video_name.iloc[0]) if "video_name" in rows.columns else str(video_id)
        labels = [f"#{rank} {format_time(t)}" for rank, t in zip(group["rank"], group.timestamp)]
        image = cluster_montage(rows, run, columns=min(len(rows), KEYFRAME_COLUMNS_PER_ROW), tile_width=KEYFRAME_TILE_WIDTH,
                                labels=labels)  # fmt: skip
        path = folder / f"{_safe_name(Path(video_name).stem)}-{video_id}.png"
        _save_png(image, path)
        strips[str(video_id)] = path
    written = set(strips.values())
    for old in folder.glob("*.png") if folder.exists() else []:
        if old not in written:  # strips of videos that left the corpus
            old.unlink()
    return strips


# --- reading stored labellings --------------------------------------------------------------------


def labellings(run: RunPaths | Path | str) -> pd.DataFrame:
    """The labellings stored in `tables/clusters.parquet`, the latest (current) last.

    Returns:
        DataFrame with labelling, method, params, frames, clusters, noise, name_source.

    Example:
        >>> labellings("outputs/demo")  # doctest: +SKIP
    """
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    table = read_table(run.table("clusters"))
    rows = []
    for labelling, group in table.groupby("labelling", sort=False):
        rows.append({
            "labelling": labelling, "method": group.method.iloc[0], "params": group.params.iloc[0], "frames": len(group),
            "clusters": int(group.label[group.label != NOISE].nunique()), "noise": int((group.label == NOISE).sum()),
            "name_source": ", ".join(sorted(set(group.name_source) - {NOISE_NAME})),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["labelling", "method", "params", "frames", "clusters", "noise", "name_source"])


def cluster_table(run: RunPaths | Path | str, labelling: str | None = None, *, montage_frames: int = 16) -> pd.DataFrame:
    """One row per cluster of a stored labelling (default: the latest), from the run's tables.

    Returns:
        DataFrame with label, name, name_source, size, share (of clustered frames), videos (how
        many), video_names, time_ranges (readable text, e.g. "one.mp4 00:00.00–00:01.50, 00:03.00"),
        representatives (frame keys nearest the centroid) and montage (PNG path relative to the
        run, "" when not drawn).

    Example:
        >>> cluster_table("outputs/demo")[["label", "name", "size", "time_ranges"]]  # doctest: +SKIP
    """
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    table = read_table(run.table("clusters"))
    if table.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    labelling = labelling or str(table.labelling.iloc[-1])
    chosen = table[table.labelling == labelling]
    if chosen.empty:
        known = ", ".join(table.labelling.unique())
        raise ClusterError(f"labelling {labelling!r} is not in this run; stored labellings: {known}")
    by_key = chosen.set_index("frame_key")
    frames = read_table(run.table("frames"))
    annotated = frames.assign(
        cluster=frames.frame_key.map(by_key.label).astype("Int64"), distance=frames.frame_key.map(by_key.distance)
    )
    names = chosen.drop_duplicates("label")[["label", "name", "name_source"]]
    names = names.assign(_noise=names.label == NOISE).sort_values(["_noise", "label"]).drop(columns="_noise")
    return _summarise(annotated, names, run, labelling, montage_frames)
