"""Round-trip tests for the test-video generator in ``tests/videogen.py``.

These pin down the ground truth the rest of the suite relies on: exact frame
timestamps (CFR and VFR), the frame index drawn into every frame (also from a
small JPEG thumbnail), the display-rotation convention (checked against the
ffmpeg CLI, which auto-rotates), audio tracks, faststart vs. truncation, the
bad-input helpers, and that PySceneDetect finds exactly the requested cuts.
"""

from __future__ import annotations

import io
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import pytest
import videogen as vg
from PIL import Image


def decode_rgb(path: Path) -> list[tuple[av.VideoFrame, np.ndarray]]:
    with av.open(str(path)) as container:
        return [(f, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def frame_seconds(frame: av.VideoFrame) -> Fraction:
    return frame.pts * Fraction(frame.time_base)


def thumbnail_jpeg(rgb: np.ndarray, long_side: int = 64, quality: int = 85) -> Image.Image:
    image = Image.fromarray(rgb)
    image.thumbnail((long_side, long_side))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf)


def decodable_indices(path: Path) -> list[int]:
    """Frame indices decoded before the first error, packet by packet.

    A truncated mp4 raises InvalidDataError from avcodec_send_packet() on the
    cut-off packet; decoding per packet and flushing afterwards recovers the
    frames still buffered in the decoder (``container.decode()`` would lose them).
    """
    indices: list[int] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                indices += [vg.read_frame_index(f) for f in stream.decode(packet)]
        except av.error.FFmpegError:
            pass
        try:
            indices += [vg.read_frame_index(f) for f in stream.decode(None)]
        except av.error.FFmpegError:
            pass
    return indices


def ffmpeg_first_frame(path: Path, out: Path) -> np.ndarray:
    """First frame as decoded by the ffmpeg CLI (auto-rotation on, its default)."""
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(path), "-frames:v", "1", str(out)],
        check=True,
        capture_output=True,
    )
    return np.asarray(Image.open(out).convert("RGB"))


# --------------------------------------------------------------------------- timing + index


@pytest.mark.parametrize("fps", [25, Fraction(30000, 1001)])
def test_cfr_exact_timestamps_and_indices(tmp_path, fps):
    path = vg.make_video(tmp_path / "cfr.mp4", seconds=2, fps=fps)
    assert path == tmp_path / "cfr.mp4"
    n = round(2 * fps)
    decoded = decode_rgb(path)
    assert len(decoded) == n
    for i, (frame, rgb) in enumerate(decoded):
        assert frame_seconds(frame) == i / Fraction(fps)
        assert rgb.shape == (120, 160, 3)
        assert frame.rotation == 0
        assert vg.read_frame_index(rgb) == i
        assert vg.find_marker_corner(rgb) == "top-left"
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == fps
        assert stream.duration * Fraction(stream.time_base) == n / Fraction(fps)
        assert len(container.streams.audio) == 0


def test_n_frames_and_size(tmp_path):
    path = vg.make_video(tmp_path / "small.mp4", n_frames=7, fps=10, size=(128, 96))
    decoded = decode_rgb(path)
    assert [vg.read_frame_index(rgb) for _, rgb in decoded] == list(range(7))
    assert decoded[0][1].shape == (96, 128, 3)
    assert [frame_seconds(f) for f, _ in decoded] == [Fraction(i, 10) for i in range(7)]


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_vfr_exact_timestamps(tmp_path, codec):
    times = [0, 0.04, 0.1, 0.5, 0.52, 1.0, 1.333, 2.0, 2.25]
    path = vg.make_video(tmp_path / "vfr.mp4", frame_times=times, codec=codec)
    decoded = decode_rgb(path)
    assert len(decoded) == len(times)
    for i, ((frame, rgb), t) in enumerate(zip(decoded, times)):
        assert frame_seconds(frame) == Fraction(str(t)), (i, frame.pts, frame.time_base)
        assert vg.read_frame_index(rgb) == i
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        # Last frame lasts as long as the gap before it: 2.25 + 0.25.
        assert stream.duration * Fraction(stream.time_base) == Fraction(5, 2)


def test_vfr_time_not_representable_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        vg.make_video(tmp_path / "bad.mp4", frame_times=[0, 1 / 7])


def test_index_readable_from_small_jpeg_thumbnails(tmp_path):
    path = vg.make_video(tmp_path / "thumbs.mp4", seconds=2, scene_cuts=[1.0])
    for i, (_, rgb) in enumerate(decode_rgb(path)):
        thumb = thumbnail_jpeg(rgb, 64, 85)
        assert max(thumb.size) == 64
        assert vg.read_frame_index(thumb) == i
        assert vg.find_marker_corner(thumb) == "top-left"
    # The full code range survives too (rendered pictures, every 7th index).
    for i in range(0, vg.MAX_FRAMES, 7):
        thumb = thumbnail_jpeg(vg.render_frame(i, scene=i % 6), 64, 85)
        assert vg.read_frame_index(thumb) == i


def test_marker_corner_tracks_rotation_and_code_needs_upright():
    upright = vg.render_frame(123, scene=1)
    expected = {0: "top-left", 1: "bottom-left", 2: "bottom-right", 3: "top-right"}
    for k, corner in expected.items():
        rotated = np.ascontiguousarray(np.rot90(upright, k=k))  # k>0: counter-clockwise
        assert vg.find_marker_corner(rotated) == corner
        assert vg.find_marker_corner(thumbnail_jpeg(rotated)) == corner
        if k:
            with pytest.raises(ValueError):
                vg.read_frame_index(rotated)
    with pytest.raises(ValueError):  # mirrored: same corner as a rotation, but no valid code
        vg.read_frame_index(np.ascontiguousarray(upright[:, ::-1]))
    with pytest.raises(ValueError):  # plain picture without code
        vg.read_frame_index(np.full((120, 160, 3), 128, np.uint8))


# --------------------------------------------------------------------------- rotation


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_matches_ffmpeg_autorotate(tmp_path, rotation):
    path = vg.make_video(tmp_path / f"rot{rotation}.mp4", n_frames=5, rotation=rotation)
    decoded = decode_rgb(path)
    assert len(decoded) == 5
    for i, (frame, stored) in enumerate(decoded):
        # PyAV reports the requested counter-clockwise angle, normalised to [-180, 180).
        assert frame.rotation % 360 == rotation % 360
        assert frame.rotation == (rotation + 180) % 360 - 180
        # Stored pixels are un-rotated; for +-90 the coded size is swapped.
        assert stored.shape == ((160, 120, 3) if rotation % 180 else (120, 160, 3))
        upright = vg.display_rotate(stored, frame.rotation)
        assert upright.shape == (120, 160, 3)
        assert vg.find_marker_corner(upright) == "top-left"
        assert vg.read_frame_index(upright) == i
        # The convention, spelled out: displayed == np.rot90(decoded, k=rotation // 90).
        assert np.array_equal(upright, np.rot90(stored, k=frame.rotation // 90))
        assert vg.read_frame_index(frame) == i  # a VideoFrame is made upright itself

    # Ground truth: the ffmpeg CLI applies the display matrix itself.
    shown = ffmpeg_first_frame(path, tmp_path / f"rot{rotation}.png")
    assert shown.shape == (120, 160, 3)
    assert vg.find_marker_corner(shown) == "top-left"
    assert vg.read_frame_index(shown) == 0
    # ...and agrees pixel-wise (up to codec noise) with our display_rotate().
    diff = np.abs(shown.astype(int) - vg.display_rotate(decoded[0][1], decoded[0][0].rotation).astype(int))
    assert diff.mean() < 3


def test_unrotated_file_matches_ffmpeg(tmp_path):
    path = vg.make_video(tmp_path / "plain.mp4", n_frames=2)
    shown = ffmpeg_first_frame(path, tmp_path / "plain.png")
    assert shown.shape == (120, 160, 3)
    assert vg.find_marker_corner(shown) == "top-left"
    assert vg.read_frame_index(shown) == 0


# --------------------------------------------------------------------------- audio


def test_audio_track(tmp_path):
    path = vg.make_video(tmp_path / "av.mp4", seconds=1.2, audio=True)
    with av.open(str(path)) as container:
        assert len(container.streams.video) == 1
        (audio,) = container.streams.audio
        assert audio.codec_context.name == "aac"
        assert audio.channels == 1
        assert audio.duration * Fraction(audio.time_base) == pytest.approx(1.2, abs=0.03)
        samples = np.concatenate([f.to_ndarray().ravel() for f in container.decode(audio=0)])
        assert np.abs(samples).max() > 0.1  # not silence
    assert [vg.read_frame_index(rgb) for _, rgb in decode_rgb(path)] == list(range(30))


@pytest.mark.parametrize("name", ["only.m4a", "only.mp4"])
def test_audio_only(tmp_path, name):
    path = vg.make_audio_only(tmp_path / name)
    with av.open(str(path)) as container:
        assert len(container.streams.video) == 0
        assert len(container.streams.audio) == 1
        assert sum(1 for _ in container.decode(audio=0)) > 10


# --------------------------------------------------------------------------- faststart / bad inputs


def test_faststart_layout_and_truncation(tmp_path):
    fast = vg.make_video(tmp_path / "fast.mp4", seconds=4, faststart=True)
    slow = vg.make_video(tmp_path / "slow.mp4", seconds=4, faststart=False)
    fast_bytes, slow_bytes = fast.read_bytes(), slow.read_bytes()
    assert fast_bytes.index(b"moov") < fast_bytes.index(b"mdat")
    assert slow_bytes.index(b"mdat") < slow_bytes.index(b"moov")

    cut_fast = vg.make_truncated_copy(fast, tmp_path / "cut_fast.mp4", keep_fraction=0.5)
    assert cut_fast.stat().st_size == len(fast_bytes) // 2
    indices = decodable_indices(cut_fast)
    assert 0 < len(indices) < 100
    assert indices == list(range(len(indices)))

    cut_slow = vg.make_truncated_copy(slow, tmp_path / "cut_slow.mp4", keep_fraction=0.5)
    with pytest.raises(av.error.FFmpegError):
        av.open(str(cut_slow)).close()


def test_bad_input_helpers(tmp_path):
    text = vg.make_text_file_with_video_extension(tmp_path / "notes.mp4")
    assert text.stat().st_size > 0
    with pytest.raises(av.error.FFmpegError):
        av.open(str(text)).close()

    empty = vg.make_zero_length(tmp_path / "empty.mp4")
    assert empty.exists() and empty.stat().st_size == 0
    with pytest.raises(av.error.FFmpegError):
        av.open(str(empty)).close()

    link = vg.make_dangling_symlink(tmp_path / "gone.mp4")
    assert link.is_symlink() and not link.exists()
    with pytest.raises(FileNotFoundError):
        av.open(str(link)).close()


def test_deterministic(tmp_path):
    kwargs = dict(seconds=1, scene_cuts=[0.5], audio=True, rotation=90)
    a = vg.make_video(tmp_path / "a.mp4", **kwargs)
    b = vg.make_video(tmp_path / "b.mp4", **kwargs)
    assert a.read_bytes() == b.read_bytes()


# --------------------------------------------------------------------------- scene detection


def detect_cuts(path: Path) -> tuple[list[float], list[float]]:
    """(cut times found by ContentDetector, all frame times) of a video."""
    from scenedetect.common import FrameTimecode, Timecode
    from scenedetect.detector import FlashFilter
    from scenedetect.detectors import ContentDetector

    detector = ContentDetector(threshold=27.0, min_scene_len=0.5, filter_mode=FlashFilter.Mode.SUPPRESS)
    cuts: list[float] = []
    times: list[float] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        for frame in container.decode(stream):
            timecode = FrameTimecode(Timecode(frame.pts, Fraction(frame.time_base)), fps=rate)
            found = detector.process_frame(timecode, frame.to_ndarray(format="bgr24"))
            cuts.extend(tc.seconds for tc in found)
            times.append(float(frame_seconds(frame)))
    return cuts, times


# Irregular VFR timeline: gaps of 20/40/60 ms, all exact in milliseconds.
_VFR_TIMES = [round(0.04 * i + (0.02 if i % 3 == 0 else 0), 2) for i in range(75)]


@pytest.mark.parametrize(
    "kwargs, cuts",
    [
        (dict(seconds=5, fps=25), [1.0, 1.8, 2.6, 3.4, 4.2]),  # 6 scenes: every palette change
        (dict(seconds=3, fps=30, rotation=90), [0.7, 2.0]),
        (dict(frame_times=_VFR_TIMES), [1.0, 2.1]),
        (dict(seconds=2, fps=25), []),
    ],
    ids=["cfr-6-scenes", "cfr-rotated", "vfr", "no-cuts"],
)
def test_scenedetect_finds_exactly_the_requested_cuts(tmp_path, kwargs, cuts):
    path = vg.make_video(tmp_path / "scenes.mp4", scene_cuts=cuts, **kwargs)
    found, times = detect_cuts(path)
    assert len(found) == len(cuts), (found, cuts)
    max_gap = max(b - a for a, b in zip(times, times[1:]))
    for got, want in zip(found, cuts):
        # Within one frame of the requested time...
        assert abs(got - want) <= max_gap + 1e-9, (found, cuts)
        # ...and exactly at the first frame of the new scene.
        assert got == min(t for t in times if t >= want - 1e-6), (found, cuts)
