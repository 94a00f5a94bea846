"""A small extracted-and-embedded run for the tests of the stages that follow embed."""

from __future__ import annotations

from pathlib import Path

import videogen
from frameatlas.config import PipelineConfig, config_from_dict
from frameatlas.embed import embed_frames
from frameatlas.files import atomic_write_json
from frameatlas.frames import extract_corpus
from frameatlas.store import RunPaths

EVERY_HALF_SECOND = [0.5 * k for k in range(1, 8)]
# name -> (seconds, fps, scene cuts); two.mp4 has another fps so no frame repeats one of one.mp4
DEFAULT_VIDEOS = {"one.mp4": (4, 10, EVERY_HALF_SECOND), "two.mp4": (2, 20, EVERY_HALF_SECOND[:3])}


def embedded_run(
    root: Path, image_model: dict, *, videos: dict | None = None, name: str = "t", **sections: dict
) -> tuple[PipelineConfig, RunPaths]:
    """Generate the videos (once per `root`), sample every 0.5 s, embed, and record the config.

    `sections` update the config, e.g. `cluster={"k": 4}`.
    """
    folder = root / "videos"
    if not folder.exists():
        for video, (seconds, fps, cuts) in (videos or DEFAULT_VIDEOS).items():
            videogen.make_video(folder / video, seconds=seconds, fps=fps, scene_cuts=cuts)
    data: dict = {
        "run": {"output_dir": str(root / "out"), "name": name},
        "corpus": {"videos": str(folder), "demo": False},
        "extract": {"every_seconds": 0.5, "thumbnail_long_side": 96},
        "models": {"image": image_model},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    cfg = config_from_dict(data)
    extract_corpus(cfg, cfg.run_dir)
    embed_frames(cfg, cfg.run_dir)
    run = RunPaths(cfg.run_dir)
    atomic_write_json(run.config_file, cfg.to_parameters())
    return cfg, run
