"""`manifest.json`: what a run is made of (config, versions, models that ran, per-stage
timings, counts and skipped inputs). Only the runner writes it, under the run's lock.

Example:
    >>> from frameatlas.pipeline.manifest import merge_models
    >>> manifest = {"models": [{"kind": "ocr", "model_id": "old"}]}
    >>> merge_models(manifest, [{"kind": "image", "model_id": "clip"}], owned=("ocr",))
    >>> [m["kind"] for m in manifest["models"]]
    ['image']
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
from importlib import metadata
from typing import Any

from .. import __version__
from ..files import atomic_write_json
from ..store import RunPaths
from .registry import stage_order

log = logging.getLogger(__name__)

__all__ = ["load_manifest", "merge_models", "now", "package_versions", "write_manifest"]


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def load_manifest(run: RunPaths) -> dict[str, Any]:
    if run.manifest.exists():
        try:
            return json.loads(run.manifest.read_text())
        except ValueError:
            log.warning("%s is not valid JSON; starting a new manifest", run.manifest)
    return {}


def write_manifest(run: RunPaths, manifest: dict[str, Any]) -> None:
    manifest["updated"] = now()
    stages = manifest.setdefault("stages", {})  # in pipeline order, also for runs made before a stage existed
    ordered = sorted(stages.items(), key=lambda item: stage_order(item[0]))
    stages.clear()  # in place: the runner holds this dict
    stages.update(ordered)
    manifest["skipped_inputs"] = [item for entry in stages.values() for item in entry.get("skipped", [])]
    atomic_write_json(run.manifest, manifest)


def merge_models(manifest: dict[str, Any], records: list[dict[str, Any]], owned: tuple[str, ...] = ()) -> None:
    """Replace the manifest's models of the kinds in `records` (and of the kinds a stage `owned`)."""
    kinds = {record["kind"] for record in records} | set(owned)
    manifest["models"] = [m for m in manifest.get("models", []) if m.get("kind") not in kinds] + records


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform(), "frameatlas": __version__}
    for package in ("av", "numpy", "pandas", "pyarrow", "pillow", "papermill", "nbconvert", "scenedetect", "pydantic"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    try:
        import av

        versions["ffmpeg_libavcodec"] = ".".join(map(str, av.library_versions["libavcodec"]))
    except Exception:  # pragma: no cover - informative only
        pass
    return versions
