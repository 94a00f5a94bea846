"""pipeline.yaml validation: bad keys, types and values stop the run with a precise message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO
from frameatlas.config import ConfigError, ExtractConfig, PipelineConfig, load_config
from pydantic import BaseModel


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_pipeline_yaml_is_valid_and_matches_schema_defaults():
    cfg = load_config(REPO / "pipeline.yaml")
    assert cfg.run.name == "demo"
    assert cfg.corpus.videos == (REPO / "data" / "demo").resolve()
    assert cfg.run_dir == (REPO / "outputs" / "demo").resolve()
    assert cfg.extract == ExtractConfig()


def _commented_keys(text: str) -> dict[str, bool]:
    """Dotted key -> whether the line has a comment or follows a comment line."""
    keys: dict[str, bool] = {}
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped:
            indent = len(line) - len(line.lstrip())
            while stack and stack[-1][0] >= indent:
                stack.pop()
            key = stripped.split(":")[0]
            stack.append((indent, key))
            keys[".".join(k for _, k in stack)] = "#" in line or previous.startswith("#")
        previous = stripped
    return keys


def _schema_keys(model, prefix=""):
    for name, field in model.model_fields.items():
        if name == "source":
            continue
        dotted = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if prefix:
                yield dotted
            yield from _schema_keys(annotation, dotted + ".")
        else:
            yield dotted


def test_every_schema_key_is_in_the_default_file_with_a_comment():
    keys = _commented_keys((REPO / "pipeline.yaml").read_text())
    for dotted in _schema_keys(PipelineConfig):
        assert dotted in keys, f"{dotted} missing from pipeline.yaml"
        assert keys[dotted], f"{dotted} has no comment in pipeline.yaml"


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    path = write(tmp_path, {"corpus": {"videos": "clips"}, "run": {"output_dir": "out", "name": "r1"}})
    monkeypatch.chdir("/")
    cfg = load_config(path)
    assert cfg.corpus.videos == tmp_path / "clips"
    assert cfg.run_dir == tmp_path / "out" / "r1"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"extract": {"every_second": 2}}, ["extract.every_second", "unknown key", "every_seconds"]),
        ({"extrakt": {}}, ["extrakt", "unknown key", "extract"]),
        ({"extract": {"every_seconds": "often"}}, ["extract.every_seconds", '"often"', "valid number"]),
        ({"extract": {"every_seconds": 0}}, ["extract.every_seconds", "0", "greater than 0"]),
        ({"extract": {"mode": "sometimes"}}, ["extract.mode", '"sometimes"', "'interval'", "'keyframes'", "'shots'"]),
        ({"extract": {"mode": "fps"}}, ["extract", "needs extract.fps"]),
        ({"extract": {"jpeg_quality": 101}}, ["extract.jpeg_quality", "101", "less than or equal to 100"]),
        ({"run": {"name": "../escape"}}, ["run.name", '"../escape"', "folder name"]),
    ],
)
def test_invalid_values_name_key_value_and_what_is_accepted(tmp_path, data, expected):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    path = write(tmp_path, {})
    cfg = load_config(path, ["extract.every_seconds=2.5", "extract.mode=shots", "corpus.demo=false"])
    assert (cfg.extract.every_seconds, cfg.extract.mode, cfg.corpus.demo) == (2.5, "shots", False)
    with pytest.raises(ConfigError, match="extract.every_seconds"):
        load_config(path, ["extract.every_seconds=-1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(path, ["extract.every_seconds"])


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("extract: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)


def test_interval_seconds_by_mode():
    assert ExtractConfig(mode="interval", every_seconds=2).interval_seconds == 2
    assert ExtractConfig(mode="fps", fps=4).interval_seconds == 0.25
    assert ExtractConfig(mode="keyframes").interval_seconds is None
