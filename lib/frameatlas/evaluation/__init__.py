"""How good is the search: approximate indexes against exact search, and robustness to noise.

Two questions the original research asked, answered on this toolkit's own vectors, one module each:

* `evaluation.index_comparison`: `compare_indexes` (recall@k, latency, build time of exact numpy
  search, FAISS flat and LSH, and ChromaDB's HNSW), `compare_run_indexes` on a run's vectors,
  `exact_search`, and `synthetic_corpus` for benchmarks.
* `evaluation.robustness`: `noise_robustness` (is a frame still found under ImageNet-C impulse
  noise?), `salt_and_pepper`, and the chart (`robustness_figure`, `robustness_image`).

Neither imports a stage: vectors come in as arrays (or through `store.load_vectors`).

Example:
    >>> from frameatlas.evaluation import compare_indexes, synthetic_corpus
    >>> corpus, queries = synthetic_corpus(500, 16, queries=5, clusters=10)
    >>> compare_indexes(corpus, queries, k=3, methods=("exact",))["recall@3"].tolist()
    [1.0]
"""

from .index_comparison import DEFAULT_METHODS, SearchMethod, compare_indexes, compare_run_indexes, exact_search, synthetic_corpus
from .robustness import (
    IMPULSE_SEVERITIES,
    noise_robustness,
    recall_under_noise,
    robustness_figure,
    robustness_image,
    salt_and_pepper,
)  # fmt: skip

__all__ = [
    "DEFAULT_METHODS",
    "IMPULSE_SEVERITIES",
    "SearchMethod",
    "compare_indexes",
    "compare_run_indexes",
    "exact_search",
    "noise_robustness",
    "recall_under_noise",
    "robustness_figure",
    "robustness_image",
    "salt_and_pepper",
    "synthetic_corpus",
]
