"""Group a run's frames into clusters, give each cluster a readable name, and pick keyframes.

What the original research notebooks did by hand (KMeans with k=15 on CLIP vectors, clusters
named by looking at them, montages, keyframes per video), as functions behind `04_cluster`,
split by concern:

* `cluster.algorithms`: arrays in, labels out. `cluster_vectors` runs KMeans (fixed k, or k
  chosen by silhouette over `k_range`) or HDBSCAN (label -1 = noise), optionally after PCA or
  UMAP; centroids always live in the original vector space, so they can be compared with CLIP
  text vectors and with frames. `place_vectors` puts new vectors into a k-means fit without changing
  it. `video_keyframes` picks the frame nearest each per-video centroid.
* `cluster.fitted`: a labelling's k-means fit saved in the run (`cache/cluster/<labelling>.npz`,
  plain arrays), so a re-run that adds a few frames (at most `cluster.refit_new_fraction`) places
  them instead of refitting: earlier frames keep their labels, distances and names.
* `cluster.naming`: `name_clusters` from distinctive caption terms (class-based TF-IDF) when
  captions exist; else the best phrases of a built-in everyday vocabulary by CLIP's text side;
  else (the weight-free descriptor has no text side) the clusters' dominant colours.
* `cluster.stage`: `cluster_run` reads the run's tables and writes `tables/clusters.parquet`,
  `tables/frames_annotated.parquet` + `.csv`, `tables/keyframes.parquet`, a montage per cluster
  and a keyframe strip per video under `plots/`; `cluster_table` and `labellings` read them back.

Example:
    >>> from frameatlas.config import load_config
    >>> from frameatlas.cluster import cluster_run, cluster_table
    >>> cfg = load_config("pipeline.yaml", overrides=["cluster.k=15"])  # doctest: +SKIP
    >>> summary = cluster_run(cfg, cfg.run_dir)  # doctest: +SKIP
    >>> summary.table[["label", "name", "size", "time_ranges"]]  # doctest: +SKIP
    >>> cluster_table(cfg.run_dir, "kmeans-k15-pca32")  # any stored labelling, no recomputing  # doctest: +SKIP
"""

from .algorithms import (
    KEYFRAME_COLUMNS,
    NOISE,
    ClusterError,
    ClusterLabels,
    FittedSpace,
    cluster_vectors,
    labelling_id,
    place_vectors,
    video_keyframes,
)
from .naming import COLOUR_NAMES, EVERYDAY_VOCABULARY, NOISE_NAME, distinctive_terms, name_clusters
from .stage import (
    CLUSTER_COLUMNS,
    KEYFRAME_TILE_WIDTH,
    MONTAGE_TILE_WIDTH,
    ClusterSummary,
    cluster_montage,
    cluster_run,
    cluster_table,
    labellings,
    time_ranges,
)

__all__ = [
    "CLUSTER_COLUMNS",
    "COLOUR_NAMES",
    "EVERYDAY_VOCABULARY",
    "KEYFRAME_COLUMNS",
    "KEYFRAME_TILE_WIDTH",
    "MONTAGE_TILE_WIDTH",
    "NOISE",
    "NOISE_NAME",
    "ClusterError",
    "ClusterLabels",
    "ClusterSummary",
    "FittedSpace",
    "cluster_montage",
    "cluster_run",
    "cluster_table",
    "cluster_vectors",
    "distinctive_terms",
    "labelling_id",
    "labellings",
    "name_clusters",
    "place_vectors",
    "time_ranges",
    "video_keyframes",
]
