"""Embedding throughput: the whole embed stage against the bare model forward pass.

    python benchmarks/bench_embed.py [--frames 256] [--batch-size 32] [--model ViT-B-32] [--json OUT]

Both run in this process on the same model (random weights: speed does not depend on their
values) and the same batch size:

* bare: `model.encode_image` on pre-made tensors, nothing else;
* stage: `frameatlas.embed.embed_frames`, from JPEG thumbnails on disk to unit vectors in
  Parquet and in the embedded ChromaDB index (decode + preprocess in a loader thread).

Thumbnails come from an existing run (`--run outputs/demo`, the default) or are generated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

os.environ.setdefault("FRAMEATLAS_PROGRESS", "off")

from frameatlas import models  # noqa: E402
from frameatlas.config import config_from_dict  # noqa: E402
from frameatlas.embed import embed_frames  # noqa: E402
from frameatlas.store import RunPaths, read_table, write_table  # noqa: E402


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}  # fmt: skip


def prepare_run(root: Path, source_run: Path | None, count: int) -> None:
    """A run folder holding `count` frames (thumbnails + frames table)."""
    run = RunPaths(root)
    if source_run and (source_run / "tables" / "frames.parquet").exists():
        frames = read_table(source_run / "tables" / "frames.parquet").head(count).copy()
        for thumbnail in frames.thumbnail:
            target = run.absolute(thumbnail)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source_run / thumbnail, target)
    else:
        rng = np.random.default_rng(0)
        rows = []
        for i in range(count):
            path = run.frames / "synthetic" / f"t{i:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (216, 384, 3), dtype=np.uint8)).save(path, quality=90)
            rows.append({"frame_key": f"synthetic:{i}", "video_id": "synthetic", "video_name": "synthetic.mp4",
                         "video_path": "", "timestamp": float(i), "frame_index": i, "thumbnail": run.relative(path),
                         "width": 384, "height": 216, "shot_id": None, "is_shot_start": False, "sampling": "s"})  # fmt: skip
        frames = pd.DataFrame(rows).astype({"shot_id": "Int64"})
    write_table(frames.reset_index(drop=True), run.table("frames"))


def bare_forward(encoder, count: int, batch_size: int, repeats: int = 2) -> float:
    """Frames per second of `encode_image` alone on pre-made tensors (best of `repeats`)."""
    import torch

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (216, 384, 3), dtype=np.uint8))
    tensor = encoder.preprocess(image)
    batches = [torch.stack([tensor] * min(batch_size, count - start)) for start in range(0, count, batch_size)]
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                encoder.model.encode_image(batch)
        best = max(best, count / (time.perf_counter() - started))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--run", type=Path, default=Path("outputs/demo"), help="take thumbnails from this run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="frameatlas-bench-embed-"))
    try:
        prepare_run(workdir / "run", args.run, args.frames)
        cfg = config_from_dict({
            "run": {"output_dir": str(workdir), "name": "run"},
            "models": {"image": {"name": args.model, "pretrained": None, "batch_size": args.batch_size}},
        })  # fmt: skip
        encoder = models.image_encoder(cfg.models)
        count = len(read_table(RunPaths(cfg.run_dir).table("frames")))
        bare_forward(encoder, min(count, 2 * args.batch_size), args.batch_size, repeats=1)  # warm-up
        bare = bare_forward(encoder, count, args.batch_size)
        results = []
        for attempt in range(2):
            if attempt:
                shutil.rmtree(Path(cfg.run_dir) / "vectors")
                shutil.rmtree(Path(cfg.run_dir) / "index")
            started = time.perf_counter()
            summary = embed_frames(cfg, cfg.run_dir, encoder=encoder)
            results.append(summary.embedded / (time.perf_counter() - started))
        stage = max(results)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    report = {
        "machine": machine(), "model": f"{args.model} (random weights)", "frames": count, "batch_size": args.batch_size,
        "bare_forward_fps": round(bare, 2), "stage_fps": round(stage, 2), "stage_over_bare": round(stage / bare, 3),
        "target": ">= 0.90",
    }  # fmt: skip
    print(f"machine: {report['machine']}")
    print(f"{report['model']}, {count} frames, batch {args.batch_size}")
    print(f"  bare forward pass on pre-made tensors: {bare:8.2f} frames/s")
    print(f"  embed stage (JPEG on disk -> Chroma):  {stage:8.2f} frames/s")
    print(f"  stage / bare = {stage / bare:.3f}  (target >= 0.90: {'met' if stage / bare >= 0.9 else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
