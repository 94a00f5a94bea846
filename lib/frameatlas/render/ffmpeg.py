"""The ffmpeg layer of the render stage: every subprocess it starts is built, run and reaped here.

`run_ffmpeg` runs the bundled ffmpeg (imageio-ffmpeg: libx264 and the AAC encoder) to
completion under a time limit (`render.timeout_seconds`): past it, ffmpeg is killed and a
`RenderError` names the file it was making and the key to raise. It is always waited for (no
zombies), and its messages go to an unnamed temporary file (no pipe to fill up). It stays in
its caller's process group: when a runner is killed, its stage kernel ends that whole group
(`pipeline.notebook.exit_with_parent`), so no ffmpeg keeps writing into the run.

The command builders (`cut_command`, `stills_command`, `concat_command`) only make argument
lists; callers pass the temporary paths `files.atomic_path` gives them as outputs.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from ..config import RenderConfig
from .errors import RenderError

__all__ = [
    "AUDIO_CHANNELS",
    "AUDIO_RATE",
    "SAMPLE_BYTES",
    "concat_command",
    "concat_listing",
    "cut_command",
    "ffmpeg_exe",
    "fps_text",
    "run_ffmpeg",
    "stills_command",
]

AUDIO_RATE = 48000
AUDIO_CHANNELS = 2
SAMPLE_BYTES = 2 * AUDIO_CHANNELS  # s16le stereo
STDERR_TAIL = 1500
SEEK_MARGIN = 0.0005  # seconds; shorter than any frame (1/240 s = 4 ms), longer than -ss's rounding


def ffmpeg_exe() -> str:
    """The ffmpeg binary bundled with imageio-ffmpeg (has libx264 and the AAC encoder)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def fps_text(fps: float) -> str:
    return repr(float(fps)).rstrip("0").rstrip(".") if float(fps) != int(fps) else str(int(fps))


def encode_options(options: RenderConfig) -> list[str]:
    """The video encoding every piece shares, so pieces can be joined without re-encoding."""
    return ["-c:v", "libx264", "-preset", options.preset, "-crf", str(options.crf), "-pix_fmt", "yuv420p",
            "-r", fps_text(options.fps), "-video_track_timescale", "90000"]  # fmt: skip


def scale_filter(options: RenderConfig) -> str:
    w, h = options.width, options.height
    return (f"scale={w}:{h}:force_original_aspect_ratio=decrease,pad={w}:{h}:(ow-iw)/2:(oh-ih)/2:color=black,"
            "setsar=1,format=yuv420p")  # fmt: skip


def cut_command(
    source: str, start: float, frames: int, options: RenderConfig, video_out: Path, *, audio_out: Path | None = None,
    audio_samples: int = 0,
) -> list[str]:  # fmt: skip
    """Arguments cutting exactly `frames` frames from `start` of `source` at the output size and
    rate into `video_out`, and (with `audio_out`) `audio_samples` samples of PCM audio."""
    # Seek a hair before the start so the frame on screen at the start (pts <= start) is the first kept.
    args = ["-ss", f"{max(0.0, start - SEEK_MARGIN):.6f}", "-i", source,
            # pad with the last frame if the source ends early, so the count is always exact
            "-map", "0:v:0", "-vf", f"fps={fps_text(options.fps)},{scale_filter(options)},tpad=stop=-1:stop_mode=clone",
            "-frames:v", str(frames), "-an", "-sn", "-dn", *encode_options(options), "-f", "mp4", str(video_out)]  # fmt: skip
    if audio_out is not None:
        args += ["-map", "0:a:0", "-vn", "-sn", "-dn",
                 "-af", f"aresample={AUDIO_RATE},aformat=sample_fmts=s16:channel_layouts=stereo,apad,"
                        f"atrim=end_sample={audio_samples}",
                 "-c:a", "pcm_s16le", "-f", "wav", str(audio_out)]  # fmt: skip
    return args


def stills_command(frames: int, options: RenderConfig, video_out: Path) -> list[str]:
    """Arguments encoding `frames` raw RGB frames of the output size, read from stdin, into `video_out`."""
    return ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{options.width}x{options.height}", "-r", fps_text(options.fps),
            "-i", "-", "-frames:v", str(frames), *encode_options(options), "-f", "mp4", str(video_out)]  # fmt: skip


def concat_listing(pieces: Sequence[tuple[Path, float]]) -> str:
    """The concat demuxer's listing of (video file, seconds) pieces."""
    lines = []
    for video, seconds in pieces:
        quoted = str(video).replace("'", "'\\''")
        lines.append(f"file '{quoted}'\nduration {seconds:.6f}\n")
    return "".join(lines)


def concat_command(listing: Path, audio: Path, options: RenderConfig, video_out: Path) -> list[str]:
    """Arguments joining the listed pieces' video without re-encoding, with `audio` (PCM) encoded to AAC once."""
    return ["-f", "concat", "-safe", "0", "-i", str(listing), "-i", str(audio), "-map", "0:v:0", "-map", "1:a:0",
            "-c:v", "copy", "-c:a", "aac", "-b:a", f"{options.audio_bitrate}k", "-movflags", "+faststart",
            "-f", "mp4", str(video_out)]  # fmt: skip


def _close_quietly(stream: IO[bytes] | None) -> None:
    if stream is None:
        return
    try:
        stream.close()
    except OSError:  # ffmpeg already gone: the pipe cannot be flushed
        pass


def run_ffmpeg(
    args: Sequence[str], *, output: Path | str, timeout: float, what: str, feed: Callable[[IO[bytes]], None] | None = None
) -> None:
    """Run ffmpeg with `args` to completion; raise `RenderError` naming `what` and `output` if it fails.

    Args:
        output: the file this call makes (the final name, not the temporary one), for messages.
        timeout: seconds (`render.timeout_seconds`); the whole call, feeding included, must end
            within it, or ffmpeg is killed.
        what: what is being made, e.g. "one.mp4 2.00-4.00 s".
        feed: writes ffmpeg's input to its stdin (raw frames); stdin is closed afterwards.
    """
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *(["-nostdin"] if feed is None else []), *args]
    timed_out = threading.Event()
    with tempfile.TemporaryFile() as messages:
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE if feed is not None else subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=messages,
        )  # fmt: skip

        def stop() -> None:
            timed_out.set()
            process.kill()

        # A timer rather than wait(timeout): it also ends a call stuck while we feed its stdin.
        timer = threading.Timer(timeout, stop)
        timer.daemon = True
        timer.start()
        try:
            if feed is not None:
                try:
                    feed(process.stdin)  # type: ignore[arg-type]
                    process.stdin.close()  # type: ignore[union-attr]
                except BrokenPipeError:
                    pass  # ffmpeg stopped reading: its exit status and messages say why
            process.wait()
        finally:
            timer.cancel()
            if process.poll() is None:  # interrupted (an exception, Ctrl-C): do not leave it running
                process.kill()
            _close_quietly(process.stdin)
            process.wait()
        if process.returncode == 0:
            return
        if timed_out.is_set():
            raise RenderError(
                f"{what}: ffmpeg making {output} took longer than {timeout:g} s (render.timeout_seconds) and was stopped; "
                "raise render.timeout_seconds for long or slow sources"
            )
        messages.seek(0)
        tail = messages.read().decode("utf-8", "replace").strip()[-STDERR_TAIL:]
        raise RenderError(f"{what}: ffmpeg failed (exit {process.returncode}) making {output}: {tail or 'no message'}")
