"""The README's quick-start commands, copied as a newcomer would, on a small run made like the demo
(weight-free fallback: no CLIP weights; on-screen text read; run `demo` in `outputs/`): each works,
or is marked as needing CLIP and then says why it cannot answer. The end of that run prints next
steps that work on it and the remedy for the substitution."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import videogen
import yaml
from conftest import REPO
from frameatlas.corpus import DEMO_VIDEOS

README = REPO / "README.md"
MARKER = "<!-- readme-test:"
DEMO_FRAME = re.compile(r"\b([0-9a-f]{16}):(\d+)\b")
FRAMEATLAS = str(Path(sys.executable).with_name("frameatlas"))


def quick_start_commands() -> list[tuple[str, str]]:
    """(command, comment) for each `frameatlas` line of the fenced block after the README's marker."""
    text = README.read_text()
    assert MARKER in text, "the README lost the marker of its tested quick-start block"
    block = text[text.index(MARKER) :].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        if line.startswith("frameatlas "):
            command, _, comment = line.partition("  #")
            commands.append((command.strip(), comment.strip()))
    return commands


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    """A run made like the demo's: `outputs/demo` beside its pipeline.yaml, the fallback image model."""
    root = tmp_path_factory.mktemp("readme")
    videogen.make_text_video(root / "videos" / "title.mp4", ["", "BIG BUCK BUNNY", "BIG BUCK BUNNY", ""], seconds_each=1.0)
    videogen.make_video(root / "videos" / "meadow.mp4", seconds=3, fps=10, scene_cuts=[1.5], audio=True)
    config = {
        "run": {"name": "demo", "output_dir": "outputs"},
        "corpus": {"videos": "videos", "demo": False},
        "extract": {"every_seconds": 0.5, "thumbnail_long_side": 192},
        "models": {"cache_dir": "hub-cache", "image": {"on_missing_weights": "fallback"}},  # CLIP not cached: the fallback
        "caption": {"caption_model": "none", "term_limit": 20, "ocr": {"enabled": True}},
    }
    (root / "pipeline.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), "pipeline.yaml", "--stages", "extract,caption,embed", "--no-progress"],
        capture_output=True, text=True, timeout=600, cwd=root, env={**os.environ},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return root, result.stdout


def _frameatlas(command: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(command)
    assert argv[0] == "frameatlas"
    return subprocess.run([FRAMEATLAS, *argv[1:]], capture_output=True, text=True, timeout=300, cwd=cwd, env={**os.environ})


def test_the_readme_frame_key_is_a_frame_of_every_demo_run():
    frames = [DEMO_FRAME.search(command) for command, _ in quick_start_commands() if "--frame" in command]
    assert frames and all(frames)
    bbb = next(video for video in DEMO_VIDEOS if video.name == "bbb.mp4")
    every_seconds = yaml.safe_load((REPO / "pipeline.yaml").read_text())["extract"]["every_seconds"]
    for match in frames:
        video_id, milliseconds = match.group(1), int(match.group(2))
        assert video_id == bbb.sha256[:16]  # the video id is the content hash: the same for everyone
        assert milliseconds % round(every_seconds * 1000) == 0 and milliseconds / 1000 < 596  # a sampled moment of it


@pytest.mark.slow
def test_quick_start_commands_work_or_say_they_need_clip(demo_like):
    root, _ = demo_like
    frames = pd.read_parquet(root / "outputs" / "demo" / "tables" / "frames.parquet")
    own_frame = frames[frames.video_name == "title.mp4"].frame_key.iloc[2]
    commands = quick_start_commands()
    assert len(commands) >= 4
    for command, comment in commands:
        command = DEMO_FRAME.sub(own_frame, command)  # the demo's frame key, for this run's
        result = _frameatlas(command, root)
        if "needs CLIP" in comment:
            assert result.returncode == 2, (command, result.stdout, result.stderr)
            assert "no channel can answer" in result.stderr and "fallback" in result.stderr and "Traceback" not in result.stderr
            continue
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        assert "no frames match" not in result.stdout, command
        hits = [line for line in result.stdout.splitlines() if re.match(r"\s+\d+\s+-?\d\.\d{4}", line)]
        assert hits, (command, result.stdout)
        if '"big buck bunny"' in command:
            assert "channels: ocr" in result.stdout and "title.mp4" in hits[0], result.stdout
    assert (root / "hits" / "hits.csv").is_file() and list((root / "hits" / "top_k").glob("*.jpg"))
    assert (root / "bunny.mp4").stat().st_size > 1000


def test_search_examples_elsewhere_in_the_readme_are_marked_when_they_need_clip():
    """A text search the demo cannot answer without CLIP must say so where a newcomer copies it."""
    answered_on_the_demo = {"big buck bunny"}
    for line in README.read_text().splitlines():
        match = re.match(r'\s*frameatlas search outputs/demo "([^"]+)"', line)
        if match and match.group(1) not in answered_on_the_demo:
            assert "needs CLIP" in line, line


@pytest.mark.slow
def test_end_of_run_next_steps_work_and_give_the_remedy(demo_like):
    root, stdout = demo_like
    lines = stdout.splitlines()
    steps = lines[lines.index("Next steps:") + 1 :]
    assert "    outputs/demo/index.html" in steps
    searches = [line.strip() for line in steps if line.startswith("    frameatlas search")]
    assert any("--frame" in s for s in searches) and any("--frame" not in s for s in searches), searches
    text_search = next(s for s in searches if "--frame" not in s)
    assert "bigbuckbunny" in text_search.lower().replace(" ", "")  # what the frames show, as OCR read it
    for command in searches:
        result = _frameatlas(command, root)
        assert result.returncode == 0 and "no frames match" not in result.stdout, (command, result.stderr)
    remedy = stdout[stdout.index("was replaced by fallback-colour-texture-v2") :]
    assert "frameatlas models download ViT-B-32 --pretrained laion2b_s34b_b79k" in remedy
    assert "models.image.pretrained" in remedy and "frameatlas run pipeline.yaml" in remedy


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_to_its_own_sections_resolve():
    text = README.read_text()
    anchors = {_slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert len(links) >= 8
    assert links <= anchors, sorted(links - anchors)


def _merge(base: dict, edits: dict) -> dict:
    for key, value in edits.items():
        base[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) and value else value
    return base


def test_your_own_videos_recipe_gives_a_valid_config_elsewhere(tmp_path):
    """'Your own videos': pipeline.yaml copied to another folder with the README's keys edited is valid
    there, and nothing in it still points at the demo (its corpus, its classify labels)."""
    from frameatlas.config import load_config

    text = README.read_text()
    step = text[text.index("**Edit these keys**") :]
    block = textwrap.dedent(step.split("```yaml\n", 1)[1].split("```", 1)[0])
    edits = yaml.safe_load(block)
    videos = tmp_path / "street-cams"
    videos.mkdir()
    edits["corpus"]["videos"] = str(videos)  # the README's /data/street-cams, here
    project = tmp_path / "atlases" / "street-cams"
    project.mkdir(parents=True)
    config = _merge(yaml.safe_load((REPO / "pipeline.yaml").read_text()), edits)
    (project / "pipeline.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cfg = load_config(project / "pipeline.yaml")
    assert cfg.run_dir == project / "outputs" / "street-cams"
    assert not cfg.corpus.demo and not cfg.classify.enabled
    assert cfg.models.image.on_missing_weights == "error"
