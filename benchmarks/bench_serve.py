"""The investigator's speed: warm queries through `frameatlas serve`, prompt curves, app start.

    python benchmarks/bench_serve.py [--frames 100000] [--queries 40] [--repeat 3] [--json OUT]

A synthetic run (no videos needed for these timings) is written to a temporary folder:
`--frames` frames over videos of 10 000 frames each, unit vectors of 512 dimensions, embedded by
"ViT-B-32 with random weights" saved as a local model folder, so the text tower that encodes each
query has the real architecture and cost (timings do not depend on weight values).

* **Warm text query** over all frames, encoding included: `GET /api/search?text=...` against a
  `frameatlas serve` process, each query a new text (no cache can answer it), after one warm-up
  query; p50 and p95 over `--queries`. Baseline, same machine, same run: `frameatlas search RUN TEXT`
  in a fresh process (what a query cost before the app), median of `--repeat`.
* **Curves**: `RunView.curves` for 5 prompts over one 10 000-frame video: with the prompts already
  encoded (the matrix product and the JSON-ready lines) and with 5 new prompts (encoding included);
  medians of 20.
  `--repeat` server sessions of `--queries` queries each: the median of their p50s and p95s, and each
  session's.
* **App start to first page**: from starting `frameatlas serve` to `GET /` and `GET /api/run`
  both answered, median of `--repeat` (the model loads lazily, in the background, after that).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pandas as pd

os.environ.setdefault("FRAMEATLAS_PROGRESS", "off")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from frameatlas.config import config_from_dict  # noqa: E402
from frameatlas.files import atomic_write_json  # noqa: E402
from frameatlas.store import (
    RunPaths,  # noqa: E402
    write_table,  # noqa: E402
)

FRAMES_PER_VIDEO = 10_000
WORDS = ("red car blue sky city street night rabbit meadow bird flying dog beach snow mountain crowd train "
         "kitchen forest river bridge boat sunset office window fire smoke road").split()  # fmt: skip


def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "pandas": pd.__version__}  # fmt: skip


def random_vit_b32(folder: Path) -> Path:
    """ViT-B-32's architecture with random weights, laid out as a `local-dir:` model."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = open_clip.get_model_config("ViT-B-32")
    torch.manual_seed(0)
    model = open_clip.CLIP(**config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    preprocess = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": preprocess}))
    return folder


def synthetic_run(root: Path, frames: int) -> Path:
    """A run folder with `frames` frames and their vectors (ids, times and tables as the stages write them)."""
    from frameatlas.models import image_encoder

    model = random_vit_b32(root / "vit-b-32-random")
    cfg = config_from_dict({
        "run": {"name": "bench", "output_dir": str(root / "out")}, "corpus": {"videos": str(root / "videos"), "demo": False},
        "models": {"image": {"name": f"local-dir:{model}", "pretrained": None, "on_missing_weights": "error"},
                   "cache_dir": str(root / "hub")},
    })  # fmt: skip
    encoder = image_encoder(cfg.models)
    run = cfg.run_dir
    (run / "tables").mkdir(parents=True)
    (root / "videos").mkdir()
    videos = max(1, frames // FRAMES_PER_VIDEO)
    video_ids = np.repeat([f"{v:016x}" for v in range(videos)], FRAMES_PER_VIDEO)[:frames]
    index = np.arange(frames) % FRAMES_PER_VIDEO
    names = np.char.add(np.char.add("video", (np.arange(frames) // FRAMES_PER_VIDEO).astype(str)), ".mp4")
    timestamps = index * 0.5
    keys = [f"{v}:{int(t * 1000)}" for v, t in zip(video_ids, timestamps)]
    table = pd.DataFrame({
        "frame_key": keys, "video_id": video_ids, "video_name": names, "video_path": [str(root / "videos" / n) for n in names],
        "timestamp": timestamps, "frame_index": index * 12, "thumbnail": [f"frames/{v}/t{i:06d}.jpg" for v, i in zip(video_ids, index)],
        "width": 384, "height": 216, "sampling": "interval-bench",
    })  # fmt: skip
    write_table(table, run / "tables" / "frames.parquet")
    write_table(pd.DataFrame({
        "video_id": [f"{v:016x}" for v in range(videos)], "video_name": [f"video{v}.mp4" for v in range(videos)],
        "video_path": [str(root / "videos" / f"video{v}.mp4") for v in range(videos)], "duration": FRAMES_PER_VIDEO * 0.5,
        "fps": 24.0, "has_audio": False, "status": "ok",
    }), run / "tables" / "videos.parquet")  # fmt: skip
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((frames, encoder.dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_table(pd.DataFrame({"frame_key": keys, "video_id": video_ids, "model_id": encoder.record.model_id,
                              "vector": list(vectors)}), run / "tables" / "embeddings.parquet")  # fmt: skip
    atomic_write_json(run / "config.json", cfg.to_parameters())
    return run


def texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"a photo of a {' '.join(rng.choice(WORDS, 3))} {i}" for i in range(n)]


def start_server(run: Path) -> tuple[subprocess.Popen, str, float]:
    """`frameatlas serve` in a new process; (process, url, seconds to first page and /api/run)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "frameatlas.cli", "serve", str(run), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    line = process.stdout.readline()
    url = re.search(r" at (http://\S+/) ", line).group(1)
    for path in ("", "api/run"):
        with urllib.request.urlopen(url + path, timeout=120) as response:
            response.read()
    return process, url, time.perf_counter() - started


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=60)


def query(url: str, text: str, timeout: float = 120) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url + "api/search?" + urlencode({"text": text, "per_page": 12}), timeout=timeout) as response:
        body = json.loads(response.read())
    seconds = time.perf_counter() - started
    assert body["hits"], body
    return seconds


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cli-runs", type=int, default=None, help="baseline CLI queries (default: --repeat)")
    parser.add_argument("--no-http-queries", dest="http_queries", action="store_false", help="skip the queries through the app")
    parser.add_argument("--keep", type=Path, help="make (or reuse) the synthetic run in this folder instead of a temporary one")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    results: dict = {"machine": machine(), "frames": args.frames, "load_average_at_start": os.getloadavg()}
    print(f"load average at start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="frameatlas-bench-serve-") as temporary:
        folder = args.keep or Path(temporary)
        # frameatlas keeps every text a model encoded in the user's cache: a fresh one per benchmark, so
        # no query is answered from an earlier run's cache (each session's texts are new within a run)
        os.environ["XDG_CACHE_HOME"] = str(Path(temporary) / "user-cache")
        run = folder / "out" / "bench"
        if not (run / "config.json").exists():
            t0 = time.perf_counter()
            run = synthetic_run(folder, args.frames)
            print(f"synthetic run: {args.frames} frames in {time.perf_counter() - t0:.1f} s at {run}", flush=True)

        starts = []
        for _ in range(args.repeat):
            process, url, seconds = start_server(run)
            starts.append(seconds)
            stop(process)
        results["start_to_first_page_s"] = {"median": statistics.median(starts), "runs": starts}
        print(
            f"app start to first page: median {statistics.median(starts):.2f} s, runs {[round(s, 2) for s in starts]}", flush=True
        )

        warm_p50 = [float("nan")]
        if args.http_queries:
            # one server per session, each with its own new texts: the spread between sessions is the
            # machine's, the spread inside a session the queries'
            sessions = []
            for session in range(args.repeat):
                process, url, _ = start_server(run)
                try:
                    query(url, "warm-up: loads the vectors and the model", timeout=900)
                    sessions.append([query(url, text) for text in texts(args.queries, seed=1 + 10 * session)])
                finally:
                    stop(process)
            warm_p50 = [percentile(times, 50) for times in sessions]
            warm_p95 = [percentile(times, 95) for times in sessions]
            results["warm_query_s"] = {"p50": statistics.median(warm_p50), "p95": statistics.median(warm_p95),
                                       "p50_sessions": warm_p50, "p95_sessions": warm_p95, "runs": sessions}  # fmt: skip
            print(f"warm text query over {args.frames} frames (HTTP, encoding included), {args.repeat} sessions of "
                  f"{args.queries} queries: p50 {1000 * statistics.median(warm_p50):.0f} ms "
                  f"({', '.join(f'{1000 * v:.0f}' for v in warm_p50)}), "
                  f"p95 {1000 * statistics.median(warm_p95):.0f} ms ({', '.join(f'{1000 * v:.0f}' for v in warm_p95)})",
                  flush=True)  # fmt: skip

        # the same in this process, split: the query's encoding, and the rest of frameatlas.search.search
        from frameatlas.models import image_encoder
        from frameatlas.search import _run_config, search

        search(run, "warm-up")
        encoder = image_encoder(_run_config(RunPaths(run)).models)
        encode, total = [], []
        for text in texts(args.queries, seed=4):
            started = time.perf_counter()
            encoder.encode_text([text])
            encode.append(time.perf_counter() - started)
            started = time.perf_counter()
            search(run, text)
            total.append(time.perf_counter() - started)
        rest = [t - e for t, e in zip(total, encode)]
        results["in_process_query_s"] = {"search_p50": percentile(total, 50), "search_p95": percentile(total, 95),
                                         "encode_p50": percentile(encode, 50), "rest_p50": percentile(rest, 50),
                                         "rest_p95": percentile(rest, 95)}  # fmt: skip
        print(f"in this process: search() p50 {1000 * percentile(total, 50):.0f} ms, p95 {1000 * percentile(total, 95):.0f} ms; "
              f"of which encoding the text p50 {1000 * percentile(encode, 50):.0f} ms, "
              f"the rest p50 {1000 * percentile(rest, 50):.0f} ms, p95 {1000 * percentile(rest, 95):.0f} ms", flush=True)  # fmt: skip

        cli = []
        for text in texts(args.repeat if args.cli_runs is None else args.cli_runs, seed=2):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "frameatlas.cli", "search", str(run), text], check=True,
                           capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
            cli.append(time.perf_counter() - started)
        if cli:
            results["cli_query_s"] = {"median": statistics.median(cli), "runs": cli}
            print(f"baseline, `frameatlas search` in a fresh process: median {statistics.median(cli):.2f} s "
                  f"(x{statistics.median(cli) / statistics.median(warm_p50):.0f} the warm p50)", flush=True)  # fmt: skip

        from frameatlas.investigator import Prompt, RunView

        view = RunView(run)
        video = view.videos[0].video_id
        prompts = [Prompt(text) for text in texts(5, seed=3)]
        view.curves(video, prompts)  # model loaded, prompts encoded
        cached = []
        for _ in range(20):
            started = time.perf_counter()
            curves = view.curves(video, prompts)
            cached.append(time.perf_counter() - started)
        assert len(curves.lines) == 5 and len(curves.timestamps) == FRAMES_PER_VIDEO
        fresh = []
        for n in range(20):
            new = [Prompt(text) for text in texts(5, seed=100 + n)]
            started = time.perf_counter()
            view.curves(video, new)
            fresh.append(time.perf_counter() - started)
        results["curves_5_prompts_10k_frames_s"] = {"encoded": statistics.median(cached), "with_encoding": statistics.median(fresh),
                                                    "encoded_runs": cached, "with_encoding_runs": fresh}  # fmt: skip
        print(f"curves, 5 prompts x {FRAMES_PER_VIDEO} frames: {1000 * statistics.median(cached):.1f} ms with the prompts "
              f"encoded, {1000 * statistics.median(fresh):.1f} ms encoding 5 new prompts (medians of 20)", flush=True)  # fmt: skip
    results["load_average_at_end"] = os.getloadavg()
    print(f"load average at end: {os.getloadavg()}")
    print(json.dumps(results["machine"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
