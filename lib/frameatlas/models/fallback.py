"""A visual descriptor that needs no pretrained weights: colour and texture.

Used only when a config asks for it (`models.image.on_missing_weights: fallback`, or
`models.image.name: fallback`). It finds frames that *look* alike (same palette, layout and
texture), which is enough for near-duplicate search and rough clusters, but it has no text
side: text-to-image search and CLIP naming are off when it runs, and every report says so.

The vector is the concatenation of three L2-normalised blocks, then L2-normalised again:
HSV colour histograms on a 2x2 grid (8 hue x 3 saturation x 3 value bins per cell), gradient
orientation histograms on the same grid (8 bins per cell), and an 8x8 grey thumbnail with its
mean removed.

Example:
    >>> from PIL import Image
    >>> encoder = ColourTextureEncoder()
    >>> encoder.encode_images([Image.new("RGB", (64, 48), "red")]).shape
    (1, 384)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .base import ModelRecord, l2_normalise

__all__ = ["ColourTextureEncoder", "FALLBACK_MODEL_ID"]

# The version is part of the id: cached vectors of another version are never mixed in.
FALLBACK_MODEL_ID = "fallback-colour-texture-v2"
_SIDE = 64
_GRID = 2
_HUE, _SAT, _VAL = 8, 3, 3
_ORIENTATIONS = 8
_GREY = 8
DIM = _GRID * _GRID * (_HUE * _SAT * _VAL + _ORIENTATIONS) + _GREY * _GREY


class ColourTextureEncoder:
    """Colour/texture vectors for images; no text side (`has_text` is False)."""

    has_text = False

    def __init__(self, record: ModelRecord | None = None):
        self.record = record or ModelRecord(
            kind="image", model_id=FALLBACK_MODEL_ID, requested="fallback", backend="numpy"
        )
        self.record.dim = DIM

    @property
    def dim(self) -> int:
        return DIM

    def preprocess(self, image: Image.Image) -> np.ndarray:
        small = image.convert("RGB").resize((_SIDE, _SIDE), Image.Resampling.BILINEAR)
        return np.asarray(small.convert("HSV"), dtype=np.uint8), np.asarray(small.convert("L"), dtype=np.float32)

    def encode_preprocessed(self, batch: list) -> np.ndarray:
        return np.stack([_describe(hsv, grey) for hsv, grey in batch]) if batch else np.zeros((0, DIM), np.float32)

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.encode_preprocessed([self.preprocess(image) for image in images])

    def encode_text(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError(
            f"{FALLBACK_MODEL_ID} has no text side: text-to-image search needs CLIP weights "
            "(see models.image in pipeline.yaml)"
        )


def _cells(array: np.ndarray):
    step = _SIDE // _GRID
    for row in range(_GRID):
        for col in range(_GRID):
            yield array[row * step : (row + 1) * step, col * step : (col + 1) * step]


def _describe(hsv: np.ndarray, grey: np.ndarray) -> np.ndarray:
    # Hue bins are centred on red (hue 0) so reds either side of the wrap-around share a bin.
    hue = (((hsv[..., 0].astype(np.int32) + 256 // (2 * _HUE)) % 256) * _HUE) >> 8
    sat = (hsv[..., 1].astype(np.int32) * _SAT) >> 8
    val = (hsv[..., 2].astype(np.int32) * _VAL) >> 8
    colour_bin = (hue * _SAT + sat) * _VAL + val
    colour = [np.bincount(cell.ravel(), minlength=_HUE * _SAT * _VAL) for cell in _cells(colour_bin)]

    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    angle = ((np.arctan2(gy, gx) % np.pi) / np.pi * _ORIENTATIONS).astype(np.int32) % _ORIENTATIONS
    texture = [
        np.bincount(a.ravel(), weights=m.ravel(), minlength=_ORIENTATIONS) for a, m in zip(_cells(angle), _cells(magnitude))
    ]
    thumb = grey.reshape(_GREY, _SIDE // _GREY, _GREY, _SIDE // _GREY).mean(axis=(1, 3)).ravel()
    thumb = thumb - thumb.mean()
    blocks = [
        l2_normalise(np.concatenate(colour).astype(np.float32)),
        l2_normalise(np.concatenate(texture).astype(np.float32)),
        l2_normalise(thumb.astype(np.float32)),
    ]
    return l2_normalise(np.concatenate(blocks))
