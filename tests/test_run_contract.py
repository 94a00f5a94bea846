"""The run folder's contract, with real processes: one writer at a time, stale locks taken over,
a time limit per stage, and a run killed at random moments that resumes to the same result."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import chromadb
import nbformat
import numpy as np
import pandas as pd
import pytest
import videogen
import yaml
from conftest import REPO
from frameatlas.files import is_temp_name
from frameatlas.lock import lock_holder, run_lock

pytestmark = pytest.mark.slow


def runner(*args: str, env: dict | None = None) -> list[str]:
    return [sys.executable, str(REPO / "run_pipeline.py"), *args, "--no-progress"]


def run_pipeline(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(runner(*args), capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)


def write_project(root: Path, **sections: dict) -> Path:
    videos = root / "videos"
    if not videos.exists():
        videogen.make_video(videos / "alpha.mp4", seconds=3, fps=25, audio=True)
        videogen.make_video(videos / "beta.mp4", seconds=2, fps=10, scene_cuts=[1.0])
    config = {
        "run": {"name": "tiny", "output_dir": "out"},
        "corpus": {"videos": "videos", "demo": False},
        "extract": {"every_seconds": 0.5, "thumbnail_long_side": 96},
        "models": {"cache_dir": "hub-cache", "image": {"on_missing_weights": "fallback"}},
        "caption": {"term_limit": 20},
        "cluster": {"k": 3},
        "visualize": {"enabled": False},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def temp_files(run: Path) -> list[Path]:
    """Temporaries of the atomic writer anywhere in the run (Chroma's own folder aside)."""
    return [p for p in run.rglob("*") if is_temp_name(p.name) and "index" not in p.relative_to(run).parts[:1]]


def test_a_second_runner_fails_at_once_naming_the_first(tmp_path):
    config = write_project(tmp_path)
    run = tmp_path / "out" / "tiny"
    first = subprocess.Popen(runner(str(config)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while lock_holder(run) is None:
            assert first.poll() is None and time.monotonic() < deadline, "the first runner never took the lock"
            time.sleep(0.1)
        second = run_pipeline(str(config), timeout=120)
        assert second.returncode == 4, second.stderr
        assert f"pid {first.pid} on " in second.stderr and "run_pipeline.py" in second.stderr
        assert "only one writer may work on a run folder at a time" in second.stderr
        out, err = first.communicate(timeout=900)
    finally:
        first.kill()
    assert first.returncode == 0, err
    manifest = json.loads((run / "manifest.json").read_text())
    assert {entry["status"] for entry in manifest["stages"].values()} == {"done", "disabled"}
    assert lock_holder(run) is None  # released cleanly
    assert temp_files(run) == []


def lock_held_by_a_killed_process(run: Path, command: str):
    """The lock of `run` as a process left it that took it for `command` and was killed (SIGKILL)."""
    holder = subprocess.run(
        [sys.executable, "-c", "import os, signal, sys; from frameatlas.lock import acquire_run_lock; "
         "acquire_run_lock(sys.argv[1], sys.argv[2]); os.kill(os.getpid(), signal.SIGKILL)", str(run), command],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert holder.returncode == -signal.SIGKILL, holder.stderr
    return lock_holder(run)


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    config = write_project(tmp_path)
    run = tmp_path / "out" / "tiny"
    stale = lock_held_by_a_killed_process(run, "a writer that dies")
    assert stale is not None and stale.command == "a writer that dies"
    result = run_pipeline(str(config), "--stages", "extract", timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"taking over the lock of {run}: its holder (pid {stale.pid} on" in result.stderr
    assert "a writer that dies" in result.stderr
    assert json.loads((run / "manifest.json").read_text())["stages"]["extract"]["status"] == "done"


def test_a_kernel_whose_runner_died_does_not_take_the_lock_over(tmp_path, monkeypatch):
    from frameatlas.lock import LOCK_TOKEN_ENV, WriterGone, acquire_run_lock

    run = tmp_path / "run"
    dead_runner = lock_held_by_a_killed_process(run, "a runner that is killed")
    # a stage kernel it had started (with its token) reaches its open_stage only now
    monkeypatch.setenv(LOCK_TOKEN_ENV, dead_runner.token)
    with pytest.raises(WriterGone, match=rf"pid {dead_runner.pid} on .*a runner that is killed.* is gone"):
        acquire_run_lock(run, "extract notebook")
    assert lock_holder(run) == dead_runner  # nothing written, nothing held: the runner's re-run takes it over
    monkeypatch.delenv(LOCK_TOKEN_ENV)
    with run_lock(run, "the re-run") as holder:
        assert holder.command == "the re-run"


def test_a_stage_past_its_time_limit_is_stopped_with_the_key_named(tmp_path):
    config = write_project(tmp_path)
    notebooks = tmp_path / "slow_notebooks"
    notebooks.mkdir()
    notebook = nbformat.read(REPO / "notebooks" / "01_extract.ipynb", as_version=4)
    notebook.cells.insert(2, nbformat.v4.new_code_cell("import time\ntime.sleep(600)"))
    nbformat.write(notebook, notebooks / "01_extract.ipynb")
    started = time.monotonic()
    result = run_pipeline(str(config), "--stages", "extract", "--set", "run.stage_timeout_minutes=0.25",
                          env={"FRAMEATLAS_NOTEBOOKS": str(notebooks)}, timeout=300)  # fmt: skip
    assert result.returncode == 1
    assert time.monotonic() - started < 240  # stopped, not left to sleep its 600 s
    assert "stage 'extract' failed: stopped after 0.25 min, the stage time limit (run.stage_timeout_minutes" in result.stderr
    run = tmp_path / "out" / "tiny"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["extract"]["status"] == "failed"
    partial = nbformat.read(run / "reports" / "01_extract.ipynb", as_version=4)  # the partial notebook, whole
    assert any("time.sleep(600)" in cell.source for cell in partial.cells)
    assert temp_files(run) == []


def still_running(process) -> bool:
    """True unless the process has ended (gone, or a zombie nobody reaped yet)."""
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def endless_ffmpeg(process) -> bool:
    import psutil

    try:
        return "ffmpeg" in process.name() and "testsrc=size=64x64:rate=25" in process.cmdline()
    except psutil.NoSuchProcess:
        return False


def test_a_kernel_and_its_ffmpeg_end_when_the_runner_is_killed(tmp_path):
    """A stage kernel (a process-group leader, as Jupyter starts it) running ffmpeg: killing its
    parent (the runner) ends both, so nothing writes into the run after its lock is gone."""
    import psutil

    kernel = (
        "from frameatlas.pipeline.notebook import exit_with_parent\nfrom frameatlas.render import run_ffmpeg\n"
        "exit_with_parent()\n"
        "run_ffmpeg(['-re', '-f', 'lavfi', '-i', 'testsrc=size=64x64:rate=25', '-f', 'null', '-'], output='null',"
        " timeout=600, what='endless')"
    )
    fake_runner = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {kernel!r}], start_new_session=True)\n"
        "time.sleep(600)"
    )
    runner_process = subprocess.Popen([sys.executable, "-c", fake_runner])
    try:
        deadline = time.monotonic() + 60
        ffmpeg: list[psutil.Process] = []
        while not ffmpeg and time.monotonic() < deadline:  # the endless one (not a short version probe)
            ffmpeg = [p for p in psutil.Process(runner_process.pid).children(recursive=True) if endless_ffmpeg(p)]
            time.sleep(0.05)
        [kernel_process] = psutil.Process(runner_process.pid).children()
        assert ffmpeg and ffmpeg[0].ppid() == kernel_process.pid
        runner_process.send_signal(signal.SIGKILL)
        runner_process.wait(timeout=10)
        _, alive = psutil.wait_procs([kernel_process, *ffmpeg], timeout=10)
        survivors = [p for p in alive if still_running(p)]
        for process in survivors:
            process.kill()  # if the test fails, it leaves nothing running
        assert [p.name() for p in survivors] == []
    finally:
        runner_process.kill()
        runner_process.wait()


# --- killed at random moments -------------------------------------------------------------------

KILL_TRIALS = 10
# Columns that say when or how fast, or whether work was reused: not part of the result.
VOLATILE = {"seconds", "status", "decode_seconds", "note", "render_seconds"}
TABLE_KEYS = {
    "frames": ["frame_key"], "videos": ["video_id"], "captions": ["frame_key"], "embeddings": ["frame_key", "model_id"],
    "caption_embeddings": ["frame_key"], "clusters": ["labelling", "frame_key"], "frames_annotated": ["frame_key"],
    "keyframes": ["video_id", "frame_key"], "render_videos": ["name"], "render_segments": ["output", "position"],
}  # fmt: skip


def read_tables(run: Path) -> dict[str, pd.DataFrame]:
    tables = {}
    for path in sorted((run / "tables").glob("*.parquet")):
        table = pd.read_parquet(path)
        table = table.drop(columns=[c for c in table.columns if c in VOLATILE], errors="ignore")
        keys = [k for k in TABLE_KEYS.get(path.stem, []) if k in table.columns] or list(table.columns[:1])
        tables[path.stem] = table.sort_values(keys).reset_index(drop=True)
    return tables


def assert_same_tables(expected: dict[str, pd.DataFrame], actual: dict[str, pd.DataFrame], trial: str) -> None:
    assert sorted(actual) == sorted(expected), trial
    for name, table in expected.items():
        other = actual[name]
        assert list(other.columns) == list(table.columns) and len(other) == len(table), f"{trial}: {name}"
        for column in table.columns:
            left, right = table[column].tolist(), other[column].tolist()
            if column == "vector":
                np.testing.assert_allclose(np.stack(left), np.stack(right), atol=1e-5, err_msg=f"{trial}: {name}.{column}")
            elif pd.api.types.is_float_dtype(table[column]):
                np.testing.assert_allclose(table[column], other[column], atol=1e-6, err_msg=f"{trial}: {name}.{column}")
            else:
                assert left == right, f"{trial}: {name}.{column} differs"


def assert_index_matches(run: Path) -> None:
    embeddings = pd.read_parquet(run / "tables" / "embeddings.parquet")
    client = chromadb.PersistentClient(path=str(run / "index"), settings=chromadb.config.Settings(anonymized_telemetry=False))
    image = [c for c in client.list_collections() if (c.metadata or {}).get("model_id") == embeddings.model_id.iloc[0]]
    assert len(image) == 1 and image[0].count() == len(embeddings)
    assert set(image[0].get(include=[])["ids"]) == set(embeddings.frame_key)


@pytest.fixture(scope="module")
def kill_project(tmp_path_factory):
    """A run with every stage that writes per video (extract, caption with OCR, embed, render), tiny CLIP."""
    import tinyclip

    root = tmp_path_factory.mktemp("killed")
    clip = tinyclip.save_tiny_local_dir(root / "tiny-clip")
    config = write_project(
        root,
        models={"cache_dir": "hub-cache", "image": {"name": f"local-dir:{clip}", "pretrained": None, "on_missing_weights": "error"}},
        caption={"term_limit": 20, "ocr": {"enabled": True}},
        search={"queries": ["a red square", "a blue circle"]},
        render={"max_total_seconds": 4.0},
    )
    started = time.time()
    reference = run_pipeline(str(config))
    assert reference.returncode == 0, reference.stderr
    run = root / "out" / "tiny"
    return config, run, stage_windows(run, started)


def stage_windows(run: Path, started: float) -> dict[str, tuple[float, float]]:
    """Seconds after the runner started at which each stage began and ended (from the manifest)."""
    from datetime import datetime

    stages = json.loads((run / "manifest.json").read_text())["stages"]
    return {
        name: (datetime.fromisoformat(entry["started"]).timestamp() - started,
               datetime.fromisoformat(entry["finished"]).timestamp() - started)
        for name, entry in stages.items() if entry.get("status") == "done"
    }  # fmt: skip


def stage_is_running(run: Path, stage: str, process: subprocess.Popen, timeout: float = 600) -> bool:
    """Wait until the run's manifest says `stage` is running (True), or the runner has ended (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads((run / "manifest.json").read_text())["stages"].get(stage, {}).get("status") == "running":
                return True
        except (OSError, ValueError, KeyError):  # no manifest yet
            pass
        time.sleep(0.02)
    return False


def test_a_run_killed_at_random_moments_resumes_to_the_same_result(kill_project, tmp_path):
    config, reference_run, windows = kill_project
    expected = read_tables(reference_run)
    assert {"frames", "captions", "ocr", "embeddings", "render_videos", "render_segments"} <= set(expected)
    rng = random.Random(20261202)
    targets = ["extract", "caption", "embed", "render"]
    stages_hit: set[str] = set()
    for trial in range(KILL_TRIALS):
        # each trial aims at a random moment inside one of the stages that write per video: once the manifest
        # says the stage runs, after a random part of the time it took in the reference run
        target = targets[trial % len(targets)]
        begin, end = windows[target]
        kill_after = rng.uniform(0.1, 0.9) * (end - begin)
        project = tmp_path / f"trial{trial}"
        project.mkdir()
        for name in ("videos", "tiny-clip"):
            (project / name).symlink_to(config.parent / name)
        trial_config = project / "pipeline.yaml"
        trial_config.write_text(config.read_text())
        run = project / "out" / "tiny"
        process = subprocess.Popen(runner(str(trial_config)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # aimed by the manifest, not the clock: a loaded machine stretches the stages before the target
            if stage_is_running(run, target, process):
                process.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            pass
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
        manifest = run / "manifest.json"
        if manifest.exists():
            running = [n for n, e in json.loads(manifest.read_text()).get("stages", {}).items() if e.get("status") == "running"]
            stages_hit.update(running)
        resumed = run_pipeline(str(trial_config))
        label = f"trial {trial} (killed {kill_after:.1f} s into {target})"
        assert resumed.returncode == 0, f"{label}: {resumed.stderr[-2000:]}"
        assert_same_tables(expected, read_tables(run), label)
        assert_index_matches(run)
        assert temp_files(run) == [], label
        assert lock_holder(run) is None
    # the kills landed inside the stages they aimed at (timing on a loaded machine may shift a few)
    assert len(stages_hit & set(targets)) >= 3, stages_hit
