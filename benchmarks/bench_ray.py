"""Extract + embed on the local executor against Ray (`run.executor: ray`) at the same core count.

    python benchmarks/bench_ray.py [--videos data/demo] [--repeats 3] [--every-seconds 1] [--json OUT]

Each trial makes a fresh run folder and runs what `01_extract` and `03_embed` run
(`embed.extract_and_embed`, then `embed.embed_frames`: frames, thumbnails, vectors while decoding,
tables, index), with CLIP ViT-B-32 with random weights (speed does not depend on weight values).
Variants, taking turns in every repeat so load on a shared machine falls on all of them:

* local: this process (FFmpeg and torch threads on every core);
* ray-2x1: a local Ray of this machine's cores, 2 workers of 1 CPU each (one unit per worker at a time: a
  video, or a time range of about `run.ray_unit_seconds` of a longer one);
* ray-1x2: the same Ray, 1 worker of 2 CPUs (Ray's own overhead with the same parallelism as local).

Ray is started once before the trials (its start is shown apart: a cluster is started once, not per
run); each pass still starts its workers and loads the model in each. By default every trial runs in this
process, where torch and open_clip are already imported for the local variant but each Ray worker imports
them anew; `--fresh-process` runs each trial in a new Python process instead (connecting to the same Ray
through `run.ray_address`), as a stage's kernel does, so both variants pay their imports. Median of the repeats, the range,
and the ratio of wall times to local (overhead = ratio - 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FRAMEATLAS_PROGRESS", "off")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

VARIANTS = {"local": ("local", 1), "ray-2x1": ("ray", 1), "ray-1x2": ("ray", 2)}
TARGET_OVERHEAD = 0.10


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    import ray
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__, "load_average": os.getloadavg()}  # fmt: skip


def trial(videos: Path, root: Path, variant: str, every_seconds: float, repeat: int, address: str | None = None) -> dict:
    from frameatlas.config import config_from_dict
    from frameatlas.embed import embed_frames, extract_and_embed
    from frameatlas.models import clear_loaded

    executor, worker_cpus = VARIANTS[variant]
    cfg = config_from_dict({
        # A run name per trial: Chroma keeps one client per index path in the process, and a client whose
        # folder was deleted by the previous trial finds its database read-only.
        "run": {"name": f"{variant}-{repeat}", "output_dir": str(root), "executor": executor, "ray_worker_cpus": worker_cpus,
                "ray_address": address if executor == "ray" else None},
        "corpus": {"videos": str(videos), "demo": False},
        "extract": {"every_seconds": every_seconds},
        "models": {"image": {"name": "ViT-B-32", "pretrained": None, "on_missing_weights": "error"}},
        "embed": {"quality": "off"},
    })  # fmt: skip
    clear_loaded()  # every variant loads its model(s) in its trial, as a stage would
    load = os.getloadavg()[0]
    started = time.perf_counter()
    extracted = extract_and_embed(cfg, cfg.run_dir)
    embedded = embed_frames(cfg, cfg.run_dir)
    seconds = time.perf_counter() - started
    shutil.rmtree(cfg.run_dir)
    return {"seconds": seconds, "frames": extracted.frames, "embedded_while_extracting": extracted.counts.get("frames_embedded", 0),
            "embedded_by_embed_stage": embedded.embedded, "videos": extracted.videos,
            "video_ranges": extracted.counts.get("video_ranges", 0), "load_average_1min": load}  # fmt: skip


def fresh_process_trial(args: argparse.Namespace, root: Path, variant: str, repeat: int, address: str) -> dict:
    """One trial in a new Python process; its wall time counts from the process's start (imports included)."""
    command = [sys.executable, __file__, "--videos", args.videos, "--every-seconds", str(args.every_seconds),
               "--one-trial", variant, str(root), str(repeat), address]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"trial {variant} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "work_seconds": result["seconds"], "seconds": seconds}


def worker_start(address: str, runtime_env: bool) -> float:
    """Seconds from asking for a Ray actor to its first answer, for a new driver of the Ray at `address` whose
    job has a `runtime_env` (env_vars, as frameatlas passed its settings before) or none (as it does now)."""
    import ray

    options = {"runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}}} if runtime_env else {}
    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **options)

    @ray.remote(num_cpus=1)
    class Probe:
        def pid(self) -> int:
            return os.getpid()

    started = time.perf_counter()
    ray.get(Probe.remote().pid.remote())
    return time.perf_counter() - started


def compare_worker_start(address: str, repeats: int) -> dict:
    """`worker_start` in new processes, with and without a runtime_env, taking turns; medians and ranges."""
    seconds: dict[str, list[float]] = {"runtime_env": [], "argument": []}
    for _ in range(repeats):
        for mode in seconds:
            done = subprocess.run([sys.executable, __file__, "--one-start", mode, address], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"worker start ({mode}) failed:\n{done.stderr[-3000:]}")
            seconds[mode].append(float(done.stdout.strip().splitlines()[-1]))
    for mode, values in seconds.items():
        print(f"worker start, settings as {mode:>11}: {statistics.median(values):.2f} s [{min(values):.2f}-{max(values):.2f}]")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", default="data/demo")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--every-seconds", type=float, default=1.0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", default=None)
    parser.add_argument("--fresh-process", action="store_true", help="each trial in a new Python process, imports included")
    parser.add_argument("--worker-start", action="store_true", help="only: how long a Ray worker takes to start, "
                        "for a driver with and without a runtime_env (--repeats times each)")  # fmt: skip
    parser.add_argument("--one-trial", nargs=4, metavar=("VARIANT", "ROOT", "REPEAT", "ADDRESS"), help=argparse.SUPPRESS)
    parser.add_argument("--one-start", nargs=2, metavar=("MODE", "ADDRESS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.one_start:
        print(worker_start(args.one_start[1], args.one_start[0] == "runtime_env"))
        return
    if args.one_trial:  # the child of --fresh-process: one trial, its result as the last line
        variant, root, repeat, address = args.one_trial
        print(json.dumps(trial(Path(args.videos), Path(root), variant, args.every_seconds, int(repeat), address)))
        return

    import ray

    started = time.perf_counter()
    # "local": a Ray of its own, as a pass without an address starts one (not a cluster `ray start` left running)
    context = ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                       logging_level=logging.WARNING)  # fmt: skip
    ray_start = time.perf_counter() - started
    if args.worker_start:
        try:
            seconds = compare_worker_start(context.address_info["gcs_address"], args.repeats)
        finally:
            ray.shutdown()
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine(), "worker_start_seconds": seconds}, indent=2))
        return
    variants = args.variants.split(",")
    results: dict[str, list[dict]] = {variant: [] for variant in variants}
    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        for repeat in range(args.repeats):
            for variant in variants:
                if args.fresh_process:
                    result = fresh_process_trial(args, root, variant, repeat, context.address_info["gcs_address"])
                else:
                    result = trial(Path(args.videos), root, variant, args.every_seconds, repeat)
                results[variant].append(result)
                print(f"repeat {repeat + 1} {variant}: {results[variant][-1]}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        ray.shutdown()

    frames = results[variants[0]][0]["frames"]
    print(f"\n{args.videos}: {frames} frames every {args.every_seconds} s; Ray started in {ray_start:.1f} s (once, not counted)")
    local = [r["seconds"] for r in results.get("local", [])]
    summary = {}
    for variant in variants:
        seconds = [r["seconds"] for r in results[variant]]
        median = statistics.median(seconds)
        row = {"seconds_median": round(median, 1), "seconds_range": [round(min(seconds), 1), round(max(seconds), 1)],
               "frames_per_second": round(frames / median, 2)}  # fmt: skip
        line = f"{variant:>8}: {median:6.1f} s [{min(seconds):.1f}-{max(seconds):.1f}]  {frames / median:6.2f} frames/s"
        if local and variant != "local":
            ratios = [s / b for s, b in zip(seconds, local)]  # each repeat's pair
            row.update(
                ratio_median=round(statistics.median(ratios), 3), ratio_range=[round(min(ratios), 3), round(max(ratios), 3)]
            )
            verdict = "met" if max(ratios) < 1 + TARGET_OVERHEAD else "not met"
            line += f"  wall vs local x{row['ratio_median']} {row['ratio_range']} (overhead < 10%: {verdict})"
        summary[variant] = row
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "ray_start_seconds": ray_start, "frames": frames,
                                               "trials": results, "summary": summary}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
