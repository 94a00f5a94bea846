"""The stages of a run, in order: notebook, config sections, tables read and written, and the
per-stage hooks the runner calls instead of special-casing stage names.

Example:
    >>> from frameatlas.pipeline.registry import stage_named
    >>> stage_named("embed").notebook
    '03_embed.ipynb'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import PipelineConfig
from ..store import RunPaths

__all__ = ["OPTIONAL_STAGES", "STAGES", "STAGE_NAMES", "Stage", "stage_named"]


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: its notebook, the config sections it reads, the tables it reads and writes.

    `external_inputs(cfg)` returns what the stage's result depends on outside the run folder (the
    video files, which model weights exist, ...): it goes into the stage's fingerprint, so a
    change there re-runs the stage even with the same config and tables.
    """

    name: str
    notebook: str
    sections: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    model_kinds: tuple[str, ...] = ()  # kinds of model this stage alone records: gone from the manifest when it stops using them
    external_inputs: Callable[[PipelineConfig], Any] | None = None
    optional: bool = False  # off unless configured (classify): left out of the manifest and dashboard until it is

    @property
    def report_stem(self) -> str:
        return Path(self.notebook).stem

    def enabled(self, cfg: PipelineConfig) -> bool:
        section = getattr(cfg, self.name, None)
        return bool(getattr(section, "enabled", True))

    def order(self) -> int:
        return STAGE_NAMES.index(self.name)


# --- hooks: inputs that live outside the run folder -------------------------------------------


def _video_listing(cfg: PipelineConfig) -> Any:
    from ..frames import prepare_corpus

    listing = prepare_corpus(cfg)
    return {"videos": listing.fingerprint(), "problems": [s.as_dict() for s in listing.skipped]}


def _image_weights(cfg: PipelineConfig) -> dict[str, Any]:
    from ..models import weights_available

    # Weights appearing (or vanishing) changes the result even with the same config.
    return {"image_weights": weights_available(cfg.models)}


def _caption_inputs(cfg: PipelineConfig) -> dict[str, Any]:
    from ..caption import caption_weights_available

    found = {**_image_weights(cfg), "caption_weights": caption_weights_available(cfg.caption, cfg.models)}
    if cfg.caption.ocr.enabled:
        from ..models.ocr import ocr_available

        found["ocr_package"] = ocr_available()  # installing it later must re-run the stage
    if cfg.speech.enabled:
        from ..models.speech import speech_weights_available

        found["speech_weights"] = speech_weights_available(cfg.speech, cfg.models)
    return found


def _render_sources(cfg: PipelineConfig) -> dict[str, Any]:
    from ..render import source_files

    # Videos are cut from the sources: one vanishing, coming back or changing matters.
    return {"sources": source_files(RunPaths(cfg.run_dir)), **_image_weights(cfg)}


def _classify_inputs(cfg: PipelineConfig) -> dict[str, Any]:
    from ..files import sha256_file

    # the label files' content (not only their paths) decides the result
    files = {key: sha256_file(path) if path.exists() else "missing"
             for key in ("labels", "segments") if (path := getattr(cfg.classify, key)) is not None}  # fmt: skip
    found: dict[str, Any] = {**_image_weights(cfg), "label_files": files}
    if cfg.objects.enabled:
        from ..objects import detector_weights

        path = detector_weights(cfg.objects.model, cfg.objects.weights)
        found["object_weights"] = str(path) if path.is_file() else "missing"  # weights appearing later re-run the stage
    return found


STAGES: tuple[Stage, ...] = (
    Stage("extract", "01_extract.ipynb", ("corpus", "extract"), outputs=("frames", "videos"), external_inputs=_video_listing),
    Stage(
        "caption", "02_caption.ipynb", ("models", "caption", "speech"), inputs=("frames",), outputs=("captions",),  # + ocr, speech when on
        model_kinds=("caption", "ocr", "speech"), external_inputs=_caption_inputs,
    ),  # fmt: skip
    Stage(
        "embed", "03_embed.ipynb", ("models", "embed", "index", "search"), inputs=("frames", "captions", "ocr", "speech_frames"),
        outputs=("embeddings",), external_inputs=_image_weights,
    ),  # fmt: skip
    Stage(
        "cluster", "04_cluster.ipynb", ("models", "cluster"),
        inputs=("frames", "embeddings", "caption_embeddings"), outputs=("clusters", "frames_annotated", "keyframes"),
    ),  # fmt: skip
    Stage(
        "visualize", "05_visualize.ipynb", ("models", "visualize", "search"),
        inputs=("frames", "embeddings", "frames_annotated", "caption_embeddings", "ocr_embeddings", "speech_embeddings",
                "speech_segment_embeddings", "speech_videos"),  # speech_videos: the investigator pages' subtitles
        outputs=("projections",),
    ),  # fmt: skip
    Stage(
        "render", "06_render.ipynb", ("models", "search", "render"),
        inputs=("frames", "videos", "embeddings", "clusters", "caption_embeddings", "ocr_embeddings", "speech_embeddings",
                "speech_segment_embeddings", "speech_frames", "speech"),  # speech: the rendered videos' .vtt
        outputs=("render_videos", "render_segments"), external_inputs=_render_sources,
    ),  # fmt: skip
    Stage(
        "classify", "07_classify.ipynb", ("models", "classify", "objects"),
        inputs=("videos", "frames", "embeddings", "keyframes", "caption_embeddings", "ocr_embeddings", "speech_embeddings",
                "projections"),
        outputs=("classify_scores", "predictions"), model_kinds=("audio", "objects"), external_inputs=_classify_inputs,
        optional=True,
    ),  # fmt: skip
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
OPTIONAL_STAGES = frozenset(stage.name for stage in STAGES if stage.optional)


def stage_named(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGE_NAMES)}")


def stage_order(name: str) -> int:
    """Position of a stage in the pipeline (unknown names last, for manifests of other versions)."""
    return STAGE_NAMES.index(name) if name in STAGE_NAMES else len(STAGE_NAMES)
