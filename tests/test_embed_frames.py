"""One decode, two outputs: the extract stage hands every decoded frame to the embed pass
(model input scaled from the full picture, inference overlapped with decoding, bounded queue)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tinyclip
import videogen
from frameatlas import embed, frames, models
from frameatlas.config import config_from_dict
from frameatlas.embed import FrameEmbedder, embed_frames, extract_and_embed
from frameatlas.frames import extract_corpus, iter_frames_at, model_input, probe_video
from frameatlas.models import ModelRecord
from frameatlas.store import RunPaths, load_vectors, read_table
from PIL import Image

CUTS = [0.5 * k for k in range(1, 6)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("frames-corpus")
    videos = root / "videos"
    videogen.make_video(videos / "one.mp4", seconds=3, fps=10, size=(192, 108), scene_cuts=CUTS)
    videogen.make_video(videos / "two.mp4", seconds=2, fps=20, size=(192, 108), scene_cuts=CUTS[:3])
    return videos, tinyclip.save_tiny_local_dir(root / "tiny-clip")


def make_cfg(out: Path, videos: Path, clip: Path, **embed_options):
    return config_from_dict({
        "run": {"output_dir": str(out), "name": "t"},
        "corpus": {"videos": str(videos), "demo": False},
        "extract": {"every_seconds": 0.5, "thumbnail_long_side": 96},
        "models": {"image": {"name": f"local-dir:{clip}", "pretrained": None, "batch_size": 4}},
        "embed": embed_options,
    })  # fmt: skip


def test_extract_embeds_each_decoded_frame_once_and_the_embed_stage_only_indexes(corpus, tmp_path, monkeypatch):
    videos, clip = corpus
    cfg = make_cfg(tmp_path / "out", videos, clip)
    decoded = []
    real_iter_samples = frames.iter_samples
    monkeypatch.setattr(frames, "iter_samples", lambda path, c: decoded.append(Path(path).name) or real_iter_samples(path, c))

    summary = extract_and_embed(cfg, cfg.run_dir)
    assert sorted(decoded) == ["one.mp4", "two.mp4"]  # one decode per video, for both outputs
    assert summary.counts["frames_embedded"] == summary.frames == 6 + 4
    run = RunPaths(cfg.run_dir)
    table = read_table(run.table("frames"))
    assert all(run.absolute(t).is_file() for t in table.thumbnail)  # the thumbnails are still written
    shards = sorted(p.name for p in (run.root / "vectors").rglob("*.parquet"))
    assert shards == [f"{table.sampling[0]}.{models.image_encoder(cfg.models).input_key}.parquet"] * 2

    encoder = models.image_encoder(cfg.models)
    monkeypatch.setattr(frames, "iter_frames_at", lambda *a, **k: pytest.fail("the embed stage decoded a video again"))
    monkeypatch.setattr(encoder, "encode_preprocessed", lambda batch: pytest.fail("the embed stage ran the model"))
    stage = embed_frames(cfg.model_copy(update={"embed": cfg.embed.model_copy(update={"quality": "off"})}), cfg.run_dir)
    assert (stage.embedded, stage.cached, stage.indexed) == (0, 10, 10)


def test_vectors_are_the_same_from_either_pass_and_not_those_of_the_thumbnails(corpus, tmp_path):
    videos, clip = corpus
    during = make_cfg(tmp_path / "a", videos, clip)
    extract_and_embed(during, during.run_dir)
    embed_frames(during, during.run_dir)
    later = make_cfg(tmp_path / "b", videos, clip, during_extract=False)
    assert extract_and_embed(later, later.run_dir).counts.get("frames_embedded") is None
    assert embed_frames(later, later.run_dir).embedded == 10  # decoded again by the embed stage
    keys, first = load_vectors(during.run_dir)
    same_keys, second = load_vectors(later.run_dir)
    assert list(keys.frame_key) == list(same_keys.frame_key)
    np.testing.assert_allclose(first, second, atol=1e-5)

    encoder = models.image_encoder(during.models)
    run = RunPaths(during.run_dir)
    from_thumbnails = embed.encode_image_files(encoder, run.thumbnails(read_table(run.table("frames"))))
    cosines = np.einsum("ij,ij->i", first, from_thumbnails)
    assert np.all(cosines > 0.99) and np.all(cosines < 1 - 1e-6)  # moved a little: another input


def test_a_gone_source_is_embedded_from_thumbnails_cached_apart(corpus, tmp_path):
    videos, clip = corpus
    local = tmp_path / "videos"
    local.mkdir()
    for video in videos.iterdir():
        (local / video.name).write_bytes(video.read_bytes())
    cfg = make_cfg(tmp_path / "out", local, clip, during_extract=False, quality="off")
    extract_corpus(cfg, cfg.run_dir)
    (local / "two.mp4").unlink()
    summary = embed_frames(cfg, cfg.run_dir)
    assert (summary.embedded, summary.skipped) == (10, [])
    run = RunPaths(cfg.run_dir)
    names = {p.parent.name: p.name for p in (run.root / "vectors").rglob("*.parquet")}
    table = read_table(run.table("frames"))
    one, two = (table[table.video_name == name].video_id.iloc[0] for name in ("one.mp4", "two.mp4"))
    sampling = table.sampling[0]
    assert names == {one: f"{sampling}.frame1.parquet", two: f"{sampling}.parquet"}


@pytest.mark.parametrize("rotation", [90, 180])
def test_model_input_is_the_displayed_picture_at_the_models_size(tmp_path, rotation):
    video = videogen.make_video(tmp_path / "rot.mp4", seconds=1, fps=10, size=(320, 180), rotation=rotation)
    info = probe_video(video)
    [(timestamp, frame)] = list(iter_frames_at(video, [0.2]))
    image = model_input(frame, (240, 135), info.rotation)
    assert timestamp == 0.2 and image.size == (240, 135)
    rgb = np.asarray(image)
    assert videogen.find_marker_corner(rgb) == "top-left"
    assert videogen.read_frame_index(rgb) == 2


def test_frames_at_finds_the_sampled_frames_linearly_or_by_seeking(tmp_path):
    video = videogen.make_video(tmp_path / "v.mp4", seconds=4, fps=25)
    with pytest.raises(frames.VideoError, match="no frame at 1.010 s"):
        list(iter_frames_at(video, [1.01]))
    targets = [0.0, 0.52, 2.0, 3.96]
    linear = [(t, f.to_ndarray(format="rgb24")) for t, f in iter_frames_at(video, targets)]
    seeking = [(t, f.to_ndarray(format="rgb24")) for t, f in iter_frames_at(video, targets, seek=True)]
    assert [t for t, _ in linear] == [t for t, _ in seeking] == targets
    for (_, a), (_, b) in zip(linear, seeking):
        assert np.array_equal(a, b)
    assert [videogen.read_frame_index(a) for _, a in linear] == [0, 13, 50, 99]


class SlowEncoder:
    """Stands in for a model that holds its first batch until released."""

    has_text = False
    input_key = "frame1"

    def __init__(self, release: threading.Event):
        self.record = ModelRecord(kind="image", model_id="slow", requested="slow", backend="test")
        self.dim = 3
        self.release = release
        self.given = 0  # images the decoder's side has preprocessed

    def input_size(self, width, height):
        return 8, 8

    def preprocess(self, image):
        self.given += 1
        return np.asarray(image, np.float32)

    def encode_preprocessed(self, batch):
        assert self.release.wait(timeout=20), "the test never released the model"
        return np.tile([1.0, 0.0, 0.0], (len(batch), 1)).astype(np.float32)


def test_decoding_goes_on_while_the_model_runs_and_the_queue_is_bounded(tmp_path):
    release = threading.Event()
    encoder = SlowEncoder(release)
    embedder = FrameEmbedder(encoder, RunPaths(tmp_path), batch_size=2, queue_batches=2)
    image = Image.new("RGB", (8, 8))
    keys = [f"v:{i}" for i in range(12)]
    added = []

    def decoder():
        for key in keys:
            embedder.add("v", key, image)
            added.append(key)
        embedder.video_done("v", pd.DataFrame({"frame_key": keys, "video_id": "v", "sampling": "s"}))

    thread = threading.Thread(target=decoder)
    thread.start()
    # While the model holds its first batch (2 frames), the decoder goes on until the queue
    # (2 batches of 2) is full, and then waits: decoding overlaps inference, memory stays bounded.
    waited = threading.Event()
    for _ in range(2000):
        if encoder.given >= 2 + 4:
            break
        waited.wait(0.01)
    waited.wait(0.3)
    assert encoder.given in (6, 7)  # the 7th is preprocessed, waiting for room in the queue
    assert len(added) == 6 and thread.is_alive()
    release.set()
    thread.join(timeout=20)
    embedder.close()
    assert embedder.embedded == 12 and embedder.error is None
    [table] = embedder.tables
    assert list(table.frame_key) == keys


def test_a_model_error_while_extracting_only_leaves_the_vectors_to_the_embed_stage(corpus, tmp_path, monkeypatch, caplog):
    videos, clip = corpus
    cfg = make_cfg(tmp_path / "out", videos, clip, quality="off")
    encoder = models.image_encoder(cfg.models)
    real = encoder.encode_preprocessed
    monkeypatch.setattr(encoder, "encode_preprocessed", lambda batch: (_ for _ in ()).throw(RuntimeError("out of memory")))
    summary = extract_and_embed(cfg, cfg.run_dir)
    assert summary.frames == 10 and summary.skipped == [] and summary.counts["frames_embedded"] == 0
    assert "embedding while extracting stopped (RuntimeError: out of memory)" in caplog.text
    monkeypatch.setattr(encoder, "encode_preprocessed", real)
    assert embed_frames(cfg, cfg.run_dir).embedded == 10


@pytest.mark.parametrize("strict", [False, True])
def test_an_error_on_the_decoders_side_neither_hangs_nor_is_lost(tmp_path, strict):
    release = threading.Event()
    release.set()
    encoder = SlowEncoder(release)
    encoder.preprocess = lambda image: (_ for _ in ()).throw(ValueError("odd picture"))
    embedder = FrameEmbedder(encoder, RunPaths(tmp_path), batch_size=2, strict=strict)
    for i in range(5):
        embedder.add("v", f"v:{i}", Image.new("RGB", (8, 8)))
    embedder.video_done("v", pd.DataFrame({"frame_key": [f"v:{i}" for i in range(5)], "video_id": "v", "sampling": "s"}))
    if strict:
        with pytest.raises(ValueError, match="odd picture"):
            embedder.close()
    else:
        embedder.close()
        assert isinstance(embedder.error, ValueError) and embedder.tables == [] and embedder.embedded == 0
