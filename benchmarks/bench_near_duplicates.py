"""Near-duplicate reuse in the OCR stage: time saved and text changed, on the demo and a static camera.

    python benchmarks/bench_near_duplicates.py [--repeat 3] [--distance N] [--gate SIDE] [--json OUT]
    python benchmarks/bench_near_duplicates.py --sweep-only      # extraction + reuse rates, no OCR timing
    python benchmarks/bench_near_duplicates.py --profile         # where one read-every-frame pass spends its CPU

Two corpora, each extracted once (untimed) with the extract section of `pipeline.yaml`:

* demo: `data/demo/*.mp4` (fetch with `frameatlas demo fetch`);
* static: a generated fixed-camera street (`tests/videogen.make_static_scene_video`): the same
  scene with sensor noise, a small figure crossing it, and a sign whose text changes every 20 s.

For each corpus the OCR stage (`frameatlas.ocr.read_frame_text`, forced, readers loaded once for
every pass; with `--fresh-readers` each pass loads its own and compiles OpenVINO's networks anew, as a run's
stage in its new kernel does, and that loading is timed) runs alternately as before these options (the baseline: every frame read by one reader with
ONNX Runtime's threads at every core, spinning; reuse off, no gate) and as configured: reuse at
`--distance`, the text gate at `--gate` (`caption.ocr.gate_short_side`; `--gate off` for reuse alone),
threads as `caption.ocr.spin_wait` says, and `--workers` readers at once (`caption.ocr.workers`; null =
one per CPU, `models.threads` shared among them), `--repeat` times each. Printed: wall and CPU seconds (median, min-max),
the speedup baseline / reuse, frames reused and gated, and the agreement on frames that have text:

* frames that have text: frames on which the baseline (reading every frame) found text;
* same text: the frame's text in the reuse pass equals the baseline's after removing whitespace
  and case (OCR sometimes splits or joins words on the same picture); exact string equality and
  the mean character similarity (difflib) are shown too, and frames that gained text.

Then a sweep of thresholds (0 ... 64 changed cells), simulated from the baseline's texts: a reused
frame gets its anchor's text, which is what the reader returns for the anchor (checked: the
simulation at `--distance` must equal the real reuse pass). The same sweep for a 64-bit dHash
(the usual perceptual hash, as imagehash computes it) shows why the signature is a grid of cells.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("FRAMEATLAS_PROGRESS", "off")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the generated static video comes from the tests' video generator

import videogen  # noqa: E402
from frameatlas.config import config_from_dict, load_config  # noqa: E402
from frameatlas.frames import extract_corpus  # noqa: E402
from frameatlas.models import ocr as ocr_model  # noqa: E402
from frameatlas.models.ocr import OcrReader  # noqa: E402
from frameatlas.ocr import ocr_workers, read_frame_text  # noqa: E402
from frameatlas.signature import NearDuplicates, frame_signature  # noqa: E402
from frameatlas.store import RunPaths, read_table, read_thumbnail  # noqa: E402
from PIL import Image  # noqa: E402

SWEEP = [0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64]
STATIC_SIGNS = [(0.0, "MAIN STREET"), (20.0, "OPEN DAILY"), (40.0, "CLOSED NOW"), (60.0, "CLOSED NOV"),
                (80.0, "SALE TODAY"), (100.0, "SALE TODAV")]  # fmt: skip


def machine() -> dict:
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    openvino = ocr_model._package_version("openvino")  # "unknown" when it is not installed
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "openvino": openvino, "load_1min_at_start": os.getloadavg()[0]}  # fmt: skip


def prepare(name: str, videos: Path, work: Path):
    """The corpus's config (the demo's sampling) and its run folder, extracted (cached after the first time)."""
    base = load_config(REPO / "pipeline.yaml").to_parameters()
    data = {
        "run": {"output_dir": str(work), "name": name},
        "corpus": {"videos": str(videos), "demo": False},
        "extract": base["extract"],
        "caption": {"ocr": {**base["caption"]["ocr"], "enabled": True}},
    }
    cfg = config_from_dict(data)
    started = time.perf_counter()
    summary = extract_corpus(cfg, cfg.run_dir)
    print(f"{name}: {summary.frames} frames of {summary.videos} videos ({summary.cached} cached), "
          f"{time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
    return cfg, RunPaths(cfg.run_dir)


def squeeze(text: str) -> str:
    return "".join(str(text).split()).casefold()


def agreement(baseline: list[str], other: list[str]) -> dict:
    with_text = [i for i, text in enumerate(baseline) if squeeze(text)]
    same = sum(squeeze(baseline[i]) == squeeze(other[i]) for i in with_text)
    exact = sum(baseline[i] == other[i] for i in with_text)
    similarity = [difflib.SequenceMatcher(None, baseline[i], other[i]).ratio() for i in with_text]
    gained = sum(1 for b, o in zip(baseline, other) if not squeeze(b) and squeeze(o))
    return {"frames_with_text": len(with_text), "same_text": same / len(with_text) if with_text else 1.0,
            "exact_string": exact / len(with_text) if with_text else 1.0,
            "char_similarity": float(np.mean(similarity)) if similarity else 1.0, "frames_gaining_text": gained}  # fmt: skip


def dhash64(image: Image.Image) -> int:
    """The 64-bit difference hash as imagehash.dhash computes it (9 x 8 grey, LANCZOS, left < right)."""
    pixels = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def simulate(frames, texts: dict[str, str], distance: int, *, dhash: dict[str, int] | None = None) -> tuple[list[str], int]:
    """The texts a reuse pass at `distance` gives (anchor's text for reused frames), and how many frames reuse."""
    out, reused = [], 0
    for _, group in frames.groupby("video_id", sort=False):
        near = NearDuplicates(distance)
        anchor_hash: tuple[str, int] | None = None
        for row in group.sort_values("timestamp").itertuples():
            if dhash is None:
                anchor = near.anchor_for(row.signature)
                if anchor is None:
                    near.computed(row.frame_key, row.signature)
            else:
                close = anchor_hash is not None and (dhash[row.frame_key] ^ anchor_hash[1]).bit_count() <= distance
                anchor = anchor_hash[0] if close else None
                if anchor is None:
                    anchor_hash = (row.frame_key, dhash[row.frame_key])
            reused += anchor is not None
            out.append((row.frame_key, texts[anchor or row.frame_key]))
    order = dict(out)
    return [order[key] for key in frames.frame_key], reused


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def bench_corpus(name: str, cfg, run: RunPaths, readers: dict[str, list[OcrReader]] | None, distance: int, repeat: int,
                 sweep_only: bool, timed: bool = True, gate: int | None = None) -> dict:  # fmt: skip
    """Time the two kinds of pass on one corpus. `readers` None: every pass loads its own readers, as a run's
    stage does (their loading timed with it), the baseline one reader on ONNX Runtime with threads spinning."""
    frames = read_table(run.table("frames"))
    result: dict = {"frames": len(frames), "videos": int(frames.video_id.nunique()), "distance": distance, "gate": gate,
                    "gate_score": cfg.caption.ocr.gate_score, "spin_wait": cfg.caption.ocr.spin_wait, "runtime": cfg.caption.ocr.runtime}  # fmt: skip
    images = [read_thumbnail(path) for path in run.thumbnails(frames)]
    started = time.perf_counter()
    for image in images:
        frame_signature(image)
    result["signature_ms_per_frame"] = (time.perf_counter() - started) / len(images) * 1000
    passes: dict[str, list] = {"off": [], "reuse": []}
    tables = {}
    configured = cfg.caption.ocr.model_dump(include={"spin_wait", "runtime", "workers"})
    as_before = {"spin_wait": True, "runtime": "onnxruntime", "workers": 1}  # the stage before these options
    for round_ in range(0 if sweep_only else repeat if timed else 1):
        for label, value in (("off", None), ("reuse", distance)) if round_ % 2 == 0 else (("reuse", distance), ("off", None)):
            cfg.caption.ocr.reuse_distance = value
            cfg.caption.ocr.gate_short_side = gate if label == "reuse" else None
            for key, value in (configured if label == "reuse" else as_before).items():
                setattr(cfg.caption.ocr, key, value)
            if readers is None:  # a stage's kernel is a new process: no network compiled, no input shape seen
                ocr_model._compiled.cache_clear()
            wall, cpu = time.perf_counter(), time.process_time()
            # untimed: the texts cached by earlier passes
            summary = read_frame_text(cfg, run, force=timed, reader=readers[label] if readers else None)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            passes[label].append((wall, cpu, summary.reused))
            tables[label] = summary.table
            if label == "reuse":
                result["gated"] = summary.gated
            print(f"  {name} {label:>5}: {wall:7.1f} s wall, {cpu:7.1f} s CPU, {summary.reused} of {summary.read} reused, "
                  f"{summary.gated} gated; load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    if not sweep_only:
        baseline = tables["off"].text.tolist()
        walls = {label: [w for w, _, _ in runs] for label, runs in passes.items()}
        cpus = {label: [c for _, c, _ in runs] for label, runs in passes.items()}
        if timed:
            result |= {
                "wall_off": spread(walls["off"]), "wall_reuse": spread(walls["reuse"]),
                "cpu_off": spread(cpus["off"]), "cpu_reuse": spread(cpus["reuse"]),
                "speedup_wall": spread([o / r for o, r in zip(walls["off"], walls["reuse"])]),
                "speedup_cpu": spread([o / r for o, r in zip(cpus["off"], cpus["reuse"])]),
            }  # fmt: skip
        result |= {"reused": int((tables["reuse"].reused_from != "").sum()),
                   "agreement": agreement(baseline, tables["reuse"].text.tolist())}  # fmt: skip
        texts = dict(zip(tables["off"].frame_key, baseline))
        simulated, _ = simulate(frames, texts, distance)
        # with the gate, gated frames read "" where the simulation copies texts: compare the frames not gated
        not_gated = [i for i, text in enumerate(tables["reuse"].text) if gate is None or text or not simulated[i]]
        result["simulation_matches_real_pass"] = all(simulated[i] == tables["reuse"].text.iat[i] for i in not_gated)
        hashes = {key: dhash64(read_thumbnail(path)) for key, path in zip(frames.frame_key, run.thumbnails(frames))}
        sweep = []
        for value in SWEEP:
            cells_texts, cells_reused = simulate(frames, texts, value)
            dhash_texts, dhash_reused = simulate(frames, texts, value, dhash=hashes)
            sweep.append({"distance": value, "reused": cells_reused / len(frames),
                          "same_text": agreement(baseline, cells_texts)["same_text"],
                          "dhash_reused": dhash_reused / len(frames),
                          "dhash_same_text": agreement(baseline, dhash_texts)["same_text"]})  # fmt: skip
        result["sweep"] = sweep
    else:
        sweep = []
        for value in SWEEP:
            _, reused = simulate(frames, dict.fromkeys(frames.frame_key, ""), value)
            sweep.append({"distance": value, "reused": reused / len(frames)})
        result["sweep"] = sweep
    return result


def profile(name: str, run: RunPaths, reader: OcrReader, sides=(96, 128, 160, 216), scores=(0.1, 0.3)) -> None:
    """Where a read-every-frame pass spends its CPU (detection and recognition apart, frames with and without
    text), and what a text gate at each short side in `sides` would let through and miss."""
    import pandas as pd

    engine = reader.engine
    frames = read_table(run.table("frames"))
    rows = []
    for key, path in zip(frames.frame_key, run.thumbnails(frames)):
        image = read_thumbnail(path)
        pixels = engine.load_img(np.asarray(image))
        started = time.process_time()
        scaled, _, _ = engine.preprocess(pixels)
        boxes, _ = engine.auto_text_det(scaled)
        detected = time.process_time()
        texts = engine.text_rec(engine.get_crop_img_list(scaled, boxes), False)[0] if boxes is not None else []
        recognised = time.process_time()
        kept = [
            t for t, score in texts if score >= reader.options.min_score and len("".join(t.split())) >= reader.options.min_chars
        ]
        row = {"frame": key, "text": bool(kept), "boxes": 0 if boxes is None else len(boxes),
               "detect": detected - started, "recognise": recognised - detected}  # fmt: skip
        for side in sides:
            started = time.process_time()
            row[f"gate {side}"] = reader.text_probability(image, side)
            row[f"gate {side} s"] = time.process_time() - started
        rows.append(row)
    table = pd.DataFrame(rows)
    h, w = engine.text_det.get_preprocess(0).resize(engine.preprocess(pixels)[0]).shape[:2]  # the last frame's
    print(f"\n== {name}: CPU of one read-every-frame pass by step (detector input {w} x {h}, spinning threads as configured)")
    print(table.groupby("text")[["boxes", "detect", "recognise"]].agg(["count", "mean", "sum"]).round(3).to_string())
    for side in sides:
        for score in scores:
            passed = table[f"gate {side}"] >= score
            print(f"gate {side:>4} px at {score}: misses {int((table.text & ~passed).sum())} of {int(table.text.sum())} frames "
                  f"with text, lets {int((~table.text & passed).sum())} of {int((~table.text).sum())} without through; "
                  f"{table[f'gate {side} s'].mean():.3f} s CPU per frame")  # fmt: skip


def report(name: str, result: dict) -> None:
    print(f"\n== {name}: {result['frames']} frames of {result['videos']} videos; "
          f"signature {result['signature_ms_per_frame']:.2f} ms per frame (made at extraction)")  # fmt: skip
    if "wall_off" in result:
        fmt = lambda s: f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"  # noqa: E731
        print(f"OCR every frame      wall {fmt(result['wall_off'])} s, CPU {fmt(result['cpu_off'])} s")
        print(
            f"reuse {result['distance']:>2}, gate {result['gate'] or 'off':>4} wall {fmt(result['wall_reuse'])} s, CPU {fmt(result['cpu_reuse'])} s"
        )
        speed = result["speedup_wall"]
        print(f"speedup (wall)       {speed['median']:.2f}x ({speed['min']:.2f}-{speed['max']:.2f}); "
              f"CPU {result['speedup_cpu']['median']:.2f}x ({result['speedup_cpu']['min']:.2f}-{result['speedup_cpu']['max']:.2f})")  # fmt: skip
    if "agreement" in result:
        print(
            f"reused               {result['reused']} frames at {result['distance']} cells ({result['reused'] / result['frames']:.1%}); "
            f"{result.get('gated', 0)} frames gated (no text candidate at {result['gate'] or 'off'} px)"
        )
        a = result["agreement"]
        print(f"agreement            same text on {a['same_text']:.1%} of the {a['frames_with_text']} frames with text "
              f"(exact string {a['exact_string']:.1%}, char similarity {a['char_similarity']:.3f}); "
              f"{a['frames_gaining_text']} frames gained text; simulation = real pass: {result['simulation_matches_real_pass']}")  # fmt: skip
    print(f"{'distance':>8} {'reused':>7} {'same text':>10}   {'dHash-64 reused':>15} {'same text':>10}")
    for row in result["sweep"]:
        line = f"{row['distance']:>8} {row['reused']:>7.1%}"
        if "same_text" in row:
            line += f" {row['same_text']:>10.1%}   {row['dhash_reused']:>15.1%} {row['dhash_same_text']:>10.1%}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(REPO / "outputs" / "bench-near-duplicates"), help="runs are extracted here")
    parser.add_argument("--demo", default=str(REPO / "data" / "demo"), help="the demo videos")
    parser.add_argument("--distance", type=int, default=None, help="reuse threshold; default: caption.ocr.reuse_distance")
    parser.add_argument("--gate", default=None,
                        help="text gate short side (px) for the reuse passes, or off; default: caption.ocr.gate_short_side")  # fmt: skip
    parser.add_argument("--workers", type=int, default=None,
                        help="readers at once in the reuse passes; default: caption.ocr.workers (null: the CPUs available)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3, help="timed passes of each kind per corpus")
    parser.add_argument("--corpora", default="demo,static", help="which corpora: demo, static")
    parser.add_argument("--sweep-only", action="store_true", help="extract and print reuse rates only (no OCR)")
    parser.add_argument("--untimed", action="store_true",
                        help="no timed passes: agreement and sweep from the texts the last passes cached in --work")  # fmt: skip
    parser.add_argument("--profile", action="store_true",
                        help="only profile one read-every-frame pass per corpus (detection, recognition, gate sizes)")  # fmt: skip
    parser.add_argument("--fresh-readers", action="store_true",
                        help="every pass loads its own readers and compiles its networks, as a run's stage does (timed with the pass)")  # fmt: skip
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    work = Path(args.work)
    distance = args.distance if args.distance is not None else load_config(REPO / "pipeline.yaml").caption.ocr.reuse_distance
    if distance is None:
        parser.error("caption.ocr.reuse_distance is off in pipeline.yaml: give --distance")
    gate = load_config(REPO / "pipeline.yaml").caption.ocr.gate_short_side if args.gate is None else (
        None if args.gate == "off" else int(args.gate))  # fmt: skip
    info = machine()
    corpora = {}
    for name in args.corpora.split(","):
        if name == "demo":
            corpora[name] = prepare("demo", Path(args.demo), work)
        elif name == "static":
            videos = work / "static-videos"
            if not (videos / "street.mp4").exists():
                videogen.make_static_scene_video(videos / "street.mp4", seconds=120, fps=10, size=(640, 360),
                                                 signs=STATIC_SIGNS)  # fmt: skip
            corpora[name] = prepare("static", videos, work)
        else:
            parser.error(f"--corpora: unknown corpus {name!r} (demo, static)")
    readers: dict[str, list[OcrReader]] = {}
    if not args.sweep_only:  # the baseline reads as before these options (one reader, threads spin); the other as configured
        first = next(iter(corpora.values()))[0]
        if args.workers is not None:
            first.caption.ocr.workers = args.workers
        workers, threads = ocr_workers(first)
        info |= {"workers": workers, "threads_per_worker": threads}
        if not args.fresh_readers:
            spinning = first.caption.ocr.model_copy(update={"spin_wait": True, "runtime": "onnxruntime"})
            readers["off"] = [OcrReader(spinning, first.models.threads)]
            readers["reuse"] = [OcrReader(first.caption.ocr, threads) for _ in range(workers)]
            for reader in readers["off"] + readers["reuse"]:
                reader.read(Image.new("RGB", (384, 216), "white"))  # warm-up: onnxruntime allocates on the first call
    if args.profile and args.fresh_readers:
        parser.error("--profile times one loaded reader: leave out --fresh-readers")
    if args.profile:
        for name, (_, run) in corpora.items():
            profile(name, run, readers["off"][0])
        return
    results = {}
    for name, (cfg, run) in corpora.items():
        if args.workers is not None:
            cfg.caption.ocr.workers = args.workers
        results[name] = bench_corpus(name, cfg, run, None if args.fresh_readers else readers, distance, args.repeat,
                                     args.sweep_only, not args.untimed, gate)  # fmt: skip
    for name, result in results.items():
        report(name, result)
    print("\nmachine:", ", ".join(f"{k} {v}" for k, v in info.items()), f"; load at end {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"results": results, "machine": info}, indent=1, default=str))


if __name__ == "__main__":
    main()
