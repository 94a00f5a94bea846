"""On-screen text speed and agreement: the caption stage's OCR settings against RapidOCR's defaults.

    python benchmarks/bench_ocr.py [--run outputs/demo] [--frames 120] [--sides 320,480] [--json OUT]

Both run in this process on the same thumbnails of a finished run (default the demo's), one
frame at a time, as the stage reads them:

* baseline: RapidOCR as the package configures it (short side scaled to 736 for detection,
  angle classifier on), the filters of `caption.ocr` (min_score, min_chars) applied after;
* frameatlas: `models.ocr.OcrReader` with `detect_short_side` set to each of `--sides`.

Printed per setting: seconds per frame, frames with text, and agreement with the baseline's text
(character-level similarity, difflib, over the frames where the baseline found text).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("FRAMEATLAS_PROGRESS", "off")

from frameatlas.config import OcrConfig, load_config  # noqa: E402
from frameatlas.models.ocr import OcrReader  # noqa: E402
from frameatlas.store import RunPaths, read_table  # noqa: E402
from PIL import Image  # noqa: E402


def machine() -> dict:
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__}


class PackageDefaults:
    """RapidOCR exactly as the package sets itself up, with frameatlas's line filters applied afterwards."""

    def __init__(self, options: OcrConfig):
        from rapidocr_onnxruntime import RapidOCR

        self.engine, self.options = RapidOCR(), options

    def read(self, image: Image.Image) -> list[str]:
        found, _ = self.engine(image)
        texts = [" ".join(str(text).split()) for _, text, score in found or [] if float(score) >= self.options.min_score]
        return [text for text in texts if len(text.replace(" ", "")) >= self.options.min_chars]


def measure(reader, images: list[Image.Image], as_text) -> tuple[list[str], float]:
    reader.read(images[0])  # warm-up: onnxruntime sessions allocate on the first call
    started = time.perf_counter()
    texts = ["\n".join(as_text(reader.read(image))) for image in images]
    return texts, (time.perf_counter() - started) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="outputs/demo", help="a finished run whose thumbnails are read")
    parser.add_argument("--config", default="pipeline.yaml", help="its config, for caption.ocr's filters")
    parser.add_argument("--frames", type=int, default=120, help="thumbnails, evenly spaced over the run")
    parser.add_argument("--sides", default="320,480", help="detect_short_side values to time")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    run = RunPaths(args.run)
    options = load_config(args.config).caption.ocr
    frames = read_table(run.table("frames"))
    picks = frames.iloc[np.unique(np.linspace(0, len(frames) - 1, min(args.frames, len(frames))).round().astype(int))]
    images = []
    for thumbnail in picks.thumbnail:
        with Image.open(run.absolute(thumbnail)) as image:
            images.append(image.convert("RGB"))

    baseline, baseline_seconds = measure(PackageDefaults(options), images, lambda lines: lines)
    has_text = [i for i, text in enumerate(baseline) if text]
    rows = [{"setting": "RapidOCR defaults (736, classifier on)", "s_per_frame": baseline_seconds,
             "frames_with_text": len(has_text), "agreement": 1.0, "speedup": 1.0}]  # fmt: skip
    for side in (int(s) for s in args.sides.split(",")):
        reader = OcrReader(options.model_copy(update={"detect_short_side": side}))
        texts, seconds = measure(reader, images, lambda lines: [line.text for line in lines])
        agreement = np.mean([difflib.SequenceMatcher(None, baseline[i], texts[i]).ratio() for i in has_text]) if has_text else 0.0
        rows.append({"setting": f"frameatlas detect_short_side {side}, no classifier", "s_per_frame": seconds,
                     "frames_with_text": sum(map(bool, texts)), "agreement": float(agreement),
                     "speedup": baseline_seconds / seconds})  # fmt: skip

    print(f"{len(images)} thumbnails of {args.run} (long side {max(images[0].size)} px)")
    print(f"{'setting':<48} {'s/frame':>8} {'with text':>10} {'agreement':>10} {'speedup':>8}")
    for row in rows:
        print(f"{row['setting']:<48} {row['s_per_frame']:>8.3f} {row['frames_with_text']:>10d} "
              f"{row['agreement']:>10.2f} {row['speedup']:>7.1f}x")  # fmt: skip
    info = machine()
    print("machine:", ", ".join(f"{k} {v}" for k, v in info.items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "machine": info, "frames": len(images)}, indent=1))


if __name__ == "__main__":
    main()
