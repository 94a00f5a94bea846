"""A researcher's loop: add one short video and re-run; re-run with nothing changed; search from the CLI.

    python benchmarks/bench_iteration.py [--baseline-src /path/to/older/checkout] [--runs 3] [--json OUT]

Timed, each `--runs` times (median and range shown):

* **add one clip**: the demo's six videos run once (untimed, every stage), then for each run a copy
  of that run folder gets one new 12-second clip (cut from bbb.mp4 at 2:00 and re-encoded, so it
  is a video of its own) and `run_pipeline.py` runs again: wall time, per-stage seconds, and from
  the manifest each re-executed stage's time outside its own work (`timing.overhead`, which counts the
  report's export, made in the background while the next stage runs) and where it went (kernel start,
  imports, work, report cells, kernel stop, export; the medians);
* **no change**: `run_pipeline.py` again on the finished six-video run (every stage `unchanged`);
* **search**: `frameatlas search RUN "<text>"` as a new process, each time a text never searched
  before, with `frameatlas serve RUN` running (after one untimed query that loads its models),
  and without it (the CLI loads the models itself).

With `--baseline-src` (another checkout, e.g. `git archive <commit> | tar -x -C DIR`) the same is
run with that code (its own `lib/` first on PYTHONPATH, in this virtual environment) after this
checkout's runs, and ratios this / baseline are printed (pairs by run number). The baseline's
six-video run is made from a copy of this checkout's one (its per-video caches reused; every stage
executes once, untimed, under the baseline's code). Its search has no server path: only the CLI
alone is timed. `--json` keeps every figure (written after each), `--report JSON` prints them again.

The corpus is copied into the work folder (the demo's own `data/demo` is never written to); the
config is this checkout's `pipeline.yaml` with the corpus and output folders overridden.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "data" / "demo"
DEMO_VIDEOS = ("bbb.mp4", "bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "conversation.mp4", "world.mp4")
QUERIES = ("a rabbit in a meadow", "credits on a black screen", "two people talking", "a city street at night",
           "trees and grass", "a bird flying", "text on the screen", "a person riding a bike")  # fmt: skip


def environment(source: Path | None) -> dict[str, str]:
    env = {**os.environ, "FRAMEATLAS_PROGRESS": "off"}
    if source is not None:  # the baseline: its own library first
        env["PYTHONPATH"] = os.pathsep.join([str(source / "lib"), env.get("PYTHONPATH", "")])
    return env


def make_clip(source: Path, start: float, dest: Path) -> Path:
    """12 s of `source` from `start`, re-encoded (H.264 + AAC): a new video with its own content hash."""
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-ss", str(start), "-t", "12",
               "-i", str(source), "-vf", "scale=-2:360", "-c:v", "libx264", "-preset", "veryfast",
               "-c:a", "aac", str(dest)]  # fmt: skip
    subprocess.run(command, check=True)
    return dest


def link_videos(corpus: list[Path], folder: Path, extra: Path | None = None) -> Path:
    """The corpus videos in `folder` (hard links where possible), plus `extra`."""
    folder.mkdir(parents=True, exist_ok=True)
    for video in corpus:
        if (folder / video.name).exists():
            continue
        try:
            os.link(video, folder / video.name)
        except OSError:
            shutil.copy2(video, folder / video.name)
    if extra is not None:
        shutil.copy2(extra, folder / extra.name)
    return folder


def write_config(base: Path, path: Path, videos: Path, output_dir: Path) -> Path:
    import yaml

    config = yaml.safe_load(base.read_text())
    config["corpus"].update({"videos": str(videos), "demo": False})
    config["run"].update({"output_dir": str(output_dir), "name": "demo"})
    labels = (config.get("classify") or {}).get("labels")
    if labels and not Path(labels).is_absolute():  # relative to the original config's folder, as frameatlas reads it
        config["classify"]["labels"] = str(base.parent / labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_pipeline(config: Path, source: Path | None) -> dict:
    runner = (source or REPO) / "run_pipeline.py"
    cpu_before, load_before = _children_cpu(), os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(runner), str(config), "--no-progress", "--quiet"],
                          capture_output=True, text=True, env=environment(source), cwd=config.parent)  # fmt: skip
    wall = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before
    if done.returncode not in (0, 3):
        raise SystemExit(f"{config}: run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    import yaml

    output_dir = Path(yaml.safe_load(config.read_text())["run"]["output_dir"])
    manifest = json.loads((output_dir / "demo" / "manifest.json").read_text())
    stages = {}
    for name, entry in manifest["stages"].items():
        if entry.get("status") == "done":
            timing = entry.get("timing") or {}
            stages[name] = {"seconds": entry.get("seconds"), "overhead": timing.get("overhead"), "work": timing.get("work"),
                            "timing": timing, "kernel": entry.get("kernel")}  # fmt: skip
        elif entry.get("status") == "unchanged":
            stages[name] = {"seconds": entry.get("check_seconds"), "status": "unchanged"}
    return {"wall": wall, "cpu": cpu, "load": [load_before, os.getloadavg()[0]], "stages": stages}


def _children_cpu() -> float:
    """User + system CPU seconds of every finished descendant (the runner, its kernels, ffmpeg): outside
    load on a shared machine stretches wall time much more than this."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli_search(run: Path, query: str, source: Path | None) -> float:
    command = [sys.executable, "-m", "frameatlas.cli", "search", str(run), query, "--top-k", "10"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=environment(source))
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 2):  # 2: no channel can answer that text (the weight-free demo): timed all the same
        raise SystemExit(f"search {query!r} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


class Server:
    def __init__(self, run: Path, log: Path, source: Path | None):
        self._log = log.open("w")
        self.process = subprocess.Popen([sys.executable, "-m", "frameatlas.cli", "serve", str(run), "--port", "0"],
                                        stdout=subprocess.PIPE, stderr=self._log, text=True, env=environment(source))  # fmt: skip
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=300)
        if not line or " at http" not in line[0]:
            self.stop()
            raise SystemExit(f"the server did not start: {line!r}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


TIMING_PARTS = ("kernel_start", "imports", "setup", "work", "report_cells", "kernel_stop", "export")


def _outside(stage: dict) -> float:
    """A stage's seconds in the runner's loop minus its own work (its export, in the background, not counted)."""
    return (stage.get("seconds") or 0.0) - (stage.get("work") or 0.0)


def summarize(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.2f} s (range {min(values):.2f}-{max(values):.2f}, n={len(values)})"


def ratio(after: list[float], before: list[float]) -> str:
    if not after or not before:
        return ""
    ratios = sorted(a / b for a, b in zip(after, before))
    return f"; this/baseline median {statistics.median(after) / statistics.median(before):.3f} (pairs {ratios[0]:.3f}-{ratios[-1]:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-src", type=Path, help="an older checkout to compare with (optional)")
    parser.add_argument(
        "--src", type=Path, help="the code measured as 'this' (default: this checkout; give a frozen copy, e.g. from "
        "`git archive HEAD`, when others edit this one: any change to the library's code re-runs every stage)",
    )  # fmt: skip
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="where runs go (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--config", type=Path, help="base config (default: each code's own pipeline.yaml)")
    parser.add_argument("--corpus", type=Path, default=DEMO, help="videos of the base run (default: the demo's six)")
    parser.add_argument("--clip-from", type=Path, default=DEMO / "bbb.mp4", help="the new clip is cut from this video")
    parser.add_argument("--clip-start", type=float, default=120.0, help="... from this second")
    parser.add_argument("--report", type=Path, metavar="JSON", help="only print the summary of figures saved by --json")
    args = parser.parse_args()
    if args.report:
        report(json.loads(args.report.read_text()))
        return
    corpus = [args.corpus / name for name in DEMO_VIDEOS] if args.corpus == DEMO else sorted(args.corpus.glob("*.mp4"))
    missing = [str(video) for video in corpus if not video.is_file()]
    if missing or not corpus:
        raise SystemExit(f"videos missing: {', '.join(missing) or args.corpus}; run `frameatlas demo fetch` first")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="frameatlas-bench-iteration-"))
    work.mkdir(parents=True, exist_ok=True)
    codes = {"this": args.src.resolve() if args.src else None}
    codes |= {"baseline": args.baseline_src.resolve()} if args.baseline_src else {}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"work folder: {work}")
    results: dict = {name: {"add_clip": [], "no_change": [], "search_served": [], "search_alone": []} for name in codes}

    def save() -> None:  # after every figure: a run cut short still leaves what it measured
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))

    try:
        clip = make_clip(args.clip_from, args.clip_start, work / "new_clip_12s.mp4")
        videos = link_videos(corpus, work / "videos")
        # Texts never searched before on this machine: the per-model text-vector cache would answer a repeated
        # one without loading a model (a cached warm-up query once left serve's model unloaded for the next)
        nonce = f"{time.time_ns():x}"
        queries = iter(f"{query} ({nonce})" for query in QUERIES)
        bases: dict[str, Path] = {}
        # One code after the other (this checkout first): on a shared machine a cut-short session still has
        # this checkout's figures. Alternating would spread outside load more evenly over both.
        for name, source in codes.items():
            base_out = work / name / "base"
            if name != "this":
                shutil.copytree(bases["this"].parent, base_out)  # per-video caches reused; its stages run once
            base_config = args.config or (source or REPO) / "pipeline.yaml"
            config = write_config(base_config, work / name / "base.yaml", videos, base_out)
            print(f"{name}: preparing the six-video run ...", flush=True)
            prepared = run_pipeline(config, source)
            print(f"  {prepared['wall']:.1f} s", flush=True)
            bases[name] = base_out / "demo"
            for run_number in range(args.runs):
                rep = work / name / f"rep{run_number}"
                shutil.copytree(bases[name].parent, rep / "out")
                config = write_config(base_config, rep / "pipeline.yaml", link_videos(corpus, rep / "videos", clip), rep / "out")
                added = run_pipeline(config, source)
                results[name]["add_clip"].append(added)
                shutil.rmtree(rep)
                unchanged = run_pipeline(work / name / "base.yaml", source)
                results[name]["no_change"].append(unchanged)
                save()
                print(
                    f"run {run_number + 1} {name}: add one clip {added['wall']:.1f} s, no change {unchanged['wall']:.1f} s",
                    flush=True,
                )
            for _ in range(args.runs):
                results[name]["search_alone"].append(cli_search(bases[name], next(queries), source))
                save()
            print(f"  search alone: {results[name]['search_alone']}", flush=True)
            if name == "this":
                server = Server(bases["this"], work / "serve.log", source)
                try:
                    cli_search(bases["this"], f"a first query loads the server's models ({nonce})", source)
                    for query in QUERIES[: args.runs]:
                        results["this"]["search_served"].append(cli_search(bases["this"], f"{query} (served, {nonce})", source))
                        save()
                finally:
                    server.stop()
                print(f"  search with serve: {results['this']['search_served']}", flush=True)
    finally:
        save()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    report(results)


def report(results: dict) -> None:
    codes = list(results)
    print()
    for name in codes:
        figures = results[name]
        add = [r["wall"] for r in figures["add_clip"]]
        same = [r["wall"] for r in figures["no_change"]]
        other = results.get("baseline") if name == "this" else None
        print(f"{name}:")
        print(f"  add one 12 s clip to the 6-video run: {summarize(add)}"
              + (ratio(add, [r["wall"] for r in other["add_clip"]]) if other else ""))  # fmt: skip
        cpu = [r["cpu"] for r in figures["add_clip"] if "cpu" in r]
        loads = [value for r in figures["add_clip"] + figures["no_change"] for value in r.get("load", [])]
        print(f"    CPU seconds of the run's processes: {summarize(cpu)}"
              + (ratio(cpu, [r["cpu"] for r in other["add_clip"]]) if other else "")
              + (f"; load average (1 min) around the runs {min(loads):.1f}-{max(loads):.1f}" if loads else ""))  # fmt: skip
        for stage in figures["add_clip"][0]["stages"] if figures["add_clip"] else {}:
            seconds = [r["stages"][stage]["seconds"] for r in figures["add_clip"] if stage in r["stages"]]
            overhead = [r["stages"][stage].get("overhead") for r in figures["add_clip"] if stage in r["stages"]]
            overhead = [o for o in overhead if o is not None]
            print(f"    {stage:<10} {summarize(seconds)}" + (f", outside its work {summarize(overhead)}" if overhead else ""))
            parts = [r["stages"][stage].get("timing") for r in figures["add_clip"] if r["stages"].get(stage, {}).get("timing")]
            if parts:  # medians of where the stage's time went (export runs in the background, during the next stage)
                print("      " + ", ".join(f"{part} {statistics.median(p.get(part, 0.0) for p in parts):.2f}" for part in TIMING_PARTS)
                      + f"; on the runner's path outside its work {statistics.median(_outside(r['stages'][stage]) for r in figures['add_clip'] if stage in r['stages']):.2f} s")  # fmt: skip
        print(f"  no-change re-run: {summarize(same)}" + (ratio(same, [r["wall"] for r in other["no_change"]]) if other else ""))
        print(f"  frameatlas search, alone: {summarize(figures['search_alone'])}"
              + (ratio(figures["search_alone"], other["search_alone"]) if other else ""))  # fmt: skip
        if figures["search_served"]:
            print(f"  frameatlas search, with serve running: {summarize(figures['search_served'])}"
                  + (ratio(figures["search_served"], other["search_alone"]) if other else ""))  # fmt: skip


if __name__ == "__main__":
    main()
