"""Zero-shot classes: class names (or prompts per class) against pooled vectors, with no labels.

The image modalities are scored with CLIP's text side (the prompts in CLIP's space, cosine to the
pooled frame vectors), the caption, on-screen text and speech modalities with the sentence encoder
(the prompts in its space, cosine to the pooled text vectors), as the original zero-shot
relabelling did. Each modality's cosines become probabilities by a softmax at CLIP's temperature
(100); the fused zero-shot answer is the mean of the probabilities of the modalities a sample has.

Example:
    >>> prompts = class_prompts(["cat", "dog"], {"dog": ["a puppy"]})
    >>> prompts["cat"], prompts["dog"]
    (['cat', 'a photo of cat'], ['a puppy'])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .features import TEXT_CHANNELS, FeatureSet

__all__ = ["TEMPERATURE", "ZeroShotResult", "class_prompts", "softmax", "zero_shot"]

TEMPERATURE = 100.0  # CLIP's logit scale: cosines about 0.1 apart become clear probabilities
IMAGE_MODALITIES = ("image", "keyframes")


def class_prompts(class_names: Sequence[str], prompts: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[str]]:
    """Prompts per class: the configured ones, else the class name itself and "a photo of <name>"."""
    prompts = prompts or {}
    return {name: list(prompts.get(name) or [name, f"a photo of {name}"]) for name in class_names}


def softmax(scores: np.ndarray, temperature: float = TEMPERATURE) -> np.ndarray:
    logits = temperature * np.asarray(scores, np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _class_vectors(encode: Callable[[list[str]], np.ndarray], prompts: dict[str, list[str]]) -> np.ndarray:
    """One unit vector per class: the mean of its prompts' vectors."""
    texts = [text for group in prompts.values() for text in group]
    vectors = _normalise(np.asarray(encode(texts), np.float32))
    out, start = [], 0
    for group in prompts.values():
        out.append(vectors[start : start + len(group)].mean(0))
        start += len(group)
    return _normalise(np.stack(out))


class ZeroShotResult:
    """Per modality, cosine scores and probabilities (samples x classes) and which samples it covers."""

    def __init__(self, classes: list[str]):
        self.classes = classes
        self.scores: dict[str, np.ndarray] = {}
        self.probabilities: dict[str, np.ndarray] = {}
        self.present: dict[str, np.ndarray] = {}
        self.notes: list[str] = []

    def fused(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean of the probabilities of the modalities each sample has; and which samples have any."""
        if not self.probabilities:
            return np.zeros((0, len(self.classes))), np.zeros(0, bool)
        total = sum(np.where(self.present[m][:, None], p, 0.0) for m, p in self.probabilities.items())
        count = sum(self.present[m].astype(float) for m in self.probabilities)
        return total / np.maximum(count, 1)[:, None], count > 0


def zero_shot(
    features: FeatureSet,
    prompts: dict[str, list[str]],
    *,
    image_text: Callable[[list[str]], np.ndarray] | None = None,
    sentence: Callable[[list[str]], np.ndarray] | None = None,
) -> ZeroShotResult:
    """Score every sample against the classes in each modality that has a text side.

    `image_text` encodes text into the image vectors' space (CLIP's `encode_text`; None when the
    image model has none, e.g. the colour/texture fallback), `sentence` into the caption, on-screen
    text and speech vectors' space (the sentence encoder's `encode`).
    """
    result = ZeroShotResult(list(prompts))
    for modality, encode, space in [*((m, image_text, "image") for m in IMAGE_MODALITIES),
                                    *((m, sentence, "sentence") for m in TEXT_CHANNELS)]:  # fmt: skip
        if modality not in features.blocks:
            continue
        if encode is None:
            if space == "image" and modality == "image":
                result.notes.append("zero-shot on the picture needs an image model with a text side (CLIP); "
                                    "the image model in use has none")  # fmt: skip
            continue
        classes = _class_vectors(encode, prompts)
        block = features.blocks[modality]
        if block.shape[1] != classes.shape[1]:
            result.notes.append(f"zero-shot {modality}: vectors have {block.shape[1]} dimensions, the text side "
                                f"{classes.shape[1]}; skipped")  # fmt: skip
            continue
        scores = _normalise(block) @ classes.T
        result.scores[modality] = scores
        result.probabilities[modality] = softmax(scores)
        result.present[modality] = features.present[modality].copy()
    return result
