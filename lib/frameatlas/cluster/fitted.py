"""A labelling's saved k-means fit, so a re-run can place a few new frames into it instead of fitting anew.

The fit is kept as plain arrays in ``cache/cluster/<labelling>.npz`` (read with
``allow_pickle=False``: a run folder may come from someone else, and no pickled model from it is
ever loaded): the PCA mean and axes, the k-means centres (row = cluster label), the centroids in
the vectors' own space, the frames it labels with a digest of their vectors, and what it was
fitted with (parameters, model id). It is written through the one atomic writer; a file that
cannot be read or does not hold what is expected is reported as `FitUnreadable`, and the stage
then fits anew.

Example:
    >>> saved = load_fit(run, "kmeans-k15-pca32")  # doctest: +SKIP
    >>> saved.fit_frames, len(saved.keys)  # doctest: +SKIP
    (679, 691)
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ClusterConfig
from ..files import atomic_path
from ..store import RunPaths
from .algorithms import FittedSpace

__all__ = ["FIT_PARAMETERS", "FitUnreadable", "SavedFit", "fit_parameters", "fit_path", "load_fit", "save_fit", "vectors_digest"]

STATE_VERSION = 1
# The settings a clustering depends on (montage, keyframe and refit settings do not change it).
FIT_PARAMETERS = ("method", "k", "k_range", "min_cluster_size", "reduce", "reduce_dims", "vectors", "seed")


class FitUnreadable(ValueError):
    """A saved fit that cannot be used; the message says why (the stage fits anew)."""


def fit_parameters(options: ClusterConfig) -> dict[str, Any]:
    """The clustering settings a fit depends on, as JSON-ready values."""
    values = {name: getattr(options, name) for name in FIT_PARAMETERS}
    return json.loads(json.dumps(values))  # tuples become lists, as they come back from the file


def fit_path(run: RunPaths, labelling: str) -> Path:
    return run.cache / "cluster" / f"{labelling}.npz"


def vectors_digest(keys: np.ndarray, vectors: np.ndarray) -> str:
    """A digest of frame keys and their vectors (float32), in key order: tells whether a fitted frame's vector changed."""
    order = np.argsort(keys, kind="stable")
    digest = hashlib.sha256()
    for key in np.asarray(keys)[order]:
        digest.update(str(key).encode() + b"\0")
    digest.update(np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[order]).tobytes())
    return digest.hexdigest()


@dataclass
class SavedFit:
    """A labelling's k-means fit and the frames it labels (those it was fitted on, then those placed into it)."""

    labelling: str
    model_id: str
    parameters: dict[str, Any]  # `fit_parameters` of the config it was fitted with
    fitted: FittedSpace
    centroids: np.ndarray  # (m, dim) unit vectors, row = label
    keys: np.ndarray  # frame keys it labels
    fit_frames: int  # how many of `keys` (the first ones) it was fitted on
    digest: str  # `vectors_digest` of `keys` and their vectors
    description: dict[str, Any] = field(default_factory=dict)  # ClusterLabels' params, reduction, silhouette

    @property
    def placed_frames(self) -> int:
        return len(self.keys) - self.fit_frames


def save_fit(run: RunPaths, saved: SavedFit) -> Path:
    """Write the fit to ``cache/cluster/<labelling>.npz`` atomically."""
    path = fit_path(run, saved.labelling)
    meta = {"version": STATE_VERSION, "labelling": saved.labelling, "model_id": saved.model_id,
            "parameters": saved.parameters, "fit_frames": saved.fit_frames, "digest": saved.digest,
            "description": saved.description}  # fmt: skip
    arrays = {"meta": np.array(json.dumps(meta, default=str)), "centres": saved.fitted.centres, "centroids": saved.centroids,
              "keys": np.asarray(saved.keys, dtype=str)}  # fmt: skip
    if saved.fitted.pca_mean is not None:
        arrays.update(pca_mean=saved.fitted.pca_mean, pca_components=saved.fitted.pca_components)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: np.savez would add ".npz" to a name
        np.savez(handle, **arrays)
    return path


def load_fit(run: RunPaths, labelling: str) -> SavedFit | None:
    """The saved fit of `labelling`, or None when there is none.

    Raises:
        FitUnreadable: the file exists but cannot be read, is of another version, or its arrays
            do not fit together.
    """
    path = fit_path(run, labelling)
    if not path.exists():
        return None
    where = run.relative(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        meta = json.loads(str(arrays["meta"].item()))
        if not isinstance(meta, dict) or meta.get("version") != STATE_VERSION:
            raise FitUnreadable(f"{where}: saved by another version of frameatlas (state version {meta.get('version')!r})")
        centres = np.asarray(arrays["centres"], dtype=np.float64)
        centroids = np.asarray(arrays["centroids"], dtype=np.float32)
        keys = np.asarray(arrays["keys"]).astype(str)
        mean = arrays.get("pca_mean")
        components = arrays.get("pca_components")
        fit_frames = int(meta["fit_frames"])
        saved = SavedFit(
            labelling=str(meta["labelling"]), model_id=str(meta["model_id"]), parameters=dict(meta["parameters"]),
            fitted=FittedSpace(centres=centres, pca_mean=None if mean is None else np.asarray(mean, dtype=np.float64),
                               pca_components=None if components is None else np.asarray(components, dtype=np.float64)),
            centroids=centroids, keys=keys, fit_frames=fit_frames, digest=str(meta["digest"]),
            description=dict(meta.get("description") or {}),
        )  # fmt: skip
    except FitUnreadable:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
        raise FitUnreadable(f"{where}: cannot be read ({type(error).__name__}: {error})") from None
    _check_shapes(saved, where)
    return saved


def _check_shapes(saved: SavedFit, where: str) -> None:
    centres, centroids, fitted = saved.fitted.centres, saved.centroids, saved.fitted
    problems = []
    if centres.ndim != 2 or centroids.ndim != 2 or len(centres) != len(centroids) or len(centres) == 0:
        problems.append(f"centres {centres.shape} and centroids {centroids.shape} do not match")
    elif fitted.pca_mean is not None:
        if fitted.pca_components is None or fitted.pca_components.shape != (centres.shape[1], centroids.shape[1]):
            problems.append("the PCA axes do not match the centres")
        elif fitted.pca_mean.shape != (centroids.shape[1],):
            problems.append("the PCA mean does not match the centroids")
    elif centres.shape[1] != centroids.shape[1]:
        problems.append("centres and centroids are in different spaces without a PCA")
    if not 0 < saved.fit_frames <= len(saved.keys) or len(set(saved.keys.tolist())) != len(saved.keys):
        problems.append("its frame list is inconsistent")
    if saved.labelling != Path(where).stem:
        problems.append(f"it holds labelling {saved.labelling!r}")
    if problems:
        raise FitUnreadable(f"{where}: " + "; ".join(problems))
