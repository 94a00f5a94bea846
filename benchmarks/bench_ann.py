"""Approximate vs exact nearest-neighbour search at CLIP size: recall@k, latency, build time.

    python benchmarks/bench_ann.py [--sizes 100000 1000000] [--dim 512] [--queries 200] [--json OUT]
                                   [--methods M ...] [--run DIR | --no-run] [--figure PNG] [--quiet-wait S]

Corpus: synthetic clustered unit vectors (`frameatlas.evaluation.synthetic_corpus`: a mixture
of `--clusters` anisotropic low-rank gaussian clusters, CLIP-like in that unrelated vectors
still have cosine ~0.35 and near neighbours ~0.8-0.9), with `--queries` held-out queries from
the same mixture. Uniform random vectors would make every neighbour equally far away.

Methods, each timed through `frameatlas.evaluation.compare_indexes` (one method per call, so
"busy elsewhere" can be measured per method):

* exact: numpy matmul + argpartition (the reference for recall);
* faiss-flat: `faiss.IndexFlatIP` (exact as well);
* faiss-lsh: `faiss.IndexLSH`, 2 x dim bits (random hyperplanes, Hamming ranking), the
  original research's index; faiss-lsh:N with other bit counts up to `--lsh-extra-max`;
* faiss-lsh-rerank: the same codes, top 10 x k candidates re-scored by exact cosine;
* chroma-hnsw: an embedded Chroma collection (cosine, default HNSW settings), as the embed
  stage builds it; only up to `--chroma-max` vectors by default (insertion runs at about
  1 300-1 700 vectors per second on 2 cores: a million took 13 minutes, too long for a routine
  run; `--sizes 1000000 --methods exact chroma-hnsw` measures it on purpose).

Per-query latency is the mean (and median, 95th percentile) of queries sent one at a time after one
warm-up query; batch q/s is all queries in one call (best of two). The machine may be shared:
before each method the script waits (up to `--quiet-wait` s) for other processes to go quiet
and reports how many cores they used meanwhile ("busy elsewhere").

With `--run DIR` (default `outputs/demo` when it exists) it also compares the indexes on that
run's stored vectors (queries: a sample of its own frames) and measures impulse-noise
robustness of the run's encoder when it is the weight-free fallback (CLIP weights are not
downloaded by benchmarks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("FRAMEATLAS_PROGRESS", "off")

from frameatlas.evaluation import (  # noqa: E402
    IMPULSE_SEVERITIES,
    compare_indexes,
    compare_run_indexes,
    noise_robustness,
    robustness_image,
    synthetic_corpus,
)


def machine() -> dict:
    import chromadb
    import faiss

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {
        "cpu": cpu, "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(), "numpy": np.__version__, "faiss": faiss.__version__,
        "faiss_omp_threads": faiss.omp_get_max_threads(), "chromadb": chromadb.__version__, "pandas": pd.__version__,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def system_busy_seconds() -> float:
    """CPU seconds all processes have used since boot (Linux /proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait: float, threshold: float = 0.25, window: float = 2.0) -> float:
    """Wait (up to `max_wait` s) until other processes use < `threshold` cores; returns their load."""
    deadline = time.monotonic() + max_wait
    while True:
        busy0, cpu0 = system_busy_seconds(), cpu_seconds()
        time.sleep(window)
        others = max(0.0, (system_busy_seconds() - busy0 - (cpu_seconds() - cpu0)) / window)
        if others < threshold or time.monotonic() >= deadline:
            return others


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_method(corpus, queries, method: str, *, k: int, quiet_wait: float, workdir: Path) -> dict:
    if quiet_wait > 0:
        wait_for_quiet(quiet_wait)
    busy0, cpu0, wall0 = system_busy_seconds(), cpu_seconds(), time.perf_counter()
    table = compare_indexes(corpus, queries, k=k, methods=(method,), workdir=workdir)
    wall = time.perf_counter() - wall0
    row = table.iloc[0].to_dict()
    row["other_cores"] = max(0.0, (system_busy_seconds() - busy0 - (cpu_seconds() - cpu0)) / wall)
    row["wall_s"] = wall
    print(f"    {method:<22} recall@{k} {row[f'recall@{k}']:.3f}  {row['query_ms']:8.2f} ms/query  "
          f"build {row['build_s']:7.1f} s  (busy elsewhere {row['other_cores']:.2f} cores)", flush=True)  # fmt: skip
    return row


def print_table(rows: list[dict], k: int) -> None:
    header = (f"| method | recall@{k} | ms/query (mean) | ms/query (median) | ms/query (p95) | batch queries/s "
              "| build s | index MB | busy elsewhere |")  # fmt: skip
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        others = "n/a" if pd.isna(row["other_cores"]) else f"{row['other_cores']:.2f}"
        cells = [
            row["method"], f"{row[f'recall@{k}']:.3f}", f"{row['query_ms']:.2f}", f"{row['query_p50_ms']:.2f}",
            f"{row['query_p95_ms']:.2f}", f"{row['batch_qps']:,.0f}", f"{row['build_s']:.1f}", f"{row['index_mb']:,.0f}", others,
        ]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chroma-max", type=int, default=200_000, help="skip Chroma above this corpus size")
    parser.add_argument("--lsh-extra-bits", type=int, nargs="*", default=None,
                        help="extra LSH code lengths (default: 8 x dim)")  # fmt: skip
    parser.add_argument("--lsh-extra-max", type=int, default=200_000, help="extra LSH lengths only up to this size")
    parser.add_argument("--methods", nargs="+", help="only these methods (default: all that fit the size)")
    parser.add_argument("--run", type=Path, default=Path("outputs/demo"), help="also evaluate this run's vectors")
    parser.add_argument("--no-run", action="store_true", help="skip the run's vectors")
    parser.add_argument("--figure", type=Path, help="save the run's robustness chart (PNG) here")
    parser.add_argument("--quiet-wait", type=float, default=20.0, help="max seconds to wait for a quiet machine")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    info = machine()
    print(f"machine: {info}")
    extra_bits = args.lsh_extra_bits if args.lsh_extra_bits is not None else [8 * args.dim]
    report: dict = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "synthetic": [], "run": None}
    chroma_rate = None
    with tempfile.TemporaryDirectory(prefix="frameatlas-bench-ann-") as scratch:
        for size in sorted(args.sizes):
            started = time.perf_counter()
            corpus, queries = synthetic_corpus(size, args.dim, queries=args.queries, clusters=args.clusters, seed=args.seed)
            generate = time.perf_counter() - started
            print(f"\n{size:,} x {args.dim} corpus, {len(queries)} held-out queries, k={args.k} "
                  f"(generated in {generate:.1f} s)", flush=True)  # fmt: skip
            methods = ["exact", "faiss-flat", "faiss-lsh", "faiss-lsh-rerank"]
            if size <= args.lsh_extra_max:
                methods += [f"faiss-lsh:{bits}" for bits in extra_bits]
            if size <= args.chroma_max:
                methods.append("chroma-hnsw")
            if args.methods:  # an explicit list wins over the size limits
                methods = [m for m in methods if m in args.methods] + [m for m in args.methods if m not in methods]
            skipped = None
            if "chroma-hnsw" not in methods and not args.methods:
                estimate = f", about {size / chroma_rate / 60:.0f} min at the rate measured above" if chroma_rate else ""
                skipped = f"chroma-hnsw skipped: inserting {size:,} vectors{estimate} (--chroma-max {args.chroma_max:,})"
            rows = [timed_method(corpus, queries, m, k=args.k, quiet_wait=args.quiet_wait, workdir=Path(scratch))
                    for m in methods]  # fmt: skip
            for row in rows:
                if row["method"] == "chroma-hnsw" and row["build_s"] > 0:
                    chroma_rate = size / row["build_s"]
            if skipped:
                print(f"    {skipped}")
            print()
            print_table(rows, args.k)
            report["synthetic"].append({
                "n": size, "dim": args.dim, "queries": len(queries), "k": args.k, "clusters": args.clusters,
                "generate_s": round(generate, 1), "peak_rss_mb": round(peak_rss_mb()), "skipped": skipped, "rows": rows,
            })  # fmt: skip
            print(f"peak RSS so far: {peak_rss_mb():,.0f} MB")
            del corpus, queries

        if not args.no_run and (args.run / "tables" / "embeddings.parquet").exists():
            report["run"] = evaluate_run(args, Path(scratch))

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


def evaluate_run(args, scratch: Path) -> dict:
    from frameatlas.embed import encode_image_files
    from frameatlas.models import FALLBACK_MODEL_ID, ColourTextureEncoder
    from frameatlas.store import RunPaths, load_vectors, read_table

    run = RunPaths(args.run)
    table = compare_run_indexes(run, queries=args.queries, k=args.k, workdir=scratch)
    print(f"\nrun {args.run}: {table.attrs['n']:,} frames x {table.attrs['dim']} ({table.attrs['model_id']}), "
          f"queries: {table.attrs['query_source']}")  # fmt: skip
    rows = table.assign(other_cores=float("nan")).to_dict("records")
    print_table(rows, args.k)
    out: dict = {"n": table.attrs["n"], "dim": table.attrs["dim"], "model_id": table.attrs["model_id"], "rows": rows}

    frames, stored = load_vectors(run)
    if table.attrs["model_id"] == FALLBACK_MODEL_ID:
        thumbnails = read_table(run.table("frames")).set_index("frame_key").thumbnail
        paths = [run.absolute(thumbnails[key]) for key in frames.frame_key]
        encoder = ColourTextureEncoder()
        # The corpus is re-encoded from the thumbnails with this process's encoder: vectors
        # stored by an older version of the descriptor would make even clean queries miss.
        vectors = encode_image_files(encoder, paths)
        agreement = np.einsum("ij,ij->i", vectors, stored)
        out["stored_vs_reencoded_cosine"] = {"mean": float(agreement.mean()), "min": float(agreement.min())}
        print(f"\nstored vectors vs re-encoded thumbnails: cosine mean {agreement.mean():.4f}, min {agreement.min():.4f}")
        started = time.perf_counter()
        noise = noise_robustness(encoder, paths, vectors, list(frames.frame_key),
                                 severities=(0.0, *IMPULSE_SEVERITIES), sample=args.queries, seed=args.seed)  # fmt: skip
        print(f"\nimpulse noise, {FALLBACK_MODEL_ID}, {int(noise.n_queries.iloc[0])} frames "
              f"({time.perf_counter() - started:.1f} s):")  # fmt: skip
        print(noise.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        out["noise"] = noise.to_dict("records")
        if args.figure:
            args.figure.parent.mkdir(parents=True, exist_ok=True)
            robustness_image(noise, title=f"Impulse noise: {FALLBACK_MODEL_ID} on {args.run}").save(args.figure)
    else:
        print("impulse noise: skipped (the run's encoder is CLIP; benchmarks do not load model weights)")
    return out


if __name__ == "__main__":
    sys.exit(main())
