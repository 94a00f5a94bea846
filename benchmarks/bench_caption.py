"""Caption stage speed: seconds per frame for each clip-interrogator mode, with and without cached term vectors.

    python benchmarks/bench_caption.py [--run outputs/demo] [--frames 48] [--chain-frames 2] [--json OUT]

Everything runs in this process on the demo's CLIP architecture, ViT-B-32, with random weights
saved to a temporary checkpoint (speed does not depend on the weight values; the checkpoint
makes the term cache behave as with real weights). Measured:

* term vectors: the package's way (every text padded to CLIP's 77-token context, as
  `LabelTable` does) against `encode_text_many` (texts sorted by length, each batch cut to its
  longest text; exact, see tests) on the same texts; then the demo's whole term list
  (`caption.term_limit` of pipeline.yaml) encoded, and read back from the disk cache.
* prompts per frame: clip-interrogator's own `interrogate_fast` / `interrogate_classic` (one
  frame at a time, CLIP image pass included) against frameatlas's batched fast/classic (image
  vectors for the frames, then one matrix product); negative and best (chained prompts, CLIP
  text passes per frame) on `--chain-frames` frames.
* a caption model: BLIP-base architecture with random weights, forced to write
  `max_caption_tokens` tokens (an upper bound: real captions stop earlier).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("FRAMEATLAS_PROGRESS", "off")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from frameatlas import caption, models  # noqa: E402
from frameatlas.config import load_config  # noqa: E402
from frameatlas.embed import encode_image_files  # noqa: E402
from frameatlas.store import RunPaths, read_table  # noqa: E402
from PIL import Image  # noqa: E402


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}  # fmt: skip


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def best_of(repeat: int, function, *args, **kwargs):
    """The result and the shortest time of `repeat` runs (the least disturbed by other processes)."""
    runs = [timed(function, *args, **kwargs) for _ in range(repeat)]
    return runs[0][0], min(seconds for _, seconds in runs)


def random_checkpoint(folder: Path, name: str) -> Path:
    import open_clip
    import torch

    torch.manual_seed(0)
    path = folder / f"{name}-random.pt"
    torch.save(open_clip.create_model(name, pretrained=None).state_dict(), path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="pipeline.yaml", help="the demo config (caption options, model name)")
    parser.add_argument("--run", default="outputs/demo", help="a run whose thumbnails are captioned")
    parser.add_argument("--frames", type=int, default=48, help="frames for fast/classic and the caption model")
    parser.add_argument("--chain-frames", type=int, default=2, help="frames for negative/best (slow)")
    parser.add_argument("--chain-candidates", type=int, default=256, help="caption.intermediate_count for negative/best")
    parser.add_argument("--baseline-texts", type=int, default=512, help="term texts for the padded-vs-trimmed comparison")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each baseline/frameatlas pair (best is kept)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    import torch

    cfg = load_config(args.config)
    options = cfg.caption
    run = RunPaths(args.run)
    frames = read_table(run.table("frames"))
    picks = frames.iloc[np.linspace(0, len(frames) - 1, args.frames).round().astype(int)]
    thumbnails = [run.absolute(t) for t in picks.thumbnail]
    results: dict = {"machine": machine(), "model": cfg.models.image.name, "frames": args.frames,
                     "term_limit": options.term_limit, "max_flavors": options.max_flavors}  # fmt: skip

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        checkpoint = random_checkpoint(scratch, cfg.models.image.name)
        cfg.models.image.pretrained, cfg.models.cache_dir = str(checkpoint), scratch / "hub"
        encoder = models.image_encoder(cfg.models)

        # term vectors: padded (the package's LabelTable) vs trimmed, same texts
        lists = caption.term_lists(options.term_limit)
        sample = [t for name in ("flavors", "artists") for t in lists[name]][: args.baseline_texts]
        padded, padded_s = best_of(args.repeat, encoder.encode_text, sample)
        trimmed, trimmed_s = best_of(args.repeat, encoder.encode_text_many, sample, batch_size=options.term_batch_size)
        results["terms_padded_per_s"] = len(sample) / padded_s
        results["terms_trimmed_per_s"] = len(sample) / trimmed_s
        results["terms_speedup"] = padded_s / trimmed_s
        results["terms_max_abs_difference"] = float(np.abs(padded - trimmed).max())
        cache = caption.term_cache_dir(cfg.models)
        terms, results["terms_encode_s"] = timed(caption.load_term_tables, encoder, lists, cache=cache,
                                                 batch_size=options.term_batch_size)  # fmt: skip
        results["terms"] = terms.computed
        again, results["terms_cached_s"] = timed(caption.load_term_tables, encoder, lists, cache=cache)
        assert again.computed == 0
        everything = sum(map(len, caption.term_lists(None).values()))
        results["terms_full_lists"] = everything
        results["terms_full_lists_estimated_s"] = everything / (terms.computed / results["terms_encode_s"])

        # prompts: the package one frame at a time vs batched
        images = []
        for path in thumbnails:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        ours = caption.FrameInterrogator(encoder, terms, options)
        package = _package_interrogator(ours, encoder, terms)
        for mode in ("fast", "classic"):
            method = getattr(package, f"interrogate_{mode}")
            _, package_s = best_of(args.repeat, lambda m=method: [m(image, max_flavors=options.max_flavors, caption=" ") for image in images])

            def batched(m=mode):
                vectors = encode_image_files(encoder, thumbnails, batch_size=cfg.models.image.batch_size)
                return getattr(ours, m)(vectors, [""] * len(thumbnails))

            _, ours_s = best_of(args.repeat, batched)
            results[f"{mode}_package_s_per_frame"] = package_s / len(images)
            results[f"{mode}_s_per_frame"] = ours_s / len(images)
            results[f"{mode}_speedup"] = package_s / ours_s
        chain_options = options.model_copy(update={"intermediate_count": args.chain_candidates})
        chained = caption.FrameInterrogator(encoder, terms, chain_options)
        vectors = encode_image_files(encoder, thumbnails[: args.chain_frames])
        for mode in ("negative", "best"):
            _, seconds = timed(getattr(chained, mode), vectors, [""] * len(vectors))
            results[f"{mode}_s_per_frame"] = seconds / len(vectors)
        results["chain_candidates"] = args.chain_candidates

        # a caption model: BLIP-base architecture, random weights, every caption at full length
        from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

        torch.manual_seed(0)
        blip = BlipForConditionalGeneration(BlipConfig()).eval()
        processor = BlipImageProcessor()
        batch = images[: options.caption_batch_size]
        pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
        tokens = options.max_caption_tokens
        with torch.inference_mode():
            _, blip_s = timed(blip.generate, pixel_values=pixels, max_new_tokens=tokens, min_new_tokens=tokens)
        results["blip_base_s_per_frame_upper_bound"] = blip_s / len(batch)

    for key, value in results.items():
        print(f"{key:40s} {value:.4g}" if isinstance(value, float) else f"{key:40s} {value}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _package_interrogator(ours: caption.FrameInterrogator, encoder, terms: caption.TermTables):
    """clip-interrogator's Interrogator with our model and precomputed tables (its own ranking code)."""
    from clip_interrogator import LabelTable

    package = ours._chain_interrogator()
    package.clip_model, package.clip_preprocess = encoder.model, encoder._preprocess
    package.config.chunk_size = 2048  # the package's default ranking chunk
    for name in caption.MERGED_LISTS:
        table = LabelTable([], None, package)
        table.labels, table.embeds = terms.labels[name], list(terms.vectors[name])
        setattr(package, name, table)
    return package


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # the package's CUDA autocast on a CPU
    warnings.filterwarnings("ignore", message="CUDA is not available")
    sys.exit(main())
