"""Frame sampling on generated videos whose every frame carries its own index."""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import videogen
from frameatlas import frames as frames_module
from frameatlas.config import ExtractConfig, config_from_dict
from frameatlas.corpus import VideoFile
from frameatlas.files import UnsafePath, is_temp_name
from frameatlas.frames import VideoError, extract_corpus, extract_video, iter_samples, probe_video
from frameatlas.store import RunPaths, read_table, write_table
from frameatlas.summary import StageSummary
from PIL import Image


def sample_times(path, **options) -> list[float]:
    return [s.timestamp for s in iter_samples(path, ExtractConfig(**options))]


def thumb_index(path: Path) -> int:
    with Image.open(path) as image:
        return videogen.read_frame_index(np.asarray(image.convert("RGB")))


@pytest.mark.parametrize(
    ("seconds", "fps", "every", "expected_count"),
    [
        (4, 25, 1.0, 4),
        (3, 30, 0.5, 6),
        (5, 24, 2.0, 3),  # 0, 2, 4
        (2, 25, 0.2, 10),
    ],
)
def test_interval_sampling_keeps_one_frame_per_interval_exactly(tmp_path, seconds, fps, every, expected_count):
    video = videogen.make_video(tmp_path / "v.mp4", seconds=seconds, fps=fps)
    samples = list(iter_samples(video, ExtractConfig(every_seconds=every)))
    assert len(samples) == expected_count == -(-seconds // every)
    for k, sample in enumerate(samples):
        assert sample.timestamp == pytest.approx(k * every, abs=1e-9)
        assert sample.frame_index == round(k * every * fps)
        assert videogen.read_frame_index(sample.frame.to_ndarray(format="rgb24")) == sample.frame_index


def test_interval_picks_the_frame_on_screen_at_each_target_for_ntsc_rates(tmp_path):
    fps = Fraction(30000, 1001)
    video = videogen.make_video(tmp_path / "ntsc.mp4", n_frames=120, fps=fps)
    samples = list(iter_samples(video, ExtractConfig(every_seconds=1.0)))
    # frame 29 (0.967 s) is on screen at 1.0 s, frame 30 starts at 1.001 s; the video lasts
    # 4.004 s, so its last frame (119) is on screen at 4.0 s
    assert [s.frame_index for s in samples] == [0, 29, 59, 89, 119]
    assert [s.timestamp for s in samples] == pytest.approx([float(i / fps) for i in (0, 29, 59, 89, 119)])


def test_fps_mode(tmp_path):
    video = videogen.make_video(tmp_path / "v.mp4", seconds=2, fps=25)
    samples = list(iter_samples(video, ExtractConfig(mode="fps", fps=5)))
    assert [s.frame_index for s in samples] == list(range(0, 50, 5))


def test_fps_above_the_video_rate_never_repeats_a_frame(tmp_path):
    video = videogen.make_video(tmp_path / "v.mp4", seconds=1, fps=10)
    samples = list(iter_samples(video, ExtractConfig(mode="fps", fps=25)))
    assert [s.frame_index for s in samples] == list(range(10))


def test_variable_frame_rate_timestamps_come_from_pts(tmp_path):
    times = [0, 0.1, 0.15, 0.7, 1.05, 1.9, 2.0, 2.6, 3.2]
    video = videogen.make_video(tmp_path / "vfr.mp4", frame_times=times)
    samples = list(iter_samples(video, ExtractConfig(every_seconds=1.0)))
    # on screen at 0, 1, 2 and 3 s: the frames shown at 0, 0.7, 2.0 and 2.6 s
    assert [s.timestamp for s in samples] == pytest.approx([0, 0.7, 2.0, 2.6], abs=1e-6)
    assert [s.frame_index for s in samples] == [0, 3, 6, 7]
    assert [videogen.read_frame_index(s.frame.to_ndarray(format="rgb24")) for s in samples] == [0, 3, 6, 7]


def test_keyframes_mode_decodes_only_keyframes(tmp_path):
    video = videogen.make_video(tmp_path / "v.mp4", seconds=4, fps=25)
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        keyframe_times = sorted(
            float(p.pts * p.time_base) for p in container.demux(stream) if p.pts is not None and p.is_keyframe
        )
    samples = list(iter_samples(video, ExtractConfig(mode="keyframes")))
    assert len(keyframe_times) >= 2
    assert [s.timestamp for s in samples] == pytest.approx(keyframe_times)
    for sample in samples:
        assert sample.frame.key_frame
        assert videogen.read_frame_index(sample.frame.to_ndarray(format="rgb24")) == sample.frame_index


def test_shots_mode_adds_the_first_frame_of_every_shot(tmp_path):
    video = videogen.make_video(tmp_path / "cuts.mp4", seconds=4, fps=25, scene_cuts=[1.32, 2.76])
    samples = list(iter_samples(video, ExtractConfig(mode="shots", every_seconds=1.0)))
    assert [round(s.timestamp, 2) for s in samples] == [0, 1, 1.32, 2, 2.76, 3]
    assert [s.shot_id for s in samples] == [0, 0, 1, 1, 2, 2]
    assert [s.is_shot_start for s in samples] == [False, False, True, False, True, False]


def test_shots_min_length_suppresses_close_cuts(tmp_path):
    video = videogen.make_video(tmp_path / "flash.mp4", seconds=3, fps=25, scene_cuts=[1.0, 1.2, 2.0])
    samples = list(iter_samples(video, ExtractConfig(mode="shots", every_seconds=10, min_shot_seconds=0.5)))
    assert [round(s.timestamp, 2) for s in samples if s.is_shot_start] == [1.0, 2.0]


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_is_applied_to_thumbnails(tmp_path, rotation):
    video = videogen.make_video(tmp_path / "rot.mp4", seconds=1, fps=10, size=(160, 96), rotation=rotation)
    info = probe_video(video)
    assert (info.width, info.height) == (160, 96)
    assert info.rotation == rotation % 360
    run = RunPaths(tmp_path / "run")
    result = extract_video(_video_file(video), "vid", ExtractConfig(thumbnail_long_side=128), run)
    first = result.frames.iloc[0]
    assert (first.width, first.height) == (128, 77)
    with Image.open(run.absolute(first.thumbnail)) as image:
        rgb = np.asarray(image.convert("RGB"))
    assert videogen.find_marker_corner(rgb) == "top-left"
    assert videogen.read_frame_index(rgb) == 0


def test_thumbnails_are_resized_but_never_enlarged(tmp_path):
    video = videogen.make_video(tmp_path / "v.mp4", seconds=1, fps=5, size=(160, 120))
    run = RunPaths(tmp_path / "run")
    big = extract_video(_video_file(video), "a", ExtractConfig(thumbnail_long_side=384), run)
    small = extract_video(_video_file(video), "b", ExtractConfig(thumbnail_long_side=64), run)
    assert {(r.width, r.height) for r in big.frames.itertuples()} == {(160, 120)}
    assert {(r.width, r.height) for r in small.frames.itertuples()} == {(64, 48)}
    for row in small.frames.itertuples():
        assert thumb_index(run.absolute(row.thumbnail)) == row.frame_index


def _video_file(path: Path) -> VideoFile:
    stat = path.stat()
    return VideoFile(path, stat.st_size, stat.st_mtime_ns)


# --- bad input -------------------------------------------------------------------------------


def test_probe_reports_unusable_files_in_one_line(tmp_path):
    good = videogen.make_video(tmp_path / "good.mp4", seconds=2, fps=10, audio=True)
    info = probe_video(good)
    assert (info.duration, info.fps, info.codec, info.has_audio, info.audio_codec) == (pytest.approx(2.0, abs=0.05), 10.0, "h264", True, "aac")
    cases = {
        videogen.make_text_file_with_video_extension(tmp_path / "notes.mp4"): "not a readable video",
        videogen.make_audio_only(tmp_path / "sound.mp4"): "no video stream",
        videogen.make_truncated_copy(
            videogen.make_video(tmp_path / "tail.mp4", seconds=2, fps=10, faststart=False), tmp_path / "cut.mp4"
        ): "not a readable video",
    }
    for path, fragment in cases.items():
        with pytest.raises(VideoError) as info:
            probe_video(path)
        assert fragment in info.value.reason
        assert str(path) in str(info.value)
        assert "\n" not in str(info.value)


def test_truncated_faststart_file_keeps_the_frames_before_the_damage(tmp_path):
    whole = videogen.make_video(tmp_path / "whole.mp4", seconds=4, fps=25)
    cut = videogen.make_truncated_copy(whole, tmp_path / "cut.mp4", keep_fraction=0.6)
    samples = []
    with pytest.raises(VideoError, match="decoding stopped at"):
        for sample in iter_samples(cut, ExtractConfig(every_seconds=0.5)):
            samples.append(sample)
    assert 1 <= len(samples) < 8
    assert [s.frame_index for s in samples] == [int(k * 12.5) for k in range(len(samples))]  # on screen at k*0.5 s


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    folder = tmp_path / "videos"
    videogen.make_video(folder / "a.mp4", seconds=3, fps=25, audio=True)
    videogen.make_video(folder / "nested" / "b.mov", seconds=2, fps=10, scene_cuts=[1.0])
    return folder


def make_config(folder: Path, tmp_path: Path, **extract) -> object:
    return config_from_dict(
        {"corpus": {"videos": str(folder), "demo": False}, "run": {"output_dir": str(tmp_path / "out")}, "extract": extract}
    )


def test_extract_corpus_writes_frames_and_videos_tables(tmp_path, corpus_dir):
    cfg = make_config(corpus_dir, tmp_path)
    summary = extract_corpus(cfg, cfg.run_dir)
    run = RunPaths(cfg.run_dir)
    frames = read_table(run.table("frames"))
    videos = read_table(run.table("videos"))
    assert summary.counts["frames"] == len(frames) == 3 + 2
    assert (summary.videos, summary.processed, summary.cached, summary.skipped) == (2, 2, 0, [])
    a_id = hashlib.sha256((corpus_dir / "a.mp4").read_bytes()).hexdigest()[:16]
    a = frames[frames.video_id == a_id].sort_values("timestamp")
    assert list(a.timestamp) == [0.0, 1.0, 2.0, 3.0][:3]
    assert list(a.frame_key) == [f"{a_id}:{ms}" for ms in (0, 1000, 2000)]
    assert list(a.video_name) == ["a.mp4"] * 3
    assert a.shot_id.isna().all()
    for row in frames.itertuples():
        thumb = run.absolute(row.thumbnail)
        assert thumb.is_file() and thumb.is_relative_to(run.frames)
        assert thumb_index(thumb) == row.frame_index
        with Image.open(thumb) as image:
            assert image.size == (row.width, row.height)
    by_name = videos.set_index("video_name")
    assert by_name.loc["a.mp4", "has_audio"] and not by_name.loc["b.mov", "has_audio"]
    assert by_name.loc["a.mp4", "duration"] == pytest.approx(3.0, abs=0.05)
    assert by_name.loc["b.mov", "frames_sampled"] == 2
    assert set(videos.status) == {"ok"}
    assert isinstance(summary, StageSummary) and summary.result()["counts"]["frames"] == 5
    sheets = frames_module.save_contact_sheets(run)
    assert [video["video_name"] for video, _ in sheets] == ["a.mp4", "b.mov"] and all(path.is_file() for _, path in sheets)
    assert temp_files(run.root) == []


def temp_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if is_temp_name(path.name)]


def test_bad_inputs_are_skipped_with_reasons_and_the_rest_is_processed(tmp_path, corpus_dir):
    videogen.make_text_file_with_video_extension(corpus_dir / "text.mp4")
    videogen.make_zero_length(corpus_dir / "zero.mp4")
    videogen.make_dangling_symlink(corpus_dir / "link.mp4")
    videogen.make_audio_only(corpus_dir / "sound.mp4")
    whole = videogen.make_video(tmp_path / "whole.mp4", seconds=4, fps=25)
    videogen.make_truncated_copy(whole, corpus_dir / "truncated.mp4", keep_fraction=0.6)
    cfg = make_config(corpus_dir, tmp_path)
    summary = extract_corpus(cfg, cfg.run_dir)
    reasons = {Path(s.path).name: (s.status, s.reason) for s in summary.skipped}
    assert set(reasons) == {"text.mp4", "zero.mp4", "link.mp4", "sound.mp4", "truncated.mp4"}
    assert reasons["zero.mp4"] == ("skipped", "empty file (0 bytes)")
    assert reasons["link.mp4"][1].startswith("unreadable path: broken link")
    assert reasons["text.mp4"][1].startswith("not a readable video")
    assert reasons["sound.mp4"][1] == "no video stream (audio-only or data file)"
    status, reason = reasons["truncated.mp4"]
    assert status == "partial" and reason.startswith("partial: decoding stopped at") and "kept" in reason
    assert summary.videos == 3  # a, b and the partial one
    videos = read_table(RunPaths(cfg.run_dir).table("videos")).set_index("video_name")
    assert videos.loc["truncated.mp4", "status"] == "partial"
    assert videos.loc["a.mp4", "status"] == "ok"


def test_second_run_decodes_nothing_and_a_new_video_is_the_only_work(tmp_path, corpus_dir, monkeypatch):
    cfg = make_config(corpus_dir, tmp_path)
    extract_corpus(cfg, cfg.run_dir)
    before = read_table(RunPaths(cfg.run_dir).table("frames"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached video was decoded again")

    with monkeypatch.context() as patch:
        patch.setattr(frames_module, "iter_samples", no_decoding)
        patch.setattr(frames_module, "probe_video", no_decoding)
        patch.setattr(frames_module.av, "open", no_decoding)
        summary = extract_corpus(cfg, cfg.run_dir)
    assert (summary.processed, summary.cached) == (0, 2)
    pd.testing.assert_frame_equal(read_table(RunPaths(cfg.run_dir).table("frames")), before)

    videogen.make_video(corpus_dir / "c.mp4", seconds=1, fps=10)
    decoded = []
    real_iter = frames_module.iter_samples
    monkeypatch.setattr(frames_module, "iter_samples", lambda path, c: decoded.append(Path(path).name) or real_iter(path, c))
    summary = extract_corpus(cfg, cfg.run_dir)
    assert decoded == ["c.mp4"]
    assert (summary.processed, summary.cached, summary.frames) == (1, 2, 6)


def test_changed_sampling_parameters_resample_but_keep_the_old_shards(tmp_path, corpus_dir):
    cfg = make_config(corpus_dir, tmp_path)
    extract_corpus(cfg, cfg.run_dir)
    old_thumbs = sorted(RunPaths(cfg.run_dir).frames.rglob("*.jpg"))
    cfg2 = make_config(corpus_dir, tmp_path, every_seconds=0.5)
    summary = extract_corpus(cfg2, cfg2.run_dir)
    assert (summary.processed, summary.frames) == (2, 6 + 4)
    assert all(path.exists() for path in old_thumbs)


def test_a_run_killed_halfway_resumes_with_the_unfinished_video(tmp_path, corpus_dir, monkeypatch):
    cfg = make_config(corpus_dir, tmp_path)
    real_thumbnail = frames_module.thumbnail
    calls = []

    def crash_on_second_video(frame, *args):
        calls.append(frame)
        if len(calls) == 4:  # a.mp4 gives 3 frames; die inside b.mov
            raise KeyboardInterrupt
        return real_thumbnail(frame, *args)

    monkeypatch.setattr(frames_module, "thumbnail", crash_on_second_video)
    with pytest.raises(KeyboardInterrupt):
        extract_corpus(cfg, cfg.run_dir)
    run = RunPaths(cfg.run_dir)
    finished = list(run.frames.glob("*/*/frames.parquet"))
    assert len(finished) == 1  # a.mp4 survived, b.mov left no finished shard
    assert not run.table("frames").exists()

    monkeypatch.setattr(frames_module, "thumbnail", real_thumbnail)
    summary = extract_corpus(cfg, cfg.run_dir)
    assert (summary.processed, summary.cached, summary.frames) == (1, 1, 5)
    frames = read_table(run.table("frames"))
    assert all(run.absolute(t).exists() for t in frames.thumbnail)
    assert len(list(run.frames.rglob("*.jpg"))) == 5  # the half-written shard was replaced, not added to


def test_duplicate_content_is_sampled_once(tmp_path, corpus_dir):
    (corpus_dir / "copy.mp4").write_bytes((corpus_dir / "a.mp4").read_bytes())
    cfg = make_config(corpus_dir, tmp_path)
    summary = extract_corpus(cfg, cfg.run_dir)
    assert summary.videos == 2
    assert [(Path(s.path).name, s.reason) for s in summary.skipped] == [
        ("copy.mp4", f"same content as {corpus_dir / 'a.mp4'}; sampled once")
    ]


def test_empty_folder_is_reported_not_fatal(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = make_config(tmp_path / "empty", tmp_path)
    summary = extract_corpus(cfg, cfg.run_dir)
    assert summary.videos == 0 and "no videos found" in summary.skipped[0].reason
    assert read_table(RunPaths(cfg.run_dir).table("frames")).empty


def test_contact_sheet_grid(tmp_path, corpus_dir):
    cfg = make_config(corpus_dir, tmp_path, every_seconds=0.25)
    extract_corpus(cfg, cfg.run_dir)
    frames = read_table(RunPaths(cfg.run_dir).table("frames"))
    a = frames[frames.video_name == "a.mp4"]
    sheet = frames_module.contact_sheet(a, cfg.run_dir, columns=5, tile_width=100)
    assert len(a) == 12
    assert sheet.size == (500, 3 * (75 + 14))
    thinned = frames_module.contact_sheet(a, cfg.run_dir, columns=4, tile_width=100, max_frames=8)
    assert thinned.size == (400, 2 * (75 + 14))


def test_interval_mode_skips_unneeded_frames_without_changing_the_result(tmp_path, monkeypatch):
    video = videogen.make_video(tmp_path / "v.mp4", seconds=4, fps=25)
    decoded = []
    real_decode = frames_module._decode

    def counting_decode(container, stream, needed=None, packet_pts=None):
        for frame, index in real_decode(container, stream, needed, packet_pts):
            decoded.append(index)
            yield frame, index

    monkeypatch.setattr(frames_module, "_decode", counting_decode)
    skipping = [(s.timestamp, s.frame_index, s.frame.to_ndarray(format="rgb24")) for s in iter_samples(video, ExtractConfig(every_seconds=0.5))]
    skipped_count = len(decoded)
    decoded.clear()
    monkeypatch.setattr(frames_module, "_covers_a_target", lambda *args: None)  # decode everything
    everything = [(s.timestamp, s.frame_index, s.frame.to_ndarray(format="rgb24")) for s in iter_samples(video, ExtractConfig(every_seconds=0.5))]
    assert len(decoded) == 100 and skipped_count < 100
    assert [(t, i) for t, i, _ in skipping] == [(t, i) for t, i, _ in everything]
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(skipping, everything))


# --- isolation: one odd video never stops the stage -------------------------------------------


def test_a_file_that_makes_pyav_raise_an_unexpected_error_is_skipped_and_the_rest_extracted(tmp_path, corpus_dir):
    source = videogen.make_video(tmp_path / "source.mp4", seconds=2, fps=10)
    videogen.make_undecodable_metadata(source, corpus_dir / "brand.mp4")  # av.open raises UnicodeDecodeError
    cfg = make_config(corpus_dir, tmp_path)
    summary = extract_corpus(cfg, cfg.run_dir)
    [skipped] = summary.skipped
    assert (Path(skipped.path).name, skipped.status) == ("brand.mp4", "skipped")
    assert skipped.reason == "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xc2 in position 0: invalid continuation byte"
    assert summary.result()["skipped"] == [skipped.as_dict()]
    run = RunPaths(cfg.run_dir)
    assert set(read_table(run.table("frames")).video_name) == {"a.mp4", "b.mov"} and summary.frames == 5
    assert set(read_table(run.table("videos")).video_name) == {"a.mp4", "b.mov"}
    brand_id = hashlib.sha256((corpus_dir / "brand.mp4").read_bytes()).hexdigest()[:16]
    assert not (run.frames / brand_id).exists()
    assert temp_files(run.root) == []


def test_an_image_library_failure_on_one_video_skips_it_and_keeps_the_other_shards(tmp_path, corpus_dir, monkeypatch):
    b_id = hashlib.sha256((corpus_dir / "nested" / "b.mov").read_bytes()).hexdigest()[:16]
    real_save = Image.Image.save
    saved_for_b = []

    def failing_for_b(image, fp, *args, **kwargs):  # the disk fills up while b.mov's second thumbnail is written
        if b_id in str(fp):
            saved_for_b.append(fp)
            if len(saved_for_b) == 2:
                Path(fp).write_bytes(b"\xff\xd8 half a JPEG")
                raise OSError("encoder error -2 when writing image file")
        return real_save(image, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_for_b)
    cfg = make_config(corpus_dir, tmp_path)
    summary = extract_corpus(cfg, cfg.run_dir)
    assert [(Path(s.path).name, s.status, s.reason) for s in summary.skipped] == [
        ("b.mov", "skipped", "OSError: encoder error -2 when writing image file")
    ]
    run = RunPaths(cfg.run_dir)
    assert set(read_table(run.table("frames")).video_name) == {"a.mp4"}
    assert not (run.frames / b_id).exists() or not any((run.frames / b_id).rglob("*"))  # no half shard left
    assert temp_files(run.root) == []

    monkeypatch.setattr(Image.Image, "save", real_save)
    again = extract_corpus(cfg, cfg.run_dir)
    assert (again.processed, again.cached, again.frames, again.skipped) == (1, 1, 5, [])  # a.mp4's shard was kept


def test_a_thumbnail_outside_the_run_is_refused_naming_the_row_and_path(tmp_path, corpus_dir):
    cfg = make_config(corpus_dir, tmp_path)
    extract_corpus(cfg, cfg.run_dir)
    run = RunPaths(cfg.run_dir)
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8), "red").save(secret)
    frames = read_table(run.table("frames"))
    frames.loc[2, "thumbnail"] = "../../secret.jpg"
    write_table(frames, run.table("frames"))
    with pytest.raises(UnsafePath, match=r"tables/frames\.parquet row 2, column thumbnail: path '\.\./\.\./secret\.jpg' "
                                         r"resolves to .*secret\.jpg, outside"):  # fmt: skip
        frames_module.save_contact_sheets(run)
    assert not run.contact_sheet(frames.video_id[2]).exists()


def test_video_paths_from_the_videos_table_must_lie_in_the_corpus(tmp_path, corpus_dir):
    cfg = make_config(corpus_dir, tmp_path)
    extract_corpus(cfg, cfg.run_dir)
    run = RunPaths(cfg.run_dir)
    videos = frames_module.read_videos(run, cfg.corpus.videos)
    assert sorted(Path(p).relative_to(corpus_dir).as_posix() for p in videos.video_path) == ["a.mp4", "nested/b.mov"]
    table = read_table(run.table("videos"))
    for crafted in ("/etc/passwd", f"{corpus_dir}/../secret.mp4"):
        table.loc[1, "video_path"] = crafted
        write_table(table, run.table("videos"))
        with pytest.raises(UnsafePath, match=rf"tables/videos\.parquet row 1, column video_path: path '{crafted}' .*outside"):
            frames_module.read_videos(run, cfg.corpus.videos)
