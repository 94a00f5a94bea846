"""`manifest.json`: what a run is made of (config, versions, models that ran with the SHA-256 of
their weights, per-stage timings, counts and skipped inputs, and every invocation of the runner
with its time). Only the runner writes it, under the run's lock.

Example:
    >>> from frameatlas.pipeline.manifest import merge_models
    >>> manifest = {"models": [{"kind": "ocr", "model_id": "old"}]}
    >>> merge_models(manifest, [{"kind": "image", "model_id": "clip"}], owned=("ocr",))
    >>> [m["kind"] for m in manifest["models"]]
    ['image']
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__
from ..files import HashCache, atomic_write_json, user_cache_dir
from ..store import RunPaths
from .registry import stage_order

log = logging.getLogger(__name__)

__all__ = [
    "ML_LIBRARIES",
    "load_manifest",
    "mark_outdated",
    "merge_models",
    "now",
    "package_versions",
    "record_invocation",
    "weights_digest",
    "with_weight_hashes",
    "write_manifest",
]

#: Libraries whose version changes results (models, indexes, clustering, projections, decoding),
#: recorded when installed, besides every installed requirement of frameatlas itself.
ML_LIBRARIES = (
    "torch", "torchvision", "open-clip-torch", "sentence-transformers", "transformers", "tokenizers",
    "safetensors", "huggingface-hub", "clip-interrogator", "chromadb", "faiss-cpu", "scikit-learn",
    "umap-learn", "hdbscan", "numba", "pynndescent", "scipy", "onnxruntime", "openvino", "rapidocr-onnxruntime",
    "opencv-python-headless", "faster-whisper", "ctranslate2", "tensorflow", "tensorflow-hub",
    "av", "imageio-ffmpeg", "scenedetect", "plotly", "numpy", "pandas", "pyarrow", "pillow",
    "papermill", "nbconvert", "pydantic",
)  # fmt: skip
MAX_INVOCATIONS = 200  # invocations kept in the manifest's history (the cumulative time counts them all)


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
    mark_outdated(stages)
    atomic_write_json(run.manifest, manifest)


def mark_outdated(stages: dict[str, dict[str, Any]]) -> None:
    """Flag stages whose results were made before an earlier stage's latest results.

    After a partial re-run (`--stages embed`, say) the later stages still hold results made from
    the older inputs; their entry gets `outdated_by` (the earlier stage) until they run again.
    `stages` must be in pipeline order. ISO timestamps in UTC compare as strings.

    Example:
        >>> stages = {"extract": {"status": "done", "finished": "2026-01-01T10:05:00+00:00"},
        ...           "cluster": {"status": "unchanged", "finished": "2026-01-01T10:01:00+00:00"}}
        >>> mark_outdated(stages)
        >>> stages["cluster"]["outdated_by"]
        'extract'
    """
    newest_stage, newest = None, ""
    for name, entry in stages.items():
        entry.pop("outdated_by", None)
        finished = entry.get("finished") or ""
        if entry.get("status") not in {"done", "unchanged"} or not finished:
            continue
        if newest_stage and finished < newest:
            entry["outdated_by"] = newest_stage
        if finished > newest:
            newest_stage, newest = name, finished


def record_invocation(manifest: dict[str, Any], started: str, seconds: float, ran: list[str], exit_code: int) -> None:
    """Add one invocation of the runner: its time, the stages it executed, and its exit code.

    `last_invocation_seconds` is this invocation's wall time; `cumulative_seconds` adds every
    invocation of the run folder (runs made before this key existed count from their last one).

    Example:
        >>> manifest = {}
        >>> record_invocation(manifest, "2026-01-01T10:00:00+00:00", 60.0, ["extract"], 0)
        >>> record_invocation(manifest, "2026-01-01T11:00:00+00:00", 2.5, [], 0)
        >>> manifest["cumulative_seconds"], manifest["last_invocation_seconds"], len(manifest["invocations"])
        (62.5, 2.5, 2)
    """
    history = manifest.setdefault("invocations", [])
    previous = manifest.get("cumulative_seconds")
    if previous is None:  # a manifest from before invocations were recorded
        previous = manifest.pop("total_seconds", 0.0) or 0.0
    manifest.pop("total_seconds", None)
    history.append({"started": started, "finished": now(), "seconds": round(seconds, 3), "ran": ran, "exit_code": exit_code})
    del history[:-MAX_INVOCATIONS]
    manifest["last_invocation_seconds"] = round(seconds, 3)
    manifest["cumulative_seconds"] = round(previous + seconds, 3)


def weights_digest(path: Path | str, cache: HashCache | None = None) -> str:
    """SHA-256 of a weights file, or of a weights folder: the digest of its files' relative
    paths and digests, in path order (`__pycache__` aside), so a folder of shards has one id."""
    path = Path(path).resolve()
    cache = cache or HashCache(None)
    if path.is_file():
        return cache.digest_of(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(f"{file.relative_to(path).as_posix()}\0{cache.digest_of(file.resolve())}\n".encode())
    return digest.hexdigest()


def with_weight_hashes(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`records` with `weights_sha256` filled in for every model whose weights are a local file
    or folder (text, OCR, caption, speech models: the image model's loader hashes its own).
    Digests are cached per file (path, size, mtime) in the user's cache, so this is cheap."""
    cache = HashCache(user_cache_dir("weights_sha256.json"))
    filled = []
    for record in records:
        weights = record.get("weights")
        if weights and not record.get("weights_sha256") and not re.match(r"^[a-z]+://", str(weights)):
            location = Path(weights).expanduser()
            if location.exists():
                try:
                    record = {**record, "weights_sha256": weights_digest(location, cache)}
                except OSError as error:
                    log.warning("cannot hash the weights of %s at %s: %s", record.get("model_id"), location, error)
        filled.append(record)
    cache.save()
    return filled


def merge_models(manifest: dict[str, Any], records: list[dict[str, Any]], owned: tuple[str, ...] = ()) -> None:
    """Replace the manifest's models of the kinds in `records` (and of the kinds a stage `owned`)."""
    kinds = {record["kind"] for record in records} | set(owned)
    manifest["models"] = [m for m in manifest.get("models", []) if m.get("kind") not in kinds] + records


def _requirement_names() -> list[str]:
    """Names of frameatlas's own requirements (not the extras': the ML ones are in `ML_LIBRARIES`)."""
    try:
        requirements = metadata.requires("frameatlas") or []
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return []
    return [
        re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0] for requirement in requirements if "extra ==" not in requirement
    ]


def package_versions() -> dict[str, str]:
    """Python, platform, frameatlas and every installed library that can change a result."""
    versions = {"python": platform.python_version(), "platform": platform.platform(), "frameatlas": __version__}
    for package in sorted(set(ML_LIBRARIES) | set(_requirement_names()), key=str.lower):
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
