"""Encoders by kind, each loaded once per process.

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

import logging
from pathlib import Path
from typing import Any

from .base import ImageEncoder, ModelRecord, ModelUnavailable, TextEncoder, l2_normalise
from .fallback import FALLBACK_MODEL_ID, ColourTextureEncoder

log = logging.getLogger(__name__)

__all__ = [
    "FALLBACK_MODEL_ID",
    "ColourTextureEncoder",
    "ImageEncoder",
    "ModelRecord",
    "ModelUnavailable",
    "TextEncoder",
    "clear_loaded",
    "image_encoder",
    "l2_normalise",
    "text_encoder",
    "weights_available",
]

_LOADED: dict[tuple, Any] = {}
CLIP_FEATURES = ["text-to-image search", "CLIP cluster naming", "CLIP captions"]


def clear_loaded() -> None:
    """Forget loaded models (tests; freeing memory)."""
    _LOADED.clear()


def _weights_checksum(path: Path | None) -> str | None:
    if path is None:
        return None
    from ..files import HashCache, user_cache_dir

    cache = HashCache(user_cache_dir("weights_sha256.json"))
    digest = cache.digest_of(path.resolve())
    cache.save()
    return digest


def image_encoder(cfg) -> ImageEncoder:
    """The image(-text) encoder for `cfg` (a `ModelsConfig`), loaded once per process.

    Falls back to the colour/texture descriptor only when `cfg.image.on_missing_weights` is
    `fallback`; the returned encoder's `record.fallback_reason` then says why.
    """
    from .device import configure_threads, pick_device

    image = cfg.image
    key = ("image", image.name, image.pretrained, image.on_missing_weights, cfg.device, str(cfg.cache_dir), cfg.allow_download)
    if key in _LOADED:
        return _LOADED[key]
    if image.name == "fallback":
        encoder: Any = ColourTextureEncoder()
        encoder.record.disabled_features = list(CLIP_FEATURES)
    else:
        from .clip import OpenClipEncoder, model_id_for, resolve_open_clip

        try:
            source = resolve_open_clip(
                image.name, image.pretrained, cache_dir=cfg.cache_dir, allow_download=cfg.allow_download
            )
        except ModelUnavailable as error:
            if image.on_missing_weights != "fallback":
                raise
            requested = f"{image.name}/{image.pretrained}" if image.pretrained else image.name
            log.warning("CLIP %s unavailable (%s); using %s, as models.image.on_missing_weights allows",
                        requested, error.detail, FALLBACK_MODEL_ID)  # fmt: skip
            record = ModelRecord(
                kind="image", model_id=FALLBACK_MODEL_ID, requested=requested, backend="numpy",
                fallback_reason=f"CLIP weights missing: {error.detail}", disabled_features=list(CLIP_FEATURES),
            )  # fmt: skip
            encoder = ColourTextureEncoder(record)
        else:
            configure_threads(cfg.threads)
            device = pick_device(cfg.device)
            checksum = _weights_checksum(source.weights_file)
            model_id = model_id_for(source)
            if source.origin == "file" and checksum:
                model_id = f"{model_id}-{checksum[:8]}"  # a checkpoint the user gave: its content names it
            record = ModelRecord(
                kind="image", model_id=model_id, requested=source.label, backend="open_clip",
                weights=str(source.weights_file) if source.weights_file else None, weights_sha256=checksum,
            )  # fmt: skip
            log.info("loading CLIP %s on %s", source.label, device)
            encoder = OpenClipEncoder(source, device, record)
    _LOADED[key] = encoder
    return encoder


def weights_available(cfg) -> str:
    """Where the configured image model's weights are, or why they are not (cheap: no loading)."""
    if cfg.image.name == "fallback":
        return "fallback"
    from .clip import resolve_open_clip

    try:
        source = resolve_open_clip(cfg.image.name, cfg.image.pretrained, cache_dir=cfg.cache_dir, allow_download=False)
    except ModelUnavailable as error:
        return f"missing: {error.detail}"
    except ValueError as error:
        return f"invalid: {error}"
    return str(source.weights_file or source.label)


def text_encoder(cfg) -> TextEncoder:
    """The sentence encoder for `cfg` (a `ModelsConfig`), loaded once per process."""
    from .device import configure_threads, pick_device
    from .sentence import load_sentence_encoder

    key = ("text", cfg.text.name, cfg.device, str(cfg.cache_dir), cfg.allow_download)
    if key not in _LOADED:
        configure_threads(cfg.threads)
        _LOADED[key] = load_sentence_encoder(
            cfg.text.name, device=pick_device(cfg.device), batch_size=cfg.text.batch_size,
            cache_dir=cfg.cache_dir, allow_download=cfg.allow_download,
        )  # fmt: skip
    return _LOADED[key]
