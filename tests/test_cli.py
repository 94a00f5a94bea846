"""The `frameatlas` command: `init` writes a config that loads, refuses to overwrite, and a held run lock is one error line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import REPO, lock_held_elsewhere
from frameatlas.cli import main
from frameatlas.config import load_config
from frameatlas.pipeline import EXIT_LOCKED
from frameatlas.scaffold import default_template, set_yaml_value
from frameatlas.store import read_table


def body_comments(text: str) -> list[str]:
    """The comments of a YAML file after its leading comment block (the header)."""
    lines = text.splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return [line.split("#", 1)[1].strip() for line in lines if "#" in line]


def test_init_writes_a_commented_config_for_the_users_videos(tmp_path, capsys, monkeypatch):
    videos = tmp_path / "footage"
    videos.mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["init", "street cams!", "--videos", "footage"]) == 0
    printed = capsys.readouterr().out

    path = tmp_path / "street cams!" / "pipeline.yaml"
    cfg = load_config(path)
    assert cfg.run.name == "street-cams"
    assert cfg.run.output_dir == path.parent / "outputs"
    assert cfg.run_dir == path.parent / "outputs" / "street-cams"
    assert cfg.corpus.videos == videos  # given relative to the working directory, outside the project: absolute
    assert yaml.safe_load(path.read_text())["corpus"]["videos"] == str(videos)
    assert cfg.corpus.demo is False
    assert cfg.models.image.on_missing_weights == "error"
    # everything else is the default run's, and so are its comments (the demo header aside)
    default = load_config(REPO / "pipeline.yaml")
    assert cfg.extract == default.extract and cfg.search == default.search and cfg.render == default.render
    assert body_comments(path.read_text()) == body_comments(default_template())
    assert "'street cams!/pipeline.yaml'" in printed and "frameatlas run 'street cams!/pipeline.yaml'" in printed


def test_init_without_videos_makes_an_empty_videos_folder_inside_the_project(tmp_path, capsys):
    assert main(["init", str(tmp_path / "proj"), "--name", "cams-2024"]) == 0
    cfg = load_config(tmp_path / "proj" / "pipeline.yaml")
    assert cfg.run.name == "cams-2024"
    assert cfg.corpus.videos == tmp_path / "proj" / "videos" and cfg.corpus.videos.is_dir()
    raw = yaml.safe_load((tmp_path / "proj" / "pipeline.yaml").read_text())
    assert raw["corpus"]["videos"] == "videos"  # relative: the project folder can be moved as a whole
    assert "put your videos into" in capsys.readouterr().out


def test_init_refuses_to_overwrite_unless_forced(tmp_path, capsys):
    config = tmp_path / "proj" / "pipeline.yaml"
    config.parent.mkdir()
    config.write_text("# my edits\nrun: {name: mine}\n")
    assert main(["init", str(config.parent)]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: {config} already exists") and "--force" in error
    assert config.read_text() == "# my edits\nrun: {name: mine}\n"

    assert main(["init", str(config.parent), "--force"]) == 0
    assert load_config(config).run.name == "proj"


def test_init_refuses_a_run_name_that_is_not_a_folder_name_and_a_file_as_folder(tmp_path, capsys):
    assert main(["init", str(tmp_path / "proj"), "--name", "../up"]) == 2
    assert "--name '../up'" in capsys.readouterr().err
    assert not (tmp_path / "proj").exists()
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["init", str(tmp_path / "notes.txt")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'notes.txt'}: exists and is not a folder")


@pytest.mark.parametrize(
    ("key", "value", "line"),
    [
        ("models.image.on_missing_weights", "error", "    on_missing_weights: error\n"),
        ("corpus.demo", False, "  demo: false               # fetch the demo videos"),
        # quoted for YAML, and too long for the comment's column
        ("corpus.videos", "/archive/videos: #1", "  videos: '/archive/videos: #1'  # folder of videos"),
    ],
)
def test_set_yaml_value_changes_one_key_and_keeps_its_comment(key, value, line):
    template = default_template()
    changed = set_yaml_value(template, key, value)
    assert line in changed
    section, *rest = key.split(".")
    node = yaml.safe_load(changed)[section]
    for part in rest:
        node = node[part]
    assert node == value
    assert len(changed.splitlines()) == len(template.splitlines())
    assert "caption:" in changed and "on_missing_weights: clip-only" in changed  # caption's own key untouched


def test_set_yaml_value_names_a_missing_key():
    with pytest.raises(KeyError, match="corpus.nope not found"):
        set_yaml_value(default_template(), "corpus.nope", 1)


def test_a_run_held_by_another_process_is_one_error_line(tmp_path):
    assert main(["init", str(tmp_path / "proj")]) == 0
    run_dir = tmp_path / "proj" / "outputs" / "proj"
    with lock_held_elsewhere(run_dir, "frameatlas run held-by-test") as holder:
        result = subprocess.run(
            [sys.executable, str(REPO / "run_pipeline.py"), str(tmp_path / "proj" / "pipeline.yaml"), "--no-progress"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == EXIT_LOCKED
    assert "Traceback" not in result.stderr
    assert f"pid {holder.pid}" in result.stderr and "frameatlas run held-by-test" in result.stderr


def test_search_exports_refused_by_the_run_lock_or_a_foreign_folder_are_one_error_line(tmp_path, capsys):
    from runs import embedded_run

    cfg, run = embedded_run(tmp_path, {"name": "fallback"}, videos={"one.mp4": (2, 10, [1.0])})
    frame_key = read_table(run.table("frames")).frame_key.iloc[0]
    search = ["search", str(run.root), "--frame", frame_key, "--top-k", "2"]

    foreign = tmp_path / "my documents"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("keep me")
    assert main([*search, "--export", str(foreign)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and str(foreign) in error
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.txt"]

    with lock_held_elsewhere(run.root, "held-by-test") as holder:
        assert main([*search, "--export", str(run.root / "hits")]) == EXIT_LOCKED  # into the run: a writer of the run
        assert main([*search, "--export-video", str(tmp_path / "hits.mp4")]) == EXIT_LOCKED
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") and f"pid {holder.pid}" in e for e in errors), errors
    assert not (tmp_path / "hits.mp4").exists() and not (run.root / "hits").exists()
