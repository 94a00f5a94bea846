"""espeak-ng's voice saying a text, with when each word starts: the truth speech tests measure word times against.

The `espeak-ng` command does not tell where its words are; its library (libespeak-ng, which the
Debian package installs with the command) reports a word event with each word's position in the
audio. The library keeps state between texts, so every text is said in a fresh process, where the
audio is the command's to the sample (`espeak-ng -w`).

Run as a script: ``python espeak_words.py TEXT OUT.wav`` writes the WAV and prints the words as JSON.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import subprocess
import sys
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: audio handed to the callback, nothing played
POS_CHARACTER = 1
CHARS_UTF8, END_PAUSE = 0x1, 0x1000  # the command's flags: its audio is the same
EVENT_END_OF_LIST, EVENT_WORD = 0, 1


class _Event(ctypes.Structure):
    """espeak_EVENT (speak_lib.h)."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]  # fmt: skip


@dataclass(frozen=True)
class Word:
    """A word of the text and when espeak starts saying it (seconds from the start of its audio)."""

    text: str
    start: float


def _say_here(text: str) -> tuple[int, np.ndarray, list[Word]]:
    library = ctypes.CDLL(ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1")
    rate = library.espeak_Initialize(SYNCHRONOUS, 0, None, 0)
    if rate <= 0:
        raise RuntimeError(f"libespeak-ng did not start ({rate})")
    chunks: list[np.ndarray] = []
    words: list[Word] = []
    encoded = text.encode()

    def heard(samples, count, events):
        if count > 0:
            chunks.append(np.ctypeslib.as_array(samples, (count,)).copy())
        i = 0
        while events[i].type != EVENT_END_OF_LIST:
            event = events[i]
            if event.type == EVENT_WORD and event.length > 0:  # positions count characters from 1
                said = encoded[event.text_position - 1 : event.text_position - 1 + event.length].decode(errors="replace")
                words.append(Word(said, event.audio_position / 1000))
            i += 1
        return 0

    callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))(heard)
    library.espeak_SetSynthCallback(callback)
    if library.espeak_Synth(encoded, len(encoded) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8 | END_PAUSE, None, None) != 0:
        raise RuntimeError(f"libespeak-ng could not say {text!r}")
    library.espeak_Synchronize()
    return rate, np.concatenate(chunks), words


def say(text: str, wav: Path) -> tuple[int, np.ndarray, list[Word]]:
    """(sample rate, int16 samples, words with their start times) of espeak-ng saying `text`; also written to `wav`."""
    done = subprocess.run([sys.executable, __file__, text, str(wav)], capture_output=True, text=True, check=True)
    with wave.open(str(wav)) as audio:
        samples = np.frombuffer(audio.readframes(audio.getnframes()), np.int16)
        rate = audio.getframerate()
    return rate, samples, [Word(**word) for word in json.loads(done.stdout)]


if __name__ == "__main__":
    said, out = sys.argv[1], Path(sys.argv[2])
    sample_rate, audio, found = _say_here(said)
    with wave.open(str(out), "wb") as target:
        target.setnchannels(1), target.setsampwidth(2), target.setframerate(sample_rate)
        target.writeframes(audio.astype("<i2").tobytes())
    print(json.dumps([{"text": w.text, "start": w.start} for w in found]))
