"""CLIP image and text encoders through open_clip.

The model can be any open_clip name with a pretrained tag (`ViT-B-32` + `laion2b_s34b_b79k`),
a local checkpoint file (`pretrained: /path/to/weights.safetensors`), a Hugging Face hub id
(`hf-hub:org/repo`), or a local folder laid out like a hub repo (`local-dir:/path`, holding
`open_clip_config.json` and the weights). Weights are looked up on disk first (see `weights.py`); open_clip itself
is only ever handed local files, so loading never waits on the network.

Example:
    >>> from frameatlas.models.clip import load_open_clip
    >>> encoder = load_open_clip("ViT-B-32", "laion2b_s34b_b79k")  # doctest: +SKIP
    >>> encoder.encode_text(["a rabbit in a meadow"]).shape  # doctest: +SKIP
    (1, 512)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import ModelRecord, ModelUnavailable, l2_normalise
from .weights import hf_cache_dir, hf_cached_file, hf_cached_snapshot, hub_offline, hub_reachable

log = logging.getLogger(__name__)

__all__ = ["ClipSource", "OpenClipEncoder", "download_open_clip", "load_open_clip", "resolve_open_clip"]

HF_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CONFIG_FILE = "open_clip_config.json"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass
class ClipSource:
    """Where a CLIP model's config and weights come from, all local."""

    model_name: str  # what open_clip is given (a built-in name or `local-dir:...`)
    pretrained: str | None  # local weights file, or None (weights inside local-dir / random init)
    weights_file: Path | None
    label: str  # how people name it: "ViT-B-32/laion2b_s34b_b79k"
    preprocess: dict[str, Any] = field(default_factory=dict)
    origin: str = "tag"  # "tag" | "file" (a checkpoint the user gave) | "hf-hub" | "random"


def _download_hint(name: str, pretrained: str | None) -> str:
    return f"{name} --pretrained {pretrained}" if pretrained and not name.startswith(HF_PREFIX) else name


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith(("~", ".")) or value.endswith(CHECKPOINT_SUFFIXES)


def _tag_preprocess(tag_cfg: dict) -> dict[str, Any]:
    keys = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation", "resize_mode": "image_resize_mode"}
    return {target: tag_cfg[source] for source, target in keys.items() if tag_cfg.get(source)}


def resolve_open_clip(
    name: str, pretrained: str | None, *, cache_dir: str | Path | None = None, allow_download: bool = True
) -> ClipSource:
    """Find local files for a CLIP model, downloading only when allowed and the hub answers.

    Raises `ModelUnavailable` (fast) when the weights cannot be had, and `ValueError` for a
    model name or tag that does not exist.
    """
    import open_clip

    label = f"{name}/{pretrained}" if pretrained and not name.startswith(HF_PREFIX) else name
    hint = _download_hint(name, pretrained)
    if name.startswith(HF_PREFIX):
        repo = name[len(HF_PREFIX) :]
        for weights in WEIGHT_FILES:
            snapshot = hf_cached_snapshot(repo, [CONFIG_FILE, weights], cache_dir)
            if snapshot:
                return ClipSource(f"local-dir:{snapshot}", None, snapshot / weights, label, origin="hf-hub")
        looked = [f"the hub cache {hf_cache_dir(cache_dir)} (repo {repo})"]
        if allow_download and hub_reachable():
            snapshot = _download_hf_repo(repo, cache_dir)
            weights = next(snapshot / w for w in WEIGHT_FILES if (snapshot / w).is_file())
            return ClipSource(f"local-dir:{snapshot}", None, weights, label, origin="hf-hub")
        raise ModelUnavailable(hint, looked, _why_no_download(allow_download))

    if name.startswith(LOCAL_DIR_PREFIX):
        folder = Path(name[len(LOCAL_DIR_PREFIX) :]).expanduser().resolve()
        weights = _local_dir_weights(folder)
        if (folder / CONFIG_FILE).is_file() and weights:
            return ClipSource(f"{LOCAL_DIR_PREFIX}{folder}", None, weights, f"{folder.name}", origin="file")
        raise ModelUnavailable(name, [str(folder)], f"needs {CONFIG_FILE} and a .safetensors/.bin/.pth weights file")
    if name not in open_clip.list_models():
        raise ValueError(
            f"models.image.name = {name!r}: not an open_clip model; known names include "
            f"ViT-B-32, ViT-B-16, ViT-L-14 (see open_clip.list_models()), or use hf-hub:org/repo"
        )
    if not pretrained:
        return ClipSource(name, None, None, f"{name}/random-init", origin="random")
    if _looks_like_path(pretrained) or Path(pretrained).expanduser().exists():
        path = Path(pretrained).expanduser().resolve()
        if path.is_file():
            return ClipSource(name, str(path), path, f"{name}/{path.name}", origin="file")
        raise ModelUnavailable(hint, [str(path)], "no such file")

    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag_cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ValueError(
            f"models.image.pretrained = {pretrained!r}: not a pretrained tag of {name}; "
            f"its tags are: {tags}; or give a path to a checkpoint file"
        )
    preprocess = _tag_preprocess(tag_cfg)
    looked: list[str] = []
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        candidates = [filename] if filename else list(WEIGHT_FILES)
        if filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename.rsplit(".", 1)[0] + ".safetensors")
        for candidate in candidates:
            found = hf_cached_file(repo, candidate, cache_dir)
            if found:
                return ClipSource(name, str(found), found, label, preprocess)
        looked.append(f"the hub cache {hf_cache_dir(cache_dir)} (repo {repo})")
    url = tag_cfg.get("url", "")
    if url:
        local = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if local.is_file():
            return ClipSource(name, str(local), local, label, preprocess)
        looked.append(str(local))
    if allow_download and hub_reachable():
        path = Path(open_clip.download_pretrained(tag_cfg, cache_dir=str(cache_dir) if cache_dir else None))
        return ClipSource(name, str(path), path, label, preprocess)
    raise ModelUnavailable(hint, looked, _why_no_download(allow_download))


def _local_dir_weights(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".pth"})
    preferred = [p for p in found if p.name in WEIGHT_FILES]
    return (preferred or found or [None])[0]


def _why_no_download(allow_download: bool) -> str:
    if not allow_download:
        return "not in the cache, and models.allow_download is false"
    if hub_offline():
        return "not in the cache, and HF_HUB_OFFLINE is set"
    return "not in the cache, and the hub cannot be reached"


def _download_hf_repo(repo: str, cache_dir: str | Path | None) -> Path:
    from huggingface_hub import hf_hub_download

    config = Path(hf_hub_download(repo, CONFIG_FILE, cache_dir=str(hf_cache_dir(cache_dir))))
    for weights in WEIGHT_FILES:
        try:
            hf_hub_download(repo, weights, cache_dir=str(hf_cache_dir(cache_dir)))
            break
        except Exception:  # noqa: BLE001 - try the next file name
            continue
    return config.parent


def download_open_clip(name: str, pretrained: str | None, cache_dir: str | Path | None = None) -> ClipSource:
    """Fetch weights ahead of time (for `frameatlas models download`)."""
    return resolve_open_clip(name, pretrained, cache_dir=cache_dir, allow_download=True)


class OpenClipEncoder:
    """A loaded open_clip model: images and texts to unit vectors in one space."""

    has_text = True

    def __init__(self, source: ClipSource, device: str = "cpu", record: ModelRecord | None = None):
        import open_clip
        import torch

        self._torch = torch
        self.device = device
        self.source = source
        model, _, preprocess = open_clip.create_model_and_transforms(
            source.model_name, pretrained=source.pretrained, device=device, **source.preprocess
        )
        self.model = model.eval()
        self._preprocess = preprocess
        self._tokenizer = open_clip.get_tokenizer(source.model_name)
        with torch.inference_mode():
            probe = self._tokenizer(["probe"]).to(device)
            self._dim = int(self.model.encode_text(probe).shape[-1])
        self.record = record or ModelRecord(
            kind="image", model_id=model_id_for(source), requested=source.label, backend="open_clip"
        )
        self.record.dim = self._dim
        self.record.device = device

    @property
    def dim(self) -> int:
        return self._dim

    def preprocess(self, image: Image.Image) -> Any:
        return self._preprocess(image.convert("RGB"))

    # How a video frame becomes the model's input when the image is made from the decoded picture
    # (`input_size`), not from a thumbnail; part of the vector cache's key. Bump when that changes.
    FRAME_INPUT = "frame1"

    @property
    def input_key(self) -> str | None:
        """Names the model input made from full decoded frames (None: this model's transform
        does not start with a plain resize, so it only ever sees thumbnails)."""
        return self.FRAME_INPUT if self.input_size(1280, 720) is not None else None

    def input_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The (width, height) the model's own transform resizes a width x height image to.

        A decoder can scale a video frame straight to this size: the transform's resize then
        changes nothing, and its crop and normalisation run as usual. None when the transform
        does not start with a plain torchvision `Resize`.

        Example:
            >>> encoder.input_size(1280, 720)  # doctest: +SKIP
            (398, 224)
        """
        from torchvision.transforms import Resize

        first = self._preprocess.transforms[0] if hasattr(self._preprocess, "transforms") else None
        if type(first) is not Resize or width < 1 or height < 1:
            return None
        size = first.size
        if isinstance(size, int) or len(size) == 1:  # shortest side to `size`, as torchvision computes it
            target = size if isinstance(size, int) else size[0]
            short, long = min(width, height), max(width, height)
            new_short, new_long = target, int(target * long / short)
            if first.max_size is not None and new_long > first.max_size:
                return None
            return (new_short, new_long) if width <= height else (new_long, new_short)
        return int(size[1]), int(size[0])  # (height, width) in torchvision

    def encode_preprocessed(self, batch: list[Any]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            pixels = torch.stack(batch).to(self.device)
            features = self.model.encode_image(pixels)
        return l2_normalise(features.float().cpu().numpy())

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.encode_preprocessed([self.preprocess(image) for image in images])

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Unit vectors for a few texts (queries): `encode_text_many` in one batch.

        A query is a handful of tokens, so cutting the 77-token context to the text's own length
        (exact, see `encode_text_many`) is what makes a warm query cost milliseconds, not ~0.1 s.
        """
        return self.encode_text_many(texts, batch_size=max(1, len(texts)))

    @property
    def tokenizer(self):
        return self._tokenizer

    def encode_text_many(self, texts: list[str], *, batch_size: int = 256, on_batch=None) -> np.ndarray:
        """Unit vectors for many texts (term lists, candidate prompts), in the order given.

        Same vectors as `encode_text`, faster: texts are sorted by token count and each batch is
        cut to its longest text instead of the full 77-token context. That is exact for CLIP's
        causal text transformer, whose pooled (end-of-text) output never sees later positions.
        """
        torch = self._torch
        if not texts:
            return np.zeros((0, self._dim), np.float32)
        tokens = self._tokenizer(list(texts))
        trim = _trimmable(self.model)
        lengths = (tokens.argmax(dim=-1) + 1).numpy() if trim else np.full(len(texts), tokens.shape[1])
        order = np.argsort(lengths, kind="stable")
        vectors = np.empty((len(texts), self._dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = tokens[torch.from_numpy(rows)]
                if trim:
                    features = _encode_text_trimmed(self.model, batch[:, : int(lengths[rows].max())].to(self.device))
                else:
                    features = self.model.encode_text(batch.to(self.device))
                vectors[rows] = l2_normalise(features.float().cpu().numpy())
                if on_batch:
                    on_batch(len(rows))
        return vectors


def _trimmable(model) -> bool:
    """Whether `model` is an open_clip CLIP whose text side is causal with end-of-text pooling."""
    from open_clip.model import CLIP

    return (
        type(model) is CLIP
        and getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "attn_mask", None) is not None
    )


def _encode_text_trimmed(model, tokens):
    """`CLIP.encode_text` for tokens cut after the longest end-of-text token (see encode_text_many)."""
    import torch
    from open_clip.model import text_global_pool

    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type)
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x


def model_id_for(source: ClipSource) -> str:
    """A short, stable id for caches and index collections, e.g. `clip-ViT-B-32-laion2b_s34b_b79k`."""
    import re

    return "clip-" + re.sub(r"[^A-Za-z0-9._-]+", "-", source.label.replace("/", "-")).strip("-.")


def load_open_clip(
    name: str, pretrained: str | None, *, device: str = "cpu", cache_dir: str | Path | None = None,
    allow_download: bool = True,
) -> OpenClipEncoder:  # fmt: skip
    source = resolve_open_clip(name, pretrained, cache_dir=cache_dir, allow_download=allow_download)
    log.info("loading CLIP %s on %s (%s)", source.label, device, source.weights_file or "random weights")
    return OpenClipEncoder(source, device)
