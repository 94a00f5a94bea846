"""The vector index: ChromaDB, embedded under the run by default or a Chroma server.

Collections are scoped to the run: `<prefix>-<run name>-<run id>-<model id or channel>`, cosine
distance, ids = frame keys, with metadata for filtering and display (video, timestamp,
thumbnail). The run id (`run.json`, made by the embed stage) makes two runs on one Chroma server
with the same name and prefix still use different collections, so neither ever touches the
other's vectors. On purpose, a run can also add its image vectors to one collection shared with
other runs (`index.shared_collection`): there ids start with the run id, metadata carries
`run_id` and `run_name`, and nothing is ever deleted. Collections named `<prefix>-<model id>`
(runs made before run scoping) are left alone.

Telemetry is off, and Chroma's default embedding function (which would download a model) is
never used: vectors always come from frameatlas.

Example:
    >>> from frameatlas.index import collection_name
    >>> collection_name("frames", "clip-ViT-B-32", scope=RunScope("demo", "3f2a9c0d1b4e"))
    'frames-demo-3f2a9c0d1b4e-clip-ViT-B-32'
    >>> index = open_index("outputs/demo")  # doctest: +SKIP
    >>> collection = index.collection("clip-ViT-B-32-laion2b_s34b_b79k")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from .store import RunPaths

log = logging.getLogger(__name__)

__all__ = ["IndexNotReady", "RunScope", "VectorIndex", "collection_name", "open_index", "shared_id"]

MAX_NAME = 512  # Chroma's limit on collection names
_HASH_CHARS = 16


class IndexNotReady(LookupError):
    """The run has no index identity yet (no `run.json`), so it has no collections to read."""


@dataclass(frozen=True)
class RunScope:
    """Which run a set of collections belongs to: the run folder's name and its id (`run.json`)."""

    name: str
    run_id: str

    @classmethod
    def of(cls, run: RunPaths, *, create: bool = False) -> RunScope:
        """The run's scope; `create` (writers holding the run's lock) gives the run an id if it has none."""
        run_id = run.run_id(create=create)
        if run_id is None:
            raise IndexNotReady(
                f"{run.root}: this run has no index identity ({run.identity_file.name} is missing), so it has no "
                "vector-index collections to read; re-run the embed stage (python run_pipeline.py --stages embed)"
            )
        return cls(run.root.name, run_id)


def _valid_name(raw: str) -> str:
    """`raw` made a valid Chroma collection name: 3-512 chars of [A-Za-z0-9._-], alphanumeric ends,
    no '..'. Too long a name keeps its start and ends with a hash of the whole, so it stays unique."""
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", raw)).strip("-._")
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:_HASH_CHARS]
        name = name[: MAX_NAME - _HASH_CHARS - 1].rstrip("-._") + "-" + digest
    if len(name) < 3:
        name = (name + "-" if name else "") + hashlib.sha256(raw.encode("utf-8")).hexdigest()[:_HASH_CHARS]
    return name


def collection_name(prefix: str, model_id: str, *, scope: RunScope | None = None) -> str:
    """A valid Chroma collection name: `<prefix>-<run name>-<run id>-<model id>`, or
    `<prefix>-<model id>` without a scope (throwaway indexes, such as the evaluation's)."""
    parts = [prefix, *((scope.name, scope.run_id) if scope else ()), model_id]
    cleaned = (re.sub(r"[^A-Za-z0-9._-]+", "-", part).strip("-") for part in parts)  # "my run (2)" -> "my-run-2"
    return _valid_name("-".join(part for part in cleaned if part))


def shared_id(run_id: str, frame_key: str) -> str:
    """A frame's id in a collection shared by several runs."""
    return f"{run_id}/{frame_key}"


def _settings():
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False, allow_reset=False)


class VectorIndex:
    """A thin layer over a Chroma client: the run's collections, batched upserts under Chroma's
    limits, id listing, queries."""

    def __init__(self, client: Any, prefix: str = "frames", location: str = "", scope: RunScope | None = None):
        self.client = client
        self.prefix = prefix
        self.location = location
        self.scope = scope
        self.max_batch = max(1, int(client.get_max_batch_size()))

    def name(self, model_id: str) -> str:
        """The collection name this index uses for `model_id` (or a text channel's `<channel>-<model id>`)."""
        return collection_name(self.prefix, model_id, scope=self.scope)

    def collection(self, model_id: str, *, dim: int | None = None, create: bool = True):
        """This run's collection for `model_id`; with `create=False` a missing one raises Chroma's NotFoundError."""
        name = self.name(model_id)
        if not create:
            return self.client.get_collection(name, embedding_function=None)
        metadata: dict[str, Any] = {"model_id": model_id, **({"dim": dim} if dim else {})}
        if self.scope:
            metadata.update(run_id=self.scope.run_id, run_name=self.scope.name)
        return self.client.get_or_create_collection(
            name, metadata=metadata, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
        )

    def shared_collection(self, name: str, model_id: str, *, dim: int | None = None):
        """The collection `name` shared with other runs (`index.shared_collection`), created if missing.

        It holds one model's vectors: a collection made for another model is refused, naming both.
        """
        collection = self.client.get_or_create_collection(
            _valid_name(name), metadata={"model_id": model_id, "shared": True, **({"dim": dim} if dim else {})},
            configuration={"hnsw": {"space": "cosine"}}, embedding_function=None,
        )  # fmt: skip
        holds = (collection.metadata or {}).get("model_id")
        if holds and holds != model_id:
            raise ValueError(
                f"index.shared_collection = {name!r}: that collection holds vectors of {holds}, this run embeds "
                f"with {model_id}; vectors of two models cannot be compared, so choose another shared collection name"
            )
        return collection

    def owns(self, collection) -> bool:
        """True for a collection of this run (made by `collection` under this index's scope)."""
        metadata = collection.metadata or {}
        return self.scope is not None and metadata.get("run_id") == self.scope.run_id and not metadata.get("shared")

    def has_collection(self, model_id: str) -> bool:
        names = {getattr(c, "name", c) for c in self.client.list_collections()}
        return self.name(model_id) in names

    def ids(self, collection, where: dict | None = None) -> set[str]:
        """Every id in `collection` (those whose metadata match `where`, if given), page by page."""
        found: set[str] = set()
        offset = 0
        while True:
            page = collection.get(where=where, include=[], limit=self.max_batch, offset=offset)["ids"]
            found.update(page)
            if len(page) < self.max_batch:
                return found
            offset += len(page)

    def upsert(self, collection, ids: list[str], vectors: np.ndarray, metadatas: list[dict]) -> int:
        for start in range(0, len(ids), self.max_batch):
            end = start + self.max_batch
            collection.upsert(
                ids=ids[start:end], embeddings=np.asarray(vectors[start:end], dtype=np.float32), metadatas=metadatas[start:end]
            )
        return len(ids)

    def delete(self, collection, ids: list[str]) -> int:
        """Delete `ids` from one of this run's own collections (never from a shared or another run's one)."""
        if not self.owns(collection):
            raise ValueError(f"collection {collection.name!r} is not one of this run's own; frameatlas never deletes there")
        for start in range(0, len(ids), self.max_batch):
            collection.delete(ids=ids[start : start + self.max_batch])
        return len(ids)

    def query(self, collection, vectors: np.ndarray, k: int, where: dict | None = None) -> list[pd.DataFrame]:
        """Nearest neighbours per query vector: DataFrames of frame_key, score (cosine similarity), metadata."""
        result = collection.query(
            query_embeddings=np.asarray(vectors, dtype=np.float32), n_results=k, where=where,
            include=["distances", "metadatas"],
        )  # fmt: skip
        tables = []
        for ids, distances, metadatas in zip(result["ids"], result["distances"], result["metadatas"]):
            table = pd.DataFrame(metadatas or [{}] * len(ids))
            table.insert(0, "frame_key", ids)
            table.insert(1, "score", 1.0 - np.asarray(distances, dtype=np.float64))
            tables.append(table)
        return tables


def _client(run: RunPaths, url: str | None):
    import chromadb

    if url:
        parsed = urlparse(url)
        client = chromadb.HttpClient(
            host=parsed.hostname, port=parsed.port or (443 if parsed.scheme == "https" else 8000),
            ssl=parsed.scheme == "https", settings=_settings(),
        )  # fmt: skip
        return client, url
    path = run.root / "index"
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=_settings()), str(path)


def open_index(
    run_root: RunPaths | Path | str, url: str | None = None, prefix: str = "frames", *, writer: bool = False
) -> VectorIndex:
    """The run's collections in its embedded store (`<run>/index/`), or on the Chroma server at `url`.

    `writer=True` (the embed stage, which holds the run's lock) gives the run its id if it has
    none; a reader on a run without one gets `IndexNotReady` saying to re-run the embed stage.
    """
    run = run_root if isinstance(run_root, RunPaths) else RunPaths(run_root)
    scope = RunScope.of(run, create=writer)
    client, location = _client(run, url)
    return VectorIndex(client, prefix, location, scope)


def frame_metadata(frames: pd.DataFrame) -> list[dict]:
    """Chroma metadata for frames rows (Chroma takes str/int/float/bool, no nulls)."""
    columns = ["video_id", "video_name", "timestamp", "frame_index", "thumbnail", "shot_id"]
    records = []
    for row in frames[[c for c in columns if c in frames.columns]].to_dict("records"):
        clean: dict[str, Any] = {}
        for key, value in row.items():
            if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
                continue
            clean[key] = value.item() if isinstance(value, np.generic) else value
        records.append(clean)
    return records


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
