"""Frame vectors projected to 3D for the maps: PCA, t-SNE or UMAP, cached on disk.

* ``pca``: scikit-learn PCA (instant);
* ``tsne``: scikit-learn t-SNE, ``init="pca"``, perplexity clipped below the number of points
  (3D Barnes-Hut is slow: ~10 s for 2,000 points, minutes for tens of thousands, on two cores);
* ``umap``: umap-learn, cosine metric, imported only when asked for.

UMAP is numba code compiled on first use in every new process (~60 s here). Before umap is
imported, `NUMBA_CACHE_DIR` is pointed at a persistent folder (``~/.cache/frameatlas/numba``, or
under ``$XDG_CACHE_HOME``, unless already set) and caching is switched on for umap's own jitted functions (umap-learn
only caches a few of them), so later processes load compiled code instead (~5 s).

Results are cached per (vectors digest, method, parameters, library version) as
``<cache_dir>/<method>-<key>.npy``: re-running a notebook does not recompute them.

Example:
    >>> import numpy as np
    >>> from frameatlas.project import project
    >>> points = project(np.eye(8, dtype=np.float32), "pca")
    >>> points.shape
    (8, 3)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from .files import atomic_path, user_cache_dir

log = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "NUMBA_CACHE_ENV",
    "STATS",
    "configure_numba_cache",
    "even_sample",
    "project",
    "projection_cache_path",
]

METHODS = ("pca", "tsne", "umap")
NUMBA_CACHE_ENV = "NUMBA_CACHE_DIR"
CACHE_FORMAT = 1  # bump when the way a projection is computed changes
TSNE_THREADED_FROM = 1000  # t-SNE on fewer points runs on one thread (see _compute)
STATS: Counter = Counter()  # "computed" and "cache_hits" of `project` in this process


def configure_numba_cache() -> Path:
    """Point numba's cache at a persistent folder (`$NUMBA_CACHE_DIR`, else ~/.cache/frameatlas/numba)."""
    folder = os.environ.get(NUMBA_CACHE_ENV) or str(user_cache_dir("numba"))
    os.environ[NUMBA_CACHE_ENV] = folder
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as error:  # numba then compiles in memory: slower, still correct
        log.info("numba cache folder %s not usable (%s)", folder, error)
    if "numba" in sys.modules:  # numba read its config at import; functions defined from now on use this
        from numba.core import config

        config.CACHE_DIR = folder
    return Path(folder)


_UMAP_READY = False


def _import_umap():
    """umap, with its numba functions cached on disk across processes (see module docstring)."""
    global _UMAP_READY
    if _UMAP_READY:
        import umap

        return umap
    folder = configure_numba_cache()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Tensorflow not installed", category=ImportWarning)
        import umap
        import umap.umap_
    try:  # umap-learn marks few of its functions cache=True; the rest would compile in every process
        from numba.core.caching import NullCache
        from numba.core.dispatcher import Dispatcher

        for module_name in ("umap.umap_", "umap.layouts", "umap.distances", "umap.utils", "umap.spectral", "umap.sparse"):
            module = sys.modules.get(module_name)
            for obj in vars(module).values() if module else ():
                if isinstance(obj, Dispatcher) and obj.__module__ == module_name and isinstance(obj._cache, NullCache):
                    obj.enable_caching()
    except Exception as error:  # a numba internals change must not break the maps, only slow them
        log.info("could not enable numba caching for umap (%s); UMAP compiles in every process", error)
    _UMAP_READY = True
    log.info("umap imported in %.1f s (numba cache %s)", time.perf_counter() - started, folder)
    return umap


def even_sample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `max_points` of `n` rows, spread evenly over the table order.

    Frames tables are ordered by video and time, so every video keeps its share of points and
    each video is covered from start to end. The seed shifts the (random) offset of the grid.
    """
    if n <= max_points:
        return np.arange(n)
    if max_points < 1:
        return np.zeros(0, dtype=np.int64)
    stride = n / max_points
    offset = np.random.default_rng(seed).uniform(0, stride)
    indices = np.floor(offset + np.arange(max_points) * stride).astype(np.int64)
    return np.minimum(indices, n - 1)


def _effective_params(n: int, method: str, dims: int, seed: int, perplexity: float, neighbors: int) -> dict:
    params: dict = {"method": method, "dims": dims, "seed": seed}
    if method == "tsne":
        params["perplexity"] = float(min(perplexity, max(1.0, (n - 1) / 3)))  # sklearn needs perplexity < n
    elif method == "umap":
        params["neighbors"] = int(max(2, min(neighbors, n - 1)))
    return params


def _library_version(method: str) -> str:
    from importlib import metadata

    package = "umap-learn" if method == "umap" else "scikit-learn"
    try:
        return f"{package}-{metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return package


def projection_cache_path(cache_dir: Path | str, vectors: np.ndarray, params: dict) -> Path:
    """Where the projection of `vectors` with `params` is (or would be) cached."""
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_FORMAT, list(data.shape), params, _library_version(params["method"])]).encode())
    digest.update(data.tobytes())
    return Path(cache_dir) / f"{params['method']}-{digest.hexdigest()[:24]}.npy"


def _pad(points: np.ndarray, n: int, dims: int) -> np.ndarray:
    out = np.zeros((n, dims), np.float32)
    out[:, : points.shape[1]] = points[:, :dims]
    return out


def _compute(vectors: np.ndarray, params: dict) -> np.ndarray:
    """The projection itself (no cache); `params` come from `_effective_params`."""
    n = len(vectors)
    method, dims, seed = params["method"], params["dims"], params["seed"]
    if n < 3:  # nothing to lay out: a line of points
        return _pad(np.arange(n, dtype=np.float32)[:, None], n, dims)
    if method == "pca":
        from sklearn.decomposition import PCA

        components = min(dims, n, vectors.shape[1])
        return _pad(PCA(n_components=components, random_state=seed).fit_transform(vectors), n, dims)
    if method == "tsne":
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        tsne = TSNE(n_components=dims, perplexity=params["perplexity"], init="pca", random_state=seed,
                    method="barnes_hut" if dims <= 3 else "exact")  # fmt: skip
        # Below ~1000 points OpenMP's thread sync costs more than it gains, and on a busy machine it
        # is catastrophic (40 points: 0.3 s on one thread, 20+ s on two contended ones). Same result.
        with threadpool_limits(limits=1 if n < TSNE_THREADED_FROM else None, user_api="openmp"):
            return tsne.fit_transform(vectors)
    if method == "umap":
        umap = _import_umap()
        init = "spectral" if n > dims + 2 else "random"  # spectral init needs more points than dimensions
        reducer = umap.UMAP(n_components=dims, n_neighbors=params["neighbors"], metric="cosine", random_state=seed, init=init)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="n_jobs value .* overridden", category=UserWarning)  # seeded = 1 thread
            return reducer.fit_transform(vectors)
    raise ValueError(f"projection method {method!r}: choose one of {', '.join(METHODS)}")


def project(
    vectors: np.ndarray,
    method: str,
    *,
    dims: int = 3,
    seed: int = 0,
    perplexity: float = 30.0,
    neighbors: int = 15,
    cache_dir: Path | str | None = None,
) -> np.ndarray:
    """Project (n, dim) vectors to (n, dims) points with `method` (pca, tsne or umap).

    With `cache_dir`, the result is read from / written to ``<cache_dir>/<method>-<key>.npy``,
    the key covering the vectors' bytes, the effective parameters and the library version.
    The same vectors, method and seed give the same points.
    """
    if method not in METHODS:
        raise ValueError(f"projection method {method!r}: choose one of {', '.join(METHODS)}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be an (n, dim) array, got shape {vectors.shape}")
    params = _effective_params(len(vectors), method, dims, seed, perplexity, neighbors)
    cached = projection_cache_path(cache_dir, vectors, params) if cache_dir is not None else None
    if cached is not None and cached.exists():
        try:
            points = np.load(cached)
            if points.shape == (len(vectors), dims):
                log.info("%s projection of %d points read from cache %s", method, len(vectors), cached.name)
                STATS["cache_hits"] += 1
                return points
        except (OSError, ValueError) as error:
            log.info("ignoring unreadable projection cache %s (%s)", cached, error)
    started = time.perf_counter()
    log.info("%s projection of %d vectors to %dD ...", method, len(vectors), dims)
    points = np.asarray(_compute(vectors, params), dtype=np.float32)
    STATS["computed"] += 1
    log.info("%s projection of %d vectors done in %.1f s", method, len(vectors), time.perf_counter() - started)
    if cached is not None:
        with atomic_path(cached) as tmp:  # the temporary name keeps the .npy suffix, so np.save adds none
            np.save(tmp, points)
    return points
