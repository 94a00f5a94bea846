"""`run.executor: ray` on a Ray cluster started as README "Running on a cluster" says: `ray start
--head` and a second node `ray start --address HEAD` (1 CPU each, on this machine, one cluster for the
test session), reached through `run.ray_address` and `RAY_ADDRESS`. The per-video passes give the
same tables and index as the local executor, with units on both nodes; a unit that raises is
retried, then its video is skipped with the worker's error; a driver killed mid-run leaves finished
shards that the next run reuses."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import chromadb
import numpy as np
import pandas as pd
import pytest
import tinyclip
import videogen
import yaml
from conftest import REPO
from frameatlas.config import ConfigError, config_from_dict
from frameatlas.corpus import content_hash
from frameatlas.embed import embed_frames, extract_and_embed
from frameatlas.executor import Failed, LocalExecutor, RayExecutor
from frameatlas.index import _settings, open_index
from frameatlas.ocr import read_frame_text
from frameatlas.pipeline import EXIT_SKIPPED_INPUTS
from frameatlas.speech import transcribe_run
from frameatlas.store import RunPaths, read_table
from raycluster import RayCluster
from test_index_server import chroma_url  # noqa: F401  (a fixture: one Chroma server for this module)

# what the README asks of every driver of a cluster: token authentication (the nodes have it on), no usage reports
DRIVER_ENVIRONMENT = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="session")
def ray_cluster():
    """The README's cluster on this machine: `ray start --head` and `ray start --address HEAD`, 1 CPU each
    (the machine's 2 cores; each of the 2 Ray workers of a pass lands on its own node). No dashboard,
    no usage reports, a temporary folder of its own; every process of it ended at the end."""
    before = {name: os.environ.get(name) for name in DRIVER_ENVIRONMENT}
    os.environ.update(DRIVER_ENVIRONMENT)
    if "ray" in sys.modules:  # Ray reads RAY_AUTH_MODE when imported; a driver that imported it before reads it again
        from ray._raylet import Config

        Config.initialize("")
    cluster = RayCluster()
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_node(num_cpus=1)
        yield cluster
    finally:
        if "ray" in sys.modules:
            sys.modules["ray"].shutdown()  # this driver's connection, not the cluster
        cluster.stop()
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    assert cluster.processes() == []


@pytest.fixture
def connected_ray(ray_cluster):
    """Ray, this process connected to the session's cluster as a driver."""
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this module's work functions travel by value
    if not ray.is_initialized():
        ray.init(address=ray_cluster.address, log_to_driver=False, logging_level=logging.WARNING,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "FRAMEATLAS_PROGRESS": "off"}})  # fmt: skip
    return ray


@pytest.mark.slow
def test_the_cluster_has_two_nodes_and_no_usage_reports(ray_cluster):
    assert ray_cluster.nodes() == 2
    assert "Usage stats collection is disabled." in ray_cluster.outputs[0]  # what `ray start --head` printed
    assert "Usage stats collection is enabled" not in "".join(ray_cluster.outputs)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Four generated videos (two with sound, one with on-screen text), a file that is no video, and the tiny CLIP."""
    root = tmp_path_factory.mktemp("ray-corpus")
    videos = root / "videos"
    videogen.make_video(videos / "alpha.mp4", seconds=4, fps=25, scene_cuts=[1.5, 3.0], audio=True)
    videogen.make_video(videos / "beta.mp4", seconds=3, fps=10, scene_cuts=[1.0, 2.0], audio=True)
    videogen.make_video(videos / "delta.mp4", seconds=3, fps=20, scene_cuts=[0.5, 2.5])
    videogen.make_text_video(videos / "gamma.mp4", ["HELLO", "", "WORLD"], seconds_each=1.0)
    (videos / "broken.mp4").write_bytes(b"this is no video")
    return {"root": root, "videos": videos, "clip": tinyclip.save_tiny_local_dir(root / "tiny-clip")}


def _config(corpus: dict, name: str, executor: str, **sections):
    data = {
        "run": {"name": name, "output_dir": str(corpus["root"] / "out"), "executor": executor},
        "corpus": {"videos": str(corpus["videos"]), "demo": False},
        "extract": {"every_seconds": 0.5, "thumbnail_long_side": 128},
        "models": {"image": {"name": f"local-dir:{corpus['clip']}", "pretrained": None, "on_missing_weights": "error"}},
        "caption": {"ocr": {"enabled": True}},
        "speech": {"enabled": True},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)


def _per_video_passes(cfg, *, force_embed: bool = False) -> dict:
    """What the stages run per video, by library calls: extract (+ embedding), on-screen text, speech, embed."""
    extracted = extract_and_embed(cfg, cfg.run_dir)
    text = read_frame_text(cfg, cfg.run_dir)
    said = transcribe_run(cfg, cfg.run_dir)
    embedded = embed_frames(cfg, cfg.run_dir, force=force_embed)
    return {"extract": extracted, "ocr": text, "speech": said, "embed": embedded}


@pytest.fixture(scope="module")
def local_run(corpus) -> tuple:
    """The per-video passes with the local executor, once for this module: (config, stage summaries)."""
    cfg = _config(corpus, "local", "local")
    return cfg, _per_video_passes(cfg)


def _sorted(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return table.sort_values(keys).reset_index(drop=True)


def _index_contents(cfg, model_id: str) -> dict[str, tuple[np.ndarray, dict]]:
    index = open_index(RunPaths(cfg.run_dir), cfg.index.url, cfg.index.collection_prefix)
    found = index.collection(model_id, create=False).get(include=["embeddings", "metadatas"])
    return {key: (np.asarray(vector), meta) for key, vector, meta in zip(found["ids"], found["embeddings"], found["metadatas"])}


def _node_of_worker(state, item):
    """A unit of work: the Ray node it ran on."""
    import ray

    return ray.get_runtime_context().get_node_id()


@pytest.mark.slow
def test_ray_gives_the_tables_and_index_of_a_local_run(ray_cluster, corpus, local_run, chroma_url, caplog):  # noqa: F811
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.shutdown()  # the passes connect by themselves, to run.ray_address, as a stage does
    local, done_here = local_run
    # the Ray run keeps its index on a Chroma server, as a cluster would (index.url; run-scoped collections)
    remote = _config(corpus, "ray", "ray", index={"url": chroma_url}, run={"ray_address": ray_cluster.address})
    with caplog.at_level(logging.INFO, logger="frameatlas.executor"):
        done_on_ray = _per_video_passes(remote, force_embed=True)  # force: the embed stage's own pass runs on the workers too
    assert f"Ray: connected to {ray_cluster.address} (2.0 CPUs)" in caplog.messages
    assert ray.get_runtime_context().gcs_address.rsplit(":", 1)[1] == ray_cluster.address.rsplit(":", 1)[1]

    for name, stage in done_on_ray.items():
        assert [s.as_dict() for s in stage.skipped] == [s.as_dict() for s in done_here[name].skipped], name
    assert [s.reason for s in done_on_ray["extract"].skipped] == [
        "not a readable video (FFmpeg: Invalid data found when processing input)"
    ]
    assert done_on_ray["extract"].counts["frames_embedded"] == done_here["extract"].counts["frames_embedded"] > 0
    assert (
        done_on_ray["embed"].embedded == done_on_ray["embed"].frames == len(read_table(RunPaths(remote.run_dir).table("frames")))
    )
    assert done_on_ray["ocr"].read == done_here["ocr"].read > 0 and done_on_ray["speech"].transcribed == 2

    here, there = RunPaths(local.run_dir), RunPaths(remote.run_dir)
    keys = {"frames": ["frame_key"], "videos": ["video_id"], "ocr": ["frame_key"], "speech": ["segment_id"],
            "speech_words": ["segment_id", "start"], "speech_frames": ["frame_key"], "speech_videos": ["video_id"]}  # fmt: skip
    for table, key in keys.items():
        expected, got = _sorted(read_table(here.table(table)), key), _sorted(read_table(there.table(table)), key)
        if table == "speech_videos":  # how long each transcription took is no result
            expected, got = expected.drop(columns="transcribe_seconds"), got.drop(columns="transcribe_seconds")
        pd.testing.assert_frame_equal(got, expected, obj=table)
    assert "HELLO" in " ".join(read_table(there.table("ocr")).text)

    expected, got = (_sorted(read_table(run.table("embeddings")), ["frame_key"]) for run in (here, there))
    pd.testing.assert_frame_equal(got.drop(columns="vector"), expected.drop(columns="vector"))
    np.testing.assert_allclose(np.stack(got.vector), np.stack(expected.vector), atol=1e-5)

    model_id = done_here["embed"].model.model_id
    local_index, server_index = _index_contents(local, model_id), _index_contents(remote, model_id)
    assert set(server_index) == set(local_index) == set(expected.frame_key)
    for key, (vector, meta) in local_index.items():
        np.testing.assert_allclose(server_index[key][0], vector, atol=1e-5)
        assert server_index[key][1] == meta
    server = chromadb.HttpClient(host="127.0.0.1", port=int(chroma_url.rsplit(":", 1)[1]), settings=_settings())
    assert done_on_ray["embed"].collection in [c.name for c in server.list_collections()]


def _fails_on_item_two(state, item):
    """A unit of work: counts its tries in a file, and raises on item 2."""
    marker = Path(state) / f"tries-{item}"
    marker.write_text(str(int(marker.read_text()) + 1 if marker.exists() else 1))
    if item == 2:
        raise ValueError(f"item {item} is unreadable here (pid {os.getpid()})")
    return item * 10


def _folder_state(folder):
    return lambda threads: folder


@pytest.mark.slow
def test_units_run_on_both_nodes(connected_ray, tmp_path):
    nodes = {node["NodeID"] for node in connected_ray.nodes() if node["Alive"]}
    executor = RayExecutor(connected_ray, tmp_path, worker_cpus=1)
    assert len(nodes) == executor.workers == 2
    assert set(executor.map(_node_of_worker, [0, 1, 2, 3])) == nodes  # a node of 1 CPU holds one worker of 1 CPU


@pytest.mark.slow
def test_a_unit_that_raises_is_retried_then_reported_with_the_workers_error(connected_ray, tmp_path, caplog):
    executor = RayExecutor(connected_ray, tmp_path, worker_cpus=1, retries=1)
    assert executor.workers == 2
    finished = []
    results = executor.map(_fails_on_item_two, [0, 1, 2, 3], setup=_folder_state(str(tmp_path)),
                           on_done=lambda i, result: finished.append(i))  # fmt: skip
    assert results[:2] + results[3:] == [0, 10, 30]
    assert isinstance(results[2], Failed) and results[2].attempts == 2
    assert results[2].reason.startswith("ValueError: item 2 is unreadable here (pid ")  # the worker's own message
    assert str(os.getpid()) not in results[2].reason  # raised on a worker, not here
    assert (tmp_path / "tries-2").read_text() == "2" and (tmp_path / "tries-1").read_text() == "1"
    assert sorted(finished) == [0, 1, 2, 3]
    assert any("trying it again" in r.getMessage() for r in caplog.records)


def test_without_ray_the_same_units_run_here_with_the_same_contract(tmp_path):
    """The pass a stage meant for Ray runs in this process when no local Ray could start (LocalExecutor.map)."""
    results = LocalExecutor().map(_fails_on_item_two, [1, 2, 3], setup=_folder_state(str(tmp_path)))
    assert results[0] == 10 and results[2] == 30
    assert results[1] == Failed(f"ValueError: item 2 is unreadable here (pid {os.getpid()})", 2)
    assert (tmp_path / "tries-2").read_text() == "2"


@pytest.mark.slow
def test_a_video_whose_unit_raises_is_skipped_with_that_error_as_in_a_local_run(connected_ray, corpus, tmp_path):
    """An error that is not about the video (its shard folder cannot be made) fails the unit on the worker;
    after the retry the video is skipped with that error, the other videos are done, as locally."""
    reasons = {}
    for executor in ("local", "ray"):
        cfg = _config(corpus, f"blocked-{executor}", executor, speech={"enabled": False}, caption={"ocr": {"enabled": False}})
        blocked = RunPaths(cfg.run_dir).frames / content_hash(corpus["videos"] / "delta.mp4")
        blocked.parent.mkdir(parents=True)
        blocked.write_text("a file where the video's shard folder belongs")
        summary = extract_and_embed(cfg, cfg.run_dir)
        reasons[executor] = {Path(s.path).name: s.reason.replace(str(cfg.run_dir), "<run>") for s in summary.skipped}
        assert summary.videos == 3
        assert set(read_table(RunPaths(cfg.run_dir).table("videos")).video_name) == {"alpha.mp4", "beta.mp4", "gamma.mp4"}
    assert reasons["ray"] == reasons["local"]
    assert reasons["ray"]["delta.mp4"].startswith(("FileExistsError", "NotADirectoryError"))


KILLED_DRIVER = """
import os, signal, sys
from frameatlas import executor
from frameatlas.config import config_from_dict
from frameatlas.embed import extract_and_embed
from frameatlas.lock import run_lock
import json, logging

logging.basicConfig(level=logging.INFO)
cfg = config_from_dict(json.loads(sys.argv[1]))
done = []
real_map = executor.RayExecutor.map

def map_then_die(self, work, items, *, setup=None, on_done=None):
    def first_done_kills(i, result):
        done.append(i)
        if len(done) == 1:
            print("first video done", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # the driver dies mid-run, its workers still busy
    return real_map(self, work, items, setup=setup, on_done=first_done_kills)

executor.RayExecutor.map = map_then_die
with run_lock(cfg.run_dir, "killed driver"):
    extract_and_embed(cfg, cfg.run_dir)
"""


@pytest.mark.slow
def test_a_driver_killed_mid_run_is_resumed_by_the_next_run(ray_cluster, connected_ray, corpus, local_run):
    import json

    cfg = _config(corpus, "killed", "ray")  # no run.ray_address: the driver finds the cluster in RAY_ADDRESS
    run = RunPaths(cfg.run_dir)
    driver = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_DRIVER), json.dumps(cfg.to_parameters())],
                            capture_output=True, text=True, timeout=600, cwd=REPO,
                            env={**os.environ, **DRIVER_ENVIRONMENT, "RAY_ADDRESS": ray_cluster.address})  # fmt: skip
    assert driver.returncode == -9, driver.stderr[-3000:]
    assert "first video done" in driver.stdout
    assert f"Ray: connected to {ray_cluster.address} (2.0 CPUs)" in driver.stderr  # the cluster RAY_ADDRESS names
    assert not run.table("frames").exists()  # the driver writes the tables last: it never got there
    finished = list(run.frames.glob("*/*/frames.parquet"))
    assert 1 <= len(finished) < 4

    # the next run, as README "Running on a cluster" has it: RAY_ADDRESS set, `frameatlas run --set run.executor=ray`
    config_file = corpus["root"] / "killed.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_parameters()))
    rerun = subprocess.run([str(Path(sys.executable).with_name("frameatlas")), "run", str(config_file), "--stages", "extract",
                            "--set", "run.executor=ray", "--no-progress"], capture_output=True, text=True, timeout=900,
                           cwd=REPO, env={**os.environ, **DRIVER_ENVIRONMENT, "RAY_ADDRESS": ray_cluster.address})  # fmt: skip
    assert rerun.returncode == EXIT_SKIPPED_INPUTS, rerun.stdout[-3000:] + rerun.stderr[-3000:]  # broken.mp4, as locally
    counts = {key: int(value) for key, value in re.findall(r"\b(videos|videos_processed|videos_cached)=(\d+)", rerun.stdout)}
    assert counts["videos_cached"] >= 1 and counts["videos_cached"] + counts["videos_processed"] == counts["videos"] == 4
    assert f"Ray: connected to {ray_cluster.address} (2.0 CPUs)" in (Path(cfg.run_dir) / "logs" / "extract.log").read_text()
    again = _config(corpus, "killed", "ray")  # this process is connected to the cluster: the next run goes there
    expected = _sorted(read_table(RunPaths(local_run[0].run_dir).table("frames")), ["frame_key"])
    pd.testing.assert_frame_equal(_sorted(read_table(run.table("frames")), ["frame_key"]), expected)
    embedded = embed_frames(again, again.run_dir)
    assert embedded.cached + embedded.embedded == len(expected)


# --- long videos in time ranges (`run.ray_unit_seconds`) ---------------------------------------------


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory) -> dict:
    """A 30 s video (12 fps, a keyframe every second, B-frames, scene cuts) that Ray samples in ranges, and a short one."""
    root = tmp_path_factory.mktemp("ray-long")
    videos = root / "videos"
    videogen.make_video(videos / "long.mp4", seconds=30, fps=12, scene_cuts=[4.0, 11.5, 17.9, 25.0])
    videogen.make_video(videos / "short.mp4", seconds=3, fps=10, scene_cuts=[1.0])
    return {"root": root, "videos": videos, "clip": tinyclip.save_tiny_local_dir(root / "tiny-clip")}


def _long_config(corpus: dict, name: str, executor: str, **run):
    # batches of 8 targets: ranges of 16 targets (8 s at 0.5 s), 4 of them in the 30 s video
    return _config(corpus, name, executor, run={"ray_unit_seconds": 8, **run}, speech={"enabled": False},
                   caption={"ocr": {"enabled": False}}, models={"image": {"name": f"local-dir:{corpus['clip']}", "pretrained": None,
                                                                          "on_missing_weights": "error", "batch_size": 8}})  # fmt: skip


def test_time_ranges_keep_the_frames_of_a_whole_pass(long_corpus):
    """The ranges planned for a long video, each decoded from the keyframe before it, keep exactly the frames
    (timestamps, frame indices, pixels) that one pass over the whole video keeps; a short video is not split."""
    from frameatlas.corpus import VideoFile
    from frameatlas.frames import _ExtractUnit, _plan_ranges, iter_samples

    cfg = _long_config(long_corpus, "plan", "ray")

    def unit(name):
        path = long_corpus["videos"] / name
        return _ExtractUnit(
            VideoFile(path, path.stat().st_size, path.stat().st_mtime_ns), name, cfg.extract, str(cfg.run_dir), False
        )

    seconds, ranges = _plan_ranges(unit("long.mp4"), cfg, RunPaths(cfg.run_dir), cfg.run.ray_unit_seconds)
    assert seconds == pytest.approx(30, abs=0.1)
    assert [(r.time_range.start_target, r.time_range.end_target) for r in ranges] == [(0, 16), (16, 32), (32, 48), (48, None)]
    assert ranges[0].time_range.seek_pts is None and all(r.time_range.seek_pts is not None for r in ranges[1:])
    assert _plan_ranges(unit("short.mp4"), cfg, RunPaths(cfg.run_dir), cfg.run.ray_unit_seconds)[1] == []
    assert _plan_ranges(unit("long.mp4"), cfg, RunPaths(cfg.run_dir), cfg.run.ray_unit_seconds, workers=1)[1] == []

    def kept(samples):
        return [(s.timestamp, s.frame_index, s.frame.to_ndarray().tobytes()) for s in samples]

    whole = kept(iter_samples(long_corpus["videos"] / "long.mp4", cfg.extract))
    parts = [kept(iter_samples(long_corpus["videos"] / "long.mp4", cfg.extract, r.time_range)) for r in ranges]
    assert [len(part) for part in parts] == [16, 16, 16, 12] and len(whole) == 60
    assert [frame for part in parts for frame in part] == whole


@pytest.mark.slow
def test_a_long_video_in_ranges_on_ray_gives_the_tables_of_a_local_run(connected_ray, long_corpus, caplog):
    """extract + embed on the cluster with the long video in 4 ranges (on both nodes): the same frames, videos
    and vectors (made while decoding) as the local executor's whole pass, and nothing of the ranges left behind."""
    local, remote = _long_config(long_corpus, "whole", "local"), _long_config(long_corpus, "ranges", "ray")
    done_here = extract_and_embed(local, local.run_dir)
    with caplog.at_level(logging.INFO, logger="frameatlas.frames"):
        done_there = extract_and_embed(remote, remote.run_dir)
    assert done_there.counts["video_ranges"] == 4 and "video_ranges" not in done_here.counts
    assert not [r for r in caplog.records if "sampled whole" in r.getMessage()]
    assert done_there.frames == done_here.frames == 60 + 6 and done_there.skipped == done_here.skipped == []
    assert done_there.counts["frames_embedded"] == done_here.counts["frames_embedded"] == 66
    here, there = RunPaths(local.run_dir), RunPaths(remote.run_dir)
    for table, key in {"frames": ["frame_key"], "videos": ["video_id"]}.items():
        pd.testing.assert_frame_equal(
            _sorted(read_table(there.table(table)), key), _sorted(read_table(here.table(table)), key), obj=table
        )
    assert not list(there.frames.glob("*/*.parts")) and not list((there.root / "vectors").glob("*/*/*.part-*"))
    shards = {run: sorted((run.root / "vectors").glob("*/*/*.parquet")) for run in (here, there)}
    assert [p.relative_to(there.root) for p in shards[there]] == [p.relative_to(here.root) for p in shards[here]]
    for mine, theirs in zip(shards[here], shards[there]):
        expected, got = pd.read_parquet(mine), pd.read_parquet(theirs)
        pd.testing.assert_frame_equal(got.drop(columns="vector"), expected.drop(columns="vector"))  # same frames, same order
        np.testing.assert_allclose(np.stack(got.vector), np.stack(expected.vector), atol=1e-5)
    embedded = embed_frames(remote, remote.run_dir)  # the embed stage finds every vector made while extracting
    assert embedded.cached == 66 and embedded.embedded == 0


class _FailsOnOneRange:
    """A worker state (extract's `worker_sink`) that raises when the range starting at target 16 asks for its sink."""

    error = None

    def __call__(self, threads):
        return self

    def new_sink(self, part=None):
        if part == "000000016":
            raise OSError(f"range {part} cannot be written here (pid {os.getpid()})")
        return None


@pytest.mark.slow
def test_a_failing_range_skips_its_video_with_the_workers_error(connected_ray, long_corpus):
    """One range raises on its worker (and again when retried): the whole video is skipped with the worker's
    error, its unfinished shard and parts are removed, the other video is done; the next run samples it anew."""
    from frameatlas.frames import extract_corpus

    cfg = _long_config(long_corpus, "one-range-fails", "ray")
    summary = extract_corpus(cfg, cfg.run_dir, worker_sink=_FailsOnOneRange())
    assert [Path(s.path).name for s in summary.skipped] == ["long.mp4"]
    reason = summary.skipped[0].reason
    assert reason.startswith("OSError: range 000000016 cannot be written here (pid ") and f"(pid {os.getpid()})" not in reason
    run = RunPaths(cfg.run_dir)
    assert list(read_table(run.table("frames")).video_name.unique()) == ["short.mp4"]
    long_id = content_hash(long_corpus["videos"] / "long.mp4")
    assert not (run.frames / long_id).exists() or not any((run.frames / long_id).iterdir())
    again = extract_corpus(cfg, cfg.run_dir)  # without the failing sink
    assert again.skipped == [] and again.counts["video_ranges"] == 4 and again.cached == 1 and again.processed == 1


@pytest.mark.parametrize(
    "address, accepted",
    [
        (None, True),
        ("auto", True),
        ("ray://head:10001", True),
        ("10.0.0.5:6379", True),
        ("head", False),
        ("http://head:8265", False),
    ],
)
def test_ray_address_is_checked(address, accepted):
    data = {"run": {"executor": "ray", "ray_address": address}}
    if accepted:
        assert config_from_dict(data).run.ray_address == address
    else:
        with pytest.raises(ConfigError, match=r"run.ray_address"):
            config_from_dict(data)
