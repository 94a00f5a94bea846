"""Projections for the 3D maps: UMAP's one-off numba compilation, and each method's time on a run's vectors.

    python benchmarks/bench_project.py [--run outputs/demo] [--repeat 3] [--json OUT]

Each measurement runs in a fresh Python process (the timed part includes importing umap, which
compiles part of its numba code, but not numpy or frameatlas), so numba's
compile cache is the only thing carried between runs:

* **UMAP, cold**: `NUMBA_CACHE_DIR` an empty folder: the first UMAP on a machine compiles its
  numerical code (what a new user's first `05_visualize` pays once).
* **UMAP, warm**: the same folder again: the compiled code is read back (every later run).
* **t-SNE** and **PCA**: the same vectors, 3 dimensions, the stage's parameters.

The vectors are the run's `tables/embeddings.parquet` (the demo's, by default); without a run, 649
random unit vectors of 512 dimensions. Medians of `--repeat`, with the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys, time
import numpy as np
from frameatlas.project import configure_numba_cache, project, _import_umap
configure_numba_cache()
vectors = np.load(sys.argv[1])
method = sys.argv[2]
started = time.perf_counter()
if method == "umap":
    _import_umap()  # importing umap compiles (or reads back) part of its numba code: counted
points = project(vectors, method, dims=3, seed=0)
print(time.perf_counter() - started)
assert points.shape == (len(vectors), 3)
"""


def vectors_file(run: Path | None, folder: Path) -> tuple[Path, str]:
    import numpy as np

    if run is not None and (run / "tables" / "embeddings.parquet").exists():
        import pandas as pd

        table = pd.read_parquet(run / "tables" / "embeddings.parquet")
        vectors = np.stack(table.vector.to_numpy()).astype(np.float32)
        what = f"{run}/tables/embeddings.parquet ({len(vectors)} x {vectors.shape[1]}, {table.model_id.iloc[0]})"
    else:
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((649, 512)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        what = "649 random unit vectors of 512 dimensions"
    path = folder / "vectors.npy"
    np.save(path, vectors)
    return path, what


def timed(vectors: Path, method: str, numba_cache: Path) -> float:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_cache), "FRAMEATLAS_PROGRESS": "off"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(vectors), method], env=env, check=True, capture_output=True, text=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    results: dict = {"load_average_at_start": os.getloadavg()}
    print(f"load average at start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="frameatlas-bench-project-") as temporary:
        folder = Path(temporary)
        vectors, what = vectors_file(args.run, folder)
        print(f"vectors: {what}", flush=True)
        results["vectors"] = what
        runs: dict[str, list[float]] = {"umap_cold": [], "umap_warm": [], "tsne": [], "pca": []}
        for repeat in range(args.repeat):
            cache = folder / f"numba-{repeat}"
            cache.mkdir()
            runs["umap_cold"].append(timed(vectors, "umap", cache))
            runs["umap_warm"].append(timed(vectors, "umap", cache))
            runs["tsne"].append(timed(vectors, "tsne", cache))
            runs["pca"].append(timed(vectors, "pca", cache))
            print(f"run {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items()), flush=True)
    for name, values in runs.items():
        results[name] = {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}
        print(f"{name}: median {statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})")
    results["load_average_at_end"] = os.getloadavg()
    print(f"load average at end: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
