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

    python benchmarks/bench_project.py --rerun RUN [--repeat 3] [--profile] [--json OUT]

**A re-run that adds a video** (`--rerun`): RUN is a run whose visualize stage ran before a video
was added and whose earlier stages have run since (tables hold the new frames; `cache/` holds the
earlier fits and projections). Each repeat copies it and runs `visualize.write_visualizations` on
the copy in a fresh Python process (imports of frameatlas, pandas, plotly not timed; umap's import,
when a refit needs it, timed as the stage pays it), once with `visualize.refit_new_fraction` 0 (every
projection fitted again: the stage before kept fits) and once with the run's config (new frames
placed), in alternating order: wall and CPU seconds of the call, and their ratio per pair.
`--profile` prints each variant's cProfile (by cumulative time) once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


RERUN_CHILD = """
import cProfile, json, pstats, resource, sys, time
from frameatlas.config import config_from_dict
from frameatlas.store import RunPaths
from frameatlas import visualize
run = RunPaths(sys.argv[1])
data = json.loads(run.config_file.read_text())
data["run"] = {"output_dir": str(run.root.parent), "name": run.root.name}
if sys.argv[2] == "refit":
    data["visualize"]["refit_new_fraction"] = 0
cfg = config_from_dict(data)
profiler = cProfile.Profile() if sys.argv[3] == "1" else None
usage = resource.getrusage(resource.RUSAGE_SELF)
started = time.perf_counter()
if profiler:
    profiler.enable()
summary = visualize.write_visualizations(cfg, run)
if profiler:
    profiler.disable()
wall = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
if profiler:
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
print(json.dumps({"wall": wall, "cpu": cpu, "notes": summary.notes, "counts": summary.counts}))
"""


def rerun(run: Path, variant: str, folder: Path, profile: bool) -> dict:
    copy = folder / f"run-{variant}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    env = {**os.environ, "FRAMEATLAS_PROGRESS": "off", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", RERUN_CHILD, str(copy), variant, "1" if profile else "0"],
                          env=env, check=True, capture_output=True, text=True)  # fmt: skip
    if profile:
        print(f"--- cProfile, {variant}:\n" + done.stderr[-12000:], flush=True)
    shutil.rmtree(copy)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main_rerun(args: argparse.Namespace) -> None:
    results: dict = {"run": str(args.rerun), "load_average_at_start": os.getloadavg(), "refit": [], "place": []}
    print(f"load average at start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="frameatlas-bench-rerun-") as temporary:
        for repeat in range(args.repeat):
            order = ("refit", "place") if repeat % 2 == 0 else ("place", "refit")
            for variant in order:
                results[variant].append(rerun(args.rerun, variant, Path(temporary), args.profile and repeat == 0))
            refit, place = results["refit"][-1], results["place"][-1]
            print(f"run {repeat + 1}: refit {refit['wall']:.2f} s wall / {refit['cpu']:.2f} s CPU, "
                  f"place {place['wall']:.2f} s / {place['cpu']:.2f} s", flush=True)  # fmt: skip
    print("place:", *results["place"][0]["notes"], sep="\n  ")
    for measure in ("wall", "cpu"):
        for variant in ("refit", "place"):
            values = [r[measure] for r in results[variant]]
            print(f"{variant} {measure}: median {statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})")
        pairs = sorted(r[measure] / p[measure] for r, p in zip(results["refit"], results["place"]))
        print(f"refit / place, {measure}: median {statistics.median(pairs):.2f}x (pairs {pairs[0]:.2f}-{pairs[-1]:.2f})")
    results["load_average_at_end"] = os.getloadavg()
    print(f"load average at end: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


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
    parser.add_argument("--rerun", type=Path, help="time the visualize stage on this grown run instead (see above)")
    parser.add_argument("--profile", action="store_true", help="--rerun: print each variant's cProfile once")
    args = parser.parse_args()
    if args.rerun:
        main_rerun(args)
        return

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
