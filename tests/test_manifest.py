"""manifest.json: library versions, weight hashes of every model that ran, invocation times,
outdated stages after partial re-runs; and the next steps printed at the end of a run."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from frameatlas.files import HashCache
from frameatlas.pipeline.manifest import ML_LIBRARIES, mark_outdated, record_invocation, weights_digest, with_weight_hashes

STAGES = ["extract", "caption", "embed", "cluster", "visualize", "render"]
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


# --------------------------------------------------------------------------- the shared run


@pytest.mark.slow
def test_versions_cover_every_installed_ml_library(finished_run):
    versions = _manifest(finished_run)["versions"]
    for package in ("torch", "torchvision", "open-clip-torch", "chromadb", "sentence-transformers", "scikit-learn",
                    "umap-learn", "onnxruntime", "rapidocr-onnxruntime", "transformers", "av"):  # fmt: skip
        assert versions[package] == metadata.version(package), package
    installed = [p for p in ML_LIBRARIES if _installed(p)]
    assert set(installed) <= set(versions)
    for requirement in metadata.requires("frameatlas"):
        name = re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0]
        if "extra ==" not in requirement and _installed(name):
            assert name in versions, f"requirement {name} is installed but not recorded"


def _installed(package: str) -> bool:
    try:
        metadata.version(package)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
def test_every_model_that_ran_has_the_hash_of_its_weights(finished_run):
    models = {m["kind"]: m for m in _manifest(finished_run)["models"]}
    # tiny CLIP (a local folder), the packaged sentence encoder, RapidOCR's packaged weights
    assert {"image", "text", "ocr"} <= set(models)
    for kind in ("image", "text", "ocr"):
        record = models[kind]
        assert record["weights"] and Path(record["weights"]).exists(), record
        assert SHA256.match(record["weights_sha256"] or ""), record
    for record in models.values():
        if record.get("weights") and Path(record["weights"]).exists():
            # recomputed from the files, with no cache: the recorded digest is of these very weights
            assert record["weights_sha256"] == weights_digest(record["weights"], HashCache(None)), record["kind"]
    assert models["text"]["weights_sha256"] != models["ocr"]["weights_sha256"]


@pytest.mark.slow
def test_one_invocation_is_recorded_with_its_time_and_stages(finished_run):
    manifest = _manifest(finished_run)
    [invocation] = manifest["invocations"]
    assert invocation["ran"] == STAGES and invocation["exit_code"] == 0
    assert invocation["started"] <= invocation["finished"]
    assert manifest["cumulative_seconds"] == manifest["last_invocation_seconds"] == invocation["seconds"] > 0
    assert "total_seconds" not in manifest
    finished = [manifest["stages"][name]["finished"] for name in STAGES]
    assert finished == sorted(finished)
    assert not any(entry.get("outdated_by") for entry in manifest["stages"].values())


# --------------------------------------------------------------------------- a partial re-run


def _run_pipeline(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), *args, "--no-progress"],
        capture_output=True, text=True, timeout=600, cwd=cwd, env={**os.environ},
    )  # fmt: skip


@pytest.fixture(scope="module")
def rerun(finished_run, tmp_path_factory):
    """A copy of the shared run, its cluster stage forced again on its own."""
    root = tmp_path_factory.mktemp("rerun")
    shutil.copytree(finished_run, root / "out" / finished_run.name, symlinks=True)
    config = yaml.safe_load((finished_run.parent.parent / "pipeline.yaml").read_text())
    config["run"]["output_dir"] = str(root / "out")
    (root / "pipeline.yaml").write_text(yaml.safe_dump(config))
    before = _manifest(root / "out" / finished_run.name)
    result = _run_pipeline(str(root / "pipeline.yaml"), "--stages", "cluster", "--force", "cluster", cwd=root)
    assert result.returncode == 0, result.stderr
    return root, root / "out" / finished_run.name, before, result


@pytest.mark.slow
def test_partial_rerun_adds_its_time_and_marks_later_stages_outdated(rerun):
    _, run, before, result = rerun
    manifest = _manifest(run)
    assert [i["ran"] for i in manifest["invocations"]] == [STAGES, ["cluster"]]
    first, second = manifest["invocations"]
    assert first["finished"] <= second["started"]
    assert manifest["last_invocation_seconds"] == second["seconds"]
    assert manifest["cumulative_seconds"] == pytest.approx(before["cumulative_seconds"] + second["seconds"], abs=0.002)
    stages = manifest["stages"]
    assert stages["cluster"]["finished"] > stages["render"]["finished"]
    # what was built on the old clustering says so; what it was built on does not
    assert stages["visualize"]["outdated_by"] == stages["render"]["outdated_by"] == "cluster"
    assert not any(stages[name].get("outdated_by") for name in ("extract", "caption", "embed", "cluster"))
    assert "older than the results they build on" in result.stdout and "visualize (before cluster)" in result.stdout
    dashboard = (run / "index.html").read_text()
    assert "older than cluster&#39;s results" in dashboard or "older than cluster's results" in dashboard


@pytest.mark.slow
def test_the_printed_next_steps_work_on_the_run(rerun):
    root, run, _, result = rerun
    lines = result.stdout.splitlines()
    steps = lines[lines.index("Next steps:") + 1 :]
    commands = [line.strip() for line in steps if line.startswith("    frameatlas ")]
    assert "    out/shared/index.html" in steps  # the dashboard, relative to where the run was started
    searches = [shlex.split(c) for c in commands if c.startswith("frameatlas search")]
    assert len(searches) == 2 and any("--frame" in s for s in searches)
    for argv in searches:
        found = subprocess.run(
            [sys.executable, "-m", "frameatlas.cli", *argv[1:]], capture_output=True, text=True, timeout=300, cwd=root
        )
        assert found.returncode == 0, found.stderr
        assert "no frames match" not in found.stdout and re.search(r"^\s+1\s+-?\d\.\d{4}", found.stdout, re.M), found.stdout
    # the caption model (blip-large, not cached) was substituted, the image model was not: one remedy
    assert "The caption model blip-large was replaced by clip-only" in result.stdout
    assert "frameatlas models download blip-large --kind caption" in result.stdout
    assert "The image model" not in result.stdout


# --------------------------------------------------------------------------- units


def test_weights_digest_of_a_folder_follows_its_files(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"abc")
    (folder / "sub" / "config.json").write_text("{}")
    first = weights_digest(folder)
    assert SHA256.match(first) and weights_digest(folder) == first
    (folder / "sub" / "config.json").write_text('{"dim": 2}')
    assert weights_digest(folder) != first
    assert weights_digest(folder / "weights.bin") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_with_weight_hashes_fills_local_weights_only(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"abc")
    records = [
        {"kind": "text", "model_id": "a", "weights": str(tmp_path / "w.bin")},
        {"kind": "text", "model_id": "b", "weights": "https://tfhub.dev/google/universal-sentence-encoder/4"},
        {"kind": "caption", "model_id": "c", "weights": None},
        {"kind": "image", "model_id": "d", "weights": str(tmp_path / "w.bin"), "weights_sha256": "kept"},
    ]
    filled = with_weight_hashes(records)
    assert [r.get("weights_sha256") for r in filled] == [
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", None, None, "kept"]  # fmt: skip


def test_invocations_accumulate_and_an_old_total_counts_once():
    manifest = {"total_seconds": 100.0}  # written before invocations were recorded
    record_invocation(manifest, "2026-01-01T10:00:00+00:00", 5.0, ["embed"], 0)
    record_invocation(manifest, "2026-01-01T10:01:00+00:00", 2.0, [], 3)
    assert (manifest["cumulative_seconds"], manifest["last_invocation_seconds"]) == (107.0, 2.0)
    assert "total_seconds" not in manifest and [i["exit_code"] for i in manifest["invocations"]] == [0, 3]


def test_outdated_marks_follow_the_newest_earlier_stage():
    stages = {
        "extract": {"status": "done", "finished": "2026-01-01T10:00:00+00:00"},
        "caption": {"status": "failed", "finished": "2026-01-01T12:00:00+00:00"},  # failed: no results to compare
        "embed": {"status": "done", "finished": "2026-01-01T11:00:00+00:00", "outdated_by": "stale mark"},
        "cluster": {"status": "unchanged", "finished": "2026-01-01T10:30:00+00:00"},
        "visualize": {"status": "disabled"},
        "render": {"status": "done", "finished": "2026-01-01T11:30:00+00:00"},
    }
    mark_outdated(stages)
    assert {name: entry.get("outdated_by") for name, entry in stages.items()} == {
        "extract": None, "caption": None, "embed": None, "cluster": "embed", "visualize": None, "render": None}  # fmt: skip
