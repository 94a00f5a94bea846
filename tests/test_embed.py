"""The embed stage on generated videos with a tiny CLIP: counts, norms, cache, index."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tinyclip
import videogen
from frameatlas import models
from frameatlas.config import config_from_dict
from frameatlas.embed import embed_frames, encode_image_files, nearest_neighbour_grid
from frameatlas.frames import extract_corpus
from frameatlas.index import IndexNotReady, RunScope, collection_name, open_index
from frameatlas.store import RunPaths, load_vectors, read_table, write_table
from PIL import Image


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tinyclip.save_tiny_local_dir(tmp_path_factory.mktemp("tiny") / "tiny-clip")


def make_cfg(tmp_path: Path, videos: Path, image_model: dict):
    return config_from_dict(
        {
            "run": {"output_dir": str(tmp_path / "out"), "name": "t"},
            "corpus": {"videos": str(videos), "demo": False},
            "extract": {"every_seconds": 0.5, "thumbnail_long_side": 96},
            "models": {"image": {"batch_size": 4, **image_model}},
        }
    )


@pytest.fixture
def extracted(tmp_path, tiny_dir):
    videos = tmp_path / "videos"
    cuts = [0.5 * k for k in range(1, 6)]  # every sampled frame starts a new scene colour
    videogen.make_video(videos / "one.mp4", seconds=3, fps=10, scene_cuts=cuts)
    videogen.make_video(videos / "two.mp4", seconds=2, fps=20, scene_cuts=cuts[:3])  # other frame codes
    cfg = make_cfg(tmp_path, videos, {"name": f"local-dir:{tiny_dir}", "pretrained": None})
    extract_corpus(cfg, cfg.run_dir)
    return cfg


def test_every_frame_gets_one_unit_vector_and_an_index_entry(extracted):
    cfg = extracted
    summary = embed_frames(cfg, cfg.run_dir)
    run = RunPaths(cfg.run_dir)
    frames = read_table(run.table("frames"))
    table, vectors = load_vectors(run, summary.model.model_id)
    assert summary.frames == summary.embedded == len(frames) == len(table) == 6 + 4
    assert list(table.frame_key) == list(frames.frame_key)
    assert set(table.model_id) == {summary.model.model_id} and summary.model.model_id.startswith("clip-tiny-clip-")
    assert vectors.shape == (10, 32) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)

    index = open_index(run.root)
    collection = index.collection(summary.model.model_id, create=False)
    assert index.ids(collection) == set(frames.frame_key)
    stored = collection.get(ids=[frames.frame_key[0]], include=["metadatas"])["metadatas"][0]
    assert stored["video_name"] == frames.video_name[0] and stored["thumbnail"] == frames.thumbnail[0]
    assert stored["timestamp"] == pytest.approx(frames.timestamp[0])


def test_a_frame_finds_itself_first_from_its_model_input_and_from_its_thumbnail(extracted):
    # The index holds vectors of the full decoded frames. The same input decoded again finds its
    # frame exactly; its thumbnail (a smaller JPEG of the same picture) is another input, and must
    # still rank its frame first, or level with a frame of identical content (both videos open on
    # the same picture).
    from frameatlas.frames import iter_frames_at, model_input, probe_video

    cfg = extracted
    summary = embed_frames(cfg, cfg.run_dir)
    run = RunPaths(cfg.run_dir)
    frames = read_table(run.table("frames"))
    encoder = models.image_encoder(cfg.models)
    index = open_index(run.root)
    collection = index.collection(summary.model.model_id, create=False)

    inputs = []
    for path, group in frames.groupby("video_path", sort=False):
        info = probe_video(path)
        size = encoder.input_size(info.width, info.height)
        inputs += [model_input(frame, size, info.rotation) for _, frame in iter_frames_at(path, group.timestamp)]
    exact = index.query(collection, encoder.encode_images(inputs), k=3)
    thumbnails = index.query(collection, encode_image_files(encoder, run.thumbnails(frames)), k=3)
    for key, found, near in zip(frames.frame_key, exact, thumbnails):
        assert found.frame_key[0] == key and found.score[0] == pytest.approx(1.0, abs=1e-4)
        assert found.score[1] < found.score[0]
        scores = dict(zip(near.frame_key, near.score))
        assert key in scores and 0.99 < scores[key] < 1.0 - 1e-6  # not the identical input
        assert scores[key] >= near.score[0] - 1e-4


def test_cached_rerun_embeds_nothing_and_a_new_video_only_its_frames(extracted, monkeypatch):
    cfg = extracted
    embed_frames(cfg, cfg.run_dir)
    encoder = models.image_encoder(cfg.models)
    calls = []
    real = encoder.encode_preprocessed
    monkeypatch.setattr(encoder, "encode_preprocessed", lambda batch: calls.append(len(batch)) or real(batch))

    again = embed_frames(cfg, cfg.run_dir)
    assert (again.embedded, again.cached, again.indexed, calls) == (0, 10, 0, [])

    videogen.make_video(cfg.corpus.videos / "three.mp4", seconds=1, fps=10)
    extract_corpus(cfg, cfg.run_dir)
    grown = embed_frames(cfg, cfg.run_dir)
    assert (grown.embedded, grown.cached, grown.indexed) == (2, 10, 2)
    assert sum(calls) == 2


def test_removed_videos_leave_the_index_and_a_new_model_embeds_everything(extracted, tmp_path, tiny_dir):
    cfg = extracted
    first = embed_frames(cfg, cfg.run_dir)
    (cfg.corpus.videos / "two.mp4").unlink()
    extract_corpus(cfg, cfg.run_dir)
    after = embed_frames(cfg, cfg.run_dir)
    assert (after.frames, after.removed_from_index) == (6, 4)

    other_dir = tinyclip.save_tiny_local_dir(tmp_path / "other-clip", seed=1)
    other = make_cfg(tmp_path, cfg.corpus.videos, {"name": f"local-dir:{other_dir}", "pretrained": None})
    second = embed_frames(other, other.run_dir)
    assert second.model.model_id.startswith("clip-other-clip-")
    assert second.embedded == 6
    run = RunPaths(cfg.run_dir)
    assert set(read_table(run.table("embeddings")).model_id) == {second.model.model_id}
    assert (run.root / "vectors" / first.model.model_id).is_dir()  # the first model's vectors are kept


def test_fallback_descriptor_runs_the_same_stage(extracted, tmp_path):
    cfg = make_cfg(tmp_path, extracted.corpus.videos, {"name": "fallback"})
    summary = embed_frames(cfg, cfg.run_dir)
    assert summary.model.model_id == "fallback-colour-texture-v2" and summary.embedded == 10
    _, vectors = load_vectors(cfg.run_dir, summary.model.model_id)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_neighbour_grid_shows_each_sample_with_itself_first(extracted):
    cfg = extracted
    summary = embed_frames(cfg, cfg.run_dir)
    grid, table = nearest_neighbour_grid(cfg, cfg.run_dir, summary.model.model_id, samples=3, k=4, tile=100)
    assert isinstance(grid, Image.Image) and grid.size == (5 * 100, 3 * (75 + 14))
    firsts = table[table["rank"] == 0]
    assert list(firsts.frame_key) == list(firsts["query"]) and (firsts.score > 0.999).all()


def test_a_video_with_an_unreadable_thumbnail_is_skipped_and_the_stage_goes_on(extracted):
    cfg = extracted
    run = RunPaths(cfg.run_dir)
    frames = read_table(run.table("frames"))
    missing = frames.iloc[3]  # a frame of one.mp4
    run.absolute(missing.thumbnail).unlink()
    Path(missing.video_path).unlink()  # its source is gone too: its frames can only come from thumbnails
    summary = embed_frames(cfg, cfg.run_dir)
    [skipped] = summary.skipped
    assert skipped.path == missing.video_path and skipped.stage == "embed"
    assert re.search(r"t\d+\.jpg: thumbnail cannot be read.*--force extract", skipped.reason)
    two = frames[frames.video_name == "two.mp4"]
    assert list(read_table(run.table("embeddings")).frame_key) == list(two.frame_key)
    assert summary.result()["skipped"][0]["path"] == missing.video_path and summary.counts["videos_skipped"] == 1
    index = open_index(run.root)
    assert index.ids(index.collection(summary.model.model_id, create=False)) == set(two.frame_key)


def test_any_error_reading_a_thumbnail_skips_only_that_video(extracted, monkeypatch):
    cfg = extracted
    run = RunPaths(cfg.run_dir)
    frames = read_table(run.table("frames"))
    two = frames[frames.video_name == "two.mp4"]
    # PIL refuses an image far above MAX_IMAGE_PIXELS with DecompressionBombError, which is not an OSError
    Image.new("RGB", (400, 400), "red").save(run.absolute(two.thumbnail.iloc[1]))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 96 * 96)
    Path(two.video_path.iloc[0]).write_bytes(b"changed since extraction")  # so its thumbnails are used
    summary = embed_frames(cfg, cfg.run_dir)
    assert [s.path for s in summary.skipped] == [two.video_path.iloc[0]]
    assert "DecompressionBombError" in summary.skipped[0].reason and "--force extract" in summary.skipped[0].reason
    assert summary.embedded == len(frames) - len(two)


def test_a_thumbnail_outside_the_run_is_refused_naming_the_row(extracted):
    cfg = extracted
    run = RunPaths(cfg.run_dir)
    frames = read_table(run.table("frames"))
    frames.loc[2, "thumbnail"] = "../../../../../../etc/hostname"
    write_table(frames, run.table("frames"))
    summary = embed_frames(cfg, cfg.run_dir)
    [skipped] = summary.skipped
    assert skipped.path == frames.video_path[2]
    assert "tables/frames.parquet row 2, column thumbnail: path '../../../../../../etc/hostname'" in skipped.reason


def test_collections_carry_the_run_identity_and_readers_need_one(extracted, tmp_path):
    cfg = extracted
    run = RunPaths(cfg.run_dir)
    with pytest.raises(IndexNotReady, match=r"no index identity \(run.json is missing\).*re-run the embed stage"):
        open_index(run)
    assert not run.identity_file.exists()  # a reader never creates the identity
    summary = embed_frames(cfg, cfg.run_dir)
    run_id = run.run_id()
    assert summary.collection == f"frames-t-{run_id}-{summary.model.model_id}"
    assert summary.counts["index_collection"] == summary.collection
    names = {c.name for c in open_index(run).client.list_collections()}
    assert names == {summary.collection}
    embed_frames(cfg, cfg.run_dir)
    assert run.run_id() == run_id  # made once, kept


def test_collection_names_follow_chroma_rules():
    scope = RunScope("my run (copy)", "0123456789ab")
    assert collection_name("frames", "clip/ViT..B", scope=scope) == "frames-my-run-copy-0123456789ab-clip-ViT.B"
    long = collection_name("frames", "m" * 600, scope=scope)
    other = collection_name("frames", "m" * 599 + "n", scope=scope)
    assert len(long) == 512 and long != other and long.startswith("frames-my-run-copy-0123456789ab-mmm")
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]", n) for n in (long, other))
    assert collection_name("eval", "ann") == "eval-ann"  # throwaway indexes keep the unscoped form


def test_loader_keeps_order_across_batches_and_threads(tmp_path):
    paths = []
    for i in range(11):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (16, 16), (i * 20, 255 - i * 20, 128)).save(path)
        paths.append(path)
    encoder = models.ColourTextureEncoder()
    expected = encoder.encode_images([Image.open(p) for p in paths])
    got = encode_image_files(encoder, paths, batch_size=3, loader_threads=2, prefetch_batches=3)
    assert np.array_equal(got, expected)
    assert pd.Series(got.shape).tolist() == [11, encoder.dim]


def test_quality_checks_run_once_per_set_of_vectors(extracted, monkeypatch):
    from frameatlas import evaluation
    from frameatlas.embed import quality_checks

    cfg = extracted
    embed_frames(cfg, cfg.run_dir)
    encoder = models.image_encoder(cfg.models)
    calls = []
    for name in ("compare_indexes", "recall_under_noise"):
        real = getattr(evaluation, name)
        monkeypatch.setattr(evaluation, name, lambda *a, _real=real, _name=name, **kw: calls.append(_name) or _real(*a, **kw))

    first = quality_checks(cfg, cfg.run_dir, encoder)
    assert calls == ["compare_indexes", "recall_under_noise"] and not first.cached
    assert list(first.index.method) == ["run index (chroma-hnsw)"]  # quick: nothing else is built
    assert first.index["recall@10"].tolist() == [1.0] and first.index.attrs["queries"] == 10
    assert first.noise.severity.tolist()[0] == 0.0 and first.noise.n_queries.tolist() == [5] * 6
    assert first.noise["recall@1"][0] == 1.0  # the clean frame, as the model saw it, finds itself

    again = quality_checks(cfg, cfg.run_dir, encoder)
    assert calls == ["compare_indexes", "recall_under_noise"]  # nothing computed: same vectors
    assert again.cached and again.fingerprint == first.fingerprint
    pd.testing.assert_frame_equal(again.index, first.index)
    pd.testing.assert_frame_equal(again.noise, first.noise)

    videogen.make_video(cfg.corpus.videos / "three.mp4", seconds=1, fps=10)
    extract_corpus(cfg, cfg.run_dir)
    embed_frames(cfg, cfg.run_dir)
    grown = quality_checks(cfg, cfg.run_dir, encoder)
    assert not grown.cached and grown.fingerprint != first.fingerprint
    assert calls == ["compare_indexes", "recall_under_noise"] * 2


def test_quality_checks_off_and_full(extracted, monkeypatch):
    from frameatlas.embed import quality_checks

    cfg = extracted
    embed_frames(cfg, cfg.run_dir)
    encoder = models.image_encoder(cfg.models)
    off = quality_checks(cfg.model_copy(update={"embed": cfg.embed.model_copy(update={"quality": "off"})}), cfg.run_dir, encoder)
    assert (off.index, off.noise, off.note) == (None, None, "skipped: embed.quality is off")
    full_cfg = cfg.model_copy(update={"embed": cfg.embed.model_copy(update={"quality": "full", "quality_samples": 6})})
    full = quality_checks(full_cfg, cfg.run_dir, encoder)
    assert list(full.index.method) == ["run index (chroma-hnsw)", "faiss-flat", "faiss-lsh", "faiss-lsh-rerank", "chroma-hnsw"]
    assert full.noise.n_queries.tolist() == [6] * 6
    assert not list((RunPaths(cfg.run_dir).cache).glob("frameatlas-eval-chroma-*"))  # the scratch index is gone
