"""Audio features per video and per window: a weight-free log-mel statistics descriptor (always
available), or YAMNet embeddings through TensorFlow Hub when it is installed and its weights are
on disk.

The log-mel descriptor is the mean and standard deviation of 64 log mel-band energies (25 ms
frames every 10 ms of 16 kHz mono audio) over each window: 128 numbers that tell tones, noise,
music and speech apart without any weights. Audio is decoded as it streams (the speech stage's
decoder) and reduced to per-window sums at once, so memory stays flat for hours of sound.

Example:
    >>> descriptor = LogMelDescriptor()
    >>> tone = np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32)
    >>> stats = descriptor.window_stats([tone], window_seconds=0.5)
    >>> stats.features().shape
    (2, 128)
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "LOGMEL_ID",
    "SAMPLE_RATE",
    "AudioStats",
    "LogMelDescriptor",
    "YamnetDescriptor",
    "audio_descriptor",
    "mel_filterbank",
    "yamnet_location",
]

SAMPLE_RATE = 16000
LOGMEL_ID = "logmel64-stats"
YAMNET_HOP_SECONDS = 0.48  # YAMNet's embeddings: one per 0.96 s patch, every 0.48 s
YAMNET_DIM = 1024


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float = 60.0, fmax: float | None = None) -> np.ndarray:
    """Triangular mel filters (HTK mel scale), shape (n_mels, n_fft // 2 + 1)."""
    fmax = fmax or sample_rate / 2

    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    def to_hz(mel):
        return 700.0 * (10 ** (np.asarray(mel) / 2595.0) - 1.0)

    edges = to_hz(np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2))
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / np.maximum(centre - lower, 1e-9)
    falling = (upper - bins[None, :]) / np.maximum(upper - centre, 1e-9)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


@dataclass
class AudioStats:
    """Per-window running sums of a frame-level audio feature: enough for means and deviations."""

    sums: np.ndarray  # (windows, dim)
    squares: np.ndarray  # (windows, dim)
    counts: np.ndarray  # (windows,)

    def features(self, with_std: bool = True) -> np.ndarray:
        """Mean (and standard deviation) per window; windows without audio are zeros."""
        counts = np.maximum(self.counts, 1)[:, None]
        mean = self.sums / counts
        if not with_std:
            return mean.astype(np.float32)
        std = np.sqrt(np.maximum(self.squares / counts - mean**2, 0.0))
        return np.hstack([mean, std]).astype(np.float32)

    def whole(self) -> AudioStats:
        """The whole video as one window."""
        return AudioStats(self.sums.sum(0, keepdims=True), self.squares.sum(0, keepdims=True), self.counts.sum(keepdims=True))

    def save(self, path: Path) -> None:
        from ..files import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, sums=self.sums, squares=self.squares, counts=self.counts)

    @classmethod
    def load(cls, path: Path) -> AudioStats:
        with np.load(path) as data:
            return cls(data["sums"], data["squares"], data["counts"])


class _Accumulator:
    def __init__(self, dim: int, window_frames: float):
        self.dim, self.window_frames = dim, window_frames
        self.sums = np.zeros((0, dim))
        self.squares = np.zeros((0, dim))
        self.counts = np.zeros(0, np.int64)
        self.position = 0  # frames seen so far

    def add(self, values: np.ndarray) -> None:
        if not len(values):
            return
        index = ((self.position + np.arange(len(values))) // self.window_frames).astype(np.int64)
        self.position += len(values)
        size = int(index[-1]) + 1
        if size > len(self.counts):
            grow = size - len(self.counts)
            self.sums = np.vstack([self.sums, np.zeros((grow, self.dim))])
            self.squares = np.vstack([self.squares, np.zeros((grow, self.dim))])
            self.counts = np.concatenate([self.counts, np.zeros(grow, np.int64)])
        # windows of one block are contiguous: reduce each run at once (no per-frame Python)
        starts = np.r_[0, np.flatnonzero(np.diff(index)) + 1]
        windows = index[starts]
        values = values.astype(np.float64)
        self.sums[windows] += np.add.reduceat(values, starts, axis=0)
        self.squares[windows] += np.add.reduceat(values**2, starts, axis=0)
        self.counts[windows] += np.diff(np.r_[starts, len(values)])

    def stats(self) -> AudioStats:
        return AudioStats(self.sums, self.squares, self.counts)


class LogMelDescriptor:
    """The weight-free audio descriptor: mean and deviation of 64 log mel energies per window."""

    model_id = LOGMEL_ID
    kind = "logmel"
    dim = 128

    def __init__(self, n_mels: int = 64, frame_seconds: float = 0.025, hop_seconds: float = 0.010):
        self.n_mels = n_mels
        self.frame = int(round(frame_seconds * SAMPLE_RATE))
        self.hop = int(round(hop_seconds * SAMPLE_RATE))
        self.n_fft = 1 << (self.frame - 1).bit_length()
        self.filters = mel_filterbank(n_mels, self.n_fft, SAMPLE_RATE)
        self.window = np.hanning(self.frame).astype(np.float32)
        self.dim = 2 * n_mels

    @property
    def record(self) -> dict[str, Any]:
        return {"kind": "audio", "model_id": self.model_id, "requested": "logmel", "backend": "numpy",
                "weights": None, "weights_sha256": None, "dim": self.dim, "device": "cpu",
                "fallback_reason": None, "disabled_features": []}  # fmt: skip

    def log_mel(self, audio: np.ndarray) -> np.ndarray:
        """(frames, n_mels) log mel energies of a mono 16 kHz signal (frames that fit whole)."""
        if len(audio) < self.frame:
            return np.zeros((0, self.n_mels), np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(audio, self.frame)[:: self.hop] * self.window
        power = np.abs(np.fft.rfft(frames, n=self.n_fft, axis=1)) ** 2
        return np.log(power.astype(np.float32) @ self.filters.T + 1e-6)

    def window_stats(self, blocks: Iterable[np.ndarray], window_seconds: float) -> AudioStats:
        """Per-window sums over a stream of audio blocks (16 kHz mono float32)."""
        window_frames = window_seconds * SAMPLE_RATE / self.hop
        accumulator = _Accumulator(self.n_mels, window_frames)
        pending = np.zeros(0, np.float32)
        chunk = 200 * self.hop  # ~2 s of frames per FFT batch
        for block in blocks:
            pending = np.concatenate([pending, np.asarray(block, np.float32)])
            if len(pending) < chunk + self.frame:
                continue
            usable = (len(pending) - self.frame) // self.hop + 1
            accumulator.add(self.log_mel(pending[: (usable - 1) * self.hop + self.frame]))
            pending = pending[usable * self.hop :]
        accumulator.add(self.log_mel(pending))
        return accumulator.stats()


def yamnet_location(handle: str, cache_dir: Path | str | None = None) -> Path | None:
    """Where a YAMNet SavedModel is on disk: `handle` itself when it is a folder, else TensorFlow
    Hub's cache folder for the handle (`TFHUB_CACHE_DIR`, default `<tmp>/tfhub_modules`); None when absent."""
    path = Path(handle).expanduser()
    if path.is_dir():
        return path
    root = Path(cache_dir or os.environ.get("TFHUB_CACHE_DIR") or Path(tempfile.gettempdir()) / "tfhub_modules")
    cached = root / hashlib.sha1(handle.encode("utf8")).hexdigest()
    return cached if (cached / "saved_model.pb").exists() else None


class YamnetDescriptor:
    """YAMNet embeddings (1024-d per 0.48 s), mean and deviation per window, from a SavedModel on disk.

    The model is called as YAMNet is: a 1-D float32 waveform at 16 kHz in, `(scores, embeddings,
    log_mel_spectrogram)` out.
    """

    kind = "yamnet"

    def __init__(self, location: Path, requested: str):
        import tensorflow_hub as hub  # the [use] extra

        from ..files import sha256_file

        self.location, self.requested = Path(location), requested
        self.model = hub.load(str(location))
        digest = sha256_file(self.location / "saved_model.pb")
        self.model_id = f"yamnet-{digest[:8]}"
        self.sha256 = digest
        self.dim = 2 * YAMNET_DIM

    @property
    def record(self) -> dict[str, Any]:
        return {"kind": "audio", "model_id": self.model_id, "requested": self.requested, "backend": "tensorflow-hub",
                "weights": str(self.location), "weights_sha256": self.sha256, "dim": self.dim, "device": "cpu",
                "fallback_reason": None, "disabled_features": []}  # fmt: skip

    def embeddings(self, audio: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        _, embeddings, _ = self.model(tf.constant(np.asarray(audio, np.float32)))
        return np.asarray(embeddings, np.float32)

    def window_stats(self, blocks: Iterable[np.ndarray], window_seconds: float) -> AudioStats:
        accumulator = None
        piece = int(60 * SAMPLE_RATE)  # a minute at a time: memory stays flat
        pending = np.zeros(0, np.float32)

        def feed(audio: np.ndarray) -> None:
            nonlocal accumulator
            values = self.embeddings(audio)
            if accumulator is None:
                accumulator = _Accumulator(values.shape[1], window_seconds / YAMNET_HOP_SECONDS)
            accumulator.add(values)

        for block in blocks:
            pending = np.concatenate([pending, np.asarray(block, np.float32)])
            if len(pending) >= piece:
                feed(pending[:piece])
                pending = pending[piece:]
        if len(pending):
            feed(pending)
        if accumulator is None:
            return AudioStats(np.zeros((0, YAMNET_DIM)), np.zeros((0, YAMNET_DIM)), np.zeros(0, np.int64))
        return accumulator.stats()


def audio_descriptor(mode: str, handle: str, cache_dir: Path | str | None = None) -> tuple[Any, str | None]:
    """The audio descriptor `classify.audio` asks for, and a note when YAMNet could not be had.

    `logmel`: always the weight-free descriptor. `yamnet`: YAMNet or an error naming what is
    missing. `auto`: YAMNet when tensorflow-hub is installed and the SavedModel is on disk, else
    the log-mel descriptor with a note saying why.
    """
    if mode == "logmel":
        return LogMelDescriptor(), None
    location = yamnet_location(handle, cache_dir)
    reason = None
    try:
        import tensorflow_hub  # noqa: F401
    except ImportError:
        reason = "tensorflow-hub is not installed (pip install -e '.[use]')"
    if reason is None and location is None:
        reason = (f"YAMNet weights not found for {handle!r} (give classify.yamnet a folder holding the SavedModel, "
                  "or put it in TensorFlow Hub's cache, TFHUB_CACHE_DIR)")  # fmt: skip
    if reason is None:
        try:
            return YamnetDescriptor(location, handle), None
        except Exception as error:  # a broken SavedModel: say so, fall back or stop below
            reason = f"YAMNet at {location} could not be loaded ({type(error).__name__}: {error})"
    if mode == "yamnet":
        raise RuntimeError(f"classify.audio = yamnet, but {reason}; or set classify.audio to logmel or auto")
    return LogMelDescriptor(), f"audio features: the weight-free log-mel statistics descriptor ({reason})"
