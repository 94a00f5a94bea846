"""Near-duplicate frames: signatures at extraction, and OCR / caption-model results reused across them."""

from __future__ import annotations

import av
import numpy as np
import pytest
import tinyblip
import videogen
from frameatlas.caption import caption_frames
from frameatlas.config import ConfigError, config_from_dict
from frameatlas.frames import extract_corpus
from frameatlas.ocr import read_frame_text
from frameatlas.report import _stage_sentence
from frameatlas.signature import NearDuplicates, frame_signature, signature_distance
from frameatlas.store import read_table, read_thumbnail, write_table
from runs import embedded_run

# A fixed camera on a street, sampled every 0.5 s: the sign changes at 3.0 s and again at 4.5 s
# (one letter), and a figure walks across the road the whole time.
SIGNS = [(0.0, "OPEN DAILY"), (3.0, "CLOSED NOW"), (4.5, "CLOSED NOV")]


def sign_at(t: float) -> str:
    return [text for start, text in SIGNS if start <= t][-1]


def static_run(tmp_path, name: str, **ocr):
    """The street video extracted every 0.5 s (12 frames); OCR options from `ocr`."""
    videos = tmp_path / "videos"
    if not videos.exists():
        videogen.make_static_scene_video(videos / "street.mp4", seconds=6, signs=SIGNS)
    return embedded_run(tmp_path, {"name": "fallback"}, name=name, extract={"thumbnail_long_side": 384},
                        caption={"ocr": {"enabled": True, **ocr}})  # fmt: skip


def decoded_pictures(path, count: int):
    with av.open(str(path)) as container:
        return [frame.to_image() for _, frame in zip(range(count), container.decode(video=0))]


def test_signatures_are_equal_for_the_same_picture_near_for_noise_and_far_for_other_content(tmp_path):
    still = videogen.make_static_scene_video(tmp_path / "still.mp4", seconds=1, signs=[(0, "MAIN STREET")], walker=False)
    noisy = decoded_pictures(still, 3)  # the same scene, each frame with its own sensor noise
    other = videogen.make_video(tmp_path / "other.mp4", seconds=1, fps=10, size=(384, 216))
    different = decoded_pictures(other, 1)[0]
    first = frame_signature(noisy[0])
    assert len(first) == 576 and frame_signature(noisy[0]) == first
    assert [signature_distance(first, frame_signature(image)) for image in noisy[1:]] == [0, 0]
    assert signature_distance(first, frame_signature(different)) > 200
    signed = videogen.make_static_scene_video(tmp_path / "signed.mp4", seconds=1, signs=[(0, "MAIN STREEP")], walker=False)
    assert signature_distance(first, frame_signature(decoded_pictures(signed, 1)[0])) >= 3  # one letter of the sign


def test_a_frame_is_compared_with_the_last_computed_frame_not_its_neighbour():
    step = [bytes([100 + 6 * k] * 60 + [100] * 516) for k in range(3)]  # 60 cells brighten 6 levels per frame
    near = NearDuplicates(max_distance=10)
    near.computed("a", step[0])
    assert signature_distance(step[1], step[2]) == 0 and signature_distance(step[0], step[2]) == 60
    assert near.anchor_for(step[1]) == "a"  # 6 levels: no cell counts as changed
    assert near.anchor_for(step[2]) is None  # 12 levels from "a" (its neighbour step 1 looks the same)
    assert NearDuplicates(None).anchor_for(step[0]) is None and NearDuplicates(0).anchor_for(None) is None


def test_extraction_stores_each_thumbnails_signature_and_old_shards_get_theirs(tmp_path):
    cfg, run = static_run(tmp_path, "sig")
    frames = read_table(run.table("frames"))
    assert len(frames) == 12 and frames.signature.map(len).eq(576).all()
    from_thumbnails = [frame_signature(read_thumbnail(path)) for path in run.thumbnails(frames)]
    assert max(map(signature_distance, frames.signature, from_thumbnails)) <= 1  # the JPEG moves a cell at most
    # A shard written before signatures existed: the next extraction adds them from its thumbnails, once.
    shard = next(run.frames.glob("*/*/frames.parquet"))
    write_table(read_table(shard).drop(columns=["signature"]), shard)
    summary = extract_corpus(cfg, run)
    assert summary.cached == 1 and "signature" in read_table(shard)
    assert read_table(run.table("frames")).signature.tolist() == from_thumbnails


def test_ocr_on_a_static_shot_reuses_most_frames_with_the_same_text_as_reading_every_frame(tmp_path):
    cfg, run = static_run(tmp_path, "exact", reuse_distance=None)
    exact = read_frame_text(cfg, run)
    assert exact.reused == 0 and (exact.table.reused_from == "").all()
    squeeze = lambda text: "".join(text.split())  # noqa: E731 - OCR may drop a space between words
    assert [squeeze(text) for text in exact.table.text] == [squeeze(sign_at(t)) for t in exact.table.timestamp]

    cfg, run = static_run(tmp_path, "reuse", reuse_distance=8)  # the walker moves ~5 cells, a new sign ~20
    reused = read_frame_text(cfg, run)
    table = reused.table
    assert table.text.tolist() == exact.table.text.tolist()
    assert table[table.reused_from == ""].timestamp.tolist() == [0.0, 3.0, 4.5]  # the sign's three texts, read once each
    by_key = table.set_index("frame_key")
    for row in table[table.reused_from != ""].itertuples():
        anchor = by_key.loc[row.reused_from]
        assert anchor.timestamp < row.timestamp and anchor.text == row.text and anchor.reused_from == ""
    counts = reused.counts
    assert (counts["ocr_frames_read"], counts["ocr_frames_reused"], counts["ocr_reuse_distance"]) == (12, 9, 8)
    assert reused.result()["counts"]["ocr_frames_reused"] == 9  # the stage's manifest entry
    sentence, _ = _stage_sentence("caption", counts)
    assert "9 for the text" in sentence
    assert read_table(run.table("ocr")).reused_from.tolist() == table.reused_from.tolist()


def test_reuse_off_reads_every_frame_and_another_threshold_never_takes_reused_results(tmp_path):
    cfg, run = static_run(tmp_path, "switch", reuse_distance=8)
    assert read_frame_text(cfg, run).reused == 9
    cfg.caption.ocr.reuse_distance = None
    exact = read_frame_text(cfg, run)
    assert (exact.read, exact.cached, exact.reused) == (12, 0, 0)  # nothing taken from the reusing run's cache
    assert (exact.table.reused_from == "").all() and exact.counts["ocr_reuse_distance"] == "off"
    cfg.caption.ocr.reuse_distance = 0  # 0: only frames whose cells all stayed put; the walker moves some
    strict = read_frame_text(cfg, run)
    assert (strict.read, strict.cached, strict.reused) == (12, 0, 0)
    cfg.caption.ocr.reuse_distance = 8
    again = read_frame_text(cfg, run)
    assert (again.read, again.cached) == (0, 12) and (again.table.reused_from != "").sum() == 9


def test_frames_without_signatures_are_all_read(tmp_path):
    cfg, run = static_run(tmp_path, "old", reuse_distance=8)
    write_table(read_table(run.table("frames")).drop(columns=["signature"]), run.table("frames"))
    summary = read_frame_text(cfg, run)
    assert (summary.read, summary.reused) == (12, 0)


@pytest.mark.parametrize(("value", "expected"), [("off", None), (False, None), (None, None), (4, 4)])
def test_reuse_distance_takes_a_number_of_cells_or_off(value, expected):
    cfg = config_from_dict({"caption": {"reuse_distance": value, "ocr": {"reuse_distance": value}}})
    assert cfg.caption.reuse_distance == expected and cfg.caption.ocr.reuse_distance == expected


@pytest.mark.parametrize("value", [True, -1, 577, "often"])
def test_a_bad_reuse_distance_names_the_key(value):
    with pytest.raises(ConfigError, match=r"caption\.ocr\.reuse_distance"):
        config_from_dict({"caption": {"ocr": {"reuse_distance": value}}})


def test_the_caption_model_reuses_captions_of_near_identical_frames(tmp_path):
    folder = tinyblip.save_tiny_blip(tmp_path / "tiny-blip")
    options = {"caption_model": str(folder), "max_caption_tokens": 5, "term_limit": 30}
    cfg, run = static_run(tmp_path, "blip")
    cfg.caption = cfg.caption.model_copy(update=options)
    exact = caption_frames(cfg, run)
    assert exact.reused == 0 and exact.counts["frames_caption_reused"] == 0

    cfg.caption.reuse_distance = 8
    reused = caption_frames(cfg, run)
    table = reused.table
    assert reused.cached == 0 and reused.counts["frames_caption_reused"] == 9
    assert table[table.reused_from == ""].timestamp.tolist() == [0.0, 3.0, 4.5]
    captions = table.set_index("frame_key").caption
    assert (table.caption == table.reused_from.map(lambda key: captions.get(key)).fillna(table.caption)).all()
    computed = table.reused_from == ""
    assert table.caption[computed].tolist() == exact.table.caption[computed].tolist()
    assert np.all(table.prompt == table.caption)  # the fallback image model ranks no terms: the prompt is the caption


@pytest.mark.parametrize("workers", [1, 2])
def test_reuse_with_readers_at_once_stays_within_a_video_and_a_failed_anchor_is_read_around(tmp_path, workers):
    videos = tmp_path / "videos"
    videogen.make_static_scene_video(videos / "street.mp4", seconds=6, signs=SIGNS)
    videogen.make_static_scene_video(videos / "again.mp4", seconds=6, signs=SIGNS, seed=1)  # the same scene, other noise
    from frameatlas.models.ocr import OcrReader

    cfg, run = static_run(tmp_path, f"workers{workers}", reuse_distance=8, workers=workers)
    readers = [OcrReader(cfg.caption.ocr, threads=1) for _ in range(workers)]  # 24 frames: by default one would load
    whole = read_frame_text(cfg, run, reader=readers)
    assert whole.workers == workers and (whole.read, whole.reused) == (24, 18)
    for _, video in whole.table.groupby("video_id"):
        assert video[video.reused_from == ""].timestamp.tolist() == [0.0, 3.0, 4.5]  # each video reads its own
        assert set(video.reused_from) - {""} <= set(video.frame_key)

    # The frame at 3.0 s (CLOSED NOW, the anchor of 3.5 and 4.0) cannot be read: as when frames are read one by
    # one, 3.5 s is then compared with 0.0 s (another sign), read, and 4.0 s takes 3.5 s's text.
    frames = read_table(run.table("frames"))
    broken = frames[(frames.timestamp == 3.0) & frames.video_path.str.endswith("street.mp4")].index[0]
    run.absolute(frames.thumbnail[broken]).write_bytes(b"not a picture")
    summary = read_frame_text(cfg, run, force=True, reader=readers)
    [skipped] = summary.skipped
    assert skipped.path == frames.video_path[broken] and skipped.status == "partial"
    assert skipped.reason.startswith(f"on-screen text of 1 of 12 frames not read: frame {frames.frame_key[broken]}: ")
    street_rows = summary.table[summary.table.video_id == frames.video_id[broken]]
    assert 3.0 not in street_rows.timestamp.tolist()
    assert street_rows[street_rows.reused_from == ""].timestamp.tolist() == [0.0, 3.5, 4.5]
    by_time = street_rows.set_index("timestamp")
    assert by_time.reused_from[4.0] == by_time.frame_key[3.5] and by_time.text[4.0] == by_time.text[3.5]
    assert "".join(by_time.text[3.5].split()) == "CLOSEDNOW"
    assert summary.table.text.tolist() == whole.table.drop(index=broken).text.tolist()
