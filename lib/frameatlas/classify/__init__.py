"""Classify videos and windows from every channel: zero-shot class names, trained classifiers,
early and late fusion (the `07_classify` stage).

* `labels`: labels from a CSV of videos, from sub-folder names, or from a CSV of segments.
* `features`: per video and per window, pooled image, keyframe, caption, on-screen text, speech
  and audio features.
* `audio`: the weight-free log-mel descriptor, or YAMNet through TensorFlow Hub.
* `zeroshot`: class names against pooled vectors (CLIP's text side, the sentence encoder).
* `train`: per-modality classifiers, early and late fusion, cross-validated grouped by video.
* `stage`: `classify_run` (the stage), `predict_run` (a saved model on another run).

Example:
    >>> from frameatlas import classify
    >>> summary = classify.classify_run(cfg, "outputs/demo")  # doctest: +SKIP
"""

from __future__ import annotations

from .audio import LogMelDescriptor, YamnetDescriptor, audio_descriptor
from .features import CHANNELS, FeatureSet, build_features
from .labels import LabelError
from .stage import ClassifySummary, FeatureMismatch, classify_run, load_model, model_path, predict_run
from .train import CLASSIFIERS, FUSIONS, cross_validate, grouped_folds
from .zeroshot import class_prompts, zero_shot

__all__ = [
    "CHANNELS",
    "CLASSIFIERS",
    "FUSIONS",
    "ClassifySummary",
    "FeatureMismatch",
    "FeatureSet",
    "LabelError",
    "LogMelDescriptor",
    "YamnetDescriptor",
    "audio_descriptor",
    "build_features",
    "class_prompts",
    "classify_run",
    "cross_validate",
    "grouped_folds",
    "load_model",
    "model_path",
    "predict_run",
    "zero_shot",
]
