"""Approximate against exact search: recall@k, latency and build time of the indexes frameatlas
could use, on synthetic vectors or on a run's own.

`compare_indexes` measures recall@k (against exact cosine top-k), per-query latency, batched
throughput and build time for exact numpy search, FAISS flat (`IndexFlatIP`, also exact), FAISS
LSH (`IndexLSH`, random-hyperplane bits ranked by Hamming distance, what the original notebooks
used) and ChromaDB's HNSW (what frameatlas stores vectors in). It takes any (n, dim) array:
synthetic vectors (`synthetic_corpus`) or a run's vectors (`compare_run_indexes`, which queries
with a sample of the corpus's own frames).

Every vector is treated as a direction: cosine similarity is the inner product of L2-normalised
float32 rows, which is what frameatlas's encoders produce and what its Chroma collections use.

Example:
    >>> import numpy as np
    >>> corpus, queries = synthetic_corpus(1_000, 32, queries=5, clusters=20, seed=0)
    >>> indices, scores = exact_search(corpus, queries, k=3)
    >>> indices.shape, bool(np.all(np.diff(scores, axis=1) <= 0))
    ((5, 3), True)
    >>> table = compare_indexes(corpus, queries, k=3, methods=("exact", "faiss-flat"))
    >>> list(table.method), table["recall@3"].tolist()
    (['exact', 'faiss-flat'], [1.0, 1.0])
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_METHODS",
    "SearchMethod",
    "compare_indexes",
    "compare_run_indexes",
    "exact_search",
    "synthetic_corpus",
]

DEFAULT_METHODS = ("exact", "faiss-flat", "faiss-lsh", "chroma-hnsw")
SCRATCH_PREFIX = "frameatlas-eval-chroma-"  # the only folders this module ever deletes start so

# A score block (queries x corpus) never exceeds this: 64 queries against 1M vectors is 256 MB.
_BLOCK_BYTES = 256 * 2**20
# Float32 inner products of unit vectors are good to ~1e-6; a returned neighbour whose true score
# is within this of the k-th exact score counts as a hit (see `_recall`).
_TIE_EPS = 1e-5
_LSH_RERANK_FACTOR = 10


# --------------------------------------------------------------------------- exact search


def _as_unit(vectors: np.ndarray, name: str = "vectors") -> np.ndarray:
    """`vectors` as C-contiguous float32 unit rows, copying only when it has to.

    The norm check reads the array once but, unlike normalising unconditionally, does not
    make a second 2 GB array out of a 1M x 512 corpus that is already normalised.
    """
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (n, dim) array, got shape {array.shape}")
    if not array.size:
        return array
    step = max(1, _BLOCK_BYTES // (4 * array.shape[1]))
    unit = all(
        np.all(np.abs(np.einsum("ij,ij->i", block, block) - 1.0) < 1e-3)
        for block in (array[s : s + step] for s in range(0, len(array), step))
    )
    if unit:
        return array
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


def _topk_unit(vectors: np.ndarray, queries: np.ndarray, k: int, block_bytes: int = _BLOCK_BYTES):
    """Exact top-k by inner product; inputs already float32 unit rows (no checks, no copies)."""
    n = len(vectors)
    k = min(k, n)
    indices = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=np.float32)
    chunk = max(1, block_bytes // (4 * max(n, 1)))
    for start in range(0, len(queries), chunk):
        block = queries[start : start + chunk] @ vectors.T  # (chunk, n): the only large temporary
        if k < n:
            # argpartition is O(n) per row; a full argsort of 1M scores would cost ~20x more.
            top = np.argpartition(block, n - k, axis=1)[:, n - k :]
        else:
            top = np.broadcast_to(np.arange(n), block.shape).copy()
        top.sort(axis=1)  # ascending ids first, so the stable sort below breaks ties by id
        top_scores = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        indices[start : start + chunk] = np.take_along_axis(top, order, axis=1)
        scores[start : start + chunk] = np.take_along_axis(top_scores, order, axis=1)
    return indices, scores


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k of each query among `vectors`, with numpy.

    Rows are L2-normalised first unless they already are (within 1e-3), so cosine similarity
    is an inner product. Queries are processed in chunks so that the score block stays under
    256 MB (64 queries at a time against 1M vectors), which bounds memory for any query count.

    Args:
        vectors: (n, dim) corpus.
        queries: (m, dim) query vectors (or one (dim,) vector).
        k: neighbours per query; clipped to n.

    Returns:
        (indices, scores): (m, min(k, n)) int64 row numbers into `vectors` and float32 cosine
        similarities, best first; equal scores are ordered by row number.

    Example:
        >>> import numpy as np
        >>> corpus = np.eye(4, dtype=np.float32)
        >>> exact_search(corpus, np.array([[0.9, 0.1, 0.0, 0.0]]), k=2)[0]
        array([[0, 1]])
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    vectors = _as_unit(vectors)
    queries = _as_unit(np.atleast_2d(queries), "queries")
    if vectors.shape[1] != queries.shape[1]:
        raise ValueError(f"dimension mismatch: vectors have {vectors.shape[1]}, queries {queries.shape[1]}")
    return _topk_unit(vectors, queries, k)


# --------------------------------------------------------------------------- synthetic data


def synthetic_corpus(
    n: int,
    dim: int = 512,
    *,
    queries: int = 200,
    clusters: int = 2000,
    subspace_dim: int = 16,
    spread: float = 0.15,
    noise: float = 0.1,
    common: float = 0.45,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors for index benchmarks, plus held-out queries from the same mixture.

    Uniform random unit vectors are a poor stand-in for embeddings: in 512-d every pair is
    nearly orthogonal, so "nearest neighbours" are noise and approximate indexes look worse
    than they are on real data. Frame embeddings come in groups (videos, shots) that vary
    along few directions, and CLIP-like embeddings are anisotropic: they share a large common
    component, so unrelated images still have a clearly positive cosine. So each point is
    `centre + B_c z + e`, normalised: `centre` a unit vector per cluster whose cosine with the
    other centres is about `common` (a shared direction plus a random one), `B_c` an
    orthonormal basis of a random `subspace_dim`-dimensional subspace per cluster,
    `z ~ N(0, spread^2)` per basis direction and `e` isotropic noise of total norm about
    `noise`. With the defaults a point's cosine to its centre is about 0.85 and to a point of
    another cluster about 0.35. The anisotropy matters for LSH: random hyperplanes that do not
    cut through the common direction put most points on the same side and waste bits.

    Args:
        n: corpus size.
        dim: dimension.
        queries: number of extra points drawn from the same mixture (not in the corpus).
        clusters: number of mixture components (points pick one uniformly).
        subspace_dim: dimension of each cluster's spread.
        spread: standard deviation along each of a cluster's directions.
        noise: norm of the isotropic part.
        common: cosine between cluster centres (0 = isotropic, random directions).
        seed: random seed (same seed, same data).

    Returns:
        (corpus, queries): float32 arrays of unit rows, shapes (n, dim) and (queries, dim).

    Example:
        >>> corpus, queries = synthetic_corpus(500, 16, queries=3, clusters=10)
        >>> corpus.shape, queries.shape
        ((500, 16), (3, 16))
    """
    rng = np.random.default_rng(seed)
    subspace_dim = min(subspace_dim, dim)
    if not 0.0 <= common < 1.0:
        raise ValueError(f"common must be in [0, 1), got {common}")
    shared = rng.standard_normal(dim).astype(np.float32)
    shared /= np.linalg.norm(shared)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # sqrt weights: two centres then have cosine ~ common (their random parts are ~orthogonal).
    centres = np.float32(np.sqrt(1 - common)) * centres + np.float32(np.sqrt(common)) * shared
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    total = n + queries
    out = np.empty((total, dim), dtype=np.float32)  # filled in place: no n x dim temporaries
    labels = rng.integers(clusters, size=total)
    counts = np.bincount(labels, minlength=clusters)
    # Positions are shuffled so that the corpus is not stored cluster by cluster, which would
    # favour or hurt indexes that are sensitive to insertion order (HNSW is).
    positions = rng.permutation(total)
    start = 0
    for cluster, count in enumerate(counts):
        if not count:
            continue
        basis, _ = np.linalg.qr(rng.standard_normal((dim, subspace_dim), dtype=np.float32))
        block = rng.standard_normal((count, subspace_dim), dtype=np.float32) * np.float32(spread)
        block = block @ basis.T.astype(np.float32)
        block += centres[cluster]
        block += rng.standard_normal((count, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[positions[start : start + count]] = block
        start += count
    return out[:n], out[n:]


# --------------------------------------------------------------------------- index methods


class _Method:
    """One way of answering top-k queries: build once, then search (one query or a batch)."""

    name = ""
    notes = ""
    index_bytes = 0

    def build(self, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(m, k) int64 row numbers, -1 where fewer than k came back."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class SearchMethod(_Method):
    """An index that already exists (a run's own collection, say), measured by `compare_indexes`
    as it is: nothing is built. `search(queries, k)` returns (m, k) row numbers, -1 where missing.

    Example:
        >>> import numpy as np
        >>> corpus = np.eye(3, dtype=np.float32)
        >>> method = SearchMethod("mine", lambda queries, k: exact_search(corpus, queries, k)[0])
        >>> float(compare_indexes(corpus, 3, k=1, methods=(method,))["recall@1"][0])
        1.0
    """

    def __init__(self, name: str, search, *, notes: str = "", index_bytes: int = 0):
        self.name, self._search, self.notes, self.index_bytes = name, search, notes, index_bytes

    def build(self, vectors):
        pass

    def search(self, queries, k):
        return np.asarray(self._search(queries, k), dtype=np.int64)


class _Exact(_Method):
    name = "exact"

    def build(self, vectors):
        self.vectors = vectors
        self.index_bytes = vectors.nbytes
        self.notes = "numpy matmul + argpartition (the reference); nothing to build"

    def search(self, queries, k):
        return _topk_unit(self.vectors, queries, k)[0]


class _FaissFlat(_Method):
    name = "faiss-flat"

    def build(self, vectors):
        import faiss

        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)  # copies the vectors into the index (another n x dim x 4 bytes)
        self.index_bytes = vectors.nbytes
        self.notes = f"IndexFlatIP (exact, brute force), {faiss.omp_get_max_threads()} OpenMP threads"

    def search(self, queries, k):
        return self.index.search(queries, k)[1].astype(np.int64, copy=False)

    def close(self):
        self.index = None  # the index holds a copy of the corpus: free it before the next method


class _FaissLSH(_Method):
    """Random-hyperplane LSH (SimHash): bit i of a vector is the sign of its projection on a
    random direction, and neighbours are ranked by Hamming distance between codes. The
    projection (`rotate_data=True`) is what makes the bits random hyperplanes; without it
    IndexLSH takes signs of the raw coordinates. Thresholds stay at 0 (no training), which is
    the cosine-LSH of Charikar (2002)."""

    def __init__(self, bits: int | None, rerank: bool):
        self.bits = bits
        self.rerank = rerank
        self.name = ("faiss-lsh-rerank" if rerank else "faiss-lsh") + (f":{bits}" if bits else "")

    def build(self, vectors):
        import faiss

        dim = vectors.shape[1]
        self.bits = self.bits or 2 * dim
        self.index = faiss.IndexLSH(dim, self.bits, True, False)
        # IndexLSH.add projects its whole input at once (n x bits float32: 4 GB for 1M x 1024);
        # chunks keep that temporary small.
        for start in range(0, len(vectors), 65_536):
            self.index.add(vectors[start : start + 65_536])
        self.vectors = vectors
        self.index_bytes = len(vectors) * self.bits // 8
        self.notes = f"IndexLSH, {self.bits} bits ({self.bits / dim:g} x dim), random projections, Hamming ranking"
        if self.rerank:
            self.notes += f"; top {_LSH_RERANK_FACTOR} x k candidates re-scored by exact cosine on the stored vectors"

    def search(self, queries, k):
        if not self.rerank:
            return self.index.search(queries, k)[1].astype(np.int64, copy=False)
        candidates = self.index.search(queries, min(len(self.vectors), k * _LSH_RERANK_FACTOR))[1]
        found = np.full((len(queries), k), -1, dtype=np.int64)
        for row, (query, ids) in enumerate(zip(queries, candidates)):
            ids = ids[ids >= 0]
            scores = self.vectors[ids] @ query
            best = ids[np.argsort(-scores, kind="stable")[:k]]
            found[row, : len(best)] = best
        return found

    def close(self):
        self.index = None


class _ChromaHNSW(_Method):
    """An embedded Chroma collection, as frameatlas's index stage makes them."""

    name = "chroma-hnsw"

    def __init__(self, workdir: Path | str | None, hnsw: Mapping[str, Any] | None):
        self.workdir = workdir
        self.hnsw = dict(hnsw or {})

    def build(self, vectors):
        import chromadb

        from ..index import VectorIndex, _settings, collection_name

        if self.workdir is not None:
            Path(self.workdir).mkdir(parents=True, exist_ok=True)
        # A folder made just now by mkdtemp (a fresh, unique name under workdir) is the only thing
        # `close` removes: whatever workdir already held is never touched.
        self._scratch = tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=self.workdir, ignore_cleanup_errors=True)
        self.path = Path(self._scratch.name)
        # Same settings as frameatlas's own index (telemetry off); embedding_function=None so
        # Chroma never loads (or downloads) its default model: vectors always come from us.
        index = VectorIndex(chromadb.PersistentClient(path=str(self.path), settings=_settings()), "eval")
        self.client = index.client
        if self.hnsw:
            self.collection = self.client.create_collection(
                collection_name("eval", "ann"), configuration={"hnsw": {"space": "cosine", **self.hnsw}},
                embedding_function=None,
            )  # fmt: skip
        else:
            self.collection = index.collection("ann", dim=vectors.shape[1])  # cosine, no embedding function
        for start in range(0, len(vectors), index.max_batch):  # Chroma refuses batches above its limit
            end = min(len(vectors), start + index.max_batch)
            self.collection.add(ids=[str(i) for i in range(start, end)], embeddings=vectors[start:end])
        with warnings.catch_warnings():  # Chroma 1.x warns about its own legacy config fields here
            warnings.simplefilter("ignore", DeprecationWarning)
            config = (self.collection.configuration or {}).get("hnsw") or {}
        self.notes = (
            f"PersistentClient, cosine, HNSW max_neighbors={config.get('max_neighbors', '?')} "
            f"ef_construction={config.get('ef_construction', '?')} ef_search={config.get('ef_search', '?')}; "
            f"inserted in batches of {index.max_batch}"
        )
        self.index_bytes = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def search(self, queries, k):
        result = self.collection.query(query_embeddings=queries, n_results=k, include=["distances"])
        found = np.full((len(queries), k), -1, dtype=np.int64)
        for row, ids in enumerate(result["ids"]):
            found[row, : len(ids)] = np.asarray(ids, dtype=np.int64)
        return found

    def close(self):
        # Also runs after a failed build, so every attribute may be missing.
        collection, client = getattr(self, "collection", None), getattr(self, "client", None)
        if collection is not None and client is not None:
            try:
                client.delete_collection(collection.name)
            except Exception as error:  # noqa: BLE001 - cleanup must not hide the results or the first error
                log.debug("could not delete the evaluation collection: %s", error)
        self.collection = self.client = None
        scratch = getattr(self, "_scratch", None)
        if scratch is not None:
            scratch.cleanup()  # removes exactly the folder `build` created, nothing else
            self._scratch = None


def _method(spec: str, *, lsh_bits: int | None, workdir, hnsw) -> _Method:
    name, _, arg = spec.partition(":")
    if arg and not (name.startswith("faiss-lsh") and arg.isdigit() and int(arg) > 0):
        raise ValueError(f"method {spec!r}: only faiss-lsh and faiss-lsh-rerank take a bit count (faiss-lsh:1024)")
    if name == "exact":
        return _Exact()
    if name == "faiss-flat":
        return _FaissFlat()
    if name in ("faiss-lsh", "faiss-lsh-rerank"):
        return _FaissLSH(int(arg) if arg else lsh_bits, rerank=name.endswith("rerank"))
    if name == "chroma-hnsw":
        return _ChromaHNSW(workdir, hnsw)
    known = "exact, faiss-flat, faiss-lsh[:bits], faiss-lsh-rerank[:bits], chroma-hnsw"
    raise ValueError(f"unknown method {spec!r}; known: {known}")


def _recall(vectors: np.ndarray, queries: np.ndarray, found: np.ndarray, kth_scores: np.ndarray, k: int) -> float:
    """Mean fraction of the k results that are true top-k neighbours, ties forgiven.

    A returned row counts when its exact score reaches the k-th exact score (minus 1e-5), as
    in ann-benchmarks: frames that are exact duplicates (black frames, static shots) have
    equal scores, and which of them an index returns is arbitrary. Repeated ids count once.
    """
    hits = 0
    for query, ids, kth in zip(queries, found, kth_scores):
        ids = np.unique(ids[ids >= 0])
        hits += min(k, int(np.count_nonzero(vectors[ids] @ query >= kth - _TIE_EPS)))
    return hits / (k * len(queries))


def compare_indexes(
    vectors: np.ndarray | tuple[pd.DataFrame, np.ndarray],
    queries: np.ndarray | int | None = None,
    *,
    k: int = 10,
    methods: Sequence[str | SearchMethod] = DEFAULT_METHODS,
    lsh_bits: int | None = None,
    workdir: Path | str | None = None,
    seed: int = 0,
    batched: bool = True,
    hnsw: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Recall@k, latency and build time of approximate indexes against exact cosine search.

    For each method the index is built from `vectors` (timed: `build_s`), one untimed query
    warms it up, then every query is sent on its own, as a user searching would (`query_ms`:
    mean; `query_p50_ms`, `query_p95_ms`: median and 95th percentile), then all queries in one
    call (`batch_qps`, best of two calls). Results are compared with the exact top-k (numpy);
    see `_recall` for how ties count. Indexes are built one at a time and freed before the
    next, so peak memory is the corpus plus one index.

    Methods: `exact` (numpy; recall 1 by construction, the latency reference), `faiss-flat`
    (`faiss.IndexFlatIP`, exact too), `faiss-lsh` (`faiss.IndexLSH` with `lsh_bits` bits,
    default 2 x dim: 1024 bits = 128 bytes per vector for CLIP's 512-d, a 16x smaller index
    than float32; more bits give better recall and slower Hamming scans; `faiss-lsh:4096`
    picks a count for one row), `faiss-lsh-rerank[:bits]` (LSH's top 10 x k candidates re-scored
    exactly, the usual way LSH is used), `chroma-hnsw` (an embedded Chroma collection like
    frameatlas's, in a folder it creates with `tempfile.mkdtemp` under `workdir` and deletes afterwards (nothing
    else in `workdir` is touched); `hnsw`
    overrides Chroma's HNSW settings, e.g. `{"ef_search": 200}`); or a `SearchMethod`: an index that
    already exists, measured as it is.

    Args:
        vectors: (n, dim) corpus, or the `(table, vectors)` pair `frameatlas.store.load_vectors`
            returns.
        queries: (m, dim) query vectors; or an int: that many corpus rows picked at random
            (`seed`); None: min(200, n) corpus rows. Corpus rows as queries find themselves,
            and that counts as a hit (a frame is its own nearest neighbour, so it is in every exact top-k).
        k: neighbours per query.
        methods: which rows to produce, in order.
        lsh_bits: LSH code length for `faiss-lsh` without an explicit `:bits`.
        workdir: where Chroma's temporary store goes (default: the system temp folder).
        seed: for picking corpus rows as queries.
        batched: also time all queries in one call per method (`batch_qps`; NaN when False).
        hnsw: Chroma HNSW configuration overrides.

    Returns:
        One row per method: `method`, `recall@{k}`, `query_ms`, `query_p50_ms`, `query_p95_ms`,
        `batch_qps`, `build_s`, `index_mb` (index size; Chroma's on disk), `notes`. `df.attrs` holds n, dim, k, the query count and where
        the queries came from.

    Example:
        >>> from frameatlas.evaluation import compare_indexes, synthetic_corpus
        >>> corpus, queries = synthetic_corpus(2_000, 64, queries=20, clusters=40)
        >>> table = compare_indexes(corpus, queries, k=10, methods=("exact", "faiss-lsh"))
        >>> float(table.loc[0, "recall@10"])
        1.0
    """
    if isinstance(vectors, tuple):
        vectors = vectors[1]
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    vectors = _as_unit(vectors)
    n, dim = vectors.shape
    if not n:
        raise ValueError("compare_indexes: the corpus is empty")
    if queries is None or isinstance(queries, (int, np.integer)):
        count = min(n, 200 if queries is None else int(queries))
        rows = np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
        queries = vectors[rows]
        source = f"{count} corpus rows (each finds itself: that counts as a hit)"
    else:
        queries = _as_unit(np.atleast_2d(queries), "queries")
        source = "given"
        if queries.shape[1] != dim:
            raise ValueError(f"dimension mismatch: vectors have {dim}, queries {queries.shape[1]}")
    if not len(queries):
        raise ValueError("compare_indexes: no queries")
    k = min(k, n)

    truth_scores = _topk_unit(vectors, queries, k)[1]
    kth = truth_scores[:, k - 1]
    rows_out = []
    for spec in methods:
        method = spec if isinstance(spec, _Method) else _method(spec, lsh_bits=lsh_bits, workdir=workdir, hnsw=hnsw)
        try:
            started = time.perf_counter()
            method.build(vectors)
            build = time.perf_counter() - started
            method.search(queries[:1], k)  # warm-up: lazy loads, thread pools, caches
            found = np.empty((len(queries), k), dtype=np.int64)
            latencies = np.empty(len(queries))
            for i in range(len(queries)):
                started = time.perf_counter()
                found[i] = method.search(queries[i : i + 1], k)[0]
                latencies[i] = time.perf_counter() - started
            qps = float("nan")
            if batched:  # best of two: the first batched call may set up BLAS thread pools
                best = float("inf")
                for _ in range(2):
                    started = time.perf_counter()
                    method.search(queries, k)
                    best = min(best, time.perf_counter() - started)
                qps = len(queries) / best
            rows_out.append({
                "method": method.name,
                f"recall@{k}": _recall(vectors, queries, found, kth, k),
                "query_ms": 1000 * float(latencies.mean()),
                "query_p50_ms": 1000 * float(np.median(latencies)),
                "query_p95_ms": 1000 * float(np.percentile(latencies, 95)),
                "batch_qps": qps,
                "build_s": build,
                "index_mb": method.index_bytes / 2**20,
                "notes": method.notes,
            })  # fmt: skip
            log.info("compare_indexes: %s recall@%d %.3f, %.2f ms/query", method.name, k,
                     rows_out[-1][f"recall@{k}"], rows_out[-1]["query_ms"])  # fmt: skip
        finally:
            method.close()
    table = pd.DataFrame(rows_out)
    table.attrs.update({"n": n, "dim": dim, "k": k, "queries": len(queries), "query_source": source})
    return table


def compare_run_indexes(run, model_id: str | None = None, *, queries: int = 200, **kwargs) -> pd.DataFrame:
    """`compare_indexes` on a run's stored vectors, queried with `queries` of its own frames.

    Example:
        >>> table = compare_run_indexes("outputs/demo", queries=100)  # doctest: +SKIP
    """
    from ..store import load_vectors

    table, vectors = load_vectors(run, model_id)
    models = sorted(set(table.model_id)) if len(table) else []
    if len(models) > 1:
        raise ValueError(f"the run holds vectors of several models ({', '.join(models)}): pass model_id")
    result = compare_indexes(vectors, queries, **kwargs)
    result.attrs["model_id"] = models[0] if models else model_id
    return result
