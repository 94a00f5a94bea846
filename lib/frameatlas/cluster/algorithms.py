"""Clustering as arrays in, labels out: KMeans (k given or chosen by silhouette), HDBSCAN, an
optional PCA/UMAP reduction first, and keyframes per video. Nothing here reads or writes a run.

Example:
    >>> import numpy as np
    >>> from frameatlas.config import ClusterConfig
    >>> clusters = cluster_vectors(np.eye(4)[[0, 0, 1, 1]] + 0.01, ClusterConfig(k=2, reduce="none"))
    >>> clusters.labels.tolist()
    [0, 0, 1, 1]
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..config import ClusterConfig
from ..models.base import l2_normalise

log = logging.getLogger(__name__)

__all__ = [
    "KEYFRAME_COLUMNS",
    "NOISE",
    "ClusterError",
    "ClusterLabels",
    "cluster_vectors",
    "FittedSpace",
    "labelling_id",
    "place_vectors",
    "video_keyframes",
]

NOISE = -1  # HDBSCAN's label for frames that belong to no cluster
KMEANS_N_INIT = 10  # fixed (not sklearn's "auto") so results do not change with the library version
KEYFRAME_N_INIT = 4  # per-video fits are many and small; fewer restarts keep the stage quick
SILHOUETTE_SAMPLE = 5000  # silhouette is O(n^2): score a fixed random sample beyond this size
KEYFRAME_COLUMNS = ["video_id", "frame_key", "timestamp", "rank", "represents"]


class ClusterError(ValueError):
    """Clustering that cannot run; the message says what is missing and how to get it."""


@dataclass
class FittedSpace:
    """What placing new vectors into a k-means clustering needs, as plain arrays (no pickled model).

    Attributes:
        centres: (m, d) the k-means centres in the space k-means ran in, row = final label.
        pca_mean: (dim,) the PCA mean, or None when k-means ran on the vectors themselves.
        pca_components: (d, dim) the PCA axes (no whitening), or None.
    """

    centres: np.ndarray
    pca_mean: np.ndarray | None = None
    pca_components: np.ndarray | None = None

    def transform(self, unit_vectors: np.ndarray) -> np.ndarray:
        """Unit vectors into the space k-means ran in (what PCA.transform does)."""
        if self.pca_mean is None or self.pca_components is None:
            return unit_vectors
        return (unit_vectors - self.pca_mean) @ self.pca_components.T


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
        fitted: the reduction and centres new vectors can be placed with (`place_vectors`); None for
            HDBSCAN and UMAP, whose fitted models cannot be kept as plain arrays.

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
    fitted: FittedSpace | None = None

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
    space, reduction, reduce_dims, pca = _reduce(data, cfg, notes)
    model = None
    if cfg.method == "kmeans":
        raw_labels, params, silhouette, model = _kmeans(space, cfg, notes)
    else:
        raw_labels, params = _hdbscan(space, cfg, notes)
        silhouette = {}
    labels = _relabel_by_size(raw_labels)
    centroids = _centroids(data, labels)
    distances = _distances(data, labels, centroids)
    params.update(reduce=cfg.reduce, reduce_dims=reduce_dims, seed=cfg.seed)
    fitted = None
    if model is not None and reduction.startswith(("pca", "none")):
        fitted = _fitted_space(model, raw_labels, labels, pca)
    for note in notes:
        log.info("cluster: %s", note)
    return ClusterLabels(labels=labels, centroids=centroids, distances=distances, method=cfg.method, params=params,
                         reduction=reduction, silhouette=silhouette, notes=notes, fitted=fitted)  # fmt: skip


def _fitted_space(model: Any, raw_labels: np.ndarray, labels: np.ndarray, pca: Any) -> FittedSpace | None:
    """The k-means centres in final-label order (centres left without members are dropped, as their numbers are)."""
    raw_labels = np.asarray(raw_labels, dtype=np.int64)
    count = int(labels.max()) + 1 if len(labels) else 0
    centres = np.zeros((count, model.cluster_centers_.shape[1]), dtype=np.float64)
    for raw, final in {int(r): int(f) for r, f in zip(raw_labels, labels)}.items():
        centres[final] = model.cluster_centers_[raw]
    if pca is None:
        return FittedSpace(centres=centres)
    return FittedSpace(centres=centres, pca_mean=np.asarray(pca.mean_, dtype=np.float64),
                       pca_components=np.asarray(pca.components_, dtype=np.float64))  # fmt: skip


def place_vectors(vectors: np.ndarray, fitted: FittedSpace, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and cosine distances of new vectors in an existing k-means clustering, which stays as it is.

    Each vector goes to its nearest k-means centre in the space k-means ran in (what `KMeans.predict`
    does, after the same PCA); its distance is to that cluster's centroid in the original space, as
    for the fitted vectors.

    Example:
        >>> clusters = cluster_vectors(np.eye(4)[[0, 0, 1, 1]] + 0.01, ClusterConfig(k=2, reduce="none"))
        >>> place_vectors(np.eye(4)[[1]], clusters.fitted, clusters.centroids)[0].tolist() == [clusters.labels[2]]
        True
    """
    data = l2_normalise(np.asarray(vectors, dtype=np.float32))
    if data.ndim != 2 or data.shape[1] != centroids.shape[1]:
        raise ClusterError(f"cannot place vectors of shape {data.shape} into a clustering of {centroids.shape[1]}-dim vectors")
    space = fitted.transform(data.astype(np.float64))
    squared = ((space[:, None, :] - fitted.centres[None, :, :]) ** 2).sum(axis=2)
    labels = squared.argmin(axis=1).astype(np.int64)
    return labels, _distances(data, labels, centroids)


def _reduce(data: np.ndarray, cfg: ClusterConfig, notes: list[str]) -> tuple[np.ndarray, str, int | None, Any]:
    """(the space to cluster in, its name, its dims, the fitted PCA or None)."""
    if cfg.reduce == "none":
        return data, "none", None, None
    n, dim = data.shape
    # More components than points-1 (or than the vectors have) carry no information.
    dims = min(cfg.reduce_dims, dim, n - 1)
    if cfg.reduce == "umap":
        dims = min(dims, n - 2)  # UMAP's spectral initialisation needs n_components < n - 1
    if dims < 2 or (cfg.reduce == "pca" and dims >= dim):
        notes.append(f"{cfg.reduce} to {cfg.reduce_dims} dims skipped: {n} vectors of {dim} dims are too few to reduce")
        return data, "none", None, None
    if dims < cfg.reduce_dims:
        notes.append(f"{cfg.reduce} to {dims} dims instead of {cfg.reduce_dims}: only {n} vectors of {dim} dims")
    if cfg.reduce == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=dims, random_state=cfg.seed)
        return pca.fit_transform(data), f"pca{dims}", dims, pca
    # Imported only here: umap's numba compilation costs tens of seconds on first use.
    import umap

    reducer = umap.UMAP(
        n_components=dims, n_neighbors=max(2, min(15, n - 1)), min_dist=0.0, metric="cosine",
        random_state=cfg.seed, n_jobs=1,  # a seed makes UMAP single-threaded anyway; saying so avoids its warning
    )  # fmt: skip
    return np.asarray(reducer.fit_transform(data), dtype=np.float32), f"umap{dims}", dims, None


def _fit_kmeans(space: np.ndarray, k: int, seed: int, n_init: int = KMEANS_N_INIT):
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # Duplicate vectors (a frozen picture) can leave fewer distinct clusters than k; the
        # labels are still right, and relabelling removes the empty numbers.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(space)


def _kmeans(space: np.ndarray, cfg: ClusterConfig, notes: list[str]) -> tuple[np.ndarray, dict, dict[int, float], Any]:
    """(labels, params, silhouette per k, the fitted KMeans or None)."""
    n = len(space)
    if cfg.k is not None:
        k = min(cfg.k, n)
        if k < cfg.k:
            notes.append(f"k={cfg.k} is more than the {n} vectors; using k={k}")
        model = _fit_kmeans(space, k, cfg.seed)
        return model.labels_, {"k": k, "k_chosen_by": "config", "n_init": KMEANS_N_INIT}, {}, model

    from sklearn.metrics import silhouette_score

    low, high = cfg.k_range
    params: dict[str, Any] = {"k_chosen_by": "silhouette", "k_range": [low, high], "n_init": KMEANS_N_INIT}
    candidates = range(max(low, 2), min(high, n - 1) + 1)  # silhouette needs 2 <= k <= n-1
    if not candidates:
        k = max(1, min(low, n))
        notes.append(f"k_range {low}-{high} does not fit {n} vectors; using k={k} without silhouette")
        model = _fit_kmeans(space, k, cfg.seed)
        return model.labels_, {**params, "k": k, "k_chosen_by": "fallback"}, {}, model
    if candidates[-1] < high:
        notes.append(f"k_range {low}-{high} clipped to {candidates[0]}-{candidates[-1]} for {n} vectors")
    # The same random sample for every k keeps the scores comparable.
    sample = SILHOUETTE_SAMPLE if n > SILHOUETTE_SAMPLE else None
    scores: dict[int, float] = {}
    best_k, best_model = None, None
    for k in candidates:
        model = _fit_kmeans(space, k, cfg.seed)
        if len(np.unique(model.labels_)) < 2:
            continue
        scores[k] = float(silhouette_score(space, model.labels_, sample_size=sample, random_state=cfg.seed))
        if best_k is None or scores[k] > scores[best_k]:
            best_k, best_model = k, model
    if best_k is None:  # every fit collapsed to one cluster (all vectors identical)
        notes.append("all vectors are identical; one cluster")
        return np.zeros(n, dtype=np.int64), {**params, "k": 1, "k_chosen_by": "fallback"}, scores, None
    return best_model.labels_, {**params, "k": best_k}, scores, best_model


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


# --- keyframes ----------------------------------------------------------------------------------


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
