"""Audio features per video and per window: a weight-free log-mel statistics descriptor (always
available), or YAMNet embeddings through TensorFlow Hub when its weights are on disk and an
interpreter with TensorFlow is there to run them.

The log-mel descriptor is the mean and standard deviation of 64 log mel-band energies (25 ms
frames every 10 ms of 16 kHz mono audio) over each window: 128 numbers that tell tones, noise,
music and speech apart without any weights. Audio is decoded as it streams (the speech stage's
decoder) and reduced to per-window sums at once, so memory stays flat for hours of sound.

YAMNet runs in a worker process of its own (`yamnet_worker.py`, started with `classify.yamnet_python`):
TensorFlow and torch imported into one process crash, so TensorFlow is never imported here.

Example:
    >>> descriptor = LogMelDescriptor()
    >>> tone = np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32)
    >>> stats = descriptor.window_stats([tone], window_seconds=0.5)
    >>> stats.features().shape
    (2, 128)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
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
    "YamnetUnavailable",
    "YamnetWorkerError",
    "audio_descriptor",
    "mel_filterbank",
    "yamnet_location",
    "yamnet_python",
]

SAMPLE_RATE = 16000
LOGMEL_ID = "logmel64-stats"
YAMNET_HOP_SECONDS = 0.48  # YAMNet's embeddings: one per 0.96 s patch, every 0.48 s
YAMNET_DIM = 1024
WORKER = Path(__file__).with_name("yamnet_worker.py")  # run by path, by another interpreter
PIECE_SECONDS = 60.0  # waveforms handed to YAMNet a minute at a time
BATCH_SECONDS = 1800.0  # sound per worker call (115 MB of float32 on disk): few calls, a bounded folder
WORKER_TIMEOUT = 600.0  # seconds a worker call may take, plus one per second of its audio


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

    def add(self, values: np.ndarray, index: np.ndarray | None = None) -> None:
        """Add frames in order; `index`: each one's window (default: by position, `window_frames` a window)."""
        if not len(values):
            return
        if index is None:
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

    def window_stats_many(self, sources: Iterable[tuple[Any, Iterable[np.ndarray]]],
                          window_seconds: float) -> Iterator[tuple[Any, AudioStats | Exception]]:  # fmt: skip
        """For each `(key, blocks)`, its per-window statistics, or the exception reading its blocks raised."""
        for key, blocks in sources:
            try:
                stats = self.window_stats(blocks, window_seconds)
            except Exception as error:  # this source's audio could not be read: the others go on
                yield key, error
                continue
            yield key, stats


def yamnet_location(handle: str, cache_dir: Path | str | None = None) -> Path | None:
    """Where a YAMNet SavedModel is on disk: `handle` itself when it is a folder, else TensorFlow
    Hub's cache folder for the handle (`TFHUB_CACHE_DIR`, default `<tmp>/tfhub_modules`, a folder
    named by the SHA-1 of the handle, as `hub.resolve` lays it out); None when absent."""
    path = Path(handle).expanduser()
    if path.is_dir():
        return path
    root = Path(cache_dir or os.environ.get("TFHUB_CACHE_DIR") or Path(tempfile.gettempdir()) / "tfhub_modules")
    cached = root / hashlib.sha1(handle.encode("utf8")).hexdigest()
    return cached if (cached / "saved_model.pb").exists() else None


class YamnetUnavailable(RuntimeError):
    """YAMNet cannot run here: no interpreter with tensorflow and tensorflow-hub, or no SavedModel."""


class YamnetWorkerError(RuntimeError):
    """The YAMNet worker process failed; the message names the model and holds the worker's stderr."""


_SETUP_HINT = ("TensorFlow runs in an environment of its own: `bash scripts/setup_tf.sh` makes .venv-tf, then set "
               "classify.yamnet_python: .venv-tf/bin/python")  # fmt: skip
_CHECK = "import importlib.util as u, sys; sys.exit(0 if u.find_spec('tensorflow') and u.find_spec('tensorflow_hub') else 3)"


def yamnet_python(configured: str | Path | None = None) -> str:
    """The interpreter that runs the YAMNet worker: `configured` (`classify.yamnet_python`: a path or
    a command on PATH) when given, else this interpreter when it has tensorflow and tensorflow-hub
    (looked up with `importlib.util.find_spec`, never imported here). Raises `YamnetUnavailable`
    naming the key otherwise."""
    if configured is None or not str(configured).strip():
        if importlib.util.find_spec("tensorflow") and importlib.util.find_spec("tensorflow_hub"):
            return sys.executable
        raise YamnetUnavailable(f"this python ({sys.executable}) has no tensorflow-hub and classify.yamnet_python is not set "
                                f"({_SETUP_HINT})")  # fmt: skip
    text = str(configured)
    found = shutil.which(str(Path(text).expanduser()) if "/" in text else text)
    if found is None:
        raise YamnetUnavailable(f"classify.yamnet_python = {text!r} is not an executable python ({_SETUP_HINT})")
    try:
        check = subprocess.run([found, "-I", "-c", _CHECK], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise YamnetUnavailable(f"classify.yamnet_python = {text!r} could not be started ({error})") from None
    if check.returncode != 0:
        why = "has no tensorflow and tensorflow-hub" if check.returncode == 3 else f"failed: {_tail(check.stderr)}"
        raise YamnetUnavailable(f"classify.yamnet_python = {text!r} ({found}) {why} ({_SETUP_HINT})")
    return found


def _tail(text: str, lines: int = 25) -> str:
    kept = [line for line in (text or "").strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:]) or "(nothing on stderr)"


def _pieces(blocks: Iterable[np.ndarray], size: int) -> Iterator[tuple[int, np.ndarray]]:
    """The stream cut into pieces of `size` samples (the last one shorter), with each one's first sample."""
    pending, start = np.zeros(0, np.float32), 0
    for block in blocks:
        pending = np.concatenate([pending, np.asarray(block, np.float32)])
        while len(pending) >= size:
            yield start, pending[:size]
            pending, start = pending[size:], start + size
    if len(pending):
        yield start, pending


class _Job:
    """Waveform pieces written to a folder for one worker call, and whose they are."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True)
        self.entries: list[tuple[Any, int, Path]] = []  # (source, first sample, piece file)
        self.samples = 0

    def add(self, key: Any, start: int, piece: np.ndarray) -> None:
        path = self.folder / f"piece-{len(self.entries):05d}.npy"
        np.save(path, piece)
        self.entries.append((key, start, path))
        self.samples += len(piece)

    def drop(self, key: Any) -> None:
        for _, _, path in [e for e in self.entries if e[0] == key]:
            path.unlink()
        self.entries = [e for e in self.entries if e[0] != key]


class YamnetDescriptor:
    """YAMNet embeddings (1024-d per 0.96 s patch, every 0.48 s), mean and deviation per window, from
    a SavedModel on disk, computed by a worker process (`yamnet_worker.py`) run with `python`.

    TensorFlow is never imported in this process (with torch in the same process it crashes).
    Waveforms go to the worker and embeddings come back as .npy files in a temporary folder; the
    audio of many videos goes to one worker call (up to `batch_seconds` of sound), since starting
    it and importing TensorFlow cost seconds. `calls` counts the worker processes started.
    """

    kind = "yamnet"

    def __init__(self, location: Path | str, requested: str, python: str | Path | None = None, *,
                 batch_seconds: float = BATCH_SECONDS):  # fmt: skip
        from ..files import sha256_file

        self.location, self.requested = Path(location), requested
        if not (self.location / "saved_model.pb").exists():
            raise YamnetUnavailable(f"{self.location}: no saved_model.pb there (classify.yamnet names a SavedModel folder)")
        self.python = yamnet_python(python)
        self.batch_seconds = batch_seconds
        digest = sha256_file(self.location / "saved_model.pb")
        self.model_id = f"yamnet-{digest[:8]}"
        self.sha256 = digest
        self.dim = 2 * YAMNET_DIM
        self.calls = 0
        self.worker_seconds = 0.0  # wall time of the worker processes, start to exit
        self.last_call: dict[str, Any] = {}  # the last worker call's pieces and seconds (loading, running, wall)

    @property
    def record(self) -> dict[str, Any]:
        return {"kind": "audio", "model_id": self.model_id, "requested": self.requested, "backend": "tensorflow-hub",
                "weights": str(self.location), "weights_sha256": self.sha256, "dim": self.dim, "device": "cpu",
                "fallback_reason": None, "disabled_features": []}  # fmt: skip

    def _run(self, job: _Job) -> list[np.ndarray]:
        """One worker process over the job's pieces: their embeddings, in order."""
        command = [self.python, "-I", str(WORKER), str(self.location), str(job.folder)]
        seconds = job.samples / SAMPLE_RATE
        log.info("YAMNet: %d pieces (%.0f s of audio) to a worker process (%s)", len(job.entries), seconds, self.python)
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT + seconds,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as error:
            raise YamnetWorkerError(f"YAMNet ({self.location}): its worker process ({self.python}) failed: {error}") from None
        finally:
            self.calls += 1
            self.worker_seconds += time.perf_counter() - started
        if done.returncode != 0 or not (job.folder / "done.json").exists():
            status = (f"killed by {signal.Signals(-done.returncode).name}" if done.returncode < 0
                      else f"exit status {done.returncode}")  # fmt: skip
            raise YamnetWorkerError(f"YAMNet ({self.location}) failed in its worker process ({self.python}, {status}); "
                                    f"its stderr:\n{_tail(done.stderr)}")  # fmt: skip
        self.last_call = {**json.loads((job.folder / "done.json").read_text()), "wall_seconds": time.perf_counter() - started}
        out = []
        for _, _, path in job.entries:
            embeddings = np.load(path.with_name(path.name.replace("piece-", "embeddings-", 1)))
            if embeddings.ndim != 2 or embeddings.shape[1] != YAMNET_DIM:
                raise YamnetWorkerError(f"YAMNet ({self.location}) gave embeddings of shape {embeddings.shape}; "
                                        f"YAMNet's are (patches, {YAMNET_DIM})")  # fmt: skip
            out.append(embeddings)
        return out

    def embeddings(self, audio: np.ndarray) -> np.ndarray:
        """(patches, 1024) embeddings of one 16 kHz mono waveform (one worker process)."""
        with tempfile.TemporaryDirectory(prefix="frameatlas-yamnet-") as folder:
            job = _Job(Path(folder) / "job")
            job.add(None, 0, np.asarray(audio, np.float32))
            return self._run(job)[0]

    def window_stats(self, blocks: Iterable[np.ndarray], window_seconds: float) -> AudioStats:
        """Per-window statistics of one stream of audio blocks (16 kHz mono float32)."""
        ((_, stats),) = self.window_stats_many([(None, blocks)], window_seconds)
        if isinstance(stats, Exception):
            raise stats
        return stats

    def window_stats_many(self, sources: Iterable[tuple[Any, Iterable[np.ndarray]]],
                          window_seconds: float) -> Iterator[tuple[Any, AudioStats | Exception]]:  # fmt: skip
        """For each `(key, blocks)`, its per-window statistics, or the exception reading its blocks raised
        (that source only). A worker failure raises `YamnetWorkerError`."""
        piece = int(PIECE_SECONDS * SAMPLE_RATE)
        accumulators: dict[Any, _Accumulator] = {}
        complete: list[Any] = []  # sources whose every piece has been handed to a job
        with tempfile.TemporaryDirectory(prefix="frameatlas-yamnet-") as folder:
            calls = 0

            def flush(job: _Job) -> list[tuple[Any, AudioStats]]:
                if job.entries:
                    for (key, start, _), values in zip(job.entries, self._run(job)):
                        centres = start / SAMPLE_RATE + YAMNET_HOP_SECONDS * (np.arange(len(values)) + 1)  # patch centres
                        accumulators[key].add(values, np.floor(centres / window_seconds).astype(np.int64))
                    shutil.rmtree(job.folder)
                finished = [(key, accumulators.pop(key).stats()) for key in complete]
                complete.clear()
                return finished

            job = _Job(Path(folder) / f"call-{calls}")
            for key, blocks in sources:
                accumulators[key] = _Accumulator(YAMNET_DIM, 1.0)
                stream = _pieces(blocks, piece)
                while True:
                    try:
                        item = next(stream, None)
                    except Exception as error:  # this source's audio could not be read: the others go on
                        job.drop(key)
                        accumulators.pop(key)
                        yield key, error
                        break
                    if item is None:
                        complete.append(key)
                        break
                    job.add(key, *item)
                    if job.samples >= self.batch_seconds * SAMPLE_RATE:
                        yield from flush(job)
                        calls += 1
                        job = _Job(Path(folder) / f"call-{calls}")
            yield from flush(job)


def audio_descriptor(mode: str, handle: str, cache_dir: Path | str | None = None,
                     python: str | Path | None = None) -> tuple[Any, str | None]:  # fmt: skip
    """The audio descriptor `classify.audio` asks for, and a note when YAMNet could not be had.

    `logmel`: always the weight-free descriptor. `yamnet`: YAMNet or `YamnetUnavailable` naming
    what is missing. `auto`: YAMNet when its SavedModel is on disk and an interpreter with
    tensorflow-hub is there to run it (`python`: `classify.yamnet_python`), else the log-mel
    descriptor with a note saying why. TensorFlow is not imported here (see `YamnetDescriptor`).
    """
    if mode == "logmel":
        return LogMelDescriptor(), None
    location = yamnet_location(handle, cache_dir)
    reasons = []
    if location is None:
        reasons.append(f"YAMNet weights not found for {handle!r} (give classify.yamnet a folder holding the SavedModel, "
                       "or put it in TensorFlow Hub's cache, TFHUB_CACHE_DIR)")  # fmt: skip
    try:
        python_found = yamnet_python(python)
    except YamnetUnavailable as error:
        reasons.append(str(error))
    if not reasons:
        try:
            return YamnetDescriptor(location, handle, python_found), None
        except YamnetUnavailable as error:
            reasons.append(str(error))
    reason = "; ".join(reasons)
    if mode == "yamnet":
        raise YamnetUnavailable(f"classify.audio = yamnet, but {reason}; or set classify.audio to logmel or auto")
    return LogMelDescriptor(), f"audio features: the weight-free log-mel statistics descriptor ({reason})"
