"""Encoders whose weights load on first use, described before they load.

A stage that finds every vector cached needs a model's record (its id, dimension, banner) but
not the model: loading CLIP means importing torch and open_clip (seconds) and reading the
weights. So `image_encoder` and `text_encoder` hand out lazy encoders:

* what a model *is* comes from a small per-user cache (`model_records.json`), filled the first
  time the model is resolved and loaded on this machine and checked on every use against the
  weights file's size and modification time (a changed file is resolved and loaded again);
* the weights load on the first call that needs them (encoding an image, `input_size`, ...);
* text vectors (queries, cluster-naming vocabulary) are kept per model in `text_vectors.sqlite`
  beside it, keyed by the weights' SHA-256 when known, so a text a model has encoded once is
  never encoded, nor the model loaded for it, again.

Example:
    >>> from frameatlas.config import ModelsConfig
    >>> from frameatlas.models import image_encoder
    >>> encoder = image_encoder(ModelsConfig())  # doctest: +SKIP
    >>> encoder.record.model_id, encoder.loaded  # doctest: +SKIP
    ('clip-ViT-B-32-laion2b_s34b_b79k', False)
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .base import ModelRecord

log = logging.getLogger(__name__)

__all__ = ["LazyImageEncoder", "LazyTextEncoder", "RecordCache", "TextVectorCache", "file_stamp"]

RECORDS_FILE = "model_records.json"
TEXT_VECTORS_FILE = "text_vectors.sqlite"


def _user_cache(name: str) -> Path:
    from ..files import user_cache_dir

    return user_cache_dir(name)


def file_stamp(path: Path | str | None) -> list | None:
    """(size, mtime_ns) of a file or folder, or None when it is not there."""
    if path is None:
        return None
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


class RecordCache:
    """What models resolved to and loaded as on this machine, in the user's cache (a JSON file).

    Entries are looked up by a key naming everything the resolution depends on; the caller
    checks an entry is still true (the weights' stamp) before trusting it. Writes are atomic;
    two processes writing at once lose one entry at worst, which is then computed again.
    """

    def __init__(self, path: Path | None = None):
        self.path = path or _user_cache(RECORDS_FILE)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self._read().get(key)
        return entry if isinstance(entry, dict) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        from ..files import atomic_write_json

        data = self._read()
        data[key] = entry
        try:
            atomic_write_json(self.path, data)
        except OSError as error:  # a read-only home: everything still works, only slower
            log.debug("cannot write %s: %s", self.path, error)


class TextVectorCache:
    """Unit vectors of texts by one model (`model_key`), kept in SQLite in the user's cache."""

    def __init__(self, model_key: str, path: Path | None = None):
        self.model_key = model_key
        self.path = path or _user_cache(TEXT_VECTORS_FILE)
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=10)
        connection.execute("CREATE TABLE IF NOT EXISTS vectors (model TEXT, text TEXT, vector BLOB, PRIMARY KEY (model, text))")
        return connection

    def lookup(self, texts: list[str]) -> dict[str, np.ndarray]:
        wanted = sorted(set(texts))
        found: dict[str, np.ndarray] = {}
        try:
            with self._lock, self._connect() as connection:
                for start in range(0, len(wanted), 500):
                    chunk = wanted[start : start + 500]
                    rows = connection.execute(
                        f"SELECT text, vector FROM vectors WHERE model = ? AND text IN ({','.join('?' * len(chunk))})",
                        [self.model_key, *chunk],
                    )
                    found.update((text, np.frombuffer(blob, dtype=np.float32)) for text, blob in rows)
        except sqlite3.Error as error:
            log.debug("text vector cache %s unreadable (%s); encoding instead", self.path, error)
            return {}
        return found

    def store(self, vectors: dict[str, np.ndarray]) -> None:
        rows = [(self.model_key, text, np.asarray(v, np.float32).tobytes()) for text, v in vectors.items()]
        try:
            with self._lock, self._connect() as connection:
                connection.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows)
        except sqlite3.Error as error:
            log.debug("cannot write the text vector cache %s: %s", self.path, error)


def _cached_encode(cache: TextVectorCache | None, texts: list[str], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """`encode(texts)`, taking what `cache` knows from it and encoding (then keeping) the rest."""
    texts = [str(text) for text in texts]
    if cache is None or not texts:
        return encode(texts)
    known = cache.lookup(texts)
    missing = sorted(set(texts) - set(known))
    if missing:
        fresh = dict(zip(missing, np.asarray(encode(missing), np.float32)))
        cache.store(fresh)
        known.update(fresh)
    return np.stack([known[text] for text in texts]).astype(np.float32, copy=False)


class _Lazy:
    """Loads the real encoder once, on the first call that needs it (thread-safe)."""

    def __init__(self, record: ModelRecord, load: Callable[[ModelRecord], Any], on_loaded: Callable[[Any], None] | None):
        self.record = record
        self._load = load
        self._on_loaded = on_loaded
        self._encoder: Any = None
        self._loading = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the weights are loaded (in this process)."""
        return self._encoder is not None

    def load(self) -> Any:
        """The real encoder, loading it now if needed."""
        if self._encoder is None:
            with self._loading:
                if self._encoder is None:
                    encoder = self._load(self.record)
                    if encoder.record is not self.record:  # keep one record object: summaries hold it
                        self.record.__dict__.update(encoder.record.as_dict())
                        encoder.record = self.record
                    self._encoder = encoder
                    if self._on_loaded is not None:
                        self._on_loaded(encoder)
        return self._encoder

    def __getattr__(self, name: str) -> Any:  # anything else the real encoder offers (tokenizer, model, ...)
        if name.startswith("__") or name in {"_encoder", "_load", "_on_loaded", "_loading", "record"}:
            raise AttributeError(name)
        return getattr(self.load(), name)


class LazyImageEncoder(_Lazy):
    """An image(-text) encoder (CLIP) that loads its weights on first use.

    `record`, `has_text`, `input_key` and (once known on this machine) `dim` need no loading;
    `encode_text` answers from the text vector cache when it can.
    """

    def __init__(
        self, record: ModelRecord, load: Callable[[ModelRecord], Any], *, has_text: bool = True,
        input_key: str | None | bool = False, text_cache: TextVectorCache | None = None,
        on_loaded: Callable[[Any], None] | None = None,
    ):  # fmt: skip
        super().__init__(record, load, on_loaded)
        self.has_text = has_text
        self._input_key = input_key  # False: not known without loading
        self._text_cache = text_cache

    @property
    def dim(self) -> int:
        return self.record.dim or self.load().dim

    @property
    def input_key(self) -> str | None:
        if self._input_key is False:
            return getattr(self.load(), "input_key", None)
        return self._input_key  # type: ignore[return-value]

    def input_size(self, width: int, height: int) -> tuple[int, int] | None:
        return self.load().input_size(width, height)

    def preprocess(self, image) -> Any:
        return self.load().preprocess(image)

    def encode_preprocessed(self, batch: list[Any]) -> np.ndarray:
        return self.load().encode_preprocessed(batch)

    def encode_images(self, images: list) -> np.ndarray:
        return self.load().encode_images(images)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return _cached_encode(self._text_cache, list(texts), lambda todo: self.load().encode_text(todo))


class LazyTextEncoder(_Lazy):
    """A sentence encoder that loads on first use; texts it encoded before come from the cache."""

    def __init__(
        self, record: ModelRecord, load: Callable[[ModelRecord], Any], *, text_cache: TextVectorCache | None = None,
        on_loaded: Callable[[Any], None] | None = None,
    ):  # fmt: skip
        super().__init__(record, load, on_loaded)
        self._text_cache = text_cache

    @property
    def dim(self) -> int:
        return self.record.dim or self.load().dim

    def encode(self, texts: list[str]) -> np.ndarray:
        return _cached_encode(self._text_cache, list(texts), lambda todo: self.load().encode(todo))


def environment_key() -> dict[str, str]:
    """Environment variables that change where weights are found."""
    names = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "XDG_CACHE_HOME")
    return {name: os.environ[name] for name in names if name in os.environ}
