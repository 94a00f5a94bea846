"""frameatlas against clip-video-encode on one video, side by side: extract + embed at 1 frame/s.

    python benchmarks/bench_peer.py [--video data/demo/bbb.mp4] [--runs 3] [--json OUT] [--moved]

Both tools get the same open_clip ViT-B-32 architecture and the same weights file (random
weights made here once with open_clip and saved: speed does not depend on their values, and no
weights can be downloaded), 2 torch threads (OMP/MKL too), and the same video.

* frameatlas: `run_pipeline.py` with the default config except: the corpus is the one video,
  the weights file, 1 frame/s, `models.threads: 2`, and every stage but extract and embed off.
  Each run writes into a fresh output folder, so nothing is reused.
* the peer: clip-video-encode 1.3.0, installed by this script into a throwaway virtual
  environment with `pip install --no-deps` (its pins do not install on Python 3.11 as they are)
  plus video2numpy 2.3.0 and the few pure-Python packages it imports (webdataset's current
  release: the 0.1 series it pins does not import on Python 3.11); torch, open_clip, OpenCV and
  NumPy come from this project's environment through a `.pth` file. It is called as its
  README shows, `clip_video_encode(video, dest, take_every_nth=24)` (24 fps: 1 frame/s), with
  `pretrained=<the weights file>`.

Runs alternate (frameatlas, peer, peer, frameatlas, ...), so load from elsewhere on the machine
falls on both alike. Reported per run: wall seconds, peak memory of the whole process tree (the
sum of the PSS of the process and all its descendants, sampled every 0.2 s with psutil; the sum
of their RSS too, which counts the peer's shared memory once per worker process), CPU
seconds of the tree, the cores other processes kept busy meanwhile, and the phases (frameatlas:
the extract and embed stages from its manifest and the rest; the peer: imports and model
loading, reading frames, preprocessing and the model); then medians with their range and the
ratios frameatlas / peer.

`--moved` also measures how far the model's input made from the full decoded frame moved the
vectors against the former input (the 384-px thumbnail JPEG): per-frame cosine on the last
frameatlas run, and how often a thumbnail still finds its own frame first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
PEER = ["clip-video-encode==1.3.0", "video2numpy==2.3.0", "webdataset", "braceexpand", "youtube-dl"]

PEER_DRIVER = r"""
import json, sys, time
started = time.perf_counter()
video, dest, weights, every, threads, phases_file = sys.argv[1:7]
import torch
torch.set_num_threads(int(threads))
import open_clip
import clip_video_encode
cve = sys.modules["clip_video_encode.clip_video_encode"]  # the package's name for it is the function
phases = {"imports": time.perf_counter() - started, "model_load": 0.0, "model": 0.0}
create = open_clip.create_model_and_transforms
def timed_create(*args, **kwargs):
    start = time.perf_counter()
    result = create(*args, **kwargs)
    phases["model_load"] += time.perf_counter() - start
    return result
open_clip.create_model_and_transforms = timed_create
reader_next = cve.FrameReader.__next__
def timed_next(self):
    result = reader_next(self)
    phases.setdefault("first_frames_at", time.perf_counter() - started)
    return result
cve.FrameReader.__next__ = timed_next
mapper_call = cve.FrameMapper.__call__
def timed_call(self, batch):
    start = time.perf_counter()
    result = mapper_call(self, batch)
    phases["model"] += time.perf_counter() - start
    return result
cve.FrameMapper.__call__ = timed_call
clip_video_encode.clip_video_encode(video, dest, take_every_nth=int(every), oc_model_name="ViT-B-32", pretrained=weights)
phases["total"] = time.perf_counter() - started
json.dump(phases, open(phases_file, "w"))
"""


# --------------------------------------------------------------------------- set-up


def build_weights(path: Path) -> Path:
    """A random-init ViT-B-32 checkpoint (a state dict), made once with open_clip."""
    if path.exists():
        return path
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def peer_python(workdir: Path) -> Path:
    """A throwaway venv holding the peer (no dependencies) and reaching this project's packages."""
    venv = workdir / "peer-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
        # after the peer's own packages: torch, open_clip, cv2, numpy, pandas, pyarrow, fsspec of this project
        (Path(site) / "frameatlas-project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    check = [str(python), "-c", "import clip_video_encode, video2numpy.frame_reader"]
    if subprocess.run(check, capture_output=True).returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", *PEER], check=True)
        subprocess.run(check, check=True)
    (workdir / "peer_driver.py").write_text(PEER_DRIVER)
    return python


def frameatlas_config(workdir: Path, video: Path, weights: Path, threads: int) -> Path:
    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    link = corpus / video.name
    if not link.exists():
        link.symlink_to(video.resolve())
    config = yaml.safe_load((REPO / "pipeline.yaml").read_text())
    config["run"]["name"] = "peer-bench"
    config["corpus"].update(videos=str(corpus), demo=False)
    config["extract"].update(mode="interval", every_seconds=1.0)
    config["models"]["threads"] = threads
    config["models"]["image"].update(name="ViT-B-32", pretrained=str(weights), on_missing_weights="error")
    for stage in ("caption", "cluster", "visualize", "render"):
        config[stage]["enabled"] = False
    if "classify" in config:  # runs only with class names or labels
        config["classify"].update(class_names=[], prompts={}, labels=None, segments=None, labels_from_folders=False)
    path = workdir / "frameatlas.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --------------------------------------------------------------------------- one run


class TreeMemory:
    """Peak memory of a process and all its descendants, sampled in a thread: the sum of their
    PSS (shared pages divided among the processes that map them, so forked workers and shared
    memory count once) and, for comparison, the sum of their RSS (which counts shared pages in
    every process)."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.root = psutil.Process(pid)
        self.peak_pss = self.peak_rss = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            pss = rss = 0
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                processes = []
            for process in processes:
                try:
                    info = process.memory_full_info()
                except psutil.Error:
                    continue
                pss += info.pss
                rss += info.rss
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self._stop.wait(self.interval)

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        return self.peak_pss, self.peak_rss


def timed(command: list[str], env: dict, cwd: Path, log: Path) -> dict:
    """Run `command`; wall seconds, peak tree memory, the tree's CPU seconds and the machine's other load."""
    machine_before = psutil.cpu_times()
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        memory = TreeMemory(process.pid)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    peak_pss, peak_rss = memory.stop()
    machine_after = psutil.cpu_times()
    busy = sum(getattr(machine_after, f) - getattr(machine_before, f) for f in ("user", "system", "nice", "irq", "softirq"))
    cpu = usage.ru_utime + usage.ru_stime  # the process and the descendants it waited for
    if process.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({process.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return {"wall": wall, "peak_mb": peak_pss / 2**20, "peak_rss_sum_mb": peak_rss / 2**20, "cpu": cpu,
            "busy_elsewhere": max(0.0, busy - cpu) / wall}  # fmt: skip


def run_frameatlas(workdir: Path, config: Path, number: int, env: dict) -> dict:
    out = workdir / f"frameatlas-{number}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh output folder: nothing of an earlier run is reused
    command = [sys.executable, str(REPO / "run_pipeline.py"), str(config), "--set", f"run.output_dir={out}", "--no-progress"]
    result = timed(command, env, REPO, workdir / f"frameatlas-{number}.log")
    run = out / "peer-bench"
    manifest = json.loads((run / "manifest.json").read_text())
    stages = {name: entry.get("seconds") for name, entry in manifest["stages"].items()}
    extract_counts = manifest["stages"]["extract"].get("counts", {})
    import pandas as pd

    vectors = len(pd.read_parquet(run / "tables" / "embeddings.parquet"))
    result["phases"] = {
        "extract stage (decode + thumbnails + model)": stages.get("extract"),
        "  of which model (thread)": extract_counts.get("embed_model_seconds"),
        "embed stage (index, report)": stages.get("embed"),
        "other (runner, kernels, reports)": result["wall"] - sum(v or 0 for v in (stages.get("extract"), stages.get("embed"))),
    }
    result["vectors"] = vectors
    result["run"] = str(run)
    return result


def run_peer(workdir: Path, python: Path, video: Path, weights: Path, threads: int, number: int, env: dict) -> dict:
    dest = workdir / f"peer-{number}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    phases_file = dest / "phases.json"
    command = [str(python), str(workdir / "peer_driver.py"), str(video.resolve()), str(dest), str(weights), "24",
               str(threads), str(phases_file)]  # fmt: skip
    result = timed(command, env, dest, workdir / f"peer-{number}.log")
    phases = json.loads(phases_file.read_text())
    import numpy as np

    [array] = [np.load(path) for path in dest.glob("*.npy")]
    first = phases.get("first_frames_at", 0.0)
    setup = phases["imports"] + phases["model_load"]
    result["phases"] = {
        "imports + model load": setup,
        "reading frames (cv2, before the first block)": first - setup,
        "embedding (12 loader processes + model)": phases["total"] - first,
        "  of which model": phases["model"],
        "other (interpreter start, exit)": result["wall"] - phases["total"],
    }
    result["vectors"] = int(array.shape[0])
    return result


# --------------------------------------------------------------------------- vectors moved


def vectors_moved(run: Path) -> dict:
    """Per-frame cosine between the run's vectors (input from the full decoded frame) and the
    vectors of its thumbnails (the former input), and thumbnail -> frame retrieval."""
    import numpy as np

    sys.path.insert(0, str(REPO / "lib"))
    from frameatlas.config import load_config
    from frameatlas.embed import encode_image_files
    from frameatlas.models import image_encoder
    from frameatlas.store import RunPaths, load_vectors, read_table

    paths = RunPaths(run)
    cfg = load_config(Path(run).parent.parent / "frameatlas.yaml")
    encoder = image_encoder(cfg.models)
    table, frame_vectors = load_vectors(paths, encoder.record.model_id)
    frames = read_table(paths.table("frames")).set_index("frame_key").loc[table.frame_key].reset_index()
    thumbnail_vectors = encode_image_files(encoder, paths.thumbnails(frames), batch_size=cfg.models.image.batch_size)
    cosine = np.einsum("ij,ij->i", frame_vectors, thumbnail_vectors)
    scores = thumbnail_vectors @ frame_vectors.T
    own = scores[np.arange(len(scores)), np.arange(len(scores))]
    rank = (scores > own[:, None] + 1e-6).sum(axis=1)
    return {
        "frames": len(cosine), "cosine_mean": float(cosine.mean()), "cosine_median": float(np.median(cosine)),
        "cosine_p5": float(np.percentile(cosine, 5)), "cosine_min": float(cosine.min()),
        "thumbnail_finds_own_frame_first": float(np.mean(rank == 0)), "thumbnail_own_frame_in_top5": float(np.mean(rank < 5)),
    }  # fmt: skip


# --------------------------------------------------------------------------- report


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def spread(values: list[float], unit: str = "s") -> str:
    return f"{statistics.median(values):.1f} {unit} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=REPO / "data" / "demo" / "bbb.mp4")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each tool, alternated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/frameatlas-bench-peer"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--moved", action="store_true", help="also measure how far the vectors moved (see above)")
    parser.add_argument("--peer-first", action="store_true", help="start the alternation with the peer")
    args = parser.parse_args()
    if not args.video.is_file():
        raise SystemExit(f"{args.video}: no such video (frameatlas demo fetch --dest data/demo)")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    weights = build_weights(workdir / "vit-b-32-random.pt")
    python = peer_python(workdir)
    config = frameatlas_config(workdir, args.video, weights, args.threads)
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1",
           "FRAMEATLAS_PROGRESS": "off"}  # fmt: skip

    results: dict[str, list[dict]] = {"frameatlas": [], "peer": []}
    for number in range(args.runs):
        order = ["frameatlas", "peer"] if (number + args.peer_first) % 2 == 0 else ["peer", "frameatlas"]
        for tool in order:
            if tool == "frameatlas":
                result = run_frameatlas(workdir, config, number, env)
            else:
                result = run_peer(workdir, python, args.video, weights, args.threads, number, env)
            results[tool].append(result)
            print(f"run {number + 1} {tool:10s} wall {result['wall']:6.1f} s  peak {result['peak_mb']:7.0f} MB "
                  f"(RSS sum {result['peak_rss_sum_mb']:.0f} MB)  "
                  f"cpu {result['cpu']:6.1f} s  busy elsewhere {result['busy_elsewhere']:.2f} cores  vectors {result['vectors']}",
                  flush=True)  # fmt: skip
            for phase, seconds in result["phases"].items():
                print(f"      {phase:48s} {seconds if seconds is None else round(seconds, 1)}")

    print(f"\nmachine: {cpu_name()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GB; "
          f"Python {platform.python_version()}; video {args.video.name}; {args.runs} runs each, alternated")  # fmt: skip
    summary = {}
    for tool, runs in results.items():
        walls = [r["wall"] for r in runs]
        peaks = [r["peak_mb"] for r in runs]
        summary[tool] = {"wall": statistics.median(walls), "peak_mb": statistics.median(peaks),
                         "cpu": statistics.median([r["cpu"] for r in runs])}  # fmt: skip
        print(
            f"{tool:10s} wall {spread(walls)}  peak {spread(peaks, 'MB')}  "
            f"cpu {spread([r['cpu'] for r in runs])}  frames/s {runs[0]['vectors'] / statistics.median(walls):.2f}"
        )
    wall_ratio = summary["frameatlas"]["wall"] / summary["peer"]["wall"]
    memory_ratio = summary["frameatlas"]["peak_mb"] / summary["peer"]["peak_mb"]
    pairs = [a["wall"] / b["wall"] for a, b in zip(results["frameatlas"], results["peer"])]
    print(
        f"frameatlas / peer: wall {wall_ratio:.3f} (pairs {', '.join(f'{p:.3f}' for p in pairs)}; target <= 0.85), "
        f"peak memory {memory_ratio:.3f} (target <= 0.5)"
    )
    moved = vectors_moved(Path(results["frameatlas"][-1]["run"])) if args.moved else None
    if moved:
        print("vectors moved (full frame vs thumbnail input):", json.dumps(moved, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": results, "summary": summary, "wall_ratio": wall_ratio,
                                         "memory_ratio": memory_ratio, "pair_ratios": pairs, "moved": moved,
                                         "machine": cpu_name()}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
