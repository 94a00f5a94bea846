"""Small runs for the tests: extracted-and-embedded (library calls), or a whole pipeline run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import videogen
import yaml
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


def pipeline_run(root: Path, *, name: str = "shared") -> Path:
    """Every stage of `run_pipeline.py` on three generated videos (two with sound, one with
    on-screen text) with the tiny test CLIP; returns the run folder (exit 0 required)."""
    import tinyclip

    repo = Path(__file__).resolve().parent.parent
    videos = root / "videos"
    videogen.make_video(videos / "alpha.mp4", seconds=4, fps=25, scene_cuts=[1.5, 3.0], audio=True)
    videogen.make_video(videos / "beta.mp4", seconds=3, fps=10, scene_cuts=[1.0, 2.0], audio=True)
    videogen.make_text_video(videos / "gamma.mp4", ["HELLO", "", "WORLD"], seconds_each=1.0)
    clip = tinyclip.save_tiny_local_dir(root / "tiny-clip")
    config = {
        "run": {"name": name, "output_dir": str(root / "out")},
        "corpus": {"videos": str(videos), "demo": False},
        "extract": {"every_seconds": 0.5, "thumbnail_long_side": 128},
        "models": {"cache_dir": str(root / "hub-cache"),
                   "image": {"name": f"local-dir:{clip}", "pretrained": None, "on_missing_weights": "error"}},
        "caption": {"term_limit": 20, "ocr": {"enabled": True}},
        "cluster": {"k": 3},
        "visualize": {"projections": ["pca"]},
    }  # fmt: skip
    (root / "pipeline.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, str(repo / "run_pipeline.py"), str(root / "pipeline.yaml"), "--no-progress"],
        capture_output=True, text=True, timeout=900, env={**os.environ},
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(
            f"shared pipeline run failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
    # a first run starts every stage's kernel ahead too (their working folder, reports/, did not exist yet once)
    assert "could not start its kernel ahead" not in result.stderr, result.stderr[-4000:]
    return root / "out" / name


def copy_project(finished_run: Path, dest: Path, **sections: dict) -> tuple[Path, Path]:
    """A copy of the shared run (`pipeline_run`) with its own videos folder and pipeline.yaml, whose
    `sections` are updated (`cluster={"k": 4}`); models stay where they are (they are only read).
    Returns (config file, run folder)."""
    import shutil

    source_root = finished_run.parent.parent
    config = yaml.safe_load((source_root / "pipeline.yaml").read_text())
    shutil.copytree(source_root / "videos", dest / "videos")
    shutil.copytree(finished_run, dest / "out" / finished_run.name)  # finished_run itself is read-only
    config["corpus"]["videos"] = str(dest / "videos")
    config["run"]["output_dir"] = str(dest / "out")
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    (dest / "pipeline.yaml").write_text(yaml.safe_dump(config))
    return dest / "pipeline.yaml", dest / "out" / finished_run.name


def run_pipeline(config: Path, *arguments: str) -> subprocess.CompletedProcess:
    """`run_pipeline.py config --no-progress *arguments`, which must exit 0."""
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(repo / "run_pipeline.py"), str(config), "--no-progress", *arguments],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done
