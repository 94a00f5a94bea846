"""The render stage: segments from hits, and videos whose every frame is checked against its source."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import av
import numpy as np
import pandas as pd
import psutil
import pytest
import videogen
from conftest import lock_held_elsewhere
from frameatlas import render
from frameatlas.config import RenderConfig, config_from_dict
from frameatlas.files import is_temp_name
from frameatlas.lock import RunLocked
from frameatlas.render import (
    RenderError,
    RenderJob,
    Segment,
    hit_segments,
    render_job,
    render_run,
    render_search,
    select_segments,
)
from frameatlas.store import RunPaths, read_table, write_table
from runs import embedded_run

FPS = 25
FALLBACK = {"name": "fallback"}
# one.mp4: 6 s with sound; two.mp4: 4 s, silent. 25 fps like the output, so output frames map 1:1 to source frames.
VIDEOS = {"one.mp4": (6, FPS, [2.0, 4.0]), "two.mp4": (4, FPS, [2.0])}


def options(**changes) -> RenderConfig:
    base = {"fps": FPS, "width": 160, "height": 120, "padding_before": 0.0, "padding_after": 0.0, "title_seconds": 0.4,
            "max_total_seconds": 60, "max_segments_per_video": 100, "max_segment_seconds": None, "preset": "ultrafast"}
    return RenderConfig(**{**base, **changes})


def _make_run(root: Path, name: str = "t", **sections):
    folder = root / "videos"
    if not folder.exists():
        videogen.make_video(folder / "one.mp4", seconds=6, fps=FPS, scene_cuts=[2.0, 4.0], audio=True)
        videogen.make_video(folder / "two.mp4", seconds=4, fps=FPS, scene_cuts=[2.0])
    return embedded_run(root, FALLBACK, videos=VIDEOS, name=name, **sections)


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    """A run that tests only read (and render into their own output files)."""
    return _make_run(tmp_path_factory.mktemp("render"))


def frames_of(run: RunPaths, video: str) -> pd.DataFrame:
    frames = read_table(run.table("frames"))
    return frames[frames.video_name == video].sort_values("timestamp").reset_index(drop=True)


def decode(path: Path) -> tuple[list[int | None], list[float], av.container.InputContainer]:
    """The frame index drawn in every output frame (None where there is none: title cards) and the PTS."""
    indices, times = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            try:
                indices.append(videogen.read_frame_index(frame.to_ndarray(format="rgb24")))
            except ValueError:
                indices.append(None)
            times.append(float(frame.pts * frame.time_base))
    return indices, times


def streams(path: Path) -> dict[str, dict]:
    with av.open(str(path)) as container:
        info = {"duration": container.duration / av.time_base}
        for stream in container.streams:
            info[stream.type] = {
                "codec": stream.codec_context.name,
                "pix_fmt": getattr(stream.codec_context, "pix_fmt", None),
                "width": getattr(stream.codec_context, "width", None),
                "height": getattr(stream.codec_context, "height", None),
                "frames": stream.frames,
            }
        return info


def audio_levels(path: Path, windows: list[tuple[float, float]]) -> list[float]:
    """RMS of the decoded audio in each (start, end) window of output seconds."""
    with av.open(str(path)) as container:
        chunks = [frame.to_ndarray().astype(np.float64).reshape(-1, frame.samples).mean(axis=0)
                  for frame in container.decode(audio=0)]  # fmt: skip
        rate = container.streams.audio[0].rate
    samples = np.concatenate(chunks)
    return [float(np.sqrt(np.mean(samples[int(a * rate):int(b * rate)] ** 2))) for a, b in windows]


# --- segments --------------------------------------------------------------------------------------


def _table(times_by_video: dict[str, tuple[list[float], float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, videos = [], []
    for video, (times, duration) in times_by_video.items():
        videos.append({"video_id": video, "video_name": f"{video}.mp4", "video_path": f"/v/{video}.mp4", "duration": duration})
        rows += [{"frame_key": f"{video}:{t}", "video_id": video, "video_name": f"{video}.mp4", "video_path": f"/v/{video}.mp4",
                  "timestamp": t, "thumbnail": f"frames/{video}/{t}.jpg"} for t in times]  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(videos)


@pytest.mark.parametrize(
    ("hit_times", "padding", "expected"),
    [
        # adjacent samples merge; a hit covers its sample up to the next one
        ([2.0, 3.0, 4.0], (0.0, 0.0), [(2.0, 5.0, 3)]),
        ([2.0, 4.0], (0.0, 0.0), [(2.0, 3.0, 1), (4.0, 5.0, 1)]),
        # padding that makes two runs overlap merges them; it stops at 0 and at the video's end
        ([2.0, 4.0], (0.5, 0.5), [(1.5, 5.5, 2)]),
        ([2.0, 5.0], (0.2, 0.2), [(1.8, 3.2, 1), (4.8, 6.2, 1)]),
        ([0.0, 9.0], (1.0, 1.0), [(0.0, 2.0, 1), (8.0, 9.5, 1)]),
    ],
)
def test_hits_become_padded_merged_segments(hit_times, padding, expected):
    frames, videos = _table({"a": ([float(t) for t in range(10)], 9.5)})
    hits = pd.DataFrame({"frame_key": [f"a:{float(t)}" for t in hit_times], "score": np.linspace(0.9, 0.5, len(hit_times))})
    segments = hit_segments(hits, frames, videos, padding_before=padding[0], padding_after=padding[1])
    assert [(round(s.start, 6), round(s.end, 6), s.hits) for s in segments] == expected
    assert segments[0].score == pytest.approx(0.9) and segments[0].best_timestamp == hit_times[0]
    assert all(s.source == "/v/a.mp4" for s in segments)


def test_segments_never_merge_across_videos_and_slideshow_keeps_every_hit():
    frames, videos = _table({"a": ([0.0, 1.0, 2.0], 3.0), "b": ([0.0, 1.0, 2.0], 3.0)})
    hits = pd.DataFrame({"frame_key": ["a:1.0", "a:2.0", "b:0.0", "b:1.0"], "score": [0.5, 0.6, 0.7, 0.8]})
    segments = hit_segments(hits, frames, videos)
    assert [(s.video_id, s.start, s.end, s.hits, s.score) for s in segments] == [("a", 0.5, 3.0, 2, 0.6), ("b", 0.0, 2.5, 2, 0.8)]
    stills = hit_segments(hits, frames, videos, slideshow=True)
    assert [(s.video_id, s.start, s.end, s.still, s.thumbnails) for s in stills] == [
        ("a", 1.0, 1.0, True, ("frames/a/1.0.jpg",)), ("a", 2.0, 2.0, True, ("frames/a/2.0.jpg",)),
        ("b", 0.0, 0.0, True, ("frames/b/0.0.jpg",)), ("b", 1.0, 1.0, True, ("frames/b/1.0.jpg",)),
    ]  # fmt: skip


def _segment(video: str, start: float, end: float, score: float, best: float | None = None) -> Segment:
    return Segment(video, f"{video}.mp4", f"/v/{video}.mp4", start, end, score, 1, start if best is None else best)


def test_selection_respects_per_video_and_total_limits_and_orders():
    segments = [_segment("a", 0, 2, 0.9), _segment("a", 10, 12, 0.8), _segment("a", 20, 22, 0.7), _segment("b", 5, 9, 0.85)]
    by_time = select_segments(segments, max_total_seconds=100, max_segments_per_video=2, order="time")
    assert [(s.video_id, s.start) for s in by_time] == [("a", 0), ("a", 10), ("b", 5)]
    by_score = select_segments(segments, max_total_seconds=100, max_segments_per_video=2, order="score")
    assert [(s.video_id, s.start) for s in by_score] == [("a", 0), ("b", 5), ("a", 10)]
    # 2 s + 4 s fit in 7 s; the third best is cut to the 1 s left, around its best hit
    capped = select_segments(segments, max_total_seconds=7, max_segments_per_video=5, order="score")
    assert [(s.video_id, s.start, s.end) for s in capped] == [("a", 0, 2), ("b", 5, 9), ("a", 10, 11)]
    assert sum(s.duration for s in capped) == pytest.approx(7)
    # a long segment is shortened around its best hit
    [short] = select_segments([_segment("a", 0, 30, 0.5, best=15)], max_total_seconds=100, max_segments_per_video=5,
                              max_segment_seconds=6)  # fmt: skip
    assert (short.start, short.end) == (13, 19) and short.start <= short.best_timestamp <= short.end
    # and its hits are the ones left inside it
    frames, videos = _table({"a": ([float(t) for t in range(30)], 30.0)})
    hits = pd.DataFrame({"frame_key": [f"a:{float(t)}" for t in range(5, 25)], "score": [0.9 if t == 15 else 0.5 for t in range(5, 25)]})
    [long] = hit_segments(hits, frames, videos, padding_before=0, padding_after=0)
    assert (long.start, long.end, long.hits) == (5.0, 25.0, 20)
    [cut] = select_segments([long], max_total_seconds=100, max_segments_per_video=5, max_segment_seconds=6)
    assert (cut.start, cut.end, cut.hits, cut.hit_timestamps) == (13.0, 19.0, 6, (13.0, 14.0, 15.0, 16.0, 17.0, 18.0))
    assert cut.thumbnails == tuple(f"frames/a/{t}.jpg" for t in cut.hit_timestamps)


# --- rendering -------------------------------------------------------------------------------------


def test_output_frames_are_the_source_frames_at_the_expected_times(shared_run, tmp_path):
    cfg, run = shared_run
    one, two = frames_of(run, "one.mp4"), frames_of(run, "two.mp4")
    hits = pd.concat([one.iloc[[2, 3]], one.iloc[[8]], two.iloc[[5]]]).assign(score=[0.9, 0.8, 0.7, 0.95])
    opts = options()
    segments = hit_segments(hits, read_table(run.table("frames")), read_table(run.table("videos")))
    job = RenderJob("exact", "query", "exact frames", select_segments(segments, max_total_seconds=60, max_segments_per_video=9))
    result = render_job(job, run, opts, dest=tmp_path / "exact.mp4")

    title = round(0.4 * FPS)
    expected: list[int | None] = [None] * title
    # padding 0.5 s puts starts between frames (frame i is at i / 25 s): a clip opens on the frame on screen then
    assert {round(s.start * FPS, 3) % 1 for s in job.segments} == {0.5}
    for segment in job.segments:
        first = math.floor(segment.start * FPS)
        expected += list(range(first, first + round(segment.duration * FPS)))
    indices, times = decode(result.path)
    assert indices == expected
    assert times == pytest.approx([i / FPS for i in range(len(expected))], abs=1e-6)
    # duration = segments + title card, to the frame
    assert result.frames == len(expected) == title + round(sum(s.duration for s in job.segments) * FPS)
    info = streams(result.path)
    assert info["video"] == {"codec": "h264", "pix_fmt": "yuv420p", "width": 160, "height": 120, "frames": len(expected)}
    assert abs(info["duration"] - len(expected) / FPS) <= 1 / FPS
    assert info["audio"]["codec"] == "aac"
    head = result.path.read_bytes()
    assert head.index(b"moov") < head.index(b"mdat"), "faststart: the index must come first"
    # the segments table says where each segment sits, in source and in output seconds
    table = result.segments
    assert list(table.video_name) == [s.video_name for s in job.segments]
    assert table.output_start.iloc[0] == pytest.approx(title / FPS)
    assert table.output_end.iloc[-1] == pytest.approx(len(expected) / FPS)
    assert (table.output_end - table.output_start).tolist() == pytest.approx(table.duration.tolist())
    assert result.contact_sheet.exists() and result.contact_sheet.suffix == ".png"


def test_sound_is_kept_where_the_source_has_it_and_silence_elsewhere(shared_run, tmp_path):
    cfg, run = shared_run
    one, two = frames_of(run, "one.mp4"), frames_of(run, "two.mp4")
    hits = pd.concat([two.iloc[[1]], one.iloc[[4]]]).assign(score=[0.9, 0.8])
    segments = hit_segments(hits, read_table(run.table("frames")), read_table(run.table("videos")))
    job = RenderJob("sound", "query", "sound", select_segments(segments, max_total_seconds=60, max_segments_per_video=9,
                                                                 order="score"))  # fmt: skip
    assert [s.video_name for s in job.segments] == ["two.mp4", "one.mp4"]
    result = render_job(job, run, options(title_seconds=1.0), dest=tmp_path / "sound.mp4")
    table = result.segments
    silent, loud = table.iloc[0], table.iloc[1]
    title_rms, two_rms, one_rms = audio_levels(result.path, [(0.05, 0.95), (silent.output_start + 0.05, silent.output_end - 0.05),
                                                             (loud.output_start + 0.05, loud.output_end - 0.05)])  # fmt: skip
    assert title_rms < 1e-3 and two_rms < 1e-3  # title card and a silent source: silence, but a track all along
    # the source's mono 440 Hz sine at amplitude 0.3 (RMS 0.3 / sqrt 2), spread over two channels at -3 dB
    assert one_rms == pytest.approx(0.3 / np.sqrt(2) / np.sqrt(2), rel=0.1)
    with av.open(str(result.path)) as container:
        audio = container.streams.audio[0]
        assert audio.codec_context.name == "aac" and audio.rate == 48000
        assert float(audio.duration * audio.time_base) == pytest.approx(result.frames / FPS, abs=0.05)


def test_slideshow_shows_each_hit_as_a_still(shared_run, tmp_path):
    cfg, run = shared_run
    one = frames_of(run, "one.mp4")
    hits = one.iloc[[1, 2, 7]].assign(score=[0.5, 0.9, 0.7])
    opts = options(mode="slideshow", slideshow_seconds=0.2, title_seconds=0)
    job = render.query_job(type("Result", (), {"query": "stills", "hits": hits})(), run, opts)
    assert [s.still for s in job.segments] == [True, True, True]
    result = render_job(job, run, opts, dest=tmp_path / "stills.mp4")
    indices, _ = decode(result.path)
    per_still = round(0.2 * FPS)
    assert indices == [i for i in one.frame_index.iloc[[1, 2, 7]] for _ in range(per_still)]
    assert list(result.segments["mode"]) == ["still"] * 3


def _write_clusters(run: RunPaths, groups: dict[int, list[str]]) -> None:
    rows = [{"frame_key": key, "labelling": "test", "method": "kmeans", "params": "", "label": label, "name": f"group {label}",
             "name_source": "test", "distance": 0.1 * i} for label, keys in groups.items() for i, key in enumerate(keys)]  # fmt: skip
    write_table(pd.DataFrame(rows), run.table("clusters"))


def _cluster_run(tmp_path, **render_options):
    cfg, run = _make_run(tmp_path, render={**options().model_dump(), **render_options}, search={"queries": []})
    one, two = frames_of(run, "one.mp4"), frames_of(run, "two.mp4")
    _write_clusters(run, {0: list(one.frame_key[:3]), 1: list(two.frame_key[2:5]), 2: [one.frame_key[6], two.frame_key[0]]})
    return cfg, run


def test_a_vanished_source_fails_only_the_videos_that_need_it(tmp_path, expect_logged_errors):
    cfg, run = _cluster_run(tmp_path)
    gone = Path(frames_of(run, "one.mp4").video_path[0])
    gone.rename(gone.with_name("moved.mp4"))
    summary = render_run(cfg, run)
    status = dict(zip(summary.videos.name, summary.videos.status))
    assert status == {"cluster_00_group-0": "failed", "cluster_01_group-1": "rendered", "cluster_02_group-2": "failed"}
    for failed in (r for r in summary.rendered if r.status == "failed"):
        assert failed.error == f"{gone}: source video not found (it was there when its frames were extracted); restore it, " \
                               "or set render.mode to slideshow or auto to show its frames as stills"
    assert (run.videos / "cluster_01_group-1.mp4").exists() and not (run.videos / "cluster_00_group-0.mp4").exists()
    assert [(s.path, s.stage) for s in summary.skipped] == [(str(gone), "render")]
    assert summary.counts["failed"] == 2 and summary.counts["videos"] == 1
    assert any(str(gone) in r.getMessage() for r in expect_logged_errors.records)
    table = read_table(run.table("render_videos"))
    assert table.set_index("name").error["cluster_00_group-0"].startswith(str(gone))

    # auto mode: the lost source's segments become its sampled frames as stills, with the same length
    auto = render_run(cfg.model_copy(update={"render": cfg.render.model_copy(update={"mode": "auto"})}), run)
    assert set(auto.videos.status) == {"rendered", "cached"}
    modes = auto.segments.groupby("name")["mode"].apply(lambda m: ",".join(sorted(set(m)))).to_dict()
    assert modes == {"cluster_00_group-0": "still", "cluster_01_group-1": "clip", "cluster_02_group-2": "clip,still"}
    indices, _ = decode(run.videos / "cluster_00_group-0.mp4")
    kept = frames_of(run, "one.mp4").frame_index[:3].tolist()
    assert [i for i in indices if i is not None] and set(i for i in indices if i is not None) == set(kept)


def _leftovers(root: Path) -> list[str]:
    """Temporary files (the atomic writer's, or any other kind) and scratch files left under `root`."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if is_temp_name(p.name) or ".tmp" in p.name or p.name.startswith((".render-", "join-")))  # fmt: skip


def test_a_source_path_outside_the_corpus_and_the_run_is_refused_and_the_others_render(tmp_path, expect_logged_errors):
    cfg, run = _cluster_run(tmp_path)
    frames = read_table(run.table("frames"))
    # a crafted table: two.mp4's frames point at a real, playable copy outside the corpus and the run
    outside = tmp_path / "elsewhere" / "two.mp4"
    outside.parent.mkdir()
    shutil.copy(tmp_path / "videos" / "two.mp4", outside)
    frames.loc[frames.video_name == "two.mp4", "video_path"] = str(outside)
    write_table(frames, run.table("frames"))
    # while a link in the user's own corpus folder is followed, wherever it points
    linked = tmp_path / "elsewhere" / "one.mp4"
    (tmp_path / "videos" / "one.mp4").rename(linked)
    (tmp_path / "videos" / "one.mp4").symlink_to(linked)
    summary = render_run(cfg, run)
    status = dict(zip(summary.videos.name, summary.videos.status))
    assert status == {"cluster_00_group-0": "rendered", "cluster_01_group-1": "failed", "cluster_02_group-2": "failed"}
    rows = set(frames.index[frames.video_name == "two.mp4"])
    for failed in (r for r in summary.rendered if r.status == "failed"):
        [row] = [row for row in rows if f"tables/frames.parquet row {row}, column video_path" in failed.error]
        assert f"path '{outside}'" in failed.error and failed.error.endswith("refused")
    assert [(s.path, s.stage) for s in summary.skipped] == [(str(outside), "render")]
    assert not (run.videos / "cluster_01_group-1.mp4").exists()
    assert _leftovers(run.root) == []

    # slideshow mode reads no source, only thumbnails, and those must lie in the run
    picture = tmp_path / "elsewhere" / "picture.jpg"
    shutil.copy(run.root / frames.thumbnail.iloc[0], picture)
    row = frames.index[frames.frame_key == frames_of(run, "one.mp4").frame_key[0]][0]  # a hit of cluster 0
    frames.loc[row, "thumbnail"] = str(picture)
    write_table(frames, run.table("frames"))
    slides = render_run(cfg.model_copy(update={"render": cfg.render.model_copy(update={"mode": "slideshow"})}), run)
    status = dict(zip(slides.videos.name, slides.videos.status))
    assert status == {"cluster_00_group-0": "failed", "cluster_01_group-1": "rendered", "cluster_02_group-2": "rendered"}
    error = slides.videos.set_index("name").error["cluster_00_group-0"]
    assert f"tables/frames.parquet row {row}, column thumbnail" in error and f"path '{picture}'" in error


def _hits_of(run: RunPaths, rows: list[int], query: str = "hits"):
    """A stand-in for a `search.SearchResult`: a query and the hits it kept."""
    hits = frames_of(run, "one.mp4").iloc[rows].assign(score=1.0)
    return type("Result", (), {"query": query, "hits": hits})()


def test_export_video_waits_for_no_one_a_locked_run_fails_at_once(shared_run, tmp_path):
    cfg, run = shared_run
    with lock_held_elsewhere(run.root, "frameatlas run pipeline.yaml") as holder:
        started = time.perf_counter()
        with pytest.raises(RunLocked, match=f"pid {holder.pid} .*frameatlas run pipeline.yaml"):
            render_search(_hits_of(run, [3]), run, tmp_path / "locked.mp4")
        assert time.perf_counter() - started < 5
        assert list(tmp_path.iterdir()) == []


def test_export_video_overwrites_only_what_an_export_wrote(shared_run, tmp_path):
    cfg, run = shared_run
    theirs = tmp_path / "theirs.mp4"
    theirs.write_bytes(b"someone's video")
    with pytest.raises(RenderError, match=f"{theirs}: already exists and was not written by frameatlas"):
        render_search(_hits_of(run, [3]), run, theirs)
    assert theirs.read_bytes() == b"someone's video"
    notes = tmp_path / "notes.csv"  # a sidecar name counts too
    notes.write_text("mine")
    with pytest.raises(RenderError, match=f"{notes}: already exists"):
        render_search(_hits_of(run, [3]), run, tmp_path / "notes.mp4")
    assert notes.read_text() == "mine" and not (tmp_path / "notes.mp4").exists()

    first = render_search(_hits_of(run, [3]), run, tmp_path / "ours.mp4", options(title_seconds=0))
    again = render_search(_hits_of(run, [3, 4]), run, tmp_path / "ours.mp4", options(title_seconds=0))
    assert (first.status, again.status) == ("rendered", "rendered") and len(again.segments) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.csv", "ours.csv", "ours.json", "ours.mp4", "ours.png", "theirs.mp4"]


def test_an_ffmpeg_call_past_the_time_limit_is_stopped_and_says_which_key(shared_run, tmp_path):
    cfg, run = shared_run
    one = frames_of(run, "one.mp4")
    hits = one.iloc[[6]].assign(score=1.0)
    segments = hit_segments(hits, read_table(run.table("frames")), read_table(run.table("videos")))
    opts = options(title_seconds=0, crf=37, timeout_seconds=0.001)  # crf 37: a cut no other test has cached
    with pytest.raises(RenderError) as info:
        render_job(RenderJob("slow", "query", "slow", segments), run, opts, dest=tmp_path / "slow.mp4")
    message = str(info.value)
    assert "took longer than 0.001 s (render.timeout_seconds) and was stopped" in message
    assert f"{segments[0].source} " in message and f"making {run.cache / 'render'}/clip-" in message
    assert info.value.sources == {segments[0].source: message}
    assert not (tmp_path / "slow.mp4").exists()
    assert _leftovers(run.root) == [] and _leftovers(tmp_path) == []
    assert [c for c in psutil.Process().children(recursive=True) if "ffmpeg" in c.name()] == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_rerun_reuses_unchanged_videos_and_removes_outputs_no_longer_wanted(tmp_path):
    cfg, run = _cluster_run(tmp_path)
    first = render_run(cfg, run)
    assert set(first.videos.status) == {"rendered"} and first.counts["videos"] == 3
    assert _leftovers(run.root) == [], "a render leaves no temporary or scratch files"
    assert all(not p.name.startswith(".") for p in run.videos.iterdir())
    path = run.videos / "cluster_01_group-1.mp4"
    stamp = path.stat().st_mtime_ns
    again = render_run(cfg, run)
    assert set(again.videos.status) == {"cached"} and path.stat().st_mtime_ns == stamp
    assert again.videos.duration.tolist() == first.videos.duration.tolist()

    changed = render_run(cfg.model_copy(update={"render": cfg.render.model_copy(update={"crf": 30})}), run)
    assert set(changed.videos.status) == {"rendered"} and path.stat().st_mtime_ns != stamp
    # cached cuts that no output uses any more are pruned
    used = {name for r in changed.rendered for name in json.loads(r.path.with_suffix(".json").read_text())["pieces"]}
    assert {p.name for p in (run.cache / "render").iterdir()} == used

    one = frames_of(run, "one.mp4")
    _write_clusters(run, {0: list(one.frame_key[:3])})  # fewer clusters now
    render_run(cfg, run)
    assert sorted(p.name for p in run.videos.iterdir()) == [f"cluster_00_group-0.{s}" for s in ("json", "mp4", "png")]
    assert _leftovers(run.root) == []


def test_query_videos_need_a_text_side_and_say_so(tmp_path):
    cfg, run = _make_run(tmp_path, render={**options().model_dump(), "clusters": False}, search={"queries": ["a red car"]})
    summary = render_run(cfg, run)
    assert summary.counts["videos"] == 0
    [note] = summary.notes
    assert note.startswith("no video for query 'a red car'") and "cannot encode text queries" in note


def test_the_cli_renders_the_hits_of_one_search(shared_run, tmp_path, capsys):
    from frameatlas.cli import main

    cfg, run = shared_run
    key = frames_of(run, "one.mp4").frame_key[4]
    dest = tmp_path / "clip" / "hits.mp4"
    code = main(["search", str(run.root), "--frame", key, "--top-k", "2", "--threshold", "0.999", "--export-video", str(dest)])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"video: {dest}" in out
    assert dest.exists() and dest.with_suffix(".png").exists() and dest.with_suffix(".csv").exists()
    table = pd.read_csv(dest.with_suffix(".csv"))
    assert set(table.columns) >= {"video_name", "source", "start", "end", "score"}
    assert streams(dest)["video"]["codec"] == "h264"

    no_name = main(["search", str(run.root), "--frame", key, "--export-video"])
    assert no_name == 2 and "--export-video needs a file name" in capsys.readouterr().err
    bad = main(["search", str(run.root), "--frame", key, "--export-video", str(tmp_path / "hits.avi")])
    assert bad == 1 and "must be an .mp4 file" in capsys.readouterr().err


def test_ffmpeg_failures_name_the_file_and_show_ffmpeg_s_message(shared_run, tmp_path):
    cfg, run = shared_run
    broken = videogen.make_text_file_with_video_extension(tmp_path / "broken.mp4")
    segment = Segment("x", "broken.mp4", str(broken), 0.0, 1.0, 1.0, 1, 0.0)
    with pytest.raises(RenderError, match=f"{broken}") as info:
        render_job(RenderJob("broken", "query", "broken", [segment]), run, options(), dest=tmp_path / "out.mp4",
                   source_roots=[tmp_path])  # fmt: skip
    assert "cannot open the source video" in str(info.value) or "ffmpeg failed" in str(info.value)
    assert not (tmp_path / "out.mp4").exists()


def _open_fds() -> set[tuple[str, str]]:
    """This process's open file descriptors, with what each points to."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:  # closed while listed (the listing's own descriptor)
            continue
    return found


@pytest.mark.slow
def test_hundreds_of_segments_leave_no_open_files_or_child_processes(shared_run, tmp_path):
    cfg, run = shared_run
    videos = read_table(run.table("videos")).set_index("video_name")
    segments = []
    for i in range(200):  # 0.12 s segments all over both videos, every one a separate cut
        name = "one.mp4" if i % 2 else "two.mp4"
        start = (i * 0.04) % (videos.duration[name] - 0.2)
        segments.append(Segment(videos.video_id[name], name, videos.video_path[name], start, start + 0.12, 1.0, 1, start))
    before = _open_fds()
    result = render_job(RenderJob("many", "query", "many", segments), run, options(title_seconds=0), dest=tmp_path / "many.mp4")
    assert result.frames == 200 * 3 and len(result.segments) == 200
    # what the render could leak: a file of the run or the output, or a pipe to ffmpeg (descriptors
    # that other threads of the test session open or close meanwhile are not the render's)
    left_open = [target for _, target in _open_fds() - before if target.startswith(("pipe:", str(run.root), str(tmp_path)))]
    assert left_open == []
    children = psutil.Process().children(recursive=True)
    assert [c for c in children if c.status() == psutil.STATUS_ZOMBIE] == []
    assert [c.name() for c in children if "ffmpeg" in c.name()] == []
    indices, _ = decode(result.path)
    for segment, offset in zip(segments[:20], range(0, 60, 3)):  # spot check: every cut starts where it should
        assert indices[offset] == math.floor(segment.start * FPS + 1e-6)


def test_render_config_errors_name_the_key():
    from frameatlas.config import ConfigError

    with pytest.raises(ConfigError, match=r"render.width = 641: .*multiple of 2"):
        config_from_dict({"render": {"width": 641}})
    with pytest.raises(ConfigError, match=r"render.order = \"random\": .*'time'"):
        config_from_dict({"render": {"order": "random"}})


def test_copying_the_run_keeps_rendered_paths_relative(tmp_path):
    cfg, run = _cluster_run(tmp_path)
    render_run(cfg, run)
    table = read_table(run.table("render_videos"))
    assert all(not Path(p).is_absolute() and (run.root / p).exists() for p in table.path)
    moved = tmp_path / "elsewhere"
    shutil.copytree(run.root, moved)
    assert all((moved / p).exists() for p in table.contact_sheet)
