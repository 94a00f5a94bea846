"""What is said in every video (part of the caption stage), for the `speech` search channel.

Each video's audio is decoded with PyAV and resampled to 16 kHz mono as it streams, in pieces of
about `speech.chunk_seconds` cut at a pause, so memory stays flat for hours of audio. Voice activity
detection (Silero, inside faster-whisper) drops music and silence before Whisper
(`models.speech`) transcribes what is left. Times are seconds on the frames' clock (from the
video stream's start), so frames, captions, on-screen text and speech line up.

Tables (the run folder's contract):

* ``tables/speech.parquet``: one row per segment (an utterance): start, end, text, language,
  avg log-prob, no-speech probability, compression ratio, model;
* ``tables/speech_words.parquet``: one row per word, with its times and probability;
* ``tables/speech_frames.parquet``: one row per frame with the speech said within
  ``speech.frame_window_seconds`` of it (empty when none) and that speech's start and end, which
  `03_embed` embeds for the `speech` channel and render uses to cut at utterance bounds;
* ``tables/speech_videos.parquet``: one row per video: status (transcribed, no audio, no speech),
  language, audio and voiced seconds, words per minute, speech share of the running time;
* ``subtitles/<video>.vtt`` and ``.srt``: each video's utterances as subtitles;
* ``tables/speech_segment_embeddings.parquet`` (written by `03_embed`, `embed_segments`): each
  utterance's sentence vector, also in the index collection ``speech-segments-<text model>``: the
  `speech` search channel ranks utterances and shows a hit's words and their time.

Work is cached per video and model settings under ``speech/<settings>/<video id>.*``: a re-run, or
a run killed halfway, transcribes only the videos it has not finished. A video whose audio cannot
be decoded is skipped with its reason (and tried again next run); the stage goes on.

Example:
    >>> from frameatlas.speech import transcribe_run
    >>> summary = transcribe_run(cfg, "outputs/demo")  # doctest: +SKIP
    >>> summary.table[["video_name", "start", "end", "text"]].head()  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import PipelineConfig, SpeechConfig
from .corpus import SkippedInput, failure_reason
from .executor import Failed, open_executor
from .files import UnsafePath, atomic_write_json, atomic_write_text, contained_path
from .models.base import ModelRecord
from .models.speech import SpeechModel, load_speech_model
from .progress import progress_bar
from .store import RunPaths, read_table, write_table
from .summary import StageSummary

log = logging.getLogger(__name__)

__all__ = [
    "SAMPLE_RATE",
    "SEGMENT_COLUMNS",
    "SPEECH_FRAME_COLUMNS",
    "SPEECH_TABLES",
    "WORD_COLUMNS",
    "AudioDecoder",
    "NoAudio",
    "SpeechSummary",
    "best_segment_per_frame",
    "embed_segments",
    "frames_with_speech",
    "segment_frames",
    "spoken_languages",
    "subtitle_files",
    "speech_report_html",
    "subtitle_texts",
    "transcribe_audio",
    "transcribe_run",
]

SAMPLE_RATE = 16000  # what Whisper and Silero VAD take
SEGMENT_COLUMNS = ["segment_id", "video_id", "video_name", "start", "end", "text", "language", "avg_logprob",
                   "no_speech_prob", "compression_ratio", "model"]  # fmt: skip
WORD_COLUMNS = ["segment_id", "video_id", "start", "end", "word", "probability"]
SPEECH_FRAME_COLUMNS = ["frame_key", "video_id", "timestamp", "text", "speech_start", "speech_end", "segments"]
VIDEO_COLUMNS = ["video_id", "video_name", "status", "language", "language_probability", "audio_seconds",
                 "voiced_seconds", "segments", "words", "words_per_minute", "speech_share", "transcribe_seconds", "note",
                 "subtitles"]  # fmt: skip
SPEECH_TABLES = ("speech", "speech_words", "speech_frames", "speech_videos")
PAUSE_SEARCH_SECONDS = 30.0  # a piece is cut at the last pause within this many seconds of its end
TIGHTEN_REACH = 1.0  # seconds a word's edge may move onto the voice it belongs to (`tighten_words`)
TIGHTEN_PAUSE_MS = 100  # shorter silences inside voice do not count as pauses there
WORD_TIMES = "tightened-1"  # how word times are made: part of the cache key, so older transcripts are redone


class NoAudio(Exception):
    """The video has no audio stream: no speech, no error."""


class AudioDecoder:
    """A video's first audio stream as 16 kHz mono float32 blocks, decoded and resampled as it streams.

    `offset` is where the audio starts on the frames' clock (the video stream's start is 0), so a
    time in the audio plus `offset` is a frame timestamp. Raises `NoAudio` when there is no audio
    stream, and PyAV's errors for a file or stream that cannot be decoded.

    Example:
        >>> with AudioDecoder("talk.mp4") as audio:  # doctest: +SKIP
        ...     seconds = sum(len(block) for block in audio.blocks()) / SAMPLE_RATE
    """

    def __init__(self, path: Path | str, sample_rate: int = SAMPLE_RATE):
        import av

        self.path, self.sample_rate = Path(path), sample_rate
        self.container = av.open(str(path))
        try:
            if not self.container.streams.audio:
                raise NoAudio(f"{path}: no audio stream")
            self.stream = self.container.streams.audio[0]
            self.stream.thread_type = "AUTO"
            self.offset = self._start(self.stream) - (
                self._start(self.container.streams.video[0]) if self.container.streams.video else 0.0
            )
        except BaseException:
            self.container.close()
            raise

    @staticmethod
    def _start(stream) -> float:
        return float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0

    def blocks(self) -> Iterator[np.ndarray]:
        """The audio as float32 arrays in [-1, 1], in order (a few thousand samples each)."""
        import av

        resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate)
        for frame in self.container.decode(self.stream):
            for out in resampler.resample(frame):
                yield out.to_ndarray().reshape(-1)
        for out in resampler.resample(None):  # what the resampler still holds
            yield out.to_ndarray().reshape(-1)

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> AudioDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _vad_options(options: SpeechConfig):
    from faster_whisper.vad import VadOptions

    return VadOptions(threshold=options.vad_threshold, min_silence_duration_ms=options.min_silence_ms)


def _pause_cut(audio: np.ndarray, vad_options) -> int:
    """Where to end a piece of audio: in the last pause of its final `PAUSE_SEARCH_SECONDS`, else its end."""
    from faster_whisper.vad import get_speech_timestamps

    tail_start = max(0, len(audio) - int(PAUSE_SEARCH_SECONDS * SAMPLE_RATE))
    speech = get_speech_timestamps(audio[tail_start:], vad_options, sampling_rate=SAMPLE_RATE)
    if not speech:
        return len(audio)
    tail = len(audio) - tail_start
    if speech[-1]["end"] < tail - SAMPLE_RATE // 5:  # the piece ends in silence
        return tail_start + (speech[-1]["end"] + tail) // 2
    gaps = [(a["end"] + b["start"]) // 2 for a, b in zip(speech, speech[1:])]
    return tail_start + gaps[-1] if gaps else len(audio)


def _pieces(blocks: Iterator[np.ndarray], chunk_samples: int, vad_options) -> Iterator[tuple[int, np.ndarray]]:
    """(first sample, audio) pieces of about `chunk_samples`, each ended at a pause, so no word is cut in two."""
    held: list[np.ndarray] = []
    count, first = 0, 0
    for block in blocks:
        held.append(block)
        count += len(block)
        if count >= chunk_samples:
            audio = np.concatenate(held)
            cut = _pause_cut(audio, vad_options)
            yield first, audio[:cut]
            first += cut
            held, count = [audio[cut:]], len(audio) - cut
    if count:
        yield first, np.concatenate(held)


@dataclass
class Transcript:
    """One video's speech: segments and words (times on the frames' clock) and what it took."""

    segments: pd.DataFrame
    words: pd.DataFrame
    language: str | None = None
    language_probability: float | None = None
    audio_seconds: float = 0.0
    voiced_seconds: float = 0.0
    seconds: float = 0.0


def _words(segment) -> list[dict[str, Any]]:
    return [{"start": float(w.start), "end": float(w.end), "word": w.word, "probability": float(w.probability)}
            for w in segment.words or []]  # fmt: skip


def _voiced_spans(audio: np.ndarray, words: list[dict[str, Any]], threshold: float) -> list[tuple[float, float]]:
    """Where `audio` is voiced (seconds, Silero VAD without padding), looked for only around `words`."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(threshold=threshold, min_silence_duration_ms=TIGHTEN_PAUSE_MS, speech_pad_ms=0)
    around: list[list[float]] = []
    for word in sorted(words, key=lambda w: w["start"]):
        low, high = max(0.0, word["start"] - TIGHTEN_REACH), word["end"] + TIGHTEN_REACH
        if around and low <= around[-1][1]:
            around[-1][1] = max(around[-1][1], high)
        else:
            around.append([low, high])
    spans = []
    for low, high in around:
        first = int(low * SAMPLE_RATE)
        found = get_speech_timestamps(audio[first : int(high * SAMPLE_RATE)], options, sampling_rate=SAMPLE_RATE)
        spans += [((first + s["start"]) / SAMPLE_RATE, (first + s["end"]) / SAMPLE_RATE) for s in found]
    return spans


def tighten_words(words: list[dict[str, Any]], spans: list[tuple[float, float]], reach: float = 1.0) -> None:
    """Move word edges that Whisper's alignment misplaced next to a pause onto the voice itself (in place).

    Whisper often starts the first word after a pause where the voice activity detector's padding
    starts (up to 0.4 s early), or ends a word before its last sound. An edge in silence moves to the
    voice the word overlaps; an edge inside voice that no neighbouring word shares moves to where
    that voice starts or ends (at most `reach` seconds). Edges between words said without a pause
    are left alone: silence detection cannot place them.

    Example:
        >>> words = [{"start": 0.6, "end": 1.2}, {"start": 1.2, "end": 1.5}]
        >>> tighten_words(words, [(1.0, 1.8)])
        >>> words
        [{'start': 1.0, 'end': 1.2}, {'start': 1.2, 'end': 1.8}]
    """
    if not spans:
        return
    for i, word in enumerate(words):
        previous_end = words[i - 1]["end"] if i else -np.inf
        next_start = words[i + 1]["start"] if i + 1 < len(words) else np.inf
        voice = next(((a, b) for a, b in spans if b > word["start"]), None)
        if voice is not None and voice[0] < word["end"]:
            if voice[0] > word["start"] or (voice[0] >= previous_end and word["start"] - voice[0] <= reach):
                word["start"] = voice[0]
        voice = next(((a, b) for a, b in reversed(spans) if a < word["end"]), None)
        if voice is not None and voice[1] > word["start"]:
            if voice[1] < word["end"] or (voice[1] <= next_start and voice[1] - word["end"] <= reach):
                word["end"] = voice[1]


def _utterances(segment, words: list[dict[str, Any]], pause: float) -> list[dict[str, Any]]:
    """A Whisper segment (with its `words`) split where they pause for at least `pause` seconds (VAD joins speech
    across pauses before Whisper sees it, so one segment can hold two sentences said seconds apart)."""
    if not words:
        return [{"start": float(segment.start), "end": float(segment.end), "text": segment.text.strip(), "words": []}]
    groups = [[words[0]]]
    for previous, word in zip(words, words[1:]):
        if pause > 0 and word["start"] - previous["end"] >= pause:
            groups.append([])
        groups[-1].append(word)
    text = [segment.text.strip()] if len(groups) == 1 else ["".join(w["word"] for w in group).strip() for group in groups]
    return [{"start": group[0]["start"], "end": group[-1]["end"], "text": said, "words": group}
            for group, said in zip(groups, text)]  # fmt: skip


def transcribe_audio(model: SpeechModel, decoder: AudioDecoder, options: SpeechConfig, *, video_id: str = "",
                     video_name: str = "", on_audio=None) -> Transcript:  # fmt: skip
    """Transcribe everything `decoder` streams, piece by piece; `on_audio(seconds)` is called as audio is consumed.

    Word times are Whisper's, their edges next to pauses moved onto the voice (`tighten_words`); an
    utterance runs from its first word's start to its last word's end.
    """
    started = time.perf_counter()
    vad_options = _vad_options(options)
    language = options.language or ("en" if model.english_only else None)
    detected: tuple[str | None, float | None] = (language, 1.0 if language else None)
    segments: list[dict[str, Any]] = []
    words: list[dict[str, Any]] = []
    audio_seconds = voiced = 0.0
    for first, piece in _pieces(decoder.blocks(), int(options.chunk_seconds * SAMPLE_RATE), vad_options):
        shift = decoder.offset + first / SAMPLE_RATE
        found, info = model.model.transcribe(
            piece, language=detected[0], beam_size=options.beam_size, word_timestamps=True, vad_filter=options.vad,
            vad_parameters=vad_options if options.vad else None,
        )  # fmt: skip
        found = [(segment, _words(segment)) for segment in found]  # a generator: decoding happens here
        said = [word for _, segment_words in found for word in segment_words]
        tighten_words(said, _voiced_spans(piece, said, options.vad_threshold), TIGHTEN_REACH)
        for segment, segment_words in found:
            for part in _utterances(segment, segment_words, options.min_silence_ms / 1000):
                segment_id = f"{video_id}:{len(segments):05d}"
                segments.append({
                    "segment_id": segment_id, "video_id": video_id, "video_name": video_name,
                    "start": round(shift + part["start"], 3), "end": round(shift + part["end"], 3), "text": part["text"],
                    "avg_logprob": float(segment.avg_logprob), "no_speech_prob": float(segment.no_speech_prob),
                    "compression_ratio": float(segment.compression_ratio),
                })  # fmt: skip
                words.extend({"segment_id": segment_id, "video_id": video_id, "start": round(shift + w["start"], 3),
                              "end": round(shift + w["end"], 3), "word": w["word"].strip(), "probability": w["probability"]}
                             for w in part["words"])  # fmt: skip
        if detected[0] is None and info.duration_after_vad > 0:  # the first piece with speech names the language
            detected = (info.language, float(info.language_probability))
        audio_seconds += info.duration
        voiced += info.duration_after_vad if options.vad else info.duration
        if on_audio is not None:
            on_audio(info.duration)
    segment_table = pd.DataFrame(segments, columns=[c for c in SEGMENT_COLUMNS if c not in ("language", "model")])
    segment_table.insert(6, "language", detected[0] if segments else None)
    segment_table["model"] = model.record.model_id
    return Transcript(segment_table, pd.DataFrame(words, columns=WORD_COLUMNS), detected[0] if segments else None,
                      detected[1] if segments else None, audio_seconds, voiced, time.perf_counter() - started)  # fmt: skip


# --- the pass over a run ------------------------------------------------------------------------


@dataclass(kw_only=True)
class SpeechSummary(StageSummary):
    """What the speech pass did; it goes to the caption stage's manifest entry (`CombinedSummary.of(...)`).

    `seconds` is the time spent transcribing (not counting cached videos).
    """

    table: pd.DataFrame
    words: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=WORD_COLUMNS))
    frames: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SPEECH_FRAME_COLUMNS))
    videos: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=VIDEO_COLUMNS))
    record: ModelRecord | None = None  # None: speech is off in the config
    transcribed: int = 0  # videos whose audio was transcribed now (videos without audio not counted)
    cached: int = 0  # videos whose transcript came from the cache (videos without audio not counted)
    subtitles: list[Path] = field(default_factory=list)  # subtitles/<video>.vtt and .srt of videos with speech

    @property
    def counts(self) -> dict[str, Any]:
        if self.record is None:
            return {"speech": "off"}
        statuses = self.videos.status.value_counts().to_dict() if len(self.videos) else {}
        audio = float(self.videos.audio_seconds.fillna(0).sum()) if len(self.videos) else 0.0
        voiced = float(self.videos.voiced_seconds.fillna(0).sum()) if len(self.videos) else 0.0
        work = float(self.videos.transcribe_seconds.fillna(0).sum()) if len(self.videos) else 0.0
        return {
            "speech_model": self.record.model_id,
            "speech_videos_transcribed": self.transcribed,
            "speech_videos_cached": self.cached,
            "speech_videos_no_audio": int(statuses.get("no audio", 0)),
            "speech_videos_skipped": len(self.skipped),
            "speech_segments": len(self.table),
            "speech_words": len(self.words),
            "speech_audio_seconds": round(audio, 1),
            "speech_voiced_seconds": round(voiced, 1),
            "speech_seconds": round(self.seconds, 2),
            "speech_real_time_factor": round(audio / work, 1) if work else 0.0,
        }

    @property
    def model_records(self) -> list[dict[str, Any]]:
        return [self.record.as_dict()] if self.record is not None else []


def _settings_key(options: SpeechConfig, model_id: str) -> str:
    settings = (f"{model_id}|{options.compute_type}|{options.language}|{options.beam_size}|{options.vad}|"
                f"{options.vad_threshold}|{options.min_silence_ms}|{options.chunk_seconds}|{WORD_TIMES}")  # fmt: skip
    return hashlib.sha256(settings.encode()).hexdigest()[:12]


def _cached(folder: Path, video_id: str) -> tuple[pd.DataFrame, pd.DataFrame, dict] | None:
    meta_path = folder / f"{video_id}.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        return (
            pd.read_parquet(folder / f"{video_id}.segments.parquet"),
            pd.read_parquet(folder / f"{video_id}.words.parquet"),
            meta,
        )
    except (OSError, ValueError) as error:
        log.warning("speech: cached transcript of %s unreadable (%s); transcribing it again", video_id, error)
        return None


def _store(folder: Path, video_id: str, transcript: Transcript, meta: dict) -> None:
    """Segments and words first, the marker (`.json`) last: a run killed in between transcribes the video again."""
    write_table(transcript.segments, folder / f"{video_id}.segments.parquet")
    write_table(transcript.words, folder / f"{video_id}.words.parquet")
    atomic_write_json(folder / f"{video_id}.json", meta)


def _video_row(video, meta: dict, segments: pd.DataFrame, words: pd.DataFrame) -> dict[str, Any]:
    duration = float(video.duration) if pd.notna(video.duration) else meta.get("audio_seconds", 0.0)
    spoken = float((segments.end - segments.start).sum()) if len(segments) else 0.0
    return {
        "video_id": video.video_id, "video_name": video.video_name, "status": meta["status"],
        "language": meta.get("language"), "language_probability": meta.get("language_probability"),
        "audio_seconds": meta.get("audio_seconds", 0.0), "voiced_seconds": meta.get("voiced_seconds", 0.0),
        "segments": len(segments), "words": len(words),
        "words_per_minute": round(len(words) / (spoken / 60), 1) if spoken > 0 else 0.0,
        "speech_share": round(spoken / duration, 3) if duration else 0.0,
        "transcribe_seconds": meta.get("seconds", 0.0), "note": meta.get("note", ""),
    }  # fmt: skip


def _remove_tables(run: RunPaths) -> None:
    for name in SPEECH_TABLES:
        run.table(name).unlink(missing_ok=True)
    write_subtitles(run, pd.DataFrame(columns=SEGMENT_COLUMNS), pd.DataFrame(columns=["video_id", "video_name"]))


def transcribe_run(
    cfg: PipelineConfig, run: RunPaths | Path | str, *, force: bool = False, model: SpeechModel | None = None
) -> SpeechSummary:
    """Transcribe every video of the run into the speech tables (see the module docstring).

    With `speech.enabled: false` the tables are removed, so no stale speech outlives the setting.
    Raises `ModelUnavailable` when the model's weights are missing and `speech.on_missing_weights`
    is `error`, and `ValueError` for a language the model does not know (a `.en` model asked for another). A video without audio gets no speech and is noted; one whose audio cannot be decoded
    (or whose source path leads outside the corpus and the run) is skipped with its reason.
    """
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    options = cfg.speech
    summary = SpeechSummary(table=pd.DataFrame(columns=SEGMENT_COLUMNS))
    if not options.enabled:
        _remove_tables(run)
        return summary
    model = model or load_speech_model(options, cfg.models)
    summary.record = model.record
    if not model.available:
        summary.notes.append(f"no speech: {model.record.fallback_reason}")
        _remove_tables(run)
        return summary
    if model.english_only and options.language not in (None, "en"):
        raise ValueError(f"speech.language = {options.language!r}, but {model.record.model_id} understands English only; "
                         "set speech.language to en or null, or choose a multilingual speech.model (tiny, base, small, ...)")  # fmt: skip
    videos = read_table(run.table("videos"))
    frames = read_table(run.table("frames"))
    folder = run.root / "speech" / _settings_key(options, model.record.model_id)
    roots = [Path(cfg.corpus.videos), run.root]
    segment_tables, word_tables, rows = [], [], []
    todo = []
    for row, video in enumerate(videos.itertuples()):
        cached = None if force else _cached(folder, video.video_id)
        if cached is None:
            todo.append((row, video))
            continue
        segments, words, meta = cached
        _gather((segment_tables, word_tables, rows), video, segments, words, meta)
        summary.cached += meta["status"] != "no audio"
    if todo and cfg.run.executor == "ray":  # each video transcribed by a Ray worker; what they wrote is gathered here
        todo = _transcribe_on_workers(cfg, run, model, todo, roots, folder, (segment_tables, word_tables, rows), summary)
    if todo:
        started = time.perf_counter()
        total = float(sum(v.duration for _, v in todo if pd.notna(v.duration) and v.has_audio)) or None
        bar = progress_bar(total=total, desc="speech", unit="s")
        try:
            for row, video in todo:
                outcome = _transcribe_video(model, options, video, row, roots, folder, bar)
                if isinstance(outcome, str):
                    _skip_video(video, outcome, folder, summary)
                    continue
                transcript, meta = outcome
                _gather((segment_tables, word_tables, rows), video, transcript.segments, transcript.words, meta)
                summary.transcribed += meta["status"] != "no audio"
        finally:
            bar.close()
        summary.seconds = time.perf_counter() - started
    summary.table = (
        _concat(segment_tables, SEGMENT_COLUMNS).sort_values(["video_name", "start"], kind="stable").reset_index(drop=True)
    )
    summary.words = _concat(word_tables, WORD_COLUMNS)
    summary.videos = pd.DataFrame(rows, columns=VIDEO_COLUMNS)
    summary.videos["subtitles"] = subtitle_paths(summary.videos, summary.table)
    summary.frames = frames_with_speech(frames, summary.table, options.frame_window_seconds)
    summary.subtitles = write_subtitles(run, summary.table, summary.videos)  # before the table that names them
    for table, name in ((summary.table, "speech"), (summary.words, "speech_words"), (summary.frames, "speech_frames"),
                        (summary.videos, "speech_videos")):  # fmt: skip
        write_table(table, run.table(name))
    no_audio = summary.videos[summary.videos.status == "no audio"].video_name.tolist()
    if no_audio:
        summary.notes.append(f"no audio stream, so no speech: {', '.join(no_audio)}")
    counts = summary.counts
    log.info("speech: %d videos (%d transcribed, %d cached), %d segments, %d words, %.0f s of audio at %.1fx real time",
             len(summary.videos), summary.transcribed, summary.cached, counts["speech_segments"], counts["speech_words"],
             counts["speech_audio_seconds"], counts["speech_real_time_factor"])  # fmt: skip
    return summary


@dataclass(frozen=True)
class _WorkerSpeechModel:
    """The speech model as a Ray worker loads it, once, with CTranslate2's threads at the worker's CPUs;
    refuses another model than the driver's (a node without the same weights)."""

    options: SpeechConfig
    models: Any  # ModelsConfig
    model_id: str

    def __call__(self, threads: int) -> SpeechModel:
        model = load_speech_model(self.options, self.models.model_copy(update={"threads": threads}))
        if model.record.model_id != self.model_id:
            raise RuntimeError(f"a Ray worker loaded the speech model {model.record.model_id}, the driver {self.model_id}: "
                               "every node needs the same speech weights (a shared model cache)")  # fmt: skip
        return model


class _Uncounted:
    def update(self, n: float = 1) -> None:
        pass


def _transcribe_on_worker(model: SpeechModel, unit: tuple) -> str | None:
    """One video transcribed on a Ray worker into its cache files (`_store`); None, or why it could not be."""
    options, video, row, roots, folder = unit
    outcome = _transcribe_video(model, options, video, row, roots, folder, _Uncounted())
    return outcome if isinstance(outcome, str) else None


def _transcribe_on_workers(cfg: PipelineConfig, run: RunPaths, model: SpeechModel, todo: list, roots: list[Path],
                           folder: Path, gathered: tuple[list, list, list], summary: SpeechSummary) -> list:  # fmt: skip
    """`transcribe_run`'s videos transcribed by Ray workers (`run.executor: ray`): each writes its video's cache
    files, which are read back here into `gathered` (segment tables, word tables, video rows) and `summary` as
    the local loop does; a video whose worker failed every try is skipped with its error. Returns what is left
    to transcribe here: nothing."""
    from types import SimpleNamespace

    started = time.perf_counter()
    videos = [SimpleNamespace(**video._asdict()) for _, video in todo]  # itertuples' rows do not pickle
    units = [(cfg.speech, video, row, roots, folder) for (row, _), video in zip(todo, videos)]
    seconds = [float(v.duration) if pd.notna(v.duration) and v.has_audio else 0.0 for v in videos]
    bar = progress_bar(total=sum(seconds) or None, desc="speech", unit="s")
    try:
        with open_executor(cfg.run, run.root) as executor:
            outcomes = executor.map(_transcribe_on_worker, units, setup=_WorkerSpeechModel(cfg.speech, cfg.models, model.record.model_id),
                                    on_done=lambda i, result: bar.update(seconds[i]))  # fmt: skip
    finally:
        bar.close()
    for video, outcome in zip(videos, outcomes):
        cached = None if outcome is not None else _cached(folder, video.video_id)
        if cached is None:
            reason = outcome.reason if isinstance(outcome, Failed) else outcome or "its worker wrote no transcript"
            _skip_video(video, reason, folder, summary)
            continue
        segments, words, meta = cached
        _gather(gathered, video, segments, words, meta)
        summary.transcribed += meta["status"] != "no audio"
    summary.seconds = time.perf_counter() - started
    return []


def _gather(gathered: tuple[list, list, list], video, segments: pd.DataFrame, words: pd.DataFrame, meta: dict) -> None:
    """One video's transcript added to `transcribe_run`'s lists: segment tables, word tables, video rows."""
    segment_tables, word_tables, rows = gathered
    segment_tables.append(segments)
    word_tables.append(words)
    rows.append(_video_row(video, meta, segments, words))


def _skip_video(video, reason: str, folder: Path, summary: SpeechSummary) -> None:
    """A video that could not be transcribed: skipped with its reason, and tried again next run."""
    (folder / f"{video.video_id}.json").unlink(missing_ok=True)  # a forced run's failure is no cached success
    log.warning("speech: skipped %s: %s", video.video_path, reason)
    summary.skipped.append(SkippedInput(str(video.video_path), f"no speech: {reason}", stage="caption"))


def _concat(tables: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    tables = [t for t in tables if len(t)]
    return pd.concat(tables, ignore_index=True)[columns] if tables else pd.DataFrame(columns=columns)


def _transcribe_video(model: SpeechModel, options: SpeechConfig, video, row: int, roots: list[Path], folder: Path,
                      bar) -> tuple[Transcript, dict] | str:  # fmt: skip
    """One video's transcript and cache marker, cached; or the reason it has none (a string)."""
    try:
        path = contained_path(str(video.video_path), roots, what=f"tables/videos.parquet row {row}, column video_path")
    except UnsafePath as error:
        return str(error)
    try:
        with AudioDecoder(path) as decoder:
            transcript = transcribe_audio(model, decoder, options, video_id=video.video_id, video_name=video.video_name,
                                          on_audio=bar.update)  # fmt: skip
    except NoAudio:
        transcript = Transcript(pd.DataFrame(columns=SEGMENT_COLUMNS), pd.DataFrame(columns=WORD_COLUMNS))
        meta = {"status": "no audio", "note": "no audio stream"}
        _store(folder, video.video_id, transcript, meta)
        return transcript, meta
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - one video's audio must not stop the pass (av errors, a broken stream)
        log.debug("speech: %s failed", path, exc_info=True)
        return f"its audio cannot be transcribed: {failure_reason(error)}"
    meta = {"status": "transcribed" if len(transcript.segments) else "no speech", "language": transcript.language,
            "language_probability": transcript.language_probability, "audio_seconds": round(transcript.audio_seconds, 3),
            "voiced_seconds": round(transcript.voiced_seconds, 3), "seconds": round(transcript.seconds, 3),
            "model": model.record.model_id}  # fmt: skip
    _store(folder, video.video_id, transcript, meta)
    return transcript, meta


def _timecode(seconds: float, separator: str) -> str:
    milliseconds = max(0, round(seconds * 1000))
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{separator}{rest % 1000:03d}"


def subtitle_texts(segments: pd.DataFrame) -> tuple[str, str]:
    """One video's utterances as WebVTT and SubRip text.

    Example:
        >>> vtt, srt = subtitle_texts(pd.DataFrame({"start": [1.5], "end": [3.25], "text": ["Hello there."]}))
        >>> print(srt)
        1
        00:00:01,500 --> 00:00:03,250
        Hello there.
        <BLANKLINE>
    """
    cues = [(max(0.0, float(s.start)), float(s.end), " ".join(str(s.text).split())) for s in segments.itertuples()]
    vtt = "WEBVTT\n\n" + "".join(f"{_timecode(a, '.')} --> {_timecode(b, '.')}\n{text}\n\n" for a, b, text in cues)
    srt = "".join(f"{i}\n{_timecode(a, ',')} --> {_timecode(b, ',')}\n{text}\n\n" for i, (a, b, text) in enumerate(cues, 1))
    return vtt.rstrip("\n") + "\n", srt.rstrip("\n") + "\n"


def rendered_cues(pieces: pd.DataFrame, segments: pd.DataFrame) -> pd.DataFrame:
    """The utterances heard in a rendered video, on its own clock.

    `pieces`: the render's segment table (`video_id`, source `start`/`end`, `output_start`/`output_end`,
    `mode`); stills carry no sound, so no cues. An utterance cut by a piece's edge is kept for the
    part that is heard.

    Example:
        >>> pieces = pd.DataFrame({"video_id": ["a"], "start": [10.0], "end": [14.0], "output_start": [2.0],
        ...                        "output_end": [6.0], "mode": ["clip"]})
        >>> said = pd.DataFrame({"video_id": ["a", "a"], "start": [9.0, 20.0], "end": [11.5, 21.0], "text": ["Hi.", "Bye."]})
        >>> rendered_cues(pieces, said).to_dict("records")
        [{'start': 2.0, 'end': 3.5, 'text': 'Hi.'}]
    """
    cues = []
    for piece in pieces.itertuples():
        if getattr(piece, "mode", "clip") != "clip":
            continue
        said = segments[(segments.video_id == piece.video_id) & (segments.end > piece.start) & (segments.start < piece.end)]
        shift = piece.output_start - piece.start
        for utterance in said.itertuples():
            start = max(float(utterance.start), piece.start) + shift
            end = min(float(utterance.end), piece.end) + shift
            cues.append({"start": round(start, 3), "end": round(min(end, piece.output_end), 3), "text": utterance.text})
    return pd.DataFrame(cues, columns=["start", "end", "text"])


def write_rendered_subtitles(run: RunPaths, pieces: pd.DataFrame, target: Path) -> Path | None:
    """`target`'s sidecar `.vtt` (the speech heard in the rendered video), or none (an old one removed)."""
    sidecar = target.with_suffix(".vtt")
    path = run.table("speech")
    cues = rendered_cues(pieces, read_table(path)) if path.exists() and len(pieces) else pd.DataFrame()
    if cues.empty:
        sidecar.unlink(missing_ok=True)
        return None
    vtt, _ = subtitle_texts(cues)
    if not sidecar.exists() or sidecar.read_text() != vtt:
        atomic_write_text(sidecar, vtt)
    return sidecar


def subtitle_paths(videos: pd.DataFrame, segments: pd.DataFrame) -> list[str]:
    """Per row of `videos`, its WebVTT file relative to the run, `subtitles/<video>.vtt` (a name two videos share
    gets the id's start appended), or "" for a video without speech. The `.srt` sits beside it."""
    stems = videos.video_name.map(lambda name: Path(str(name)).stem)
    repeated = set(stems[stems.duplicated()])
    spoken = set(segments.video_id) if len(segments) else set()
    return [(f"subtitles/{stem}-{video_id[:8]}.vtt" if stem in repeated else f"subtitles/{stem}.vtt") if video_id in spoken
            else "" for video_id, stem in zip(videos.video_id, stems)]  # fmt: skip


def write_subtitles(run: RunPaths, segments: pd.DataFrame, videos: pd.DataFrame) -> list[Path]:
    """`subtitles/<video>.vtt` and `.srt` for every video with speech (named by `subtitle_paths`); subtitle files of
    videos without speech any more are removed. Returns the files written."""
    written: list[Path] = []
    for video_id, vtt_path in zip(videos.video_id, subtitle_paths(videos, segments)):
        if not vtt_path:
            continue
        vtt, srt = subtitle_texts(segments[segments.video_id == video_id])
        target = run.root / vtt_path
        written += [atomic_write_text(target, vtt), atomic_write_text(target.with_suffix(".srt"), srt)]
    folder = run.root / "subtitles"
    if folder.is_dir():
        for old in folder.iterdir():
            if old.suffix in (".vtt", ".srt") and old not in written:
                old.unlink()
    return written


def subtitle_files(run: RunPaths | Path | str) -> dict[str, Path]:
    """Each video's WebVTT file as `tables/speech_videos.parquet` names it (video_id -> path), resolved inside
    the run: a path leading elsewhere, or a file that is not there, is left out (and logged)."""
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    path = run.table("speech_videos")
    if not path.exists():
        return {}
    table = read_table(path)
    if "subtitles" not in table:  # a run transcribed before the column existed
        return {}
    found = {}
    for row, (video_id, name) in enumerate(zip(table.video_id, table.subtitles)):
        if not isinstance(name, str) or not name:
            continue
        try:
            vtt = run.table_path(name, table="speech_videos", row=row, column="subtitles")
        except UnsafePath as error:
            log.warning("speech: %s", error)
            continue
        if vtt.suffix == ".vtt" and vtt.is_file():
            found[str(video_id)] = vtt
    return found


def spoken_languages(run: RunPaths | Path | str) -> dict[str, str]:
    """video_id -> the language its speech was transcribed in (`tables/speech_videos.parquet`), for videos with one."""
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    path = run.table("speech_videos")
    table = read_table(path) if path.exists() else pd.DataFrame(columns=["video_id", "language"])
    return {str(v): str(lang) for v, lang in zip(table.video_id, table.language) if isinstance(lang, str) and lang}


def subtitle_track(vtt: Path | None, language: str | None = None) -> str:
    """A `<track>` for a `<video>` showing `vtt` (in `language`, default en), its text inlined as a data: URL
    (browsers refuse a subtitle file next to a page opened from file://); empty without a file."""
    if vtt is None or not Path(vtt).is_file():
        return ""
    url = "data:text/vtt;base64," + base64.b64encode(Path(vtt).read_bytes()).decode("ascii")
    srclang = language if language and re.fullmatch(r"[a-z]{2,3}", language) else "en"
    return f'<track kind="subtitles" srclang="{srclang}" label="Speech" default src="{url}">'


def frames_with_speech(frames: pd.DataFrame, segments: pd.DataFrame, window: float) -> pd.DataFrame:
    """One row per frame: the text of the segments said within `window` seconds of it (joined in time
    order; empty when none), their earliest start and latest end, and their ids.

    Example:
        >>> frames = pd.DataFrame({"frame_key": ["a", "b"], "video_id": "v", "timestamp": [0.0, 5.0]})
        >>> said = pd.DataFrame({"segment_id": ["v:0"], "video_id": "v", "start": [0.2], "end": [1.5], "text": ["hello"]})
        >>> frames_with_speech(frames, said, 0.5)[["frame_key", "text", "speech_start", "speech_end"]]
          frame_key   text  speech_start  speech_end
        0         a  hello           0.2         1.5
        1         b                  NaN         NaN
    """
    texts = [""] * len(frames)
    starts = np.full(len(frames), np.nan)
    ends = np.full(len(frames), np.nan)
    ids: list[list[str]] = [[] for _ in range(len(frames))]
    positions = pd.Series(np.arange(len(frames)), index=frames.index)
    by_video = {video_id: group.sort_values("start") for video_id, group in segments.groupby("video_id")} if len(segments) else {}
    for video_id, group in frames.groupby("video_id", sort=False):
        said = by_video.get(video_id)
        if said is None:
            continue
        seg_start, seg_end = said.start.to_numpy(float), said.end.to_numpy(float)
        for index, t in zip(group.index, group.timestamp.to_numpy(float)):
            hit = np.flatnonzero((seg_start <= t + window) & (seg_end >= t - window))
            if not len(hit):
                continue
            i = positions[index]
            texts[i] = " ".join(str(x) for x in said.text.to_numpy()[hit])
            starts[i], ends[i] = seg_start[hit].min(), seg_end[hit].max()
            ids[i] = [str(x) for x in said.segment_id.to_numpy()[hit]]
    return pd.DataFrame({"frame_key": frames.frame_key.to_numpy(), "video_id": frames.video_id.to_numpy(),
                         "timestamp": frames.timestamp.to_numpy(), "text": texts, "speech_start": starts,
                         "speech_end": ends, "segments": ids})  # fmt: skip


# --- the speech search channel -------------------------------------------------------------------


def segment_frames(frames: pd.DataFrame, segments: pd.DataFrame, window: float) -> pd.DataFrame:
    """Which sampled frames show each utterance: those within `window` seconds of it (as in
    `frames_with_speech`) or, when sampling is sparser than that, the frame nearest its middle.
    One row per (segment_id, frame_key).

    Example:
        >>> frames = pd.DataFrame({"frame_key": ["a", "b", "c"], "video_id": "v", "timestamp": [0.0, 5.0, 10.0]})
        >>> said = pd.DataFrame({"segment_id": ["v:0", "v:1"], "video_id": "v", "start": [4.8, 6.5], "end": [5.6, 7.0]})
        >>> segment_frames(frames, said, 0.5).values.tolist()
        [['v:0', 'b'], ['v:1', 'b']]
    """
    pairs: list[tuple[str, str]] = []
    frames_of = {video_id: group.sort_values("timestamp", kind="stable") for video_id, group in frames.groupby("video_id")}
    for video_id, said in segments.groupby("video_id", sort=False):
        shown = frames_of.get(video_id)
        if shown is None:
            continue
        times, keys = shown.timestamp.to_numpy(float), shown.frame_key.to_numpy()
        starts, ends = said.start.to_numpy(float), said.end.to_numpy(float)
        low = np.searchsorted(times, starts - window, "left")
        high = np.searchsorted(times, ends + window, "right")
        middle = (starts + ends) / 2
        after = np.clip(np.searchsorted(times, middle), 0, len(times) - 1)
        before = np.clip(after - 1, 0, len(times) - 1)
        nearest = np.where(np.abs(times[before] - middle) <= np.abs(times[after] - middle), before, after)
        for segment_id, a, b, near in zip(said.segment_id.to_numpy(), low, high, nearest):
            pairs += [(segment_id, key) for key in keys[a:b]] if b > a else [(segment_id, keys[near])]
    return pd.DataFrame(pairs, columns=["segment_id", "frame_key"])


def best_segment_per_frame(pairs: pd.DataFrame, scores: pd.Series) -> pd.DataFrame:
    """For every frame showing a scored utterance (`pairs` from `segment_frames`; `scores` by segment_id),
    the best one: columns frame_key, segment_id, score (best first)."""
    table = pairs.assign(score=pairs.segment_id.map(scores)).dropna(subset=["score"])
    table = table.sort_values(["score", "segment_id"], ascending=[False, True], kind="stable")
    return table.drop_duplicates("frame_key").reset_index(drop=True)[["frame_key", "segment_id", "score"]]


def embed_segments(cfg: PipelineConfig, run: RunPaths | Path | str, *, force: bool = False, encoder=None) -> dict[str, Any]:
    """Each utterance of `tables/speech.parquet` through the sentence encoder, for the speech search channel.

    Writes `tables/speech_segment_embeddings.parquet` (segment_id, video_id, start, end, model_id,
    text, vector) and keeps the run's index collection `speech-segments-<text model>` equal to it
    (ids are segment ids; metadata: video, start, end, text). A text already embedded with the same
    model (here or in the frames' `speech_embeddings`) is not encoded again. Without utterances both
    are emptied, so search never ranks stale speech. Returns counts for the manifest.
    """
    from .index import open_index
    from .models import text_encoder

    run = run if isinstance(run, RunPaths) else RunPaths(run)
    path, vectors_path = run.table("speech"), run.table("speech_segment_embeddings")
    segments = read_table(path) if path.exists() else pd.DataFrame(columns=SEGMENT_COLUMNS)
    segments = segments[segments.text.fillna("").astype(str).str.strip() != ""]
    if segments.empty:
        if vectors_path.exists():  # utterances gone (speech off, or nothing said any more): so are their vectors
            index = open_index(run, cfg.index.url, cfg.index.collection_prefix, writer=True)
            for model_id in read_table(vectors_path).model_id.unique():
                if index.has_collection(f"speech-segments-{model_id}"):
                    collection = index.collection(f"speech-segments-{model_id}", create=False)
                    index.delete(collection, sorted(index.ids(collection)))
            vectors_path.unlink()
        return {"speech_segment_vectors": 0}
    started = time.perf_counter()
    encoder = encoder or text_encoder(cfg.models)
    model_id = encoder.record.model_id
    known: dict[str, np.ndarray] = {}
    for name in ("speech_embeddings", "speech_segment_embeddings"):
        if run.table(name).exists():
            previous = read_table(run.table(name))
            previous = previous[previous.model_id == model_id]
            known.update(zip(previous.text, previous.vector))
    texts = segments.text.astype(str).tolist()
    missing = sorted(set(texts) - set(known))
    if missing:
        known.update(zip(missing, encoder.encode(missing)))
    table = pd.DataFrame({"segment_id": segments.segment_id.to_numpy(), "video_id": segments.video_id.to_numpy(),
                          "start": segments.start.to_numpy(float), "end": segments.end.to_numpy(float),
                          "model_id": model_id, "text": texts, "vector": [known[text] for text in texts]})  # fmt: skip
    write_table(table, vectors_path)
    index = open_index(run, cfg.index.url, cfg.index.collection_prefix, writer=True)
    collection = index.collection(f"speech-segments-{model_id}", dim=encoder.dim)
    present = index.ids(collection)
    new = table if force else table[~table.segment_id.isin(present)]
    names = dict(zip(segments.segment_id, segments.video_name.astype(str)))
    metadatas = [{"video_id": str(row.video_id), "video_name": names[row.segment_id], "start": float(row.start),
                  "end": float(row.end), "text": row.text} for row in new.itertuples()]  # fmt: skip
    upserted = index.upsert(collection, new.segment_id.tolist(), np.stack(new.vector.to_numpy()), metadatas) if len(new) else 0
    stale = sorted(present - set(table.segment_id))
    removed = index.delete(collection, stale) if stale else 0
    log.info("speech channel: %d utterances, %d distinct new texts encoded with %s; index %s: %d upserted, %d removed",
             len(table), len(missing), model_id, collection.name, upserted, removed)  # fmt: skip
    return {"speech_segment_vectors": len(table), "speech_segment_index_upserted": upserted,
            "speech_segment_index_removed": removed, "speech_segment_seconds": round(time.perf_counter() - started, 2)}  # fmt: skip


# --- for the report -----------------------------------------------------------------------------


def speech_report_html(summary: SpeechSummary, *, max_segments: int = 40) -> str:
    """Per video: language, words per minute, speech share of the running time, and the transcript with
    its timestamps (the first `max_segments` segments of each)."""
    import html

    from .plots import format_time

    if summary.videos.empty:
        return "<p>No videos.</p>"
    parts = []
    for video in summary.videos.sort_values("video_name").itertuples():
        said = summary.table[summary.table.video_id == video.video_id]
        facts = [video.status]
        if isinstance(video.language, str) and video.language:
            facts.append(
                f"language {video.language}"
                + (f" ({video.language_probability:.0%})" if pd.notna(video.language_probability) else "")
            )
        if len(said):
            facts += [f"{video.words_per_minute:.0f} words per minute", f"speech {video.speech_share:.0%} of the running time"]
        parts.append(f"<h4>{html.escape(str(video.video_name))}</h4><p>{html.escape(' · '.join(facts))}</p>")
        if len(said):
            lines = "".join(f"<tr><td style='white-space:nowrap'>{format_time(s.start)} – {format_time(s.end)}</td>"
                            f"<td style='text-align:left'>{html.escape(str(s.text))}</td></tr>" for s in said.head(max_segments).itertuples())  # fmt: skip
            more = (
                f"<p>… and {len(said) - max_segments} more segments (tables/speech.parquet)</p>"
                if len(said) > max_segments
                else ""
            )
            parts.append(f"<table>{lines}</table>{more}")
    return "".join(parts)
