"""The caption stage: a CLIP-Interrogator prompt for every frame.

A prompt is what clip-interrogator writes for an image: a caption from a caption model (BLIP)
followed by the terms of its lists (mediums, artists, movements, trending sites, ~100k
"flavors") that the run's own CLIP model ranks closest to the frame, for example
``a rabbit sitting in the grass, a 3D render, by Pixar, trending on cgsociety, furry, cute``.

* Modes follow the package: ``fast`` (caption + the top-ranked terms), ``classic`` (caption,
  medium, artist, trending, movement, flavors), ``negative`` (chains the *least* similar
  flavors) and ``best`` (chains flavors greedily, then keeps the best of caption / classic /
  fast / chained by CLIP similarity). fast and classic rank every frame in one matrix
  product; negative and best encode candidate prompts per frame and are much slower.
* CLIP is the run's image model (no second copy), and the frame vectors come from the embed
  stage's cache (computed here if missing, then reused by 03_embed).
* Term-list embeddings are computed once per CLIP model and kept on disk
  (`term_cache_dir`), with exact trimmed-context text encoding (`encode_text_many`).
* No caption model weights (offline, not cached): with ``on_missing_weights: clip-only`` the
  prompts are built from the term rankings alone and the substitution is recorded (manifest,
  report banner). Nothing here reaches for the network unless the config allows downloads and
  the hub answers; clip-interrogator's own cache download is never used.
* With ``reuse_distance`` set, the caption model skips a frame whose perceptual signature (the
  frames table's `signature`) is within that many changed cells of the last frame it captioned
  in the same video, and copies that frame's caption (named in the `reused_from` column); the
  CLIP term ranking still runs on every frame's own vector.

Example:
    >>> from frameatlas.config import load_config
    >>> from frameatlas.caption import caption_frames
    >>> cfg = load_config("pipeline.yaml")  # doctest: +SKIP
    >>> summary = caption_frames(cfg, cfg.run_dir)  # doctest: +SKIP
    >>> summary.table[["frame_key", "prompt"]].head()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from .config import CaptionConfig, ModelsConfig, PipelineConfig
from .corpus import SkippedInput, failure_reason
from .files import atomic_path, user_cache_dir
from .models import ModelRecord, ModelUnavailable, image_encoder
from .progress import progress_bar
from .signature import NearDuplicates
from .store import RunPaths, frame_shards, in_frame_order, read_table, read_thumbnail, write_table
from .summary import StageSummary

log = logging.getLogger(__name__)

__all__ = [
    "CAPTION_COLUMNS",
    "CaptionSummary",
    "TermTables",
    "caption_frames",
    "caption_sample_html",
    "caption_weights_available",
    "load_caption_model",
    "load_term_tables",
    "term_cache_dir",
    "term_lists",
    "term_statistics",
]

CAPTION_MODEL_REPOS = {  # clip-interrogator's names for them
    "blip-base": "Salesforce/blip-image-captioning-base",
    "blip-large": "Salesforce/blip-image-captioning-large",
}
CAPTION_MODEL_FILES = ["config.json", "preprocessor_config.json"]
CLIP_ONLY = "clip-only"
CAPTION_COLUMNS = ["frame_key", "video_id", "timestamp", "prompt", "caption", "mode", "clip_model", "caption_model",
                   "reused_from"]  # fmt: skip
# The lists clip-interrogator's "fast" and "best" modes merge, in the package's order.
MERGED_LISTS = ("artists", "flavors", "mediums", "movements", "trendings")
# The package's trending sites, from which it builds "trending on X", "featured on X", "X contest winner".
TRENDING_SITES = [
    "Artstation", "behance", "cg society", "cgsociety", "deviantart", "dribble", "flickr", "instagram", "pexels",
    "pinterest", "pixabay", "pixiv", "polycount", "reddit", "shutterstock", "tumblr", "unsplash", "zbrush central",
]  # fmt: skip


# --- term lists and their embeddings ---------------------------------------------------------


def term_lists(limit: int | None = None) -> dict[str, list[str]]:
    """The interrogator's term lists as clip-interrogator builds them, each raw list cut to `limit` lines.

    Example:
        >>> lists = term_lists(limit=10)
        >>> sorted(lists), len(lists["artists"])
        (['artists', 'flavors', 'mediums', 'movements', 'negative', 'trendings'], 20)
    """
    import clip_interrogator
    from clip_interrogator.clip_interrogator import load_list

    data = Path(clip_interrogator.__file__).parent / "data"

    def read(name: str) -> list[str]:
        return [line for line in load_list(str(data), f"{name}.txt") if line][:limit]

    raw_artists = read("artists")
    trendings = [*TRENDING_SITES, *(f"trending on {s}" for s in TRENDING_SITES),
                 *(f"featured on {s}" for s in TRENDING_SITES), *(f"{s} contest winner" for s in TRENDING_SITES)]  # fmt: skip
    return {
        "artists": [f"by {a}" for a in raw_artists] + [f"inspired by {a}" for a in raw_artists],
        "flavors": read("flavors"),
        "mediums": read("mediums"),
        "movements": read("movements"),
        "trendings": trendings,
        "negative": read("negative"),
    }


def term_cache_dir(models: ModelsConfig) -> Path:
    """Where term embeddings are kept: beside the model cache (`models.cache_dir`), else ~/.cache/frameatlas/terms."""
    if models.cache_dir is not None:
        return Path(models.cache_dir) / "frameatlas-terms"
    return user_cache_dir("terms")


@dataclass
class TermTables:
    """Term lists with their CLIP text vectors (unit length, float32), and what loading them cost."""

    labels: dict[str, list[str]]
    vectors: dict[str, np.ndarray]
    computed: int = 0  # term texts encoded now
    cached: int = 0  # term texts read from the disk cache
    seconds: float = 0.0
    cache: Path | None = None

    def merged(self, names=MERGED_LISTS) -> tuple[list[str], np.ndarray]:
        labels = [label for name in names for label in self.labels[name]]
        return labels, np.concatenate([self.vectors[name] for name in names])


def _terms_digest(labels: list[str]) -> str:
    return hashlib.sha256("\n".join(labels).encode()).hexdigest()[:16]


def load_term_tables(encoder, lists: dict[str, list[str]], *, cache: Path | None, batch_size: int = 256) -> TermTables:
    """CLIP text vectors of every term list, from `cache/<model id>/` when present, else encoded and saved.

    Vectors of a model with random weights (no weights file) are never cached: they differ per process.
    """
    started = time.perf_counter()
    if cache is not None and not encoder.record.weights:
        log.info("caption: %s has random weights; its term vectors are not cached", encoder.record.model_id)
        cache = None
    folder = cache / encoder.record.model_id if cache is not None else None
    tables = TermTables(labels=lists, vectors={}, cache=folder)
    missing: list[tuple[str, Path | None]] = []
    for name, labels in lists.items():
        path = folder / f"{name}-{len(labels)}-{_terms_digest(labels)}.npy" if folder else None
        if path is not None and path.exists():
            try:
                vectors = np.load(path).astype(np.float32)
            except (OSError, ValueError) as error:
                log.warning("caption: %s unreadable (%s); encoding its terms again", path, error)
            else:
                if vectors.shape == (len(labels), encoder.dim):
                    tables.vectors[name] = vectors
                    tables.cached += len(labels)
                    continue
        missing.append((name, path))
    total = sum(len(lists[name]) for name, _ in missing)
    if total:
        log.info("caption: encoding %d term texts with %s (once per model%s)", total, encoder.record.model_id,
                 f"; cached in {folder}" if folder else "")  # fmt: skip
        bar = progress_bar(total=total, desc="term embeddings", unit="term")
        try:
            for name, path in missing:
                vectors = encoder.encode_text_many(lists[name], batch_size=batch_size, on_batch=bar.update)
                tables.vectors[name] = vectors
                tables.computed += len(vectors)
                if path is not None:
                    _save_array(path, vectors.astype(np.float16))
        finally:
            bar.close()
    tables.seconds = time.perf_counter() - started
    return tables


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as temporary, temporary.open("wb") as handle:
        np.save(handle, array)


# --- the caption model (BLIP) ----------------------------------------------------------------


@dataclass
class CaptionModel:
    """A loaded BLIP model and processor, or none (then `record.fallback_reason` says why)."""

    record: ModelRecord
    model: Any = None
    processor: Any = None
    device: str = "cpu"

    @property
    def available(self) -> bool:
        return self.model is not None

    def captions(self, images: list[Image.Image], max_tokens: int) -> list[str]:
        import torch

        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            tokens = self.model.generate(**inputs, max_new_tokens=max_tokens)
        return [text.strip() for text in self.processor.batch_decode(tokens, skip_special_tokens=True)]


def _caption_model_location(options: CaptionConfig, models: ModelsConfig) -> tuple[str, list[str]]:
    """(where to load from, where it looked): a folder, a hub snapshot folder, or a hub repo id to download.

    Raises ModelUnavailable when the weights are neither on disk nor downloadable right now.
    """
    from .models.weights import hf_cache_dir, hf_cached_snapshot, hub_offline, hub_reachable

    name = options.caption_model
    folder = Path(name).expanduser()
    if name not in CAPTION_MODEL_REPOS:
        if folder.is_dir() and (folder / "config.json").is_file():
            return str(folder), [str(folder)]
        detail = "the folder holds no config.json" if folder.is_dir() else "no such folder"
        raise ModelUnavailable(name, [str(folder)], f"{detail}; caption.caption_model takes "
                               f"{', '.join(CAPTION_MODEL_REPOS)}, none, or a folder saved by transformers",
                               config_key="caption.caption_model", kind="caption")  # fmt: skip
    repo = CAPTION_MODEL_REPOS[name]
    snapshot = hf_cached_snapshot(repo, CAPTION_MODEL_FILES, models.cache_dir)
    looked = [f"the hub cache {hf_cache_dir(models.cache_dir)} (repo {repo})"]
    if snapshot:
        return str(snapshot), looked
    if models.allow_download and hub_reachable():
        return repo, looked
    if not models.allow_download:
        why = "downloads are off (models.allow_download: false)"
    else:
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached"
    raise ModelUnavailable(name, looked, f"{repo} is not cached and {why}", config_key="caption.caption_model", kind="caption")


def caption_weights_available(options: CaptionConfig, models: ModelsConfig) -> str:
    """Where the caption model's weights are, or why they are not (cheap: no loading, no network)."""
    if options.caption_model == "none":
        return "none"
    from .models.weights import hf_cached_snapshot

    name = options.caption_model
    if name in CAPTION_MODEL_REPOS:
        snapshot = hf_cached_snapshot(CAPTION_MODEL_REPOS[name], CAPTION_MODEL_FILES, models.cache_dir)
        return str(snapshot) if snapshot else "missing"
    return name if (Path(name) / "config.json").is_file() else "missing"


def load_caption_model(options: CaptionConfig, models: ModelsConfig) -> CaptionModel:
    """The configured caption model, or a record of why there is none. Raises ModelUnavailable for
    a folder that holds no model, and for missing hub weights when `caption.on_missing_weights` is `error`."""
    from .models.device import configure_threads, pick_device

    requested = options.caption_model
    if requested == "none":
        return CaptionModel(ModelRecord(kind="caption", model_id=CLIP_ONLY, requested="none", backend="clip-interrogator"))
    try:
        location, _ = _caption_model_location(options, models)
        configure_threads(models.threads)
        device = pick_device(models.device)
        from transformers import BlipForConditionalGeneration, BlipProcessor

        local = Path(location).is_dir()
        extra = {"local_files_only": True} if local else {"cache_dir": str(models.cache_dir) if models.cache_dir else None}
        log.info("loading caption model %s from %s on %s", requested, location, device)
        processor = BlipProcessor.from_pretrained(location, **extra)
        model = BlipForConditionalGeneration.from_pretrained(location, **extra).eval().to(device)
    except ModelUnavailable as error:
        if options.on_missing_weights == "error" or requested not in CAPTION_MODEL_REPOS:
            raise  # a folder that is not there is a mistake in the config, not missing weights
        log.warning("caption model %s unavailable (%s); captions come from CLIP term rankings alone, "
                    "as caption.on_missing_weights allows", requested, error.detail)  # fmt: skip
        return CaptionModel(ModelRecord(
            kind="caption", model_id=CLIP_ONLY, requested=requested, backend="clip-interrogator",
            fallback_reason=f"caption model weights missing: {error.detail}",
            disabled_features=["captions written by a caption model (prompts hold CLIP-ranked terms only)"],
        ))  # fmt: skip
    except (OSError, ValueError) as error:  # a folder with broken or foreign files
        raise ModelUnavailable(requested, [location], f"cannot load a BLIP model from it ({error})",
                               config_key="caption.caption_model", kind="caption") from None
    record = ModelRecord(kind="caption", model_id=requested if not local or requested in CAPTION_MODEL_REPOS
                         else f"blip-{Path(location).name}", requested=requested, backend="transformers",
                         weights=location, device=device)  # fmt: skip
    return CaptionModel(record, model, processor, device)


# --- interrogation ---------------------------------------------------------------------------


def _top(scores: np.ndarray, count: int) -> np.ndarray:
    """Column indices of the `count` largest scores per row, best first."""
    count = min(count, scores.shape[1])
    part = np.argpartition(-scores, count - 1, axis=1)[:, :count]
    order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)


class FrameInterrogator:
    """clip-interrogator's prompt building over precomputed frame and term vectors.

    fast and classic compose prompts exactly as the package does, for many frames at once;
    negative and best use the package's own `Interrogator.chain`, with its text similarity
    computed by the run's CLIP model (`encode_text_many`).
    """

    def __init__(self, encoder, terms: TermTables, options: CaptionConfig):
        self.encoder = encoder
        self.terms = terms
        self.options = options
        self._merged_labels, self._merged_vectors = terms.merged()
        self._chainer = None

    def _truncate(self, text: str) -> str:
        from clip_interrogator.clip_interrogator import _truncate_to_fit

        return _truncate_to_fit(text, self.encoder.tokenizer)

    def _rank(self, name: str, features: np.ndarray, count: int) -> list[list[str]]:
        labels = self.terms.labels[name]
        return [[labels[i] for i in row] for row in _top(features @ self.terms.vectors[name].T, count)]

    def fast(self, features: np.ndarray, captions: list[str]) -> list[str]:
        tops = _top(features @ self._merged_vectors.T, self.options.max_flavors)
        return [self._truncate(", ".join([c for c in [caption] if c] + [self._merged_labels[i] for i in row]))
                for caption, row in zip(captions, tops)]  # fmt: skip

    def classic(self, features: np.ndarray, captions: list[str]) -> list[str]:
        mediums, artists = self._rank("mediums", features, 1), self._rank("artists", features, 1)
        trendings, movements = self._rank("trendings", features, 1), self._rank("movements", features, 1)
        flavors = self._rank("flavors", features, self.options.max_flavors)
        prompts = []
        for i, caption in enumerate(captions):
            medium, rest = mediums[i][0], f"{artists[i][0]}, {trendings[i][0]}, {movements[i][0]}, {', '.join(flavors[i])}"
            if caption and caption.startswith(medium):
                prompt = f"{caption} {rest}"
            else:
                prompt = f"{caption}, {medium} {rest}" if caption else f"{medium} {rest}"
            prompts.append(self._truncate(prompt))
        return prompts

    def _chain_interrogator(self):
        if self._chainer is None:
            self._chainer = _chain_interrogator_class()(self.encoder, self.options)
        return self._chainer

    def negative(self, features: np.ndarray, captions: list[str]) -> list[str]:
        chainer = self._chain_interrogator()
        flavors = self.terms.labels["flavors"]
        lowest = _top(-(features @ self.terms.vectors["flavors"].T), self.options.intermediate_count)
        return [
            chainer.chain(vector, [flavors[i] for i in row] + self.terms.labels["negative"],
                          max_count=self.options.max_flavors, reverse=True, desc="negative chain")
            for vector, row in zip(features, lowest)
        ]  # fmt: skip

    def best(self, features: np.ndarray, captions: list[str]) -> list[str]:
        chainer = self._chain_interrogator()
        fast, classic = self.fast(features, captions), self.classic(features, captions)
        tops = _top(features @ self._merged_vectors.T, self.options.intermediate_count)
        prompts = []
        for i, (vector, caption) in enumerate(zip(features, captions)):
            flavors = [self._merged_labels[j] for j in tops[i]]
            start = chainer.similarity(vector, caption) if caption else 0.0
            chained = chainer.chain(vector, flavors, caption, start, min_count=min(8, self.options.max_flavors),
                                    max_count=self.options.max_flavors, desc="flavor chain")  # fmt: skip
            candidates = [c for c in (caption, classic[i], fast[i], chained) if c]
            prompts.append(candidates[int(np.argmax(chainer.similarities(vector, candidates)))])
        return prompts

    def prompts(self, features: np.ndarray, captions: list[str]) -> list[str]:
        return getattr(self, self.options.mode)(features, captions)


def _chain_interrogator_class():
    """Made on first use: importing clip_interrogator imports transformers (seconds)."""
    from clip_interrogator import Interrogator

    class ChainInterrogator(Interrogator):
        """The package's Interrogator without its model loading: similarities come from our encoder."""

        def __init__(self, encoder, options: CaptionConfig):  # no super().__init__: it would load models
            from clip_interrogator import Config

            self.config = Config(caption_model_name=None, download_cache=False, cache_path=None, quiet=True,
                                 device=encoder.device, flavor_intermediate_count=options.intermediate_count,
                                 chunk_size=options.term_batch_size)  # fmt: skip
            self.device, self.encoder, self.tokenize = encoder.device, encoder, encoder.tokenizer
            self.caption_offloaded, self.clip_offloaded = True, False  # nothing to move between devices

        def _scores(self, image_features, texts: list[str]) -> np.ndarray:
            vector = np.asarray(image_features, np.float32).reshape(-1)
            return self.encoder.encode_text_many(list(texts), batch_size=self.config.chunk_size) @ vector

        def rank_top(self, image_features, text_array, reverse=False):
            scores = self._scores(image_features, text_array)
            return text_array[int(np.argmin(scores) if reverse else np.argmax(scores))]

        def similarity(self, image_features, text):
            return float(self._scores(image_features, [text])[0])

        def similarities(self, image_features, text_array):
            return self._scores(image_features, text_array).tolist()

    return ChainInterrogator


# --- the stage -------------------------------------------------------------------------------


@dataclass(kw_only=True)
class CaptionSummary(StageSummary):
    """What the caption stage did; `counts`, `skipped` and `model_records` go to the run manifest."""

    table: pd.DataFrame
    mode: str
    clip_model: ModelRecord
    caption_model: ModelRecord
    frames: int = 0
    captioned: int = 0
    cached: int = 0
    reused: int = 0  # frames captioned this run that took an earlier near-identical frame's caption
    reuse_distance: int | None = None
    caption_seconds: float = 0.0
    prompt_seconds: float = 0.0
    terms: TermTables | None = None

    @property
    def seconds_per_frame(self) -> float:
        return (self.caption_seconds + self.prompt_seconds) / self.captioned if self.captioned else 0.0

    @property
    def counts(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "frames_captioned": self.captioned,
            "frames_cached": self.cached,
            "frames_caption_reused": self.reused,
            "caption_reuse_distance": "off" if self.reuse_distance is None else self.reuse_distance,
            "mode": self.mode,
            "clip_model": self.clip_model.model_id,
            "caption_model": self.caption_model.model_id,
            "caption_model_seconds": round(self.caption_seconds, 2),
            "prompt_seconds": round(self.prompt_seconds, 2),
            "seconds_per_frame": round(self.seconds_per_frame, 4),
            "terms": sum(map(len, self.terms.labels.values())) if self.terms else 0,
            "terms_encoded": self.terms.computed if self.terms else 0,
            "terms_cached": self.terms.cached if self.terms else 0,
            "term_seconds": round(self.terms.seconds, 2) if self.terms else 0.0,
            "videos_skipped": len(self.skipped),
        }

    @property
    def model_records(self) -> list[dict[str, Any]]:
        return [self.clip_model.as_dict(), self.caption_model.as_dict()]


def _settings_key(options: CaptionConfig, clip_id: str, caption_id: str, term_count: int) -> str:
    settings = f"{options.mode}|{clip_id}|{caption_id}|{options.max_flavors}|{options.term_limit}|{term_count}|"
    settings += f"{options.intermediate_count}|{options.max_caption_tokens}"
    if options.reuse_distance is not None and caption_id != CLIP_ONLY:  # reused captions never mix with exact ones
        settings += f"|reuse {options.reuse_distance}"
    return f"{options.mode}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}"


def _reuse_plan(group: pd.DataFrame, reuse_distance: int | None) -> list[str]:
    """Per frame of one video (in the group's order): the frame key whose caption it takes, "" when it is captioned."""
    signatures = group.signature.tolist() if "signature" in group else [None] * len(group)
    keys = group.frame_key.tolist()
    near = NearDuplicates(reuse_distance)
    plan = [""] * len(group)
    for position in sorted(range(len(group)), key=lambda i: group.timestamp.iat[i]):
        anchor = near.anchor_for(signatures[position])
        if anchor is None:
            near.computed(keys[position], signatures[position])
        else:
            plan[position] = anchor
    return plan


def _model_captions(model: CaptionModel, options: CaptionConfig, group: pd.DataFrame, thumbnails: list[Path],
                    bar) -> tuple[list[str], list[str]]:  # fmt: skip
    """The caption model's caption of each frame, and the frame each was reused from ("" when captioned)."""
    if not model.available:
        return [""] * len(thumbnails), [""] * len(thumbnails)
    reused_from = _reuse_plan(group, options.reuse_distance)
    todo = [i for i, anchor in enumerate(reused_from) if not anchor]
    written: dict[str, str] = {}
    for start in range(0, len(todo), options.caption_batch_size):
        batch = todo[start : start + options.caption_batch_size]
        images = [read_thumbnail(thumbnails[i]) for i in batch]
        written.update(zip(group.frame_key.iloc[batch], model.captions(images, options.max_caption_tokens)))
        bar.update(len(images))
    bar.update(len(thumbnails) - len(todo))
    captions = [written[anchor or key] for key, anchor in zip(group.frame_key, reused_from)]
    return captions, reused_from


def _video_of(group: pd.DataFrame) -> str:
    """How a skipped input names a video: its path when the frames table has one, else its id."""
    if "video_path" in group and str(group.video_path.iloc[0]):
        return str(group.video_path.iloc[0])
    return str(group.video_id.iloc[0])


def _frame_vectors(cfg: PipelineConfig, run: RunPaths, encoder, todo: list, failed: dict[str, str]) -> dict[str, np.ndarray]:
    """CLIP vectors of the frames still to caption, by frame key (from the embed stage's cache, else made now).

    All videos go in one call; if it fails, video by video, so that a video whose thumbnails
    cannot be encoded lands in `failed` (video id -> reason) and the others still get vectors.
    """
    from .embed import cached_frame_vectors

    try:
        embedded, vectors = cached_frame_vectors(cfg, run, encoder, pd.concat([g for _, g in todo]))
        return dict(zip(embedded.frame_key, vectors))
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - found out below, per video; finished videos' vectors are cached by now
        log.debug("caption: frame vectors failed for the batch; retrying video by video", exc_info=True)
    found: dict[str, np.ndarray] = {}
    for _, group in todo:
        try:
            embedded, vectors = cached_frame_vectors(cfg, run, encoder, group)
        except MemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - one video's thumbnails must not stop the stage
            failed[group.video_id.iloc[0]] = f"no frame vectors: {failure_reason(error)}"
            continue
        found.update(zip(embedded.frame_key, vectors))
    return found


def caption_frames(
    cfg: PipelineConfig, run: RunPaths | Path | str, *, force: bool = False, encoder=None, caption_model: CaptionModel | None = None
) -> CaptionSummary:
    """Run the caption stage over the run's frames table; see the module docstring.

    A video whose thumbnails cannot be read, or on which the caption model or the prompt building
    fails, is skipped with its reason (`summary.skipped`); its frames get no row and are tried
    again next run. A thumbnail path leading outside the run is refused (`UnsafePath`).
    """
    started = time.perf_counter()
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    options = cfg.caption
    frames = read_table(run.table("frames"))
    encoder = encoder or image_encoder(cfg.models)
    caption_model = caption_model or load_caption_model(options, cfg.models)
    summary = CaptionSummary(table=pd.DataFrame(columns=CAPTION_COLUMNS), mode=options.mode, clip_model=encoder.record,
                             caption_model=caption_model.record, frames=len(frames))  # fmt: skip
    has_clip = bool(getattr(encoder, "has_text", False))
    if not has_clip and not caption_model.available:
        summary.notes.append(f"no captions: the image model {encoder.record.model_id} has no text side to rank terms "
                             f"with, and there is no caption model ({caption_model.record.fallback_reason or 'none configured'})")  # fmt: skip
        write_table(summary.table, run.table("captions"))
        return summary
    if not has_clip:
        summary.mode = "caption-only"
        summary.notes.append(f"prompts are the caption model's captions only: {encoder.record.model_id} cannot rank terms")
    elif not caption_model.available:
        summary.notes.append("prompts hold CLIP-ranked terms only: " + (caption_model.record.fallback_reason or "caption.caption_model is none"))  # fmt: skip

    interrogator = None
    lists = term_lists(options.term_limit) if has_clip else {}
    key = _settings_key(options, encoder.record.model_id if has_clip else "-", caption_model.record.model_id,
                        sum(map(len, lists.values())))  # fmt: skip
    tables, todo = frame_shards(frames, run.root / "captions" / key, force=force)
    tables = [table if "reused_from" in table else table.assign(reused_from="") for table in tables]  # made before reuse existed
    summary.cached = sum(map(len, tables))
    summary.reuse_distance = options.reuse_distance if caption_model.available else None

    if todo:
        thumbnails = {shard: run.thumbnails(group) for shard, group in todo}  # refuse crafted paths first
        failed: dict[str, str] = {}  # video id -> why it has no captions
        vectors: dict[str, np.ndarray] = {}
        if has_clip:
            summary.terms = load_term_tables(encoder, lists, cache=term_cache_dir(cfg.models), batch_size=options.term_batch_size)
            interrogator = FrameInterrogator(encoder, summary.terms, options)
            vectors = _frame_vectors(cfg, run, encoder, todo, failed)
        bar = progress_bar(total=sum(len(g) for _, g in todo), desc=f"caption ({summary.mode})", unit="frame")
        try:
            for shard, group in todo:
                video_id = group.video_id.iloc[0]
                if video_id not in failed:
                    try:
                        table = _caption_group(group, thumbnails[shard], vectors, caption_model, interrogator, encoder,
                                               options, summary, bar)  # fmt: skip
                    except MemoryError:
                        raise
                    except Exception as error:  # noqa: BLE001 - one video's failure must not stop the stage
                        log.debug("caption: %s failed", video_id, exc_info=True)
                        failed[video_id] = failure_reason(error)
                if video_id in failed:
                    reason = f"no captions for its {len(group)} frames: {failed[video_id]}"
                    log.warning("caption: skipped %s: %s", _video_of(group), reason)
                    summary.skipped.append(SkippedInput(_video_of(group), reason, stage="caption"))
                    continue
                write_table(table, shard)  # finished videos survive an interrupted run
                tables.append(table)
                summary.captioned += len(table)
        finally:
            bar.close()

    table = in_frame_order(tables, frames, CAPTION_COLUMNS)
    write_table(table, run.table("captions"))
    summary.table = table
    log.info("caption: %d frames (%d new, %d cached), mode %s, %s + %s, %.3f s/frame",
             summary.frames, summary.captioned, summary.cached, summary.mode, encoder.record.model_id,
             caption_model.record.model_id, summary.seconds_per_frame)  # fmt: skip
    summary.seconds = time.perf_counter() - started
    return summary


def _caption_group(group: pd.DataFrame, thumbnails: list[Path], vectors: dict[str, np.ndarray], caption_model: CaptionModel,
                   interrogator: FrameInterrogator | None, encoder, options: CaptionConfig, summary: CaptionSummary,
                   bar) -> pd.DataFrame:  # fmt: skip
    """The captions table of one video's frames (its shard)."""
    started = time.perf_counter()
    captions, reused_from = _model_captions(caption_model, options, group, thumbnails, bar)
    summary.reused += sum(map(bool, reused_from))
    summary.caption_seconds += time.perf_counter() - started
    started = time.perf_counter()
    if interrogator is not None:
        features = np.stack([vectors[k] for k in group.frame_key])
        prompts = interrogator.prompts(features, captions)
        if not caption_model.available:  # else the bar counted the caption model's batches
            bar.update(len(group))
    else:
        prompts = captions
    summary.prompt_seconds += time.perf_counter() - started
    return pd.DataFrame({
        "frame_key": group.frame_key.to_numpy(), "video_id": group.video_id.to_numpy(),
        "timestamp": group.timestamp.to_numpy(), "prompt": prompts, "caption": captions, "mode": summary.mode,
        "clip_model": encoder.record.model_id if interrogator is not None else "",
        "caption_model": caption_model.record.model_id, "reused_from": reused_from,
    })  # fmt: skip


# --- for the report --------------------------------------------------------------------------


def caption_sample_html(run: RunPaths | Path | str, captions: pd.DataFrame, count: int = 12, width: int = 200) -> str:
    """An HTML table of `count` frames spread evenly over the captions table, each with its prompt
    (the caption model's part in bold). Thumbnails are embedded, so the saved report stands alone."""
    import html

    from .plots import frame_text_sample

    def prompt_html(row) -> str:
        prompt = str(row.prompt)
        if row.caption and prompt.startswith(str(row.caption)):
            return f"<b>{html.escape(str(row.caption))}</b>{html.escape(prompt[len(row.caption):])}"
        return html.escape(prompt)

    run = run if isinstance(run, RunPaths) else RunPaths(run)
    if captions.empty:
        return "<p>No captions.</p>"
    return frame_text_sample(run, captions, prompt_html, count=count, heading="prompt", width=width)


def term_statistics(captions: pd.DataFrame, top: int = 20) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(prompt length statistics, the most frequent prompt terms with how many frames use them)."""
    prompts = captions.prompt.fillna("").astype(str)
    lengths = pd.DataFrame({"characters": prompts.str.len(), "words": prompts.str.split().str.len(),
                            "terms": prompts.str.split(", ").str.len()})  # fmt: skip
    counter: Counter[str] = Counter()
    for prompt, caption in zip(prompts, captions.caption.fillna("")):
        body = prompt[len(caption):] if caption and prompt.startswith(caption) else prompt
        counter.update({term.strip() for term in body.split(",") if term.strip()})
    frequent = pd.DataFrame(counter.most_common(top), columns=["term", "frames"])
    frequent["share"] = (frequent.frames / max(len(captions), 1)).round(3)
    return lengths.describe().T.round(1), frequent
