"""The cluster and render stages on a re-run that adds one short clip: new frames placed into the kept
clustering (`cluster.refit_new_fraction`, default 0.1) against refitting (the same code with the
fraction at 0, which is what every re-run did before).

    python benchmarks/bench_rerun.py --config pipeline.yaml --clip new.mp4 [--from-run outputs/demo] [--runs 3] [--json OUT]

Prepared once, untimed: a run of `--config`'s corpus (copied from `--from-run`, a finished run of that
config with cluster and render done, or made with `run_pipeline.py`), brought up to date by this code's
cluster and render stages; then the clip is added to a copy of the corpus (hard links) and extract,
caption and embed run on it (`run_pipeline.py --stages extract caption embed`).

Timed, `--runs` times per arm, the order of the arms alternated: on a fresh copy of the prepared run,
`cluster_run` then `render_run` in this process: wall seconds and CPU seconds (this process plus the
ffmpeg processes it waited for), how the clustering was made, how many videos were rendered anew or
reused, and how many cut pieces were made. Medians with the range, and the ratio refit / place per pair.
Untimed by those figures: the contact-sheet frames of the videos rendered anew, found by seeking to each piece
(the render stage) and by decoding each whole video (before), timed one after the other.
The libraries the stages import are imported before the first timed run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FRAMEATLAS_PROGRESS", "off")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_iteration import link_videos, write_config  # noqa: E402 - one way to lay out a corpus and its config


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "load_average": os.getloadavg()}


def videos_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file())


def pipeline(config: Path, *stages: str) -> None:
    command = [sys.executable, str(REPO / "run_pipeline.py"), str(config), "--no-progress", "--quiet"]
    done = subprocess.run(command + (["--stages", *stages] if stages else []), capture_output=True, text=True)
    if done.returncode not in (0, 3):
        raise SystemExit(f"{config}: run_pipeline failed ({done.returncode}):\n{done.stderr[-3000:]}")


def prepare(args: argparse.Namespace, work: Path) -> Path:
    """The prepared config (its run: the six-video run plus the clip, extracted, captioned and embedded)."""
    from frameatlas.cluster import cluster_run
    from frameatlas.config import load_config
    from frameatlas.render import render_run

    base = load_config(args.config)
    before = write_config(
        args.config, work / "before.yaml", link_videos(videos_in(Path(base.corpus.videos)), work / "corpus"), work / "out"
    )
    cfg = load_config(before)
    if args.from_run:
        shutil.copytree(args.from_run, cfg.run_dir, symlinks=True)
        pipeline(before, "extract")  # every video cached; the tables now name the copied corpus's paths
    else:
        pipeline(before, "extract", "caption", "embed", "cluster", "render")
    cluster_run(cfg, cfg.run_dir)  # this code's clustering and videos, before the clip comes
    render_run(cfg, cfg.run_dir)
    after = write_config(args.config, work / "after.yaml", link_videos(videos_in(work / "corpus"), work / "corpus-plus", args.clip),
                         work / "out")  # fmt: skip
    pipeline(after, "extract", "caption", "embed")
    return after


def one_run(prepared: Path, arm: str, dest: Path) -> dict:
    import yaml
    from frameatlas.cluster import cluster_run
    from frameatlas.config import config_from_dict
    from frameatlas.render import render_run

    data = yaml.safe_load(prepared.read_text())
    source_run = Path(data["run"]["output_dir"]) / data["run"]["name"]
    shutil.copytree(source_run, dest / data["run"]["name"], symlinks=True)
    data["run"]["output_dir"] = str(dest)
    data.setdefault("cluster", {})["refit_new_fraction"] = 0 if arm == "refit" else data["cluster"].get("refit_new_fraction", 0.1)
    cfg = config_from_dict(data, base_dir=prepared.parent)
    pieces_before = set(os.listdir(cfg.run_dir / "cache" / "render"))
    started, cpu = time.perf_counter(), cpu_seconds()
    clustered = cluster_run(cfg, cfg.run_dir)
    cluster_wall, cluster_cpu = time.perf_counter() - started, cpu_seconds() - cpu
    started, cpu = time.perf_counter(), cpu_seconds()
    rendered = render_run(cfg, cfg.run_dir)
    render_wall, render_cpu = time.perf_counter() - started, cpu_seconds() - cpu
    new_pieces = set(os.listdir(cfg.run_dir / "cache" / "render")) - pieces_before
    counts = rendered.counts
    sheets = contact_sheet_seconds([r for r in rendered.rendered if r.status == "rendered"], cfg.render.title_seconds)
    return {
        "arm": arm, "fit": clustered.fit, "fit_reason": clustered.fit_reason, "cluster_wall": cluster_wall,
        "cluster_cpu": cluster_cpu, "render_wall": render_wall, "render_cpu": render_cpu,
        "total_wall": cluster_wall + render_wall, "total_cpu": cluster_cpu + render_cpu,
        "videos_rendered": counts["rendered"], "videos_cached": counts["cached"], "videos_failed": counts["failed"],
        "new_clips": len({p.split(".")[0] for p in new_pieces if p.startswith("clip-")}),
        "new_stills": len([p for p in new_pieces if p.startswith("stills-")]),
        "contact_sheet_frames_seek": sheets[0], "contact_sheet_frames_full_decode": sheets[1],
    }  # fmt: skip


def contact_sheet_seconds(items: list, title_seconds: float) -> tuple[float, float]:
    """Seconds to find the contact-sheet frames of the rendered videos: by seeking to each piece (what the render
    stage does) and by decoding the whole video (what it did before); the same frames either way."""
    import av
    from frameatlas.render.cards import _grab_frames

    def full_decode(video: Path, wanted: list) -> list:
        grabs, index = [], 0
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            half_frame = 0.5 / float(stream.average_rate)
            for frame in container.decode(stream):
                if index >= len(wanted):
                    break
                t = float(frame.pts * frame.time_base)
                while index < len(wanted) and t + 1e-6 >= wanted[index][0] - half_frame:
                    grabs.append((frame.to_image(), wanted[index][1]))
                    index += 1
        return grabs

    seek = full = 0.0
    for item in items:
        wanted = sorted([(title_seconds / 2, "title")] + [((r.output_start + r.output_end) / 2, str(r.position))
                                                           for r in item.segments.itertuples()])  # fmt: skip
        started = time.perf_counter()
        _grab_frames(item.path, wanted)
        seek += time.perf_counter() - started
        started = time.perf_counter()
        full_decode(item.path, wanted)
        full += time.perf_counter() - started
    return seek, full


def summarise(results: list[dict]) -> dict:
    figures = {}
    for arm in ("refit", "place"):
        rows = [r for r in results if r["arm"] == arm]
        figures[arm] = {key: {"median": round(statistics.median(r[key] for r in rows), 2),
                              "range": [round(min(r[key] for r in rows), 2), round(max(r[key] for r in rows), 2)]}
                        for key in ("cluster_wall", "cluster_cpu", "render_wall", "render_cpu", "total_wall", "total_cpu",
                                    "videos_rendered", "videos_cached", "new_clips", "new_stills",
                                    "contact_sheet_frames_seek", "contact_sheet_frames_full_decode")}  # fmt: skip
    pairs = list(zip([r for r in results if r["arm"] == "refit"], [r for r in results if r["arm"] == "place"]))
    figures["refit_over_place"] = {key: [round(a[key] / b[key], 2) for a, b in pairs]
                                   for key in ("cluster_wall", "render_wall", "total_wall", "total_cpu")}  # fmt: skip
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "pipeline.yaml")
    parser.add_argument("--clip", type=Path, required=True, help="the video added to the corpus")
    parser.add_argument("--from-run", type=Path, help="a finished run of --config (copied; else one is made)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, help="work folder (default: a new temporary one, removed afterwards)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="frameatlas-bench-rerun-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        prepared = prepare(args, work)
        import sklearn.cluster  # noqa: F401  imported before the timed runs, so the first arm pays no import
        import sklearn.decomposition  # noqa: F401
        import sklearn.feature_extraction.text  # noqa: F401

        results = []
        for attempt in range(args.runs):
            for arm in ("refit", "place") if attempt % 2 == 0 else ("place", "refit"):
                dest = work / f"{arm}-{attempt}"
                result = one_run(prepared, arm, dest)
                results.append(result)
                print(f"run {attempt + 1} {arm:5s}: cluster {result['cluster_wall']:5.2f} s ({result['cluster_cpu']:5.2f} CPU), "
                      f"render {result['render_wall']:5.2f} s ({result['render_cpu']:5.2f} CPU); {result['fit_reason']}; "
                      f"{result['videos_rendered']} videos rendered, {result['videos_cached']} reused, "
                      f"{result['new_clips']} clips cut", flush=True)  # fmt: skip
                shutil.rmtree(dest, ignore_errors=True)
        report = {"machine": machine(), "config": str(args.config), "clip": str(args.clip), "runs": results,
                  "summary": summarise(results)}  # fmt: skip
        print(json.dumps(report["summary"], indent=1))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
