"""pipeline.yaml fuzzing: random values for random keys either validate or fail with the key named.

A seeded generator (so a failure reproduces) puts values of every shape (wrong types, out of
range, nan/inf, empty, huge, paths, nested) into one to three keys of the default config. Each
case must either load, or raise `ConfigError` naming one of the keys it changed; nothing else
may escape. A few valid cases then run the extract stage for real.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from typing import Any

import pytest
import videogen
import yaml
from conftest import REPO
from frameatlas.config import ConfigError, PipelineConfig, load_config
from pydantic import BaseModel

CASES = 400
SEED = 1202


def schema_keys(model: type[BaseModel] = PipelineConfig, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if name == "source":
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(schema_keys(annotation, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def random_value(rng: random.Random) -> Any:
    pool = [
        lambda: rng.randint(-5, 5),
        lambda: rng.choice([0, 1, 2, 31, 10**9, -(10**9), 2**63]),
        lambda: rng.uniform(-2, 2),
        lambda: rng.choice([math.nan, math.inf, -math.inf, 1e-12, 1e300]),
        lambda: rng.choice([True, False, None]),
        lambda: rng.choice(["", " ", "auto", "none", "fast", "kmeans", "umap", "cpu", "clips", "../../etc", "/tmp/x", "é漢字"]),
        lambda: "".join(rng.choice("abcXYZ019-_./: ") for _ in range(rng.randint(1, 30))),
        lambda: [rng.randint(0, 40) for _ in range(rng.randint(0, 3))],
        lambda: rng.choice([[], ["umap"], ["pca", "pca"], ["tsne", "bogus"], [".mp4"], ["mp4"]]),
        lambda: {"nested": rng.randint(0, 3)},
        lambda: "http://localhost:8000",
    ]
    return rng.choice(pool)()


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    *sections, key = dotted.split(".")
    node = data
    for section in sections:
        node = node.setdefault(section, {})
    node[key] = value


def fuzz_cases(count: int, seed: int):
    rng = random.Random(seed)
    base = yaml.safe_load((REPO / "pipeline.yaml").read_text())
    keys = schema_keys()
    for _ in range(count):
        data = yaml.safe_load(yaml.safe_dump(base))
        changed = rng.sample(keys, rng.randint(1, 3))
        for key in changed:
            set_dotted(data, key, random_value(rng))
        if rng.random() < 0.1:  # a misspelt key as well
            changed.append("extract.every_second")
            set_dotted(data, "extract.every_second", 1)
        yield changed, data


def test_random_values_either_load_or_name_the_key(tmp_path):
    outcomes = {"valid": 0, "invalid": 0}
    for number, (changed, data) in enumerate(fuzz_cases(CASES, SEED)):
        path = tmp_path / f"case{number}.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        try:
            load_config(path)
        except ConfigError as error:
            message = str(error)
            assert message.startswith(str(path)), message
            assert any(key in message for key in changed), f"case {number} changed {changed}; message: {message}"
            outcomes["invalid"] += 1
        else:
            outcomes["valid"] += 1
    # the generator explores both sides
    assert outcomes["valid"] >= CASES // 40 and outcomes["invalid"] >= CASES // 2, outcomes


def test_nan_and_infinity_are_refused_with_the_key_named(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("extract:\n  every_seconds: .inf\nrender:\n  padding_after: .nan\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "extract.every_seconds" in str(error.value) and "render.padding_after" in str(error.value)


@pytest.mark.slow
def test_valid_random_configs_run_the_extract_stage(tmp_path):
    """Cases that validate must run: extract, for real, on a tiny video, ending 0 or 3 (skipped inputs)."""
    videogen.make_video(tmp_path / "videos" / "clip.mp4", seconds=2, fps=10)
    rng = random.Random(SEED)
    extract_keys = [k for k in schema_keys() if k.split(".")[0] in {"extract", "corpus"} and k not in {"corpus.videos", "corpus.demo"}]
    ran = 0
    for attempt in range(400):
        data = {
            "run": {"name": f"fuzz{attempt}", "output_dir": str(tmp_path / "out")},
            "corpus": {"videos": str(tmp_path / "videos"), "demo": False},
            "extract": {"thumbnail_long_side": 64},
        }
        for key in rng.sample(extract_keys, 2):
            set_dotted(data, key, random_value(rng))
        path = tmp_path / f"valid{attempt}.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        try:
            load_config(path)
        except ConfigError:
            continue
        result = subprocess.run(
            [sys.executable, str(REPO / "run_pipeline.py"), str(path), "--stages", "extract", "--no-progress"],
            capture_output=True, text=True, env=dict(os.environ), timeout=300,
        )  # fmt: skip
        assert result.returncode in (0, 3), f"{data}\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        ran += 1
        if ran == 3:
            break
    assert ran == 3
