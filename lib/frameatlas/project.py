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

**Kept fits** (`fit_or_place`, used by the visualize stage): a projection is saved with the frames
it was fitted on (``cache/projection_fits/<method>.npz`` in a run). When a later run only adds a few
frames (at most `refit_new_fraction` of all frames since that fit, same parameters, same vectors for
the fitted frames, none of them removed), the old frames keep exactly their points and only the new
ones are placed: PCA by the fitted transform (the saved mean and components), UMAP and t-SNE at the
distance-weighted mean of the points of the new frame's nearest fitted frames in the original
vector space (cosine distance, `PLACEMENT_NEIGHBOURS`), over those lying beside the nearest one in the
layout (`place_near_neighbours`; t-SNE has no transform, and loading a pickled
UMAP model plus importing umap costs more than that refit saves on a few hundred frames). Placed
points are approximate: a new frame lands among the frames it resembles, not where a refit would put
it. Anything else refits every frame, as does a saved fit that cannot be read (logged).

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
import math
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import atomic_path, user_cache_dir

log = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "NUMBA_CACHE_ENV",
    "PLACEMENT_NEIGHBOURS",
    "STATS",
    "ProjectionFit",
    "SavedFit",
    "configure_numba_cache",
    "even_sample",
    "fit_or_place",
    "load_fit",
    "place_near_neighbours",
    "project",
    "projection_cache_path",
    "save_fit",
]

METHODS = ("pca", "tsne", "umap")
NUMBA_CACHE_ENV = "NUMBA_CACHE_DIR"
CACHE_FORMAT = 1  # bump when the way a projection is computed changes
TSNE_THREADED_FROM = 1000  # t-SNE on fewer points runs on one thread (see _compute)
STATS: Counter = Counter()  # "computed" and "cache_hits" of `project` in this process
FIT_FORMAT = 1  # bump when a saved fit's layout or meaning changes: older ones are then refitted
PLACEMENT_NEIGHBOURS = 10  # fitted frames whose points a new frame's UMAP / t-SNE point is averaged from


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


# --------------------------------------------------------------------------- kept fits


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def place_near_neighbours(
    old_vectors: np.ndarray, old_points: np.ndarray, new_vectors: np.ndarray, *, neighbours: int = PLACEMENT_NEIGHBOURS
) -> np.ndarray:
    """Points for `new_vectors` in the layout of (`old_vectors`, `old_points`).

    Each new vector's point is the mean of the points of its `neighbours` nearest old vectors (cosine
    distance), weighted by 1 / distance² (Shepard's inverse-distance weights), over those neighbours whose
    points lie near the nearest one's point: within the layout's typical distance from a point to its
    `neighbours`-th nearest point. t-SNE can set near-identical frames far apart; a mean over both would land
    between them, among frames the new one does not resemble. A duplicate of an old frame lands on its point.
    """
    old_points = np.asarray(old_points, dtype=np.float32)
    placed = np.zeros((len(new_vectors), old_points.shape[1]), np.float32)
    if not len(new_vectors) or not len(old_vectors):
        return placed
    old_unit, new_unit = _unit_rows(old_vectors), _unit_rows(new_vectors)
    k = min(neighbours, len(old_unit))
    radius = _neighbourhood_radius(old_points, k)
    for start in range(0, len(new_unit), 1024):  # bounded memory: 1024 x n similarities at a time
        similarity = new_unit[start : start + 1024] @ old_unit.T
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]  # most similar first; ties: the older frame
        distance = np.maximum(1.0 - np.take_along_axis(similarity, nearest, axis=1), 0.0)
        points = old_points[nearest]
        beside_nearest = np.linalg.norm(points - points[:, :1], axis=2) <= radius
        weights = np.where(beside_nearest, 1.0 / (distance**2 + 1e-12), 0.0)
        weights /= weights.sum(axis=1, keepdims=True)
        placed[start : start + 1024] = np.einsum("nk,nkd->nd", weights, points)
    return placed


def _neighbourhood_radius(points: np.ndarray, k: int, sample: int = 2000) -> float:
    """The median distance from a point of the layout to its `k`-th nearest other point (over at most `sample`
    points spread evenly over the rows): how far a point's neighbourhood reaches in this layout."""
    if len(points) < 2:
        return 0.0
    from scipy.spatial import cKDTree

    picked = points[np.linspace(0, len(points) - 1, min(sample, len(points))).astype(int)]
    reach = min(k, len(points) - 1)
    distances, _ = cKDTree(points).query(picked, k=reach + 1)  # the first is the point itself
    return float(np.median(np.atleast_2d(distances)[:, reach]))


def _digest(vectors: np.ndarray) -> str:
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    return hashlib.sha256(json.dumps(list(data.shape)).encode() + data.tobytes()).hexdigest()


@dataclass
class SavedFit:
    """A projection kept between runs: the frames it has seen and where their points are.

    `seen` holds every frame key the projection has been given, those present at the fit first
    (`seen_at_fit` of them); `keys` / `points` the frames drawn (all of `seen` below `max_points`),
    the fitted ones first (`mapped_at_fit`), then the placed ones.
    """

    identity: dict
    seen: np.ndarray
    seen_at_fit: int
    keys: np.ndarray
    points: np.ndarray
    mapped_at_fit: int
    fit_digest: str  # the fitted frames' vectors: changed vectors for the same frames mean a refit
    pca_mean: np.ndarray | None = None
    pca_components: np.ndarray | None = None


def save_fit(path: Path | str, fit: SavedFit) -> Path:
    """Write `fit` to `path` (an .npz, atomically; no pickles)."""
    arrays = {
        "identity": np.array(json.dumps(fit.identity, sort_keys=True)),
        "seen": np.asarray(fit.seen, dtype=str),
        "keys": np.asarray(fit.keys, dtype=str),
        "points": np.asarray(fit.points, dtype=np.float32),
        "counts": np.array([fit.seen_at_fit, fit.mapped_at_fit], dtype=np.int64),
        "fit_digest": np.array(fit.fit_digest),
    }
    if fit.pca_mean is not None and fit.pca_components is not None:
        arrays |= {"pca_mean": np.asarray(fit.pca_mean, np.float32), "pca_components": np.asarray(fit.pca_components, np.float32)}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return Path(path)


def load_fit(path: Path | str) -> SavedFit:
    """The fit saved at `path`; raises ValueError (or OSError) saying what is wrong with the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            identity = json.loads(str(data["identity"]))
            seen_at_fit, mapped_at_fit = (int(n) for n in data["counts"])
            fit = SavedFit(identity, data["seen"], seen_at_fit, data["keys"], data["points"], mapped_at_fit,
                           str(data["fit_digest"]), data["pca_mean"] if "pca_mean" in data else None,
                           data["pca_components"] if "pca_components" in data else None)  # fmt: skip
    except OSError:
        raise
    except Exception as error:  # a truncated zip, a missing array, bad JSON: all mean "unreadable"
        raise ValueError(f"{type(error).__name__}: {error}") from error
    if not isinstance(fit.identity, dict) or fit.seen.dtype.kind != "U" or fit.keys.dtype.kind != "U":
        raise ValueError("unexpected contents")
    if fit.points.ndim != 2 or len(fit.points) != len(fit.keys) or not np.isfinite(fit.points).all():
        raise ValueError(f"{len(fit.keys)} keys but points of shape {fit.points.shape} (or not finite)")
    if not (0 < fit.mapped_at_fit <= len(fit.keys) and fit.mapped_at_fit <= fit.seen_at_fit <= len(fit.seen)):
        raise ValueError("inconsistent frame counts")
    return fit


@dataclass
class ProjectionFit:
    """What `fit_or_place` did for one projection: the drawn frames' rows and points, and why."""

    method: str
    mode: str  # "fitted" (every drawn frame projected), "placed" (new frames put into the kept fit), "kept" (no new frames)
    rows: np.ndarray  # ascending positions, in the keys given, of the frames drawn
    points: np.ndarray  # (len(rows), dims)
    fitted_on: int  # frames the projection was fitted on
    placed: int  # frames placed by this call
    message: str
    cached: bool = False  # every point was read (the projection cache, or the kept fit with no new frames)


def _identity(method: str, dims: int, seed: int, perplexity: float, neighbors: int, max_points: int, extra: dict) -> dict:
    identity = {"format": FIT_FORMAT, "method": method, "dims": dims, "seed": seed, "max_points": max_points,
                "library": _library_version(method), **extra}  # fmt: skip
    if method == "tsne":
        identity["perplexity"] = float(perplexity)
    elif method == "umap":
        identity["neighbors"] = int(neighbors)
    return identity


def _why_refit(saved: SavedFit, identity: dict, position: dict[str, int], vectors: np.ndarray, fraction: float) -> str | None:
    """Why `saved` cannot take the current frames (None: it can)."""
    changed = [f"{key} {saved.identity.get(key)!r} -> {value!r}" for key, value in identity.items()
               if saved.identity.get(key) != value]  # fmt: skip
    if changed:
        return "changed since the fit: " + ", ".join(changed)
    at_fit = set(saved.seen[: saved.seen_at_fit].tolist())
    gone = sum(key not in position for key in at_fit | set(saved.keys[: saved.mapped_at_fit].tolist()))
    if gone:
        return f"frames of the fit removed ({gone})"
    fitted_rows = [position[key] for key in saved.keys[: saved.mapped_at_fit].tolist()]
    if _digest(vectors[fitted_rows]) != saved.fit_digest:
        return "the fitted frames' vectors changed"
    share = sum(key not in at_fit for key in position) / max(len(position), 1)
    if share > fraction:
        return f"{share:.0%} of frames new since the fit, more than refit_new_fraction {fraction:g}"
    return None


def fit_or_place(
    keys,
    vectors: np.ndarray,
    method: str,
    *,
    fit_path: Path | str,
    dims: int = 3,
    seed: int = 0,
    perplexity: float = 30.0,
    neighbors: int = 15,
    max_points: int = 20000,
    refit_new_fraction: float = 0.1,
    force: bool = False,
    cache_dir: Path | str | None = None,
    identity: dict | None = None,
    label: str | None = None,
) -> ProjectionFit:
    """Project the frames `keys` (unique, with their `vectors`) with `method`, keeping the fit saved at `fit_path`.

    Fits (through `project`, on `even_sample(len(keys), max_points, seed)`) when there is no usable
    saved fit, when `force`, when `refit_new_fraction` is 0 or when `_why_refit` says so; otherwise the
    frames the fit has not seen are placed into it (a sample of them at the fit's rate when the fit was
    sampled down to `max_points`) and every earlier point is returned unchanged. `identity` adds what
    else must match (the vectors' model). The fit is saved back whenever it changed.
    """
    if method not in METHODS:
        raise ValueError(f"projection method {method!r}: choose one of {', '.join(METHODS)}")
    keys = np.asarray([str(key) for key in keys], dtype=str)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(keys) != len(vectors) or len(set(keys.tolist())) != len(keys):
        raise ValueError(f"{len(keys)} frame keys (unique ones needed) for {len(vectors)} vectors")
    label, fit_path = label or method, Path(fit_path)
    wanted = _identity(method, dims, seed, perplexity, neighbors, max_points, identity or {})
    position = {key: row for row, key in enumerate(keys.tolist())}
    saved, reason = None, None
    if force:
        reason = "forced"
    elif refit_new_fraction <= 0:
        reason = "refit_new_fraction is 0"
    elif fit_path.exists():
        try:
            saved = load_fit(fit_path)
        except (OSError, ValueError) as error:
            log.warning("%s: the saved fit %s is unreadable (%s); fitting again", label, fit_path, error)
            reason = f"the saved fit could not be read ({error})"
    if saved is not None:
        reason = _why_refit(saved, wanted, position, vectors, refit_new_fraction) if len(keys) else "no frames"
    if saved is None or reason is not None:
        return _fit(keys, vectors, method, wanted, fit_path, dims, seed, perplexity, neighbors, max_points, cache_dir, label,
                    reason)  # fmt: skip
    return _place(saved, keys, vectors, position, method, fit_path, seed, label)


def _fit(keys, vectors, method, identity, fit_path, dims, seed, perplexity, neighbors, max_points, cache_dir, label, reason):
    rows = even_sample(len(keys), max_points, seed)
    hits = STATS["cache_hits"]
    points = project(vectors[rows], method, dims=dims, seed=seed, perplexity=perplexity, neighbors=neighbors, cache_dir=cache_dir)
    cached = STATS["cache_hits"] > hits
    mean = components = None
    if method == "pca" and len(rows) >= 3:  # PCA places new frames by its own transform: keep it
        from sklearn.decomposition import PCA

        model = PCA(n_components=min(dims, len(rows), vectors.shape[1]), random_state=seed).fit(vectors[rows])
        mean, components = model.mean_, model.components_
    if len(rows):
        save_fit(fit_path, SavedFit(identity, keys, len(keys), keys[rows], points, len(rows), _digest(vectors[rows]),
                                    mean, components))  # fmt: skip
    else:
        fit_path.unlink(missing_ok=True)
    message = f"{label}: fitted on {len(rows)} frames" + (f" (refitted: {reason})" if reason else " (no earlier fit)")
    return ProjectionFit(method, "fitted", rows, points, len(rows), 0, message, cached)


def _place(saved: SavedFit, keys, vectors, position, method, fit_path, seed, label) -> ProjectionFit:
    seen = set(saved.seen.tolist())
    new_rows = np.array([row for row, key in enumerate(keys.tolist()) if key not in seen], dtype=np.int64)
    if saved.mapped_at_fit < saved.seen_at_fit and len(new_rows):  # the fit was sampled down: new frames at its rate
        share = saved.mapped_at_fit / saved.seen_at_fit
        to_place = new_rows[even_sample(len(new_rows), math.ceil(len(new_rows) * share), seed)]
    else:
        to_place = new_rows
    fitted_rows = np.array([position[key] for key in saved.keys[: saved.mapped_at_fit].tolist()], dtype=np.int64)
    fitted_points = saved.points[: saved.mapped_at_fit]
    later = [(position[key], n) for n, key in enumerate(saved.keys.tolist()) if n >= saved.mapped_at_fit and key in position]
    if method == "pca" and saved.pca_mean is not None and saved.pca_components is not None:
        placed = _pad((vectors[to_place] - saved.pca_mean) @ saved.pca_components.T, len(to_place), saved.points.shape[1])
    else:
        placed = place_near_neighbours(vectors[fitted_rows], fitted_points, vectors[to_place])
    later_rows = np.array([row for row, _ in later], dtype=np.int64)
    later_points = saved.points[[n for _, n in later]] if later else np.zeros((0, saved.points.shape[1]), np.float32)
    rows = np.concatenate([fitted_rows, later_rows, to_place])
    points = np.concatenate([fitted_points, later_points, placed]).astype(np.float32)
    still_seen = [key for key in saved.seen[saved.seen_at_fit :].tolist() if key in position]
    dropped = len(saved.seen) - saved.seen_at_fit - len(still_seen)
    if len(new_rows) or dropped:
        updated = SavedFit(saved.identity, np.concatenate([saved.seen[: saved.seen_at_fit], np.asarray(still_seen, str),
                                                           keys[new_rows]]).astype(str),
                           saved.seen_at_fit, keys[rows], points, saved.mapped_at_fit, saved.fit_digest, saved.pca_mean,
                           saved.pca_components)  # fmt: skip
        save_fit(fit_path, updated)
    order = np.argsort(rows, kind="stable")
    since = len(later_rows)
    if len(to_place):
        message = (f"{label}: placed {len(to_place)} new frames into the projection fitted on {saved.mapped_at_fit} frames"
                   + (f" ({since} placed by earlier runs)" if since else "")
                   + (", by its transform" if method == "pca" and saved.pca_mean is not None
                      else f", each at the weighted mean of its {PLACEMENT_NEIGHBOURS} nearest fitted frames"))  # fmt: skip
        mode = "placed"
    else:
        message = f"{label}: no new frames; the points of the projection fitted on {saved.mapped_at_fit} frames are kept"
        message += f" ({since} placed since)" if since else ""
        mode = "kept"
    return ProjectionFit(method, mode, rows[order], points[order], saved.mapped_at_fit, len(to_place), message, mode == "kept")
