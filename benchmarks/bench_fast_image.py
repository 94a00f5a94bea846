"""The CLIP image tower on torch fp32 against torch-int8, ONNX Runtime fp32 and ONNX Runtime int8
(`models.image.runtime`, `frameatlas.models.fast_image`): frames per second and agreement.

    python benchmarks/bench_fast_image.py [--model ViT-B-32] [--pretrained TAG_OR_FILE] [--frames DIR]
                                          [--count 256] [--batch-size 32] [--threads 2] [--repeats 3] [--json OUT]

Speed: each runtime encodes the same `--count` preprocessed images (the tower alone: preprocessing is
the same for all), batch by batch; the runtimes take turns in every repeat, so load on a shared machine
falls on all of them; the median of the repeats and their range are shown, and the ratio to fp32.

Agreement with fp32, per frame: the cosine of its vectors, and the overlap of its 10 nearest
neighbours among the `--count` images (fp32's ten vs the runtime's ten).

Which weights: by default the architecture with RANDOM weights (speed does not depend on weight
values). Agreement measured on random weights proves nothing about trained ones: trained CLIP towers
have activation outliers that random ones lack, and int8 quantization suffers most there. To check a
real model before switching a run to it, give its weights (`--pretrained laion2b_s34b_b79k`, or a
checkpoint file) and real frames (`--frames outputs/<run>/frames`): switch only if it shows at least
0.99 mean cosine and 0.95 mean top-10 overlap (the script says whether it does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("FRAMEATLAS_PROGRESS", "off")

RUNTIMES = ["torch", "torch-int8", "onnx", "onnx-int8"]
TARGET_SPEEDUP = 1.8
AGREEMENT_TARGETS = {"cosine": 0.99, "top10": 0.95}


def machine(threads: int) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    import onnxruntime
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "threads": threads, "load_average": os.getloadavg()}  # fmt: skip


def images(folder: str | None, count: int) -> tuple[list, str]:
    """`count` images: JPEGs found under `folder` (evenly picked), else frameatlas's synthetic probe images."""
    from frameatlas.models.fast_image import probe_images
    from PIL import Image

    if folder:
        found = sorted(Path(folder).rglob("*.jpg"))
        if len(found) < count:
            sys.exit(f"--frames {folder}: {len(found)} JPEGs, --count asks for {count}")
        picks = np.linspace(0, len(found) - 1, count).round().astype(int)
        return [Image.open(found[i]).convert("RGB") for i in picks], f"{count} JPEG frames from {folder}"
    return probe_images(count, size=256, seed=1), f"{count} synthetic images (frameatlas.models.fast_image.probe_images)"


def base_encoder(model: str, pretrained: str | None):
    from frameatlas.models.base import ModelRecord
    from frameatlas.models.clip import OpenClipEncoder, model_id_for, resolve_open_clip

    source = resolve_open_clip(model, pretrained, allow_download=False)
    digest = None
    if source.weights_file is not None:
        from frameatlas.files import sha256_file

        digest = sha256_file(source.weights_file)
    record = ModelRecord(kind="image", model_id=model_id_for(source), requested=source.label, backend="open_clip",
                         weights=str(source.weights_file) if source.weights_file else None, weights_sha256=digest)  # fmt: skip
    return OpenClipEncoder(source, "cpu", record), source.label


def top10_overlap(reference: np.ndarray, other: np.ndarray, k: int = 10) -> np.ndarray:
    """Per row: the share of its k nearest neighbours (itself excluded) that both vector sets agree on."""

    def neighbours(vectors):
        scores = vectors @ vectors.T
        np.fill_diagonal(scores, -np.inf)
        return np.argsort(-scores, axis=1)[:, :k]

    a, b = neighbours(reference), neighbours(other)
    return np.array([len(set(x) & set(y)) / k for x, y in zip(a, b)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default=None, help="weights: an open_clip tag or a checkpoint file (default: random)")
    parser.add_argument("--frames", default=None, help="a folder of JPEG frames, e.g. outputs/demo/frames (default: synthetic)")
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch
    from frameatlas.models.fast_image import FastImageTower

    torch.set_num_threads(args.threads)
    base, label = base_encoder(args.model, args.pretrained)
    weights = f"trained weights {label}" if args.pretrained else f"{args.model} architecture with RANDOM weights"
    pictures, what = images(args.frames, args.count)
    prepared = [base.preprocess(picture) for picture in pictures]
    batches = [prepared[i : i + args.batch_size] for i in range(0, len(prepared), args.batch_size)]
    runtimes = args.runtimes.split(",")
    encoders = {runtime: base if runtime == "torch" else FastImageTower(base, runtime) for runtime in runtimes}
    for encoder in encoders.values():  # warm up: exports, sessions, first-call allocations
        encoder.encode_preprocessed(batches[0])
    vectors: dict[str, np.ndarray] = {}
    seconds: dict[str, list[float]] = {runtime: [] for runtime in runtimes}
    for _ in range(args.repeats):
        for runtime, encoder in encoders.items():
            started = time.perf_counter()
            vectors[runtime] = np.concatenate([encoder.encode_preprocessed(batch) for batch in batches])
            seconds[runtime].append(time.perf_counter() - started)

    print(f"weights: {weights}")
    print(f"images: {what}; batch {args.batch_size}; {args.threads} threads; median of {args.repeats} (range)")
    if not args.pretrained:
        print("NOTE: random weights. Speed holds for trained weights; the agreement below does NOT: trained CLIP towers have "
              "activation outliers that random ones lack. Check a real model with --pretrained and --frames.")  # fmt: skip
    reference = vectors["torch"]
    rows = []
    fp32 = statistics.median(seconds["torch"])
    for runtime in runtimes:
        median = statistics.median(seconds[runtime])
        cosine = np.sum(vectors[runtime] * reference, axis=1)
        overlap = top10_overlap(reference, vectors[runtime])
        row = {"runtime": runtime, "model_id": encoders[runtime].record.model_id,
               "frames_per_second": round(args.count / median, 2),
               "frames_per_second_range": [round(args.count / max(seconds[runtime]), 2), round(args.count / min(seconds[runtime]), 2)],
               "speedup": round(fp32 / median, 3),
               "speedup_range": [round(min(seconds["torch"]) / max(seconds[runtime]), 3), round(max(seconds["torch"]) / min(seconds[runtime]), 3)],
               "cosine_mean": round(float(cosine.mean()), 6), "cosine_min": round(float(cosine.min()), 6),
               "top10_overlap_mean": round(float(overlap.mean()), 4), "top10_overlap_min": round(float(overlap.min()), 2)}  # fmt: skip
        rows.append(row)
        meets = (
            ""
            if runtime == "torch"
            else (" (target >= 1.8x met with margin)" if min(row["speedup_range"]) >= TARGET_SPEEDUP else "")
        )
        print(f"{runtime:>10}: {row['frames_per_second']:7.2f} frames/s {row['frames_per_second_range']}  "
              f"x{row['speedup']} {row['speedup_range']}{meets}  cosine mean {row['cosine_mean']:.6f} min {row['cosine_min']:.6f}  "
              f"top-10 overlap mean {row['top10_overlap_mean']:.4f} min {row['top10_overlap_min']:.2f}  id {row['model_id']}")  # fmt: skip
    if args.pretrained:
        for row in rows[1:]:
            ok = row["cosine_mean"] >= AGREEMENT_TARGETS["cosine"] and row["top10_overlap_mean"] >= AGREEMENT_TARGETS["top10"]
            print(f"{row['runtime']}: {'meets' if ok else 'does NOT meet'} the agreement targets "
                  f"(mean cosine >= {AGREEMENT_TARGETS['cosine']}, top-10 overlap >= {AGREEMENT_TARGETS['top10']})")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(args.threads), "weights": weights, "images": what,
                                               "seconds": seconds, "results": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
