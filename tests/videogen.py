"""Generate tiny test videos whose content is known exactly.

Every frame of a video made by :func:`make_video` carries

* its **frame index**, drawn as a small grid of large black/white blocks
  (Gray-coded binary, with guard blocks and parity bits) in the middle of the
  picture.  :func:`read_frame_index` reads it back from a decoded frame, a
  resized copy, or a JPEG thumbnail as small as ~64 px on the long side;
* an **orientation marker**: a saturated red square in the top-left corner of
  the *upright* (displayed) picture.  :func:`find_marker_corner` says which
  corner it is in, so a test can check that rotation was applied correctly;
* a **scene colour**: the flat background colour changes only at the requested
  ``scene_cuts``; consecutive scenes differ strongly in hue *and* brightness so
  PySceneDetect's ``ContentDetector`` (threshold 27) finds exactly those cuts.

Timestamps are exact: constant-frame-rate files put frame ``i`` at ``i / fps``
seconds and variable-frame-rate files (``frame_times=[...]``) put frame ``i``
at ``frame_times[i]``, both with an explicit fine time base.

Example::

    from fractions import Fraction
    import av
    from videogen import make_video, read_frame_index, find_marker_corner

    path = make_video(tmp_path / "clip.mp4", seconds=2, fps=25,
                      scene_cuts=[1.0], audio=True)
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            assert frame.pts * frame.time_base == Fraction(i, 25)  # exact
            rgb = frame.to_ndarray(format="rgb24")
            assert read_frame_index(rgb) == i
            assert find_marker_corner(rgb) == "top-left"

Rotation convention (verified in ``test_videogen.py`` against the ffmpeg CLI,
which auto-rotates when decoding):

    ``make_video(..., rotation=R)`` calls ``stream.set_display_rotation(R)``.
    Decoded frames report ``frame.rotation == R`` (normalised to
    ``[-180, 180)``, so 180 reads back as -180, 270 as -90).  The *displayed*
    (upright) picture is the decoded array rotated **counter-clockwise** by
    ``frame.rotation`` degrees, i.e.::

        upright = np.rot90(decoded_rgb, k=frame.rotation // 90)

    (:func:`display_rotate` does exactly this).  Consequently the stored
    pixels are ``np.rot90(upright, k=-R // 90)``.  The same number is what
    ffprobe prints ("Display Matrix: rotation of R degrees") and what
    ``ffmpeg -display_rotation R`` writes.  E.g. a typical portrait phone clip
    (``frame.rotation == -90``, legacy ``rotate=90`` tag) must be turned 90
    degrees *clockwise* for display: ``np.rot90(decoded, k=-1)``.

Only the upright picture carries a readable index code: code and marker are
laid out in upright coordinates, so callers must undo the rotation (e.g. with
:func:`display_rotate`) before calling :func:`read_frame_index`.  This keeps
the code simple and makes a missing rotation fail loudly (``ValueError``)
instead of silently reading a wrong index.

All generators are deterministic (fixed colours, single-threaded x264, no
wall-clock metadata), and each returns the path it wrote as a ``pathlib.Path``.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import av
import numpy as np

__all__ = [
    "CODE_BITS",
    "MAX_FRAMES",
    "SCENE_COLOURS",
    "MARKER_COLOUR",
    "VFR_TIME_BASE",
    "display_rotate",
    "expected_frame_times",
    "find_marker_corner",
    "make_audio_only",
    "make_dangling_symlink",
    "make_text_file_with_video_extension",
    "make_truncated_copy",
    "make_undecodable_metadata",
    "make_video",
    "make_zero_length",
    "read_frame_index",
    "render_frame",
    "scene_colour",
    "scene_of_time",
]

PathLike = str | os.PathLike

# ---------------------------------------------------------------------------
# Picture layout (all geometry is relative, so it survives any resize)
# ---------------------------------------------------------------------------

#: Number of data bits in the index code -> indices 0 .. 4095.
CODE_BITS = 12
#: Maximum number of frames :func:`make_video` can number uniquely.
MAX_FRAMES = 1 << CODE_BITS

#: Saturated red of the orientation marker (RGB).
MARKER_COLOUR = (255, 0, 0)

#: Background colour per scene (RGB), cycled.  Dark and bright entries
#: alternate and neighbouring hues are far apart (blue/yellow/green/cyan/
#: violet/lime), so every change between consecutive scenes, including the
#: wrap-around, scores >= 55 in ContentDetector at 160x120 (threshold is 27).
#: No entry is red/orange/magenta, so the marker stays unambiguous.
SCENE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (20, 40, 150),  # dark blue
    (235, 225, 60),  # bright yellow
    (15, 100, 30),  # dark green
    (120, 235, 235),  # light cyan
    (70, 20, 120),  # dark violet
    (190, 245, 110),  # light lime
)

#: Time base used for variable-frame-rate files (libx264); every time that is
#: a whole number of milliseconds, or of 1/24, 1/25, 1/30, 1/50, 1/60 s, is
#: exact in it.  (mpeg4 cannot use a denominator above 65535, so it uses
#: 1/30000 instead.)
VFR_TIME_BASE = Fraction(1, 90000)
_MPEG4_VFR_TIME_BASE = Fraction(1, 30000)

# Marker: square of side MARKER_FRAC * min(W, H) at the upright top-left.
_MARKER_FRAC = 0.25
# Corner patch examined by find_marker_corner (inside the marker square).
_CORNER_PROBE_FRAC = 0.12

# Index code: a grid of _ROWS x _COLS square cells of side
# _CELL_FRAC * min(W, H), centred in the picture.  The four corner cells of
# the grid are guards (bottom-right black, the other three white: unlike a
# 2+2 pattern this is not symmetric under a 180-degree turn or a mirror, so a
# wrongly oriented picture fails instead of decoding to another number); the
# 14 inner cells hold CODE_BITS Gray-coded data bits
# (MSB first, row by row) followed by two odd-parity bits (over the data bits
# at even / odd positions).  At 160x120 the grid covers ~14% of the frame and
# consecutive frames differ in only 1-2 cells thanks to the Gray code, so the
# changing code never looks like a cut to a content-based shot detector.
_ROWS, _COLS = 2, 9
_CELL_FRAC = 0.10
_GUARDS = {(0, 0): 1, (0, _COLS - 1): 1, (_ROWS - 1, 0): 1, (_ROWS - 1, _COLS - 1): 0}
_INNER = [(r, c) for r in range(_ROWS) for c in range(_COLS) if (r, c) not in _GUARDS]
assert len(_INNER) == CODE_BITS + 2


def _gray(n: int) -> int:
    return n ^ (n >> 1)


def _ungray(g: int) -> int:
    n = 0
    while g:
        n ^= g
        g >>= 1
    return n


def _code_bits(index: int) -> list[int]:
    """Cell values (1 = white) for the inner cells, in _INNER order."""
    g = _gray(index)
    data = [(g >> (CODE_BITS - 1 - k)) & 1 for k in range(CODE_BITS)]
    p_even = 1 ^ (sum(data[0::2]) & 1)
    p_odd = 1 ^ (sum(data[1::2]) & 1)
    return data + [p_even, p_odd]


def _cell_box(row: int, col: int, width: int, height: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a code cell in (fractional) pixel coordinates."""
    cell = _CELL_FRAC * min(width, height)
    gx0 = (width - _COLS * cell) / 2
    gy0 = (height - _ROWS * cell) / 2
    x0, y0 = gx0 + col * cell, gy0 + row * cell
    return x0, y0, x0 + cell, y0 + cell


def scene_colour(scene: int) -> tuple[int, int, int]:
    """Background colour (RGB) of scene number ``scene`` (0-based)."""
    return SCENE_COLOURS[scene % len(SCENE_COLOURS)]


def render_frame(index: int, *, scene: int = 0, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """Return the **upright** RGB picture (H, W, 3) uint8 of frame ``index``.

    ``size`` is ``(width, height)``.  This is exactly what a player shows; the
    pixels stored in a rotated file are a rotation of it (see module doc).
    """
    width, height = size
    if not 0 <= index < MAX_FRAMES:
        raise ValueError(f"frame index {index} outside 0..{MAX_FRAMES - 1}")
    img = np.empty((height, width, 3), np.uint8)
    img[:] = scene_colour(scene)
    m = round(_MARKER_FRAC * min(width, height))
    img[:m, :m] = MARKER_COLOUR
    values = dict(_GUARDS)
    values.update(zip(_INNER, _code_bits(index)))
    for (r, c), v in values.items():
        x0, y0, x1, y1 = (round(v_) for v_ in _cell_box(r, c, width, height))
        img[y0:y1, x0:x1] = 255 if v else 0
    return img


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def _as_rgb_array(image) -> np.ndarray:
    """Accept a numpy array (H,W,3 RGB or H,W grey), a PIL image or an av.VideoFrame.

    An ``av.VideoFrame`` is turned upright using its ``rotation`` first.
    """
    if isinstance(image, av.VideoFrame):
        image = display_rotate(image.to_ndarray(format="rgb24"), image.rotation)
    elif not isinstance(image, np.ndarray):  # PIL.Image (or anything PIL-like)
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {arr.shape}")
    return arr[:, :, :3]


def read_frame_index(image) -> int:
    """Read the frame index drawn by :func:`render_frame` / :func:`make_video`.

    ``image`` is an **upright** RGB numpy array (H, W, 3) uint8 (a grey (H, W)
    array also works), a PIL image, or an ``av.VideoFrame`` (which is made
    upright with :func:`display_rotate` and its ``rotation``).  Any size works as long as the aspect ratio was
    preserved (no cropping/padding): tested down to 64x48 JPEG thumbnails at
    quality 85.

    Raises ``ValueError`` if no valid code is found (wrong orientation, not a
    generated frame, too small, or a parity/guard check fails).
    """
    arr = _as_rgb_array(image).astype(np.float32)
    luma = arr[:, :, 0] * 0.299 + arr[:, :, 1] * 0.587 + arr[:, :, 2] * 0.114
    h, w = luma.shape
    if min(h, w) * _CELL_FRAC < 2.5:
        raise ValueError(f"image {w}x{h} is too small to read the frame index")

    def sample(r: int, c: int) -> float:
        # Mean over the central half of the cell, at least one pixel.
        x0, y0, x1, y1 = _cell_box(r, c, w, h)
        cx, cy, q = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4
        xa, xb = int(math.floor(cx - q + 0.5)), int(math.floor(cx + q + 0.5))
        ya, yb = int(math.floor(cy - q + 0.5)), int(math.floor(cy + q + 0.5))
        xb, yb = max(xb, xa + 1), max(yb, ya + 1)
        return float(luma[max(ya, 0) : min(yb, h), max(xa, 0) : min(xb, w)].mean())

    guards = {rc: sample(*rc) for rc in _GUARDS}
    white = np.mean([v for rc, v in guards.items() if _GUARDS[rc] == 1])
    black = np.mean([v for rc, v in guards.items() if _GUARDS[rc] == 0])
    if white - black < 80:
        raise ValueError(
            f"no frame index code found (guard contrast {white - black:.0f} too low; "
            "is the image upright?)"
        )
    threshold = (white + black) / 2
    for rc, v in guards.items():
        if (v > threshold) != bool(_GUARDS[rc]):
            raise ValueError(f"frame index guard cell {rc} has the wrong value; is the image upright?")
    bits = [int(sample(*rc) > threshold) for rc in _INNER]
    index = _ungray(int("".join(map(str, bits[:CODE_BITS])), 2))
    if bits != _code_bits(index):
        raise ValueError("frame index code failed its parity check")
    return index


_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def find_marker_corner(image) -> str:
    """Return the corner holding the red orientation marker.

    One of ``"top-left"`` (picture is upright), ``"top-right"`` (picture is
    rotated 90 degrees clockwise, i.e. ``np.rot90(upright, k=-1)``),
    ``"bottom-right"`` (rotated 180) or ``"bottom-left"`` (rotated 90
    counter-clockwise, ``np.rot90(upright, k=1)``).  A mirrored picture also
    yields top-right/bottom-left; use :func:`read_frame_index` (which fails on
    mirrored pictures) to tell them apart.  Accepts the same inputs as
    :func:`read_frame_index`; raises ``ValueError`` if no corner is red.
    """
    arr = _as_rgb_array(image).astype(np.float32)
    h, w = arr.shape[:2]
    p = max(1, round(_CORNER_PROBE_FRAC * min(w, h)))
    patches = {
        "top-left": arr[:p, :p],
        "top-right": arr[:p, w - p :],
        "bottom-left": arr[h - p :, :p],
        "bottom-right": arr[h - p :, w - p :],
    }
    redness = {
        name: float((patch[..., 0] - np.maximum(patch[..., 1], patch[..., 2])).mean())
        for name, patch in patches.items()
    }
    best = max(_CORNERS, key=redness.__getitem__)
    if redness[best] < 100:
        raise ValueError(f"no orientation marker found (redness per corner: {redness})")
    return best


def display_rotate(image: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded (stored-orientation) array into the displayed picture.

    ``rotation`` is PyAV's ``frame.rotation`` (counter-clockwise degrees, a
    multiple of 90).  Verified against ffmpeg's auto-rotation::

        upright = np.rot90(decoded, k=rotation // 90)
    """
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90, got {rotation}")
    return np.rot90(image, k=(rotation // 90) % 4)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _normalise_rotation(rotation: int | None) -> int:
    if rotation is None:
        return 0
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    return (int(rotation) + 180) % 360 - 180  # [-180, 180): 180 -> -180, 270 -> -90


def expected_frame_times(
    *,
    seconds: float | None = None,
    n_frames: int | None = None,
    fps: int | Fraction = 25,
    frame_times: Sequence[float] | None = None,
) -> list[Fraction]:
    """Exact presentation times (seconds, as Fractions) :func:`make_video` uses."""
    if frame_times is not None:
        if seconds is not None or n_frames is not None:
            raise ValueError("give either frame_times or seconds/n_frames, not both")
        times = [Fraction(t) if isinstance(t, (int, Fraction)) else Fraction(str(t)) for t in frame_times]
        if not times:
            raise ValueError("frame_times is empty")
        if any(b <= a for a, b in zip(times, times[1:])) or times[0] < 0:
            raise ValueError("frame_times must be non-negative and strictly increasing")
        return times
    fps = Fraction(fps)
    if n_frames is None:
        if seconds is None:
            raise ValueError("give seconds, n_frames or frame_times")
        n_frames = round(Fraction(str(seconds)) * fps)
    elif seconds is not None and n_frames != round(Fraction(str(seconds)) * fps):
        raise ValueError("seconds and n_frames disagree")
    if n_frames < 1:
        raise ValueError("need at least one frame")
    return [i / fps for i in range(n_frames)]


def scene_of_time(t: float | Fraction, scene_cuts: Iterable[float]) -> int:
    """Scene number of a frame shown at ``t`` seconds: the number of cuts <= t.

    A frame whose time is within 1 microsecond of a cut belongs to the new
    scene, so float cut times such as ``0.2`` hit frame ``5`` at 25 fps.
    """
    return sum(1 for c in scene_cuts if t >= Fraction(str(c)) - Fraction(1, 1_000_000))


def _container_format(path: Path) -> str | None:
    return {".mp4": "mp4", ".m4v": "mp4", ".m4a": "mp4", ".mov": "mov"}.get(path.suffix.lower())


def _open_output(path: Path, faststart: bool):
    fmt = _container_format(path)
    options = {"movflags": "faststart"} if (faststart and fmt in ("mp4", "mov")) else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    # No metadata: fully deterministic output (no creation_time).
    return av.open(str(path), mode="w", format=fmt, options=options)


_AUDIO_RATE = 48000
_AUDIO_CHUNK = 1024
_AUDIO_HZ = 440.0


class _SineWriter:
    """Writes a mono AAC sine track (440 Hz unless told), in chunks, up to a given time."""

    def __init__(self, container, duration: Fraction, hz: float = _AUDIO_HZ):
        self.stream = container.add_stream("aac", rate=_AUDIO_RATE)
        self.stream.layout = "mono"
        self.stream.codec_context.time_base = Fraction(1, _AUDIO_RATE)
        self.container = container
        self.total = int(math.ceil(duration * _AUDIO_RATE))
        self.written = 0
        self.hz = hz

    def write_until(self, t: Fraction | None) -> None:
        limit = self.total if t is None else min(self.total, int(math.ceil(t * _AUDIO_RATE)))
        while self.written < limit:
            n = min(_AUDIO_CHUNK, self.total - self.written)
            s = np.arange(self.written, self.written + n, dtype=np.float64)
            samples = (0.3 * np.sin(2 * np.pi * self.hz * s / _AUDIO_RATE)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
            frame.sample_rate = _AUDIO_RATE
            frame.pts = self.written
            frame.time_base = Fraction(1, _AUDIO_RATE)
            self.container.mux(self.stream.encode(frame))
            self.written += n

    def finish(self) -> None:
        self.write_until(None)
        self.container.mux(self.stream.encode(None))


def make_video(
    path: PathLike,
    *,
    seconds: float | None = None,
    n_frames: int | None = None,
    fps: int | Fraction = 25,
    size: tuple[int, int] = (160, 120),
    scene_cuts: Sequence[float] = (),
    rotation: int | None = None,
    frame_times: Sequence[float] | None = None,
    audio: bool = False,
    faststart: bool = True,
    codec: str = "libx264",
    audio_hz: float = 440.0,
    first_scene: int = 0,
) -> Path:
    """Write a small video with known content and timing; return its path.

    Parameters
    ----------
    path:
        Output file; the container follows the extension (.mp4/.mov/.m4v use
        the mp4/mov muxer, anything else is left to FFmpeg to guess, e.g. .mkv).
    seconds, n_frames:
        Length of a constant-frame-rate (CFR) video; give one (or both,
        consistent).  Frame ``i`` has ``pts * time_base == i / fps`` exactly
        (encoder time base ``1/fps``; the mp4 muxer rescales it to a timescale
        such as 1/12800 for 25 fps, which is still exact).
    fps:
        Frame rate (int or Fraction such as ``Fraction(30000, 1001)``).  For a
        VFR file it is only the nominal rate passed to the encoder.
    size:
        ``(width, height)`` of the **displayed** (upright) picture; both even.
        With ``rotation=±90`` the stored (coded) frames are ``height x width``.
    scene_cuts:
        Times (seconds) where the background colour changes (see
        :data:`SCENE_COLOURS` and :func:`scene_of_time`).  The picture is
        static within a scene except for the small index code.  For detectors
        with a minimum scene length keep cuts that far apart (and from 0).
    rotation:
        Display rotation in degrees (multiple of 90, counter-clockwise, PyAV
        convention), stored as a display matrix via
        ``stream.set_display_rotation``.  Stored pixels are
        ``np.rot90(upright, k=-rotation // 90)`` so that a player applying the
        matrix shows the upright picture with the marker top-left.
    frame_times:
        Explicit presentation times (seconds, strictly increasing) for a
        variable-frame-rate (VFR) file; replaces ``seconds``/``n_frames``.
        Times are written in :data:`VFR_TIME_BASE` (1/90000; 1/30000 for
        mpeg4) and must be exact multiples of it (``ValueError`` otherwise).
    audio:
        Add a mono 48 kHz AAC 440 Hz sine track of the same duration (for VFR:
        last time + last gap).
    faststart:
        mp4/mov only: put the moov atom at the front (``movflags=faststart``),
        so a truncated copy still opens.  When False, moov is at the end and a
        truncated copy cannot be opened.
    audio_hz:
        Frequency of the sine track (``audio=True``).
    first_scene:
        Scene number of the first scene (see :data:`SCENE_COLOURS`): ``1`` starts
        bright yellow instead of dark blue.
    codec:
        ``"libx264"`` (CRF 18, keyframe every ``round(fps)`` frames, single
        thread; B-frames for CFR, none for VFR) or ``"mpeg4"`` (no B-frames);
        always yuv420p.
    """
    path = Path(path)
    width, height = size
    if width % 2 or height % 2 or width < 32 or height < 32:
        raise ValueError(f"size must be even and >= 32x32 (yuv420p), got {size}")
    rot = _normalise_rotation(rotation)
    fps = Fraction(fps)
    times = expected_frame_times(seconds=seconds, n_frames=n_frames, fps=fps, frame_times=frame_times)
    if len(times) > MAX_FRAMES:
        raise ValueError(f"at most {MAX_FRAMES} frames can be numbered, asked for {len(times)}")

    vfr = frame_times is not None
    if vfr:
        time_base = _MPEG4_VFR_TIME_BASE if codec == "mpeg4" else VFR_TIME_BASE
        last_gap = times[-1] - times[-2] if len(times) > 1 else 1 / fps
        duration = times[-1] + last_gap
    else:
        time_base = 1 / fps
        last_gap = 1 / fps
        duration = len(times) / fps
    pts_list = []
    for t in times:
        pts = t / time_base
        if pts.denominator != 1:
            raise ValueError(f"frame time {float(t)} is not a multiple of the time base {time_base}")
        pts_list.append(int(pts))
    cuts = sorted(float(c) for c in scene_cuts)
    if any(not 0 < c < float(duration) for c in cuts):
        raise ValueError(f"scene cuts must lie inside (0, {float(duration)}) s: {cuts}")

    k_store = (-rot // 90) % 4
    coded_w, coded_h = (height, width) if k_store % 2 else (width, height)

    container = _open_output(path, faststart)
    try:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = coded_w, coded_h
        stream.pix_fmt = "yuv420p"
        cc = stream.codec_context
        cc.time_base = time_base
        stream.time_base = time_base
        cc.gop_size = max(1, round(fps))
        cc.thread_count = 1
        if codec == "libx264":
            # VFR: no B-frames, so DTS == PTS and the mp4 sample durations (hence
            # stream.duration) follow the real gaps.  With B-frames the muxer
            # derives DTS by shifting the irregular PTS sequence, which squeezes
            # stream.duration well below the last frame time.
            cc.options = {"crf": "18", "preset": "medium", **({"bf": "0"} if vfr else {})}
        else:
            cc.bit_rate = 400_000
        if rot:
            stream.set_display_rotation(rot)  # before the first frame is encoded

        sine = _SineWriter(container, duration, audio_hz) if audio else None

        # Presentation time -> time until the next frame (the last frame lasts
        # as long as the gap before it), used for the packet/sample durations.
        gaps = {t: b - t for t, b in zip(times, times[1:])}
        gaps[times[-1]] = last_gap

        for index, (t, pts) in enumerate(zip(times, pts_list)):
            upright = render_frame(index, scene=first_scene + scene_of_time(t, cuts), size=(width, height))
            stored = np.ascontiguousarray(np.rot90(upright, k=k_store))
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24").reformat(format="yuv420p")
            frame.pts = pts
            frame.time_base = time_base
            gap = gaps[t]
            frame.duration = int(gap / time_base)
            if sine is not None:
                sine.write_until(t + gap)
            _mux_video(container, stream.encode(frame), gaps)
        _mux_video(container, stream.encode(None), gaps)
        if sine is not None:
            sine.finish()
    finally:
        container.close()
    return path


def _mux_video(container, packets, gaps: dict[Fraction, Fraction]) -> None:
    """Mux encoder output, giving each packet the true duration of its frame.

    Encoders do not reliably carry ``frame.duration`` over to packets (libx264
    falls back to 1/fps), and the mp4 muxer uses the last packet's duration
    as the last sample's duration, i.e. for the stream duration.
    """
    for packet in packets:
        if packet.pts is not None and packet.time_base is not None:
            gap = gaps.get(packet.pts * Fraction(packet.time_base))
            if gap is not None:
                packet.duration = int(gap / Fraction(packet.time_base))
        container.mux(packet)


# ---------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------


def make_truncated_copy(src: PathLike, dst: PathLike, keep_fraction: float = 0.5) -> Path:
    """Copy the first ``keep_fraction`` of the bytes of ``src`` to ``dst``.

    For a faststart mp4 the copy still opens and decodes the first frames; for
    a non-faststart mp4 (moov at the end) opening it fails with ``av.error``.

    Generated videos are static and tiny, so the moov index is a large share
    of the file (~1.4 KB of ~5 KB for 2 s at 160x120): use ``seconds >= 4``
    (or a larger ``keep_fraction``) if the copy must still contain frames.
    Decoding the copy ends with ``av.error.InvalidDataError`` raised from
    ``avcodec_send_packet()`` on the cut-off packet (not a clean EOF); frames
    still buffered in the decoder (B-frame delay) are only recovered by
    decoding packet by packet, catching the error and then flushing with
    ``stream.decode(None)``.
    """
    if not 0 <= keep_fraction < 1:
        raise ValueError("keep_fraction must be in [0, 1)")
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: int(len(data) * keep_fraction)])
    return dst


def make_undecodable_metadata(src: PathLike, dst: PathLike) -> Path:
    """Copy an mp4 with one byte of its ``ftyp`` box's first compatible brand made invalid UTF-8.

    FFmpeg opens the copy happily (the brand is only a label), but PyAV decodes the container's
    metadata as UTF-8 when it opens the file and raises ``UnicodeDecodeError``: a real file that
    makes the decoder library fail with an exception type that is not one of its own errors.
    """
    data = bytearray(Path(src).read_bytes())
    if data[4:8] != b"ftyp":
        raise ValueError(f"{src}: not an mp4 starting with an ftyp box")
    data[16] = 0xC2  # a UTF-8 lead byte followed by an ASCII byte: invalid
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(bytes(data))
    return dst


def make_text_file_with_video_extension(path: PathLike) -> Path:
    """Write a plain-text file (e.g. ``notes.mp4``) that is not a video."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("This is not a video, despite its extension.\n" * 20, encoding="utf-8")
    return path


def make_zero_length(path: PathLike) -> Path:
    """Create an empty (0-byte) file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def make_dangling_symlink(path: PathLike) -> Path:
    """Create a symlink at ``path`` pointing to a non-existent sibling file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path.name + ".missing-target"
    if (path.parent / target).exists():
        raise FileExistsError(path.parent / target)
    if path.is_symlink() or path.exists():
        path.unlink()
    os.symlink(target, path)  # relative: stays dangling if the folder moves
    return path


def make_audio_only(path: PathLike, *, seconds: float = 1.0, faststart: bool = True) -> Path:
    """Write an .mp4/.m4a/.mov with a single mono AAC sine stream and no video."""
    path = Path(path)
    container = _open_output(path, faststart)
    try:
        sine = _SineWriter(container, Fraction(str(seconds)))
        sine.finish()
    finally:
        container.close()
    return path



def make_text_video(
    path: PathLike, captions: Sequence[str], *, seconds_each: float = 1.0, fps: int = 10, size: tuple[int, int] = (384, 216)
) -> Path:
    """A video showing each of `captions` in large black capitals on white for `seconds_each` seconds, in
    order (an empty caption is a blank screen): on-screen text at known times for OCR tests."""
    from PIL import Image, ImageDraw, ImageFont

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=size[1] // 6)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for caption in captions:
            image = Image.new("RGB", size, "white")
            if caption:
                draw = ImageDraw.Draw(image)
                left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
                draw.text(((size[0] - (right - left)) / 2, (size[1] - (bottom - top)) / 2), caption, fill="black", font=font)
            frame = av.VideoFrame.from_image(image)
            for _ in range(round(seconds_each * fps)):
                container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def make_static_scene_video(
    path: PathLike, *, seconds: float = 8.0, fps: int = 10, size: tuple[int, int] = (384, 216),
    signs: Sequence[tuple[float, str]] = ((0.0, "MAIN STREET"),), walker: bool = True, noise: float = 3.0, seed: int = 0,
) -> Path:  # fmt: skip
    """A fixed camera on a street: the same scene every frame, with sensor noise (Gaussian, `noise`
    grey levels) and, with `walker`, a small dark figure crossing it once. The sign on the building
    reads the text of the last `signs` entry (start second, text) whose start is <= t: a static
    shot whose only text changes at known times (near-duplicate frames for reuse tests)."""
    from PIL import Image, ImageDraw, ImageFont

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    font = ImageFont.load_default(size=height // 9)
    rng = np.random.default_rng(seed)

    def scene(text: str) -> np.ndarray:
        image = Image.new("RGB", size, (150, 190, 230))  # sky
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, height * 2 // 3, width, height), fill=(90, 90, 95))  # road
        draw.rectangle((width // 8, height // 6, width * 7 // 8, height * 2 // 3), fill=(170, 120, 90))  # building
        draw.rectangle((width // 5, height // 4, width * 4 // 5, height * 5 // 12), fill="white")  # the sign
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        draw.text(((width - (right - left)) / 2, height // 3 - (bottom - top) / 2 - top), text, fill="black", font=font)
        return np.asarray(image, np.float32)

    scenes = {text: scene(text) for _, text in signs}
    frames = round(seconds * fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            t = index / fps
            text = [text for start, text in signs if start <= t][-1]
            picture = scenes[text].copy()
            if walker:  # a figure 8 x 20 px walking along the road, across the frame once
                x = int(index / max(frames - 1, 1) * (width - 8))
                picture[height * 3 // 4 : height * 3 // 4 + 20, x : x + 8] = (40, 30, 30)
            if noise:
                picture += rng.normal(0, noise, picture.shape).astype(np.float32)
            frame = av.VideoFrame.from_ndarray(np.clip(picture, 0, 255).astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
