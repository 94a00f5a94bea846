"""What every encoder offers, and the error raised when a model cannot be had."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

__all__ = ["ImageEncoder", "ModelRecord", "ModelUnavailable", "TextEncoder", "l2_normalise"]


class ModelUnavailable(RuntimeError):
    """Weights for a model cannot be found or fetched. The message says which model, where it
    looked, and the ways out."""

    def __init__(
        self, model: str, looked: list[str], detail: str = "", *, config_key: str = "models.image.pretrained or models.text.name",
        kind: str = "",
    ):  # fmt: skip
        self.model, self.looked, self.detail = model, looked, detail
        where = "; ".join(looked) if looked else "nowhere"
        download = f"frameatlas models download {model}" + (f" --kind {kind}" if kind else "")
        super().__init__(
            f"model {model}: weights not available{f' ({detail})' if detail else ''}. Looked in: {where}. "
            f"Ways out: (1) connect to the internet once, or run `{download}` on a connected machine and copy "
            f"the printed files here; (2) give a local path to the weights in pipeline.yaml ({config_key}); "
            "(3) choose another model."
        )


@dataclass
class ModelRecord:
    """What actually ran, for the manifest and the reports."""

    kind: str  # "image" | "text" | "caption" | "ocr"
    model_id: str  # stable id used for caches and index collections
    requested: str
    backend: str
    weights: str | None = None
    weights_sha256: str | None = None
    dim: int = 0
    device: str = "cpu"
    fallback_reason: str | None = None
    disabled_features: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def banner(self) -> str | None:
        if not self.fallback_reason:
            return None
        off = ", ".join(self.disabled_features) or "nothing"
        return (
            f"{self.requested} could not be loaded ({self.fallback_reason}); the {self.kind} model in use is "
            f"{self.model_id} instead. Off in this run: {off}."
        )


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@runtime_checkable
class ImageEncoder(Protocol):
    record: ModelRecord
    has_text: bool

    @property
    def dim(self) -> int: ...

    def preprocess(self, image: Image.Image) -> Any:
        """One image to the encoder's input (cheap enough to run in a loader thread)."""

    def encode_preprocessed(self, batch: list[Any]) -> np.ndarray:
        """A batch of preprocessed images to L2-normalised float32 vectors, shape (n, dim)."""

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Texts to vectors in the same space (raises if `has_text` is False)."""


@runtime_checkable
class TextEncoder(Protocol):
    record: ModelRecord

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str]) -> np.ndarray:
        """Texts to L2-normalised float32 vectors, shape (n, dim)."""
