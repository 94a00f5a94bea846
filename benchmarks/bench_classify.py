"""Classify stage speed: feature pooling + grouped cross-validation for 10k windows, and audio features.

    python benchmarks/bench_classify.py [--windows 10000] [--repeats 3] [--audio data/demo/bbb.mp4] [--json OUT]
                                        [--yamnet MODEL --yamnet-python PY [--only-yamnet]]

Both parts run in this process, the models' forward passes excluded (those are the earlier
stages'): synthetic run tables stand in for them.

* **Pooling + cross-validation.** `--windows` windows of 10 s (five frames each, 2 s apart) over
  videos of 10 windows; 512-d image vectors per frame, 384-d caption vectors on every frame and
  on-screen text on one frame in ten, 128-d audio statistics per window; five classes, labels per
  video, the class in every modality plus noise. Timed: `make_samples` + one sparse pooling per
  modality (`features.pool`) against a pandas groupby-mean baseline, then `cross_validate` (logistic
  regression per modality, early and both late fusions, the learned one nested, 5 folds grouped by video).
  Target: under 30 s.
* **Audio features.** The weight-free log-mel descriptor streaming a real soundtrack (`--audio`,
  default the demo's bbb.mp4, else a generated sine track): decode + resample + features, as
  seconds of audio per second of work (target: at least 50x real time).

* **YAMNet's worker process** (with `--yamnet MODEL --yamnet-python PY`, e.g. the tiny SavedModel
  `tests/tinyyamnet.py` builds and `.venv-tf/bin/python`): what one worker call costs before any audio
  (process start, TensorFlow import, model load; a 1 s waveform), and the whole `--audio` track through
  `window_stats_many` in one call, as seconds of audio per second (with a tiny model that is the cost of
  the files, the process and TensorFlow's calls, not YAMNet's own network).

Each figure is the median of `--repeats` runs, with the min-max spread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("FRAMEATLAS_PROGRESS", "off")

from frameatlas.classify.audio import LogMelDescriptor  # noqa: E402
from frameatlas.classify.features import make_samples, pool, sample_matrix  # noqa: E402
from frameatlas.classify.train import cross_validate  # noqa: E402

FRAMES_PER_WINDOW, WINDOW_SECONDS, WINDOWS_PER_VIDEO, CLASSES = 5, 10.0, 10, 5


def machine() -> dict:
    import sklearn

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "scikit-learn": sklearn.__version__,
            "numpy": np.__version__, "load_average": os.getloadavg()}  # fmt: skip


def synthetic_run(windows: int, seed: int = 0) -> dict:
    """Tables shaped like a run's: videos, frames, per-frame vectors, per-window audio, labels per video."""
    rng = np.random.default_rng(seed)
    videos = windows // WINDOWS_PER_VIDEO
    per_video = WINDOWS_PER_VIDEO * FRAMES_PER_WINDOW
    video_ids = np.array([f"v{i:05d}" for i in range(videos)])
    frames = pd.DataFrame({
        "video_id": np.repeat(video_ids, per_video),
        "timestamp": np.tile(np.arange(per_video) * (WINDOW_SECONDS / FRAMES_PER_WINDOW), videos),
    })  # fmt: skip
    frames["frame_key"] = frames.video_id + ":" + (frames.timestamp * 1000).astype(int).astype(str)
    labels = rng.integers(0, CLASSES, videos)
    frame_class = np.repeat(labels, per_video)

    def vectors(dim: int, rows: np.ndarray) -> np.ndarray:
        centres = rng.normal(size=(CLASSES, dim)).astype(np.float32)
        return centres[frame_class[rows]] * 0.3 + rng.normal(size=(len(rows), dim)).astype(np.float32)

    everything = np.arange(len(frames))
    ocr_rows = everything[rng.random(len(frames)) < 0.1]
    return {
        "videos": pd.DataFrame({"video_id": video_ids, "video_name": [f"{v}.mp4" for v in video_ids],
                                "duration": WINDOWS_PER_VIDEO * WINDOW_SECONDS}),  # fmt: skip
        "frames": frames, "labels": dict(zip(video_ids, labels.astype(str))),
        "image": (everything, vectors(512, everything)), "caption": (everything, vectors(384, everything)),
        "ocr": (ocr_rows, vectors(384, ocr_rows)),
        "audio_centres": rng.normal(size=(CLASSES, 128)).astype(np.float32), "rng": rng,
    }  # fmt: skip


def pool_all(data: dict) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    samples, by_video, by_window = make_samples(data["videos"], data["frames"], WINDOW_SECONDS)
    blocks = {}
    for name in ("image", "caption", "ocr"):
        rows, vectors = data[name]
        membership = sample_matrix(len(samples), by_video[rows], by_window[rows])
        block, present = pool(membership, vectors)
        blocks[name] = block if present.all() else np.hstack([block, present[:, None].astype(np.float32)])
    return samples, blocks


def pool_baseline(data: dict) -> dict[str, pd.DataFrame]:
    """pandas: window index per frame, then groupby-mean of the vectors per (video, window) and per video."""
    frames = data["frames"]
    window = np.floor(frames.timestamp.to_numpy() / WINDOW_SECONDS).astype(int)
    out = {}
    for name in ("image", "caption", "ocr"):
        rows, vectors = data[name]
        table = pd.DataFrame(vectors)
        table["video_id"], table["window"] = frames.video_id.to_numpy()[rows], window[rows]
        out[name] = table.groupby(["video_id", "window"]).mean()
        out[name + "_video"] = table.drop(columns="window").groupby("video_id").mean()
    return out


def bench_pooling(windows: int, repeats: int) -> dict:
    data = synthetic_run(windows)
    runs, baseline_runs, cv_runs = [], [], []
    scores = None
    for _ in range(repeats):
        started = time.perf_counter()
        samples, blocks = pool_all(data)
        runs.append(time.perf_counter() - started)
        started = time.perf_counter()
        pool_baseline(data)
        baseline_runs.append(time.perf_counter() - started)
        window_rows = np.flatnonzero(samples.level.eq("window").to_numpy())
        labels = samples.video_id.iloc[window_rows].map(data["labels"]).to_numpy()
        audio = data["audio_centres"][labels.astype(int)] * 0.3 + data["rng"].normal(size=(len(window_rows), 128)).astype(
            np.float32
        )
        matrices = {name: block[window_rows] for name, block in blocks.items()} | {"audio": audio}
        started = time.perf_counter()
        result = cross_validate(matrices, labels, samples.video_id.iloc[window_rows].to_numpy(), folds=5)
        cv_runs.append(time.perf_counter() - started)
        scores = result.scores[["modality", "accuracy", "macro_f1"]].round(3).to_dict("records")
    total = [p + c for p, c in zip(runs, cv_runs)]
    return {
        "windows": int(len(window_rows)), "frames": int(len(data["frames"])), "videos": int(len(data["videos"])),
        "pooling_seconds": runs, "baseline_pooling_seconds": baseline_runs, "cross_validation_seconds": cv_runs,
        "total_seconds": total, "median_total": statistics.median(total),
        "pooling_speedup_vs_pandas": statistics.median(baseline_runs) / statistics.median(runs), "scores": scores,
    }  # fmt: skip


def bench_audio(path: Path | None, repeats: int) -> dict:
    from frameatlas.speech import AudioDecoder

    if path is None or not path.exists():
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        import videogen

        path = Path(tempfile.mkdtemp()) / "tone.mp4"
        videogen.make_audio_only(path, seconds=120)
    descriptor = LogMelDescriptor()
    runs, seconds = [], 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        with AudioDecoder(path) as decoder:
            stats = descriptor.window_stats(decoder.blocks(), 10.0)
        runs.append(time.perf_counter() - started)
        seconds = float(stats.counts.sum() * descriptor.hop / 16000)
    # the descriptor alone, on audio already decoded (what decoding costs is the difference)
    with AudioDecoder(path) as decoder:
        audio = np.concatenate(list(decoder.blocks()))
    alone = []
    for _ in range(repeats):
        started = time.perf_counter()
        descriptor.window_stats([audio], 10.0)
        alone.append(time.perf_counter() - started)
    return {
        "file": str(path), "audio_seconds": round(seconds, 1), "seconds": runs,
        "times_real_time": [seconds / r for r in runs], "median_times_real_time": seconds / statistics.median(runs),
        "descriptor_only_times_real_time": seconds / statistics.median(alone),
    }  # fmt: skip


def bench_yamnet(model: Path, python: str, path: Path | None, repeats: int) -> dict:
    from frameatlas.classify.audio import YamnetDescriptor
    from frameatlas.speech import AudioDecoder

    descriptor = YamnetDescriptor(model, str(model), python)
    second = np.zeros(16000, np.float32)
    calls = []
    for _ in range(repeats):
        descriptor.embeddings(second)
        calls.append(dict(descriptor.last_call))
    track = []
    if path is not None and path.exists():
        with AudioDecoder(path) as decoder:
            audio = np.concatenate(list(decoder.blocks()))
        for _ in range(repeats):
            started = time.perf_counter()
            stats = dict(descriptor.window_stats_many([("track", [audio])], 10.0))["track"]
            elapsed = time.perf_counter() - started
            track.append({"seconds": elapsed, "call": dict(descriptor.last_call), "windows": int(len(stats.counts))})
        seconds = len(audio) / 16000
    else:
        seconds = 0.0
    return {
        "model": str(model), "python": python, "one_second_calls": calls,
        "median_call_wall_seconds": statistics.median(c["wall_seconds"] for c in calls),
        "median_load_seconds": statistics.median(c["load_seconds"] for c in calls),
        "track_audio_seconds": seconds, "track": track,
        "median_track_times_real_time": seconds / statistics.median(t["seconds"] for t in track) if track else None,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--audio", type=Path, default=Path("data/demo/bbb.mp4"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--yamnet", type=Path, help="a SavedModel with YAMNet's signature: time its worker process")
    parser.add_argument("--yamnet-python", help="the python that runs the worker (one with tensorflow-hub)")
    parser.add_argument("--only-yamnet", action="store_true", help="skip pooling, cross-validation and log-mel")
    args = parser.parse_args()
    report = {"machine": machine()}
    if not args.only_yamnet:
        report |= {"pooling_and_cv": bench_pooling(args.windows, args.repeats), "audio": bench_audio(args.audio, args.repeats)}
    if args.yamnet:
        report["yamnet"] = y = bench_yamnet(args.yamnet, args.yamnet_python, args.audio, args.repeats)
        print(f"YAMNet worker ({y['python']}): one call on 1 s of audio {y['median_call_wall_seconds']:.1f} s wall "
              f"(min {min(c['wall_seconds'] for c in y['one_second_calls']):.1f}, max "
              f"{max(c['wall_seconds'] for c in y['one_second_calls']):.1f}), of which TensorFlow import + model load "
              f"{y['median_load_seconds']:.1f} s")  # fmt: skip
        if y["track"]:
            print(f"  {y['track_audio_seconds']:.0f} s of audio in one call: {y['median_track_times_real_time']:.0f}x real "
                  f"time (min {min(y['track_audio_seconds'] / t['seconds'] for t in y['track']):.0f}, max "
                  f"{max(y['track_audio_seconds'] / t['seconds'] for t in y['track']):.0f})")  # fmt: skip
    report["machine"]["load_average_after"] = os.getloadavg()
    if args.only_yamnet:
        print(f"machine: {report['machine']}")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=float))
        return
    p, a = report["pooling_and_cv"], report["audio"]
    print(f"pooling + cross-validation, {p['windows']} windows ({p['frames']} frames, {p['videos']} videos):")
    print(f"  pooling {statistics.median(p['pooling_seconds']):.3f} s (min {min(p['pooling_seconds']):.3f}, max "
          f"{max(p['pooling_seconds']):.3f}); pandas groupby baseline {statistics.median(p['baseline_pooling_seconds']):.3f} s "
          f"-> {p['pooling_speedup_vs_pandas']:.1f}x")  # fmt: skip
    print(f"  cross-validation {statistics.median(p['cross_validation_seconds']):.1f} s "
          f"(min {min(p['cross_validation_seconds']):.1f}, max {max(p['cross_validation_seconds']):.1f})")  # fmt: skip
    print(f"  total {p['median_total']:.1f} s (min {min(p['total_seconds']):.1f}, max {max(p['total_seconds']):.1f}); "
          f"target < 30 s")  # fmt: skip
    print(f"audio features, {a['file']} ({a['audio_seconds']} s of audio): {a['median_times_real_time']:.0f}x real time "
          f"(min {min(a['times_real_time']):.0f}, max {max(a['times_real_time']):.0f}); the descriptor alone "
          f"{a['descriptor_only_times_real_time']:.0f}x; target >= 50x")  # fmt: skip
    print(f"machine: {report['machine']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
