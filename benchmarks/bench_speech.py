"""Speech pass speed: frameatlas's streaming, VAD-first transcription against faster-whisper's own defaults.

    python benchmarks/bench_speech.py [--videos data/demo/bbb.mp4,...] [--seconds 120] [--talk 60] [--repeat 3] [--json OUT]

Both run in this process with the same loaded model (`speech.model`, default the packaged tiny.en,
int8, `models.threads` threads), on the same files, order rotated between repeats:

* baseline: `WhisperModel.transcribe(path)` with faster-whisper's defaults (no VAD, beam 5, no word
  times): the package decodes the whole file into memory and Whisper reads every 30 s window;
* frameatlas: `speech.transcribe_audio` as the caption stage runs it (audio streamed with PyAV in
  pieces cut at pauses, Silero VAD first, beam 5, word times, word edges next to pauses moved onto
  the voice: the time that last step takes is shown apart, "edges s").

Files: every demo video with an audio stream (music and effects, and conversation.mp4, a recorded
conversation), and with `--talk N` a generated N-second recording of espeak-ng sentences with pauses
(speech to transcribe). Printed per file and mode: audio seconds, median wall seconds with the spread,
real-time factor (audio seconds per wall second), the share of audio VAD kept, and segments found; then
the totals over the demo videos, and the ratio baseline / frameatlas.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

os.environ.setdefault("FRAMEATLAS_PROGRESS", "off")

from frameatlas.config import ModelsConfig, SpeechConfig  # noqa: E402
from frameatlas.models.speech import load_speech_model  # noqa: E402
from frameatlas.speech import SAMPLE_RATE, AudioDecoder, transcribe_audio  # noqa: E402

DEMO = ["data/demo/bbb.mp4", "data/demo/bigbuckbunny.mp4", "data/demo/world.mp4", "data/demo/conversation.mp4"]
SENTENCES = [
    "Please meet me at the railway station tomorrow morning.",
    "The children are playing football in the park.",
    "We need more coffee for the meeting.",
    "Turn left at the next traffic light.",
    "The train to London leaves from platform four.",
]


def machine() -> dict:
    import ctranslate2
    import faster_whisper

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "faster_whisper": faster_whisper.__version__, "ctranslate2": ctranslate2.__version__}  # fmt: skip


def talk_file(seconds: float, folder: Path) -> Path:
    """A WAV of espeak-ng sentences, each followed by a second of silence, `seconds` long."""
    voices = []
    for sentence in SENTENCES:
        wav = folder / "say.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), sentence], check=True)
        with wave.open(str(wav)) as audio:
            rate = audio.getframerate()
            samples = np.frombuffer(audio.readframes(audio.getnframes()), np.int16).astype(np.float32)
        resampled = np.interp(np.arange(0, len(samples) / rate, 1 / SAMPLE_RATE), np.arange(len(samples)) / rate, samples)
        voices.append(np.concatenate([resampled, np.zeros(SAMPLE_RATE)]).astype(np.int16))
    track = np.concatenate(voices)
    track = np.tile(track, int(np.ceil(seconds * SAMPLE_RATE / len(track))))[: int(seconds * SAMPLE_RATE)]
    path = folder / f"talk-{int(seconds)}s.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(SAMPLE_RATE)
        out.writeframes(track.tobytes())
    return path


def first_seconds(path: Path, seconds: float, folder: Path) -> Path:
    """The first `seconds` of a file, cut by stream copy with the bundled ffmpeg (no re-encoding)."""
    import imageio_ffmpeg

    cut = folder / f"{path.stem}-first{int(seconds)}s{path.suffix}"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(path), "-t", str(seconds),
                    "-c", "copy", str(cut)], check=True)  # fmt: skip
    return cut


def run_baseline(model, path: Path) -> dict:
    started = time.perf_counter()
    segments, info = model.model.transcribe(str(path))  # faster-whisper's defaults: no VAD, beam 5
    found = list(segments)
    return {"seconds": time.perf_counter() - started, "audio": info.duration, "kept": 1.0, "segments": len(found)}


def run_frameatlas(model, path: Path, options: SpeechConfig) -> dict:
    from frameatlas import speech

    edges = [0.0]  # seconds spent finding the voice around words (speech._voiced_spans), part of the total
    find_voice = speech._voiced_spans

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return find_voice(*args, **kwargs)
        finally:
            edges[0] += time.perf_counter() - started

    speech._voiced_spans = timed
    started = time.perf_counter()
    try:
        with AudioDecoder(path) as decoder:
            transcript = transcribe_audio(model, decoder, options)
    finally:
        speech._voiced_spans = find_voice
    audio = transcript.audio_seconds
    return {"seconds": time.perf_counter() - started, "audio": audio, "kept": transcript.voiced_seconds / audio if audio else 0.0,
            "segments": len(transcript.segments), "edges": edges[0]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", default=",".join(DEMO), help="comma-separated files with audio")
    parser.add_argument("--seconds", type=float, default=0, help="use only the first N seconds of each video; 0 = all")
    parser.add_argument("--talk", type=float, default=60.0, help="also a generated recording of speech this long; 0 = none")
    parser.add_argument("--model", default="packaged", help="speech.model")
    parser.add_argument("--threads", type=int, default=0, help="models.threads (0 = every core)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per file and mode (median reported)")
    parser.add_argument("--modes", default="baseline,frameatlas")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    options = SpeechConfig(enabled=True, model=args.model)
    model = load_speech_model(options, ModelsConfig(threads=args.threads))
    scratch = Path(tempfile.mkdtemp(prefix="bench-speech-"))
    files = [Path(v) for v in args.videos.split(",") if v]
    if args.seconds > 0:
        files = [first_seconds(f, args.seconds, scratch) for f in files]
    if args.talk > 0:
        files.append(talk_file(args.talk, scratch))
    modes = args.modes.split(",")
    results: dict[str, dict[str, list[dict]]] = {str(f): {m: [] for m in modes} for f in files}
    for repeat in range(args.repeat):
        order = modes[repeat % len(modes) :] + modes[: repeat % len(modes)]
        for path in files:
            for mode in order:
                outcome = run_baseline(model, path) if mode == "baseline" else run_frameatlas(model, path, options)
                results[str(path)][mode].append(outcome)
                print(f"  run {repeat + 1} {mode:10s} {path.name}: {outcome['seconds']:.2f} s", flush=True)

    print(f"\nmodel {model.record.model_id} ({model.record.backend}), {args.repeat} runs each, machine {machine()}")
    print(
        f"{'file':28s} {'mode':10s} {'audio s':>8s} {'wall s (median, min-max)':>26s} {'x real time':>11s} {'VAD kept':>8s} {'segs':>5s}"
        f" {'edges s':>8s}"
    )
    summary: dict[str, dict] = {}
    for path, by_mode in results.items():
        for mode, runs in by_mode.items():
            walls = [r["seconds"] for r in runs]
            median = statistics.median(walls)
            audio = runs[0]["audio"]
            row = {"audio": audio, "median": median, "min": min(walls), "max": max(walls), "rtf": audio / median,
                   "kept": runs[0]["kept"], "segments": runs[0]["segments"],
                   "edges": statistics.median(r.get("edges", 0.0) for r in runs)}  # fmt: skip
            summary.setdefault(path, {})[mode] = row
            print(f"{Path(path).name:28s} {mode:10s} {audio:8.1f} {median:10.2f} ({min(walls):.2f}-{max(walls):.2f}){'':7s} "
                  f"{row['rtf']:11.1f} {row['kept']:8.1%} {row['segments']:5d} {row['edges']:8.2f}")  # fmt: skip
    demo = [p for p in summary if p in {str(f) for f in files[: len(files) - (args.talk > 0)]}]
    totals = {}
    for mode in modes:
        audio = sum(summary[p][mode]["audio"] for p in demo)
        wall = sum(summary[p][mode]["median"] for p in demo)
        totals[mode] = {"audio": audio, "wall": wall, "rtf": audio / wall if wall else 0.0}
        print(f"demo videos, {mode}: {audio:.0f} s of audio in {wall:.1f} s = {totals[mode]['rtf']:.1f}x real time")
    if {"baseline", "frameatlas"} <= set(modes) and totals["frameatlas"]["wall"]:
        print(
            f"ratio baseline / frameatlas wall time on the demo videos: {totals['baseline']['wall'] / totals['frameatlas']['wall']:.2f}"
        )
    shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "model": model.record.as_dict(), "files": summary,
                                               "totals": totals, "repeat": args.repeat}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
