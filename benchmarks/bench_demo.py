"""The whole demo: its time and disk per hour of footage, optionally against another version, runs alternated.

    python benchmarks/bench_demo.py [--baseline-src /path/to/older/checkout] [--runs 3] [--json OUT]

Each run executes `run_pipeline.py pipeline.yaml` of one checkout (every stage of the demo) into
a fresh, empty output folder, so nothing of the run is reused; the user caches (term vectors,
numba) are warm for both, after one untimed warm-up run of each. The baseline runs with its own
`lib/` first on PYTHONPATH (its notebooks come from its own tree), in the same virtual
environment, so only frameatlas's code differs. Runs alternate baseline / this checkout.

Reported: wall seconds per run and per stage (from each run's manifest), the median and range of
each, and the ratio this / baseline with its spread; also the CPU seconds of the whole process
tree, which other load on a shared machine disturbs less than wall time (run the benchmark at a
high priority, e.g. `nice -n -10`, when other work shares the machine). Used for "the demo's total time grew by less
than 5%" checks when a change touches every stage (see BENCHMARKS.md). Without `--baseline-src`
only this checkout runs: the README's "time and disk per hour of footage" figures (footage and
frames from the manifest, the run folder's size by top-level folder after each run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_demo(source: Path, output_dir: Path, *, baseline: bool) -> dict:
    env = {**os.environ, "FRAMEATLAS_PROGRESS": "off"}
    if baseline:
        env["PYTHONPATH"] = os.pathsep.join([str(source / "lib"), env.get("PYTHONPATH", "")])
    command = [sys.executable, str(source / "run_pipeline.py"), str(source / "pipeline.yaml"),
               "--set", f"run.output_dir={output_dir}", "--no-progress", "--quiet"]  # fmt: skip
    cpu_before = _children_cpu()
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=source)
    wall = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before
    if result.returncode not in (0, 3):
        raise SystemExit(f"{source}: demo failed ({result.returncode}):\n{result.stderr[-3000:]}")
    run = output_dir / "demo"
    manifest = json.loads((run / "manifest.json").read_text())
    stages = {name: entry.get("seconds") for name, entry in manifest["stages"].items()}
    counts = manifest["stages"].get("extract", {}).get("counts", {})
    disk = {folder.name: _megabytes(folder) for folder in sorted(run.iterdir()) if folder.is_dir()}
    return {"wall": wall, "cpu": cpu, "stages": stages, "footage_seconds": counts.get("video_seconds"),
            "frames": counts.get("frames"), "disk_mb": disk, "run_mb": _megabytes(run)}  # fmt: skip


def _megabytes(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def _children_cpu() -> float:
    """User + system CPU seconds of every finished descendant (the runner, its kernels, ffmpeg)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summarize(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} s ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-src", type=Path, help="checkout of the version to compare against (default: none)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each (alternated)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-warmup", action="store_true")
    args = parser.parse_args()
    sources = {"baseline": args.baseline_src.resolve()} if args.baseline_src else {}
    sources["this"] = REPO
    work = Path(tempfile.mkdtemp(prefix="frameatlas-bench-demo-"))
    if not args.no_warmup:
        for name, source in sources.items():
            print(f"warm-up: {name}", flush=True)
            run_demo(source, work / f"warmup-{name}", baseline=name == "baseline")
    results: dict[str, list[dict]] = {name: [] for name in sources}
    for number in range(args.runs):
        for name, source in sources.items():
            outcome = run_demo(source, work / f"{name}-{number}", baseline=name == "baseline")
            results[name].append(outcome)
            print(f"run {number + 1} {name:<8} {outcome['wall']:6.1f} s (cpu {outcome['cpu']:6.1f} s)  "
                  + "  ".join(f"{s}={v:.1f}" for s, v in outcome["stages"].items() if v), flush=True)  # fmt: skip
    this = results["this"]
    if "baseline" not in results:
        print(f"\n{'total':10} {summarize([r['wall'] for r in this]):>24}  cpu {summarize([r['cpu'] for r in this])}")
        for stage in this[0]["stages"]:
            values = [r["stages"].get(stage) for r in this if r["stages"].get(stage)]
            if values:
                print(f"{stage:10} {summarize(values):>24}")
        hours = (this[0]["footage_seconds"] or 0) / 3600
        if hours:
            per_hour = [r["wall"] / 60 / hours for r in this]
            print(f"footage {this[0]['footage_seconds']:.0f} s, {this[0]['frames']} frames: "
                  f"{statistics.median(per_hour):.1f} min per hour of footage ({min(per_hour):.1f}-{max(per_hour):.1f}); "
                  f"run folder {statistics.median([r['run_mb'] for r in this]):.0f} MB: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in this[-1]["disk_mb"].items()))  # fmt: skip
    else:
        print(f"\n{'':10} {'baseline':>24} {'this checkout':>24}")
        print(
            f"{'total':10} {summarize([r['wall'] for r in results['baseline']]):>24} {summarize([r['wall'] for r in this]):>24}"
        )
        for stage in this[0]["stages"]:
            base = [r["stages"].get(stage) for r in results["baseline"] if r["stages"].get(stage)]
            values = [r["stages"].get(stage) for r in this if r["stages"].get(stage)]
            if base and values:
                print(f"{stage:10} {summarize(base):>24} {summarize(values):>24}")
        ratios = [t["wall"] / b["wall"] for b, t in zip(results["baseline"], this)]
        print(f"\nthis / baseline (pairs run back to back): median {statistics.median(ratios):.3f}, "
              f"range {min(ratios):.3f}-{max(ratios):.3f}")  # fmt: skip
        cpu_ratios = [t["cpu"] / b["cpu"] for b, t in zip(results["baseline"], this)]
        print(f"CPU time, this / baseline: median {statistics.median(cpu_ratios):.3f}, "
              f"range {min(cpu_ratios):.3f}-{max(cpu_ratios):.3f}")  # fmt: skip
        results["ratios"], results["cpu_ratios"] = ratios, cpu_ratios
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
