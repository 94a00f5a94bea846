"""Runs sharing one real Chroma server (`chroma run`, started here on localhost) never touch each
other's vectors: run-scoped collections, re-runs that delete only their own ids, and a shared
collection that only grows."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import chromadb
import numpy as np
import pytest
from frameatlas.embed import embed_frames
from frameatlas.frames import extract_corpus
from frameatlas.index import _settings, open_index, shared_id
from frameatlas.store import RunPaths, read_table
from runs import EVERY_HALF_SECOND, embedded_run

pytestmark = pytest.mark.slow

FALLBACK = {"name": "fallback"}  # the weight-free descriptor: the index does not care which model
CORPUS_A = {"one.mp4": (2, 10, EVERY_HALF_SECOND[:3]), "two.mp4": (2, 20, EVERY_HALF_SECOND[:3])}
CORPUS_B = {"three.mp4": (3, 10, EVERY_HALF_SECOND[:5])}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory) -> Iterator[str]:
    """A Chroma server of the venv's chromadb on a free localhost port, for this module's tests."""
    chroma = shutil.which("chroma", path=os.path.dirname(sys.executable))
    assert chroma, "the chroma CLI comes with chromadb"
    folder = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(folder / "server.log", "wb")
    server = subprocess.Popen(
        [chroma, "run", "--path", str(folder / "data"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # the Rust server takes a while to start on a busy machine
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chroma run did not answer at {url}: {(folder / 'server.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def server_client(url: str):
    host, port = url.removeprefix("http://").split(":")
    return chromadb.HttpClient(host=host, port=int(port), settings=_settings())


def own_collection(cfg, run: RunPaths):
    """The run's image collection on the server, and the run's embeddings table."""
    embeddings = read_table(run.table("embeddings"))
    [model_id] = set(embeddings.model_id)
    index = open_index(run, cfg.index.url, cfg.index.collection_prefix)
    return index.collection(model_id, create=False), embeddings


def stored(collection) -> dict[str, np.ndarray]:
    got = collection.get(include=["embeddings"])
    return {key: np.asarray(vector) for key, vector in zip(got["ids"], got["embeddings"])}


def test_two_runs_with_one_name_on_one_server_keep_their_collections(chroma_url, tmp_path):
    legacy = server_client(chroma_url).get_or_create_collection("frames-fallback-colour-texture-v2", embedding_function=None)
    legacy.add(ids=["made-before-run-scoping"], embeddings=[[0.0] * 8])  # a collection of an older frameatlas

    # same run name, same default prefix, same model: only the run id tells them apart
    cfg_a, run_a = embedded_run(tmp_path / "a", FALLBACK, videos=CORPUS_A, name="demo", index={"url": chroma_url})
    cfg_b, run_b = embedded_run(tmp_path / "b", FALLBACK, videos=CORPUS_B, name="demo", index={"url": chroma_url})
    assert run_a.run_id() != run_b.run_id()
    assert not (run_a.root / "index").exists() and not (run_b.root / "index").exists()  # vectors live on the server
    collection_a, embeddings_a = own_collection(cfg_a, run_a)
    collection_b, embeddings_b = own_collection(cfg_b, run_b)
    assert collection_a.name == f"frames-demo-{run_a.run_id()}-fallback-colour-texture-v2" != collection_b.name
    assert collection_a.count() == len(embeddings_a) == 4 + 4 and collection_b.count() == len(embeddings_b) == 6
    assert set(stored(collection_a)) == set(embeddings_a.frame_key)
    vectors_b = stored(collection_b)
    assert set(vectors_b) == set(embeddings_b.frame_key)

    (cfg_a.corpus.videos / "two.mp4").unlink()  # run A loses a video and runs again
    extract_corpus(cfg_a, cfg_a.run_dir)
    summary = embed_frames(cfg_a, cfg_a.run_dir)
    assert summary.index_location == chroma_url and summary.removed_from_index == 4
    collection_a, embeddings_a = own_collection(cfg_a, run_a)
    frames_a = read_table(run_a.table("frames"))
    assert set(frames_a.video_name) == {"one.mp4"} and set(embeddings_a.frame_key) == set(frames_a.frame_key)
    assert collection_a.count() == len(embeddings_a) == 4 and set(stored(collection_a)) == set(embeddings_a.frame_key)
    after_b = stored(collection_b)  # the other run's collection: same ids, same vectors
    assert set(after_b) == set(vectors_b) and all(np.array_equal(after_b[k], vectors_b[k]) for k in vectors_b)
    assert legacy.get(include=[])["ids"] == ["made-before-run-scoping"]  # old collections are left alone


def test_a_shared_collection_only_grows(chroma_url, tmp_path):
    shared_index = {"url": chroma_url, "shared_collection": "atlas-shared"}
    cfg_a, run_a = embedded_run(tmp_path / "a", FALLBACK, videos=CORPUS_A, name="first", index=shared_index)
    cfg_b, run_b = embedded_run(tmp_path / "b", FALLBACK, videos=CORPUS_B, name="second", index=shared_index)
    shared = server_client(chroma_url).get_collection("atlas-shared", embedding_function=None)
    rows_a = read_table(run_a.table("embeddings"))
    rows_b = read_table(run_b.table("embeddings"))
    expected = {shared_id(run_a.run_id(), k) for k in rows_a.frame_key} | {shared_id(run_b.run_id(), k) for k in rows_b.frame_key}
    got = shared.get(include=["metadatas"])
    assert set(got["ids"]) == expected and shared.count() == len(rows_a) + len(rows_b)
    by_id = dict(zip(got["ids"], got["metadatas"]))
    first_b = by_id[shared_id(run_b.run_id(), rows_b.frame_key[0])]
    assert (first_b["run_id"], first_b["run_name"], first_b["frame_key"]) == (run_b.run_id(), "second", rows_b.frame_key[0])

    (cfg_a.corpus.videos / "two.mp4").unlink()
    extract_corpus(cfg_a, cfg_a.run_dir)
    summary = embed_frames(cfg_a, cfg_a.run_dir)
    assert summary.shared_added == 0 and summary.removed_from_index == 4  # its own collection shrinks ...
    assert set(shared.get(include=[])["ids"]) == expected  # ... the shared one never loses a vector
    collection_a, embeddings_a = own_collection(cfg_a, run_a)
    assert collection_a.count() == len(embeddings_a) == 4

    again = embed_frames(cfg_b, cfg_b.run_dir)  # nothing new: nothing added twice
    assert again.shared_added == 0 and shared.count() == len(expected)
