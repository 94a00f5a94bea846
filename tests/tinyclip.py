"""A tiny open_clip model with random weights, saved the ways users give real ones.

Speed and loading paths do not depend on weight values, so this exercises the real code:
open_clip builds the model from a config and loads the weights file.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_NAME = "frameatlas-tiny-clip"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def register_tiny_config(folder: Path) -> str:
    """Register the tiny config with open_clip (as a user's custom config would be)."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TINY_NAME}.json").write_text(json.dumps(TINY_CONFIG))
    if TINY_NAME not in open_clip.list_models():
        open_clip.add_model_config(folder / f"{TINY_NAME}.json")
    return TINY_NAME


def save_tiny_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A checkpoint file of random weights for the registered tiny config."""
    import open_clip
    import torch

    register_tiny_config(folder)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_NAME, pretrained=None)
    path = folder / f"tiny-seed{seed}.pt"
    torch.save(model.state_dict(), path)
    return path


def save_tiny_local_dir(folder: Path, seed: int = 0) -> Path:
    """A hub-style folder (open_clip_config.json + weights) usable as `local-dir:<folder>` in any process."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CONFIG)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    preprocess = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG, "preprocess_cfg": preprocess}))
    return folder
