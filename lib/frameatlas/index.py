"""The vector index: ChromaDB, embedded under the run by default or a Chroma server.

One collection per model (`<prefix>-<model id>`), cosine distance, ids = frame keys, with
metadata for filtering and display (video, timestamp, thumbnail). Telemetry is off, and
Chroma's default embedding function (which would download a model) is never used: vectors
always come from frameatlas.

Example:
    >>> from frameatlas.index import open_index
    >>> index = open_index("outputs/demo")  # doctest: +SKIP
    >>> collection = index.collection("clip-ViT-B-32-laion2b_s34b_b79k")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["VectorIndex", "collection_name", "open_index"]


def collection_name(prefix: str, model_id: str) -> str:
    """A valid Chroma collection name (3-512 chars of [A-Za-z0-9._-], alphanumeric ends)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{prefix}-{model_id}").strip("-._")
    return name[:512]


def _settings():
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False, allow_reset=False)


class VectorIndex:
    """A thin layer over a Chroma client: batched upserts under its limits, id listing, queries."""

    def __init__(self, client: Any, prefix: str = "frames", location: str = ""):
        self.client = client
        self.prefix = prefix
        self.location = location
        self.max_batch = max(1, int(client.get_max_batch_size()))

    def collection(self, model_id: str, *, dim: int | None = None, create: bool = True):
        name = collection_name(self.prefix, model_id)
        if not create:
            return self.client.get_collection(name, embedding_function=None)
        metadata = {"model_id": model_id, **({"dim": dim} if dim else {})}
        return self.client.get_or_create_collection(
            name, metadata=metadata, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
        )

    def has_collection(self, model_id: str) -> bool:
        names = {getattr(c, "name", c) for c in self.client.list_collections()}
        return collection_name(self.prefix, model_id) in names

    def ids(self, collection) -> set[str]:
        found: set[str] = set()
        offset = 0
        while True:
            page = collection.get(include=[], limit=self.max_batch, offset=offset)["ids"]
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


def open_index(run_root: Path | str, url: str | None = None, prefix: str = "frames") -> VectorIndex:
    """The run's embedded store (`<run>/index/`), or the Chroma server at `url`."""
    import chromadb

    if url:
        parsed = urlparse(url)
        client = chromadb.HttpClient(
            host=parsed.hostname, port=parsed.port or (443 if parsed.scheme == "https" else 8000),
            ssl=parsed.scheme == "https", settings=_settings(),
        )  # fmt: skip
        return VectorIndex(client, prefix, url)
    path = Path(run_root) / "index"
    path.mkdir(parents=True, exist_ok=True)
    return VectorIndex(chromadb.PersistentClient(path=str(path), settings=_settings()), prefix, str(path))


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
