"""Encoders by kind, each loaded once per process, and only when used (`lazy.py`).

* image-text: CLIP through open_clip (`clip.py`), or the weight-free colour/texture
  descriptor (`fallback.py`) when the config allows falling back;
* sentence: sentence-transformers (default all-MiniLM-L6-v2) or the Universal Sentence
  Encoder (`sentence.py`);
* on-screen text: RapidOCR with the weights inside its package (`ocr.py`).

What actually loaded is described by each encoder's `record` (a `ModelRecord`), which the
stages copy into the run manifest.

Example:
    >>> from frameatlas.config import ModelsConfig
    >>> from frameatlas.models import image_encoder
    >>> encoder = image_encoder(ModelsConfig())  # doctest: +SKIP
    >>> encoder.record.model_id  # doctest: +SKIP
    'clip-ViT-B-32-laion2b_s34b_b79k'
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .base import ImageEncoder, ModelRecord, ModelUnavailable, TextEncoder, l2_normalise
from .clip import ClipSource, model_id_for
from .fallback import FALLBACK_MODEL_ID, ColourTextureEncoder
from .lazy import LazyImageEncoder, LazyTextEncoder, RecordCache, TextVectorCache, environment_key, file_stamp

log = logging.getLogger(__name__)

__all__ = [
    "FALLBACK_MODEL_ID",
    "ColourTextureEncoder",
    "ImageEncoder",
    "LazyImageEncoder",
    "LazyTextEncoder",
    "ModelRecord",
    "ModelUnavailable",
    "TextEncoder",
    "clear_loaded",
    "image_encoder",
    "l2_normalise",
    "loaded_encoders",
    "text_encoder",
    "weights_available",
]

_LOADED: dict[tuple, Any] = {}
CLIP_FEATURES = ["text-to-image search", "CLIP cluster naming", "CLIP captions"]


def clear_loaded() -> None:
    """Forget loaded models (tests; freeing memory)."""
    _LOADED.clear()


def loaded_encoders() -> list[Any]:
    """The encoders this process has handed out (lazy ones say whether they loaded: `.loaded`)."""
    return list(_LOADED.values())


def _weights_checksum(path: Path | None) -> str | None:
    if path is None:
        return None
    from ..files import HashCache, user_cache_dir

    cache = HashCache(user_cache_dir("weights_sha256.json"))
    digest = cache.digest_of(path.resolve())
    cache.save()
    return digest


def _resolution_key(cfg) -> str:
    from importlib import metadata

    try:
        version = metadata.version("open_clip_torch")
    except metadata.PackageNotFoundError:  # pragma: no cover - open_clip is a requirement
        version = ""
    image = cfg.image
    return json.dumps(
        ["image", image.name, image.pretrained, str(cfg.cache_dir), cfg.allow_download, environment_key(), version],
        sort_keys=True,
    )


def _missing_watch(image, cache_dir) -> list[str] | None:
    """Paths whose appearance could make missing CLIP weights available (None: unknown, do not remember)."""
    from .clip import HF_PREFIX, LOCAL_DIR_PREFIX, _looks_like_path
    from .weights import hf_cache_dir

    def hub_folder(repo: str) -> str:
        return str(hf_cache_dir(cache_dir) / f"models--{repo.replace('/', '--')}")

    name, pretrained = image.name, image.pretrained
    if name.startswith(HF_PREFIX):
        return [hub_folder(name[len(HF_PREFIX) :])]
    if name.startswith(LOCAL_DIR_PREFIX):
        return [str(Path(name[len(LOCAL_DIR_PREFIX) :]).expanduser().resolve())]
    if pretrained and (_looks_like_path(pretrained) or Path(pretrained).expanduser().exists()):
        return [str(Path(pretrained).expanduser().resolve())]
    import open_clip

    hub = (open_clip.get_pretrained_cfg(name, pretrained) or {}).get("hf_hub", "") if pretrained else ""
    if not hub:
        return None
    repo = hub.rstrip("/") if hub.endswith("/") else os.path.split(hub.rstrip("/"))[0]
    return [hub_folder(repo)]


def _resolve_image(cfg) -> tuple[str, dict[str, Any]]:
    """What the configured CLIP model resolves to, remembered per machine while still true.

    Returns (key, entry): `entry["source"]` (a found model) or `entry["missing"]` (why its weights
    cannot be had). Resolving imports open_clip (and torch), so a remembered entry is used when
    its weights file is unchanged (found) or none of the places they would appear exists (missing).
    Raises `ModelUnavailable` / `ValueError` as `resolve_open_clip` does, the first time.
    """
    from .weights import hub_offline, hub_reachable

    key = _resolution_key(cfg)
    records = RecordCache()
    entry = records.get(key)
    if entry is not None:
        if "source" in entry:
            weights = entry["source"].get("weights_file")
            if weights is None or file_stamp(weights) == entry.get("stamp"):
                return key, entry
        elif "missing" in entry:
            appeared = any(Path(path).exists() for path in entry.get("watch", []))
            if not appeared and not (entry.get("hub_check") and hub_reachable()):
                return key, entry
    from .clip import resolve_open_clip

    image = cfg.image
    try:
        source = resolve_open_clip(image.name, image.pretrained, cache_dir=cfg.cache_dir, allow_download=cfg.allow_download)
    except ModelUnavailable as error:
        watch = _missing_watch(image, cfg.cache_dir)
        entry = {"missing": error.detail, "message": str(error), "model": error.model, "looked": error.looked,
                 "watch": watch, "hub_check": cfg.allow_download and not hub_offline()}  # fmt: skip
        if watch is not None:
            records.put(key, entry)
        return key, entry
    described = {
        "model_name": source.model_name, "pretrained": source.pretrained,
        "weights_file": str(source.weights_file) if source.weights_file else None, "label": source.label,
        "preprocess": source.preprocess, "origin": source.origin,
    }  # fmt: skip
    entry = {"source": described, "stamp": file_stamp(source.weights_file)}
    records.put(key, entry)
    return key, entry


def _clip_source(described: dict[str, Any]) -> ClipSource:

    weights = described.get("weights_file")
    return ClipSource(
        described["model_name"], described.get("pretrained"), Path(weights) if weights else None, described["label"],
        dict(described.get("preprocess") or {}), described.get("origin", "tag"),
    )  # fmt: skip


def image_encoder(cfg) -> ImageEncoder:
    """The image(-text) encoder for `cfg` (a `ModelsConfig`), one per process.

    CLIP comes back as a `LazyImageEncoder`: its record (and banner) is known at once, from
    what this machine remembers of the model (see `frameatlas.models.lazy`); its weights load
    on the first image to encode (or text not encoded before). Falls back to the colour/texture
    descriptor only when `cfg.image.on_missing_weights` is `fallback`; the returned encoder's
    `record.fallback_reason` then says why.
    """
    image = cfg.image
    key = ("image", image.name, image.pretrained, image.on_missing_weights, cfg.device, str(cfg.cache_dir), cfg.allow_download,
           image.runtime)  # fmt: skip
    if key in _LOADED:
        return _LOADED[key]
    if image.name == "fallback":
        encoder: Any = ColourTextureEncoder()
        encoder.record.disabled_features = list(CLIP_FEATURES)
        _LOADED[key] = encoder
        return encoder
    resolution_key, entry = _resolve_image(cfg)
    if "missing" in entry:
        requested = f"{image.name}/{image.pretrained}" if image.pretrained else image.name
        if image.on_missing_weights != "fallback":
            raise ModelUnavailable(entry.get("model") or requested, list(entry.get("looked") or []), entry["missing"])
        log.warning("CLIP %s unavailable (%s); using %s, as models.image.on_missing_weights allows",
                    requested, entry["missing"], FALLBACK_MODEL_ID)  # fmt: skip
        record = ModelRecord(
            kind="image", model_id=FALLBACK_MODEL_ID, requested=requested, backend="numpy",
            fallback_reason=f"CLIP weights missing: {entry['missing']}", disabled_features=list(CLIP_FEATURES),
        )  # fmt: skip
        encoder = ColourTextureEncoder(record)
    else:
        encoder = _lazy_clip(cfg, resolution_key, entry)
        if image.runtime != "torch":  # the image tower quantized or on ONNX Runtime (models/fast_image.py)
            from .fast_image import fast_image_encoder

            encoder = fast_image_encoder(encoder, image.runtime)
    _LOADED[key] = encoder
    return encoder


def _configured_dim(model_name: str) -> int:
    """The embedding size an open_clip model config declares, read without importing open_clip when
    it is not imported yet (0: unknown until the model loads)."""
    from .clip import CONFIG_FILE, LOCAL_DIR_PREFIX

    try:
        if model_name.startswith(LOCAL_DIR_PREFIX):
            config = json.loads((Path(model_name[len(LOCAL_DIR_PREFIX) :]) / CONFIG_FILE).read_text()).get("model_cfg", {})
        elif "open_clip" in sys.modules:
            config = sys.modules["open_clip"].get_model_config(model_name) or {}
        else:
            from importlib.util import find_spec

            spec = find_spec("open_clip")
            folders = list(spec.submodule_search_locations or []) if spec else []
            config = json.loads((Path(folders[0]) / "model_configs" / f"{model_name}.json").read_text()) if folders else {}
        return int(config.get("embed_dim") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def _lazy_clip(cfg, resolution_key: str, entry: dict[str, Any]) -> LazyImageEncoder:
    source = _clip_source(entry["source"])
    known = entry.get("loaded") or {}
    if known.get("record"):
        record = ModelRecord(**known["record"])
    else:
        checksum = _weights_checksum(source.weights_file)
        model_id = model_id_for(source)
        if source.origin == "file" and checksum:
            model_id = f"{model_id}-{checksum[:8]}"  # a checkpoint the user gave: its content names it
        record = ModelRecord(
            kind="image", model_id=model_id, requested=source.label, backend="open_clip",
            weights=str(source.weights_file) if source.weights_file else None, weights_sha256=checksum,
            dim=_configured_dim(source.model_name),
        )  # fmt: skip

    def load(record: ModelRecord):
        from .clip import OpenClipEncoder
        from .device import configure_threads, pick_device

        configure_threads(cfg.threads)
        device = pick_device(cfg.device)
        log.info("loading CLIP %s on %s", source.label, device)
        return OpenClipEncoder(source, device, record)

    def remember(encoder) -> None:
        RecordCache().put(
            resolution_key, {**entry, "loaded": {"record": encoder.record.as_dict(), "input_key": encoder.input_key}}
        )

    text_cache = None
    if source.origin != "random":  # random weights differ at every load: nothing to remember
        text_cache = TextVectorCache(f"{record.model_id}:{record.weights_sha256 or ''}")
    input_key = known["input_key"] if "input_key" in known else False
    return LazyImageEncoder(record, load, input_key=input_key, text_cache=text_cache, on_loaded=remember)


def weights_available(cfg) -> str:
    """Where the configured image model's weights are, or why they are not (cheap: no loading,
    and no import of open_clip while this machine remembers the answer and it still holds)."""
    if cfg.image.name == "fallback":
        return "fallback"
    try:
        _, entry = _resolve_image(cfg)
    except ModelUnavailable as error:
        return f"missing: {error.detail}"
    except ValueError as error:
        return f"invalid: {error}"
    if "missing" in entry:
        return f"missing: {entry['missing']}"
    return str(entry["source"].get("weights_file") or entry["source"]["label"])


def text_encoder(cfg) -> TextEncoder:
    """The sentence encoder for `cfg` (a `ModelsConfig`), one per process.

    A sentence-transformers model comes back as a `LazyTextEncoder`: found on disk now (so a
    missing model fails here, as before), loaded on the first text not encoded before.
    """
    from .sentence import USE_NAMES, load_sentence_encoder, resolve_sentence_model, sentence_model_id

    name = cfg.text.name
    key = ("text", name, cfg.device, str(cfg.cache_dir), cfg.allow_download)
    if key in _LOADED:
        return _LOADED[key]

    def load(record: ModelRecord | None = None):
        from .device import configure_threads, pick_device

        configure_threads(cfg.threads)
        return load_sentence_encoder(
            name, device=pick_device(cfg.device), batch_size=cfg.text.batch_size,
            cache_dir=cfg.cache_dir, allow_download=cfg.allow_download,
        )  # fmt: skip

    if name in USE_NAMES or name.startswith(("https://", "http://")):
        _LOADED[key] = load()
        return _LOADED[key]
    location = resolve_sentence_model(name, cache_dir=cfg.cache_dir, allow_download=cfg.allow_download)
    marker = next((Path(location) / f for f in ("modules.json", "config.json") if (Path(location) / f).is_file()), None)
    resolution_key = json.dumps(["text", name, location, file_stamp(marker), environment_key()], sort_keys=True)
    records = RecordCache()
    known = (records.get(resolution_key) or {}).get("record")
    record = ModelRecord(**known) if known else ModelRecord(
        kind="text", model_id=sentence_model_id(name), requested=name, backend="sentence-transformers", weights=location,
    )  # fmt: skip
    text_cache = TextVectorCache(f"{record.model_id}:{location}:{file_stamp(marker)}") if marker else None
    _LOADED[key] = LazyTextEncoder(
        record, load, text_cache=text_cache,
        on_loaded=lambda encoder: records.put(resolution_key, {"record": encoder.record.as_dict()}),
    )  # fmt: skip
    return _LOADED[key]
