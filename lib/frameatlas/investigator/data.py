"""A finished run as the investigator sees it: its videos, their sampled frames, and prompt curves.

`RunView` reads a run's tables once and answers what the player and the chart need: the videos
(with their source files resolved inside the corpus or the run, or left out with the reason),
each video's sampled times, and `curves`: the similarity of prompts to every sampled frame of
one video over time. A prompt is scored by the visual channel (the run's CLIP text side, the
frame vectors) when it can be; otherwise by every text channel the run has (caption, on-screen
text, speech: the prompt's sentence vector against each frame's text), and every line says
which channel scored it. A negative prompt subtracts: ``score = sim(query) - w * sim(negative)``.

Example:
    >>> view = RunView("outputs/demo")  # doctest: +SKIP
    >>> curves = view.curves(view.videos[0].video_id, [Prompt("a rabbit in a meadow")])  # doctest: +SKIP
    >>> [(line.label, line.channel) for line in curves.lines]  # doctest: +SKIP
    [('a rabbit in a meadow', 'visual')]
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import PipelineConfig
from ..files import UnsafePath, contained_path
from ..search import TEXT_CHANNELS, _load_channel, _run_config, _text_query, available_channels, matching_image_encoder
from ..store import RunPaths, read_table

log = logging.getLogger(__name__)

__all__ = ["Curves", "Line", "NotARun", "Prompt", "RunView", "VideoInfo", "check_run_folder"]

TEXT_CACHE_SIZE = 512  # encoded prompts kept per channel model


class NotARun(ValueError):
    """A folder that is not a finished frameatlas run (the message names it and what is missing)."""


def check_run_folder(root: Path | str, *, need_config: bool = True) -> RunPaths:
    """`root` as a run, or `NotARun` naming the folder and what a run has that it lacks."""
    path = Path(root)
    if not path.exists():
        raise NotARun(f"{path}: no such folder; give a run folder such as outputs/demo")
    if not path.is_dir():
        raise NotARun(f"{path}: not a folder; give a run folder such as outputs/demo")
    run = RunPaths(path)
    needed = ("config.json",) * need_config + ("tables/frames.parquet", "tables/videos.parquet")
    missing = [name for name in needed if not (run.root / name).is_file()]
    if missing:
        raise NotARun(
            f"{path}: not a frameatlas run (no {', '.join(missing)}); give a run folder such as outputs/demo, "
            "made by `frameatlas run` (the extract stage at least)"
        )
    return run


@dataclass(frozen=True)
class Prompt:
    """One line of the chart: a text, optionally minus `weight` times a negative text."""

    text: str
    negative: str = ""
    weight: float = 1.0

    @property
    def label(self) -> str:
        if not self.negative:
            return self.text
        weight = "" if self.weight == 1 else f"{self.weight:g}·"
        return f"{self.text} − {weight}{self.negative}"


@dataclass
class Line:
    """A prompt's similarity to every sampled frame of a video (NaN where the channel has no value)."""

    prompt: Prompt
    channel: str  # visual, caption, ocr or speech
    scores: np.ndarray

    @property
    def label(self) -> str:
        return self.prompt.label if self.channel == "visual" else f"{self.prompt.label} [{self.channel}]"

    def as_json(self) -> dict:
        return {
            "label": self.label,
            "text": self.prompt.text,
            "negative": self.prompt.negative,
            "weight": self.prompt.weight,
            "channel": self.channel,
            "y": [None if v != v else v for v in np.round(self.scores.astype(float), 5).tolist()],  # NaN -> null
        }


@dataclass
class Curves:
    """Every line for one video; `reason` says why a prompt has no line (no channel could score it)."""

    video_id: str
    timestamps: np.ndarray
    frame_keys: list[str]
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration: float = 0.0  # the video's length (the chart's time axis spans it)

    def as_json(self) -> dict:
        return {
            "video_id": self.video_id,
            "duration": self.duration,
            "x": [round(float(t), 4) for t in self.timestamps],
            "frame_keys": self.frame_keys,
            "lines": [line.as_json() for line in self.lines],
            "notes": self.notes,
        }


@dataclass(frozen=True)
class VideoInfo:
    video_id: str
    name: str
    duration: float
    fps: float
    has_audio: bool
    frames: int
    poster_frame: str | None  # frame_key of the sampled frame shown in the video list (a third of the way in)
    source: Path | None  # the playable file, resolved inside the corpus or the run
    problem: str | None  # why `source` is None


class RunView:
    """A run's tables read once, for many queries (thread-safe for reading)."""

    def __init__(self, root: Path | str, config: PipelineConfig | None = None):
        self.run = check_run_folder(root, need_config=config is None)
        self.config: PipelineConfig = config if config is not None else _run_config(self.run)
        self.frames = read_table(self.run.table("frames")).reset_index(drop=True)
        self.videos_table = read_table(self.run.table("videos"))
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._row_cache: dict[tuple[str, str], tuple[pd.DataFrame, np.ndarray]] = {}
        self._text_vectors: dict[tuple[str, str], OrderedDict] = {}
        self._thumbnails: dict[str, Path] | None = None
        self.videos = self._video_infos()
        self._by_id = {video.video_id: video for video in self.videos}
        self._positions = {
            str(video_id): rows.sort_values("timestamp", kind="stable").index.to_numpy()
            for video_id, rows in self.frames.groupby("video_id", sort=False)
        }

    @property
    def name(self) -> str:
        return self.run.root.name

    # ------------------------------------------------------------------ videos and files

    def _source_roots(self) -> list[Path]:
        return [Path(self.config.corpus.videos), self.run.root]

    def _video_infos(self) -> list[VideoInfo]:
        counts = self.frames.groupby("video_id").size()
        # a third of the way in, not the first frame: openings are often black (fades, title cards)
        ordered = self.frames.sort_values(["video_id", "timestamp"], kind="stable")
        poster = ordered.groupby("video_id", sort=False).frame_key.agg(lambda keys: keys.iloc[len(keys) // 3])
        infos = []
        for row, video in enumerate(self.videos_table.itertuples()):
            if str(video.video_id) not in counts:  # skipped at extraction: nothing to plot
                continue
            source, problem = None, None
            try:
                source = contained_path(str(video.video_path), self._source_roots(),
                                        what=f"tables/videos.parquet row {row}, column video_path")  # fmt: skip
                if not source.is_file():
                    source, problem = None, f"{video.video_path}: the source video is gone"
            except UnsafePath as error:
                problem = str(error)
            if problem:
                log.warning("investigator: %s", problem)
            video_id = str(video.video_id)
            infos.append(VideoInfo(
                video_id=video_id, name=str(video.video_name), duration=float(video.duration or 0.0),
                fps=float(getattr(video, "fps", 0.0) or 0.0), has_audio=bool(getattr(video, "has_audio", False)),
                frames=int(counts.get(video_id, 0)), poster_frame=str(poster[video_id]) if video_id in poster.index else None,
                source=source, problem=problem,
            ))  # fmt: skip
        return sorted(infos, key=lambda v: v.name)

    def video(self, video_id: str) -> VideoInfo | None:
        return self._by_id.get(video_id)

    def thumbnail(self, frame_key: str) -> Path | None:
        """The frame's thumbnail resolved inside the run (None for an unknown frame key)."""
        if self._thumbnails is None:
            with self._lock:
                if self._thumbnails is None:
                    paths = self.run.thumbnails(self.frames)
                    self._thumbnails = dict(zip(self.frames.frame_key.astype(str), paths))
        return self._thumbnails.get(frame_key)

    def video_frames(self, video_id: str) -> pd.DataFrame:
        """The video's sampled frames in time order (frame_key, timestamp, thumbnail)."""
        rows = self._positions.get(video_id)
        if rows is None:
            return self.frames.iloc[:0]
        return self.frames.iloc[rows]

    # ------------------------------------------------------------------ curves

    def _encode(self, channel: str, model_id: str, texts: list[str]) -> tuple[np.ndarray | None, str | None]:
        """Unit vectors of `texts` in `channel`'s space (cached per text), or None and the reason."""
        cache = self._text_vectors.setdefault((channel, model_id), OrderedDict())
        with self._encode_lock:  # one model load and one encode at a time (the warm-up thread and a query)
            return self._encode_locked(channel, model_id, texts, cache)

    def _encode_locked(self, channel, model_id, texts, cache) -> tuple[np.ndarray | None, str | None]:
        todo = [t for t in dict.fromkeys(texts) if t not in cache]
        if todo:
            if channel == "visual":
                encoder, reason = matching_image_encoder(self.config, model_id, need_text=True)
                if encoder is None:
                    return None, f"visual channel off for text prompts: {reason}"
                vectors = encoder.encode_text(todo)
            else:
                vectors = []
                for text in todo:
                    vector, reason = _text_query(self.config, model_id, text)
                    if vector is None:
                        return None, reason
                    vectors.append(vector)
            with self._lock:
                for text, vector in zip(todo, vectors):
                    cache[text] = np.asarray(vector, np.float32)
                while len(cache) > TEXT_CACHE_SIZE:
                    cache.popitem(last=False)
        return np.stack([cache[t] for t in texts]), None

    def _rows(self, channel: str, table: pd.DataFrame, video_id: str, frame_keys: list[str]) -> np.ndarray:
        """`_rows_of`, remembered per channel and video while the channel's table is the same object
        (search keeps one per file until the file changes)."""
        cached = self._row_cache.get((channel, video_id))
        if cached is not None and cached[0] is table:
            return cached[1]
        rows = _rows_of(table, frame_keys)
        with self._lock:
            self._row_cache[(channel, video_id)] = (table, rows)
        return rows

    def _channel(self, channel: str):
        try:
            return _load_channel(self.run, channel)
        except FileNotFoundError:
            return None

    def curves(self, video_id: str, prompts: list[Prompt]) -> Curves:
        """The similarity of every prompt to every sampled frame of one video, over time.

        Visual channel first (CLIP text vectors against the frame vectors: one matrix product);
        when it cannot answer text, each text channel of the run draws its own line, and frames
        without text in that channel are gaps. `Curves.notes` says what could not be scored and why.
        """
        frames = self.video_frames(video_id)
        video = self.video(video_id)
        curves = Curves(video_id, frames.timestamp.to_numpy(float), frames.frame_key.astype(str).tolist(),
                        duration=video.duration if video is not None else 0.0)  # fmt: skip
        if not prompts or not len(frames):
            return curves
        texts = list(dict.fromkeys([p.text for p in prompts] + [p.negative for p in prompts if p.negative]))
        visual_reason = None
        loaded = self._channel("visual")
        if loaded is not None and len(loaded[0]):
            table, vectors, model_id = loaded
            encoded, visual_reason = self._encode("visual", model_id, texts)
            if encoded is not None:
                rows = self._rows("visual", table, video_id, curves.frame_keys)
                curves.lines = _lines(prompts, texts, encoded, vectors, rows, "visual")
                return curves
        else:
            visual_reason = "visual channel off: no frame vectors yet (run the embed stage)"
        curves.notes.append(visual_reason)
        for channel in TEXT_CHANNELS:
            loaded = self._channel(channel)
            if loaded is None or not len(loaded[0]):
                continue
            table, vectors, model_id = loaded
            encoded, reason = self._encode(channel, model_id, texts)
            if encoded is None:
                curves.notes.append(f"{channel} channel off: {reason}")
                continue
            curves.lines += _lines(
                prompts, texts, encoded, vectors, self._rows(channel, table, video_id, curves.frame_keys), channel
            )
        if not curves.lines:
            text_channels = [c for c in TEXT_CHANNELS if self._channel(c) is not None]
            if not text_channels:
                curves.notes.append("no caption, on-screen text or speech channel in this run to score text prompts with")
        return curves

    def reason_without_lines(self, curves: Curves) -> str:
        """Why a video has no lines, in one sentence for a page."""
        return "No channel can score these prompts: " + "; ".join(curves.notes) if curves.notes else "No prompts."

    def settings(self) -> dict:
        """What the pages start with: the configured prompts and threshold."""
        options = self.config.search
        threshold = options.threshold if options.threshold is not None and options.relative else 0.9
        return {"queries": list(options.queries), "threshold": threshold}

    def describe(self) -> dict:
        """The run as JSON for the app: its name, settings and playable videos."""
        return {
            "name": self.name,
            **self.settings(),
            "channels": available_channels(self.run),
            "videos": [
                {
                    "video_id": v.video_id,
                    "name": v.name,
                    "duration": v.duration,
                    "fps": v.fps,
                    "has_audio": v.has_audio,
                    "frames": v.frames,
                    "poster_frame": v.poster_frame,
                    "playable": v.source is not None,
                    "problem": v.problem,
                }
                for v in self.videos
            ],  # fmt: skip
        }


def _rows_of(table: pd.DataFrame, frame_keys: list[str]) -> np.ndarray:
    """Row of each frame key in a channel table, -1 when the channel has no vector for it."""
    position = pd.Series(np.arange(len(table)), index=table.frame_key.astype(str).to_numpy())
    position = position[~position.index.duplicated()]
    return position.reindex(frame_keys).fillna(-1).to_numpy(int)


def _lines(prompts, texts, encoded, vectors, rows, channel) -> list[Line]:
    """One matrix product for every text, then each prompt's line (minus its weighted negative)."""
    present = rows >= 0
    similarity = np.full((len(rows), len(texts)), np.nan, np.float32)
    if present.any():
        similarity[present] = vectors[rows[present]] @ encoded.T
    column = {text: i for i, text in enumerate(texts)}
    lines = []
    for prompt in prompts:
        scores = similarity[:, column[prompt.text]].copy()
        if prompt.negative:
            scores -= prompt.weight * similarity[:, column[prompt.negative]]
        lines.append(Line(prompt, channel, scores))
    return lines


def dumps(data: dict) -> str:
    """JSON for embedding in a page's <script> (no `</` that could close the tag)."""
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
