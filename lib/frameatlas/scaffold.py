"""`frameatlas init`: a commented `pipeline.yaml` for a user's own video folder.

The file is the default `pipeline.yaml` (shipped as package data, so it works from a wheel)
with a few values changed in place, so every comment of the default stays beside its key.

Example:
    >>> import tempfile, pathlib
    >>> project = init_project(pathlib.Path(tempfile.mkdtemp()) / "street cams", videos=None)
    >>> project.config.run.name, project.config.corpus.demo, project.config.models.image.on_missing_weights
    ('street-cams', False, 'error')
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from . import __version__
from .config import PipelineConfig, RunConfig, config_from_dict
from .files import atomic_write_text

__all__ = ["ProjectExists", "Project", "default_template", "init_project", "run_name_for", "set_yaml_value"]

CONFIG_NAME = "pipeline.yaml"
DEFAULT_VIDEOS = "videos"  # inside the project folder when --videos is not given
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?P<rest>.*)$")


class ProjectExists(FileExistsError):
    """The project folder already has a pipeline.yaml and overwriting was not asked for."""


@dataclass(frozen=True)
class Project:
    """What `init_project` wrote: the config file, its validated content, and whether it created the videos folder."""

    config_path: Path
    config: PipelineConfig
    created_videos_folder: bool


def default_template() -> str:
    """The default `pipeline.yaml` text with its comments (package data: a symlink to the checkout's file)."""
    return resources.files("frameatlas").joinpath("templates", CONFIG_NAME).read_text(encoding="utf-8")


def run_name_for(folder: Path) -> str:
    """A run name accepted by `run.name` made from a folder's name ("street cams 2024!" -> "street-cams-2024")."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name)
    name = re.sub(r"^[^A-Za-z0-9]+", "", name).rstrip("-.")
    return name or "run"


def _yaml_scalar(value: object) -> str:
    """`value` as a one-line YAML scalar, quoted only when YAML needs it (paths with ': ' or '#')."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


def set_yaml_value(text: str, dotted_key: str, value: object) -> str:
    """Replace the value of `dotted_key` (e.g. "models.image.name") in YAML `text`, keeping every comment.

    Only block-style mappings with the key on its own line are understood, which is how the default
    pipeline.yaml is written; a key that is not found raises KeyError naming it.
    """
    target = dotted_key.split(".")
    path: list[tuple[int, str]] = []  # (indent, key) of the mappings enclosing the current line
    lines = text.splitlines(keepends=True)
    for number, line in enumerate(lines):
        match = _KEY_LINE.match(line.rstrip("\n"))
        if match is None or line.lstrip().startswith("#"):
            continue
        indent = len(match["indent"])
        while path and path[-1][0] >= indent:
            path.pop()
        path.append((indent, match["key"]))
        if [key for _, key in path] != target:
            continue
        rest = match["rest"]
        comment_at = rest.find(" #")
        old_value, comment = (rest, "") if comment_at < 0 else (rest[:comment_at], rest[comment_at:].lstrip(" "))
        if not old_value.strip():
            raise KeyError(f"{dotted_key} is a section, not a value")
        new = f"{match['indent']}{match['key']}: {_yaml_scalar(value)}"
        if comment:  # keep the comment in its column when the new value leaves room for it
            comment_column = len(match["indent"]) + len(match["key"]) + 1 + len(old_value) + 1
            new = new.ljust(comment_column) + comment if len(new) + 2 <= comment_column else f"{new}  {comment}"
        lines[number] = new + "\n"
        return "".join(lines)
    raise KeyError(f"{dotted_key} not found in the template")


def _header(name: str, videos: str) -> str:
    return (
        f"# frameatlas run {name!r}: the videos in {videos} through every stage.\n"
        f"# Written by `frameatlas init` from the default pipeline.yaml of frameatlas {__version__}; every key is\n"
        "# commented. Validate with `frameatlas config check pipeline.yaml --show`, run with\n"
        "# `frameatlas run pipeline.yaml`, override any key with `--set section.key=value`.\n"
        "# Relative paths are relative to this file.\n"
    )


def _replace_header(template: str, header: str) -> str:
    """Swap the template's leading comment block (it describes the demo) for `header`."""
    lines = template.splitlines(keepends=True)
    body = 0
    while body < len(lines) and lines[body].startswith("#"):
        body += 1
    return header + "".join(lines[body:])


def init_project(
    directory: Path | str, videos: Path | str | None = None, *, name: str | None = None, force: bool = False
) -> Project:
    """Write `directory/pipeline.yaml` for the videos in `videos` and return what was written.

    `videos` (relative to the working directory) is stored relative to the project when it lies
    inside it, else absolute; without it the project gets an empty `videos/` folder to fill.
    The run is named `name` or after the folder, results go to `directory/outputs/`, the demo
    corpus is off, and missing CLIP weights stop the run instead of falling back silently.
    Raises ProjectExists when a pipeline.yaml is already there (unless `force`) and
    ValueError for a name `run.name` does not accept.
    """
    directory = Path(directory).expanduser().resolve()
    config_path = directory / CONFIG_NAME
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory}: exists and is not a folder; give a new or existing folder for the project")
    if config_path.exists() and not force:
        raise ProjectExists(f"{config_path} already exists; edit it, choose another folder, or pass --force to overwrite it")
    if name is None:
        name = run_name_for(directory)
    else:
        try:
            RunConfig(name=name)
        except ValueError:
            raise ValueError(f"--name {name!r}: a run name is a folder name made of letters, digits, '.', '_' or '-'") from None

    if videos is None:
        videos_folder, videos_setting = directory / DEFAULT_VIDEOS, DEFAULT_VIDEOS
    else:
        videos_folder = Path(videos).expanduser().resolve()
        inside = videos_folder == directory or videos_folder.is_relative_to(directory)
        # inside the project: relative, so the project folder can be moved or shared as a whole
        videos_setting = Path(os.path.relpath(videos_folder, directory)).as_posix() if inside else str(videos_folder)

    text = _replace_header(default_template(), _header(name, videos_setting))
    wanted = {
        "run.name": name,
        "run.output_dir": "outputs",
        "corpus.videos": videos_setting,
        "corpus.demo": False,
        "models.image.on_missing_weights": "error",  # real work must not silently run on the colour/texture fallback
        "classify.class_names": [],  # the demo's classes and labels file mean nothing for other videos
        "classify.prompts": {},
        "classify.labels": None,
    }
    for key, value in wanted.items():
        text = set_yaml_value(text, key, value)

    # The template is the checkout's pipeline.yaml and may change: check that the edits landed where meant.
    config = config_from_dict(yaml.safe_load(text), base_dir=directory, source=str(config_path))
    landed = {
        "run.name": config.run.name,
        "run.output_dir": config.run.output_dir,
        "corpus.videos": config.corpus.videos,
        "corpus.demo": config.corpus.demo,
        "models.image.on_missing_weights": config.models.image.on_missing_weights,
        "classify.class_names": config.classify.class_names,
        "classify.prompts": config.classify.prompts,
        "classify.labels": config.classify.labels,
    }
    expected = {**wanted, "run.output_dir": directory / "outputs", "corpus.videos": videos_folder}
    wrong = [key for key in wanted if landed[key] != expected[key]]
    if wrong:
        raise RuntimeError(f"frameatlas init: the default pipeline.yaml no longer has the keys {', '.join(wrong)} where expected")

    directory.mkdir(parents=True, exist_ok=True)
    created_videos_folder = videos is None and not videos_folder.exists()
    if created_videos_folder:
        videos_folder.mkdir()
    atomic_write_text(config_path, text)
    config.source = config_path
    return Project(config_path, config, created_videos_folder)
