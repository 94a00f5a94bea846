"""Search: queries by frame, image and text; thresholds, filters, suppression, fusion, exports, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tinyclip
from conftest import lock_held_elsewhere
from frameatlas import models
from frameatlas.cli import main as cli_main
from frameatlas.config import config_from_dict
from frameatlas.files import UnsafePath
from frameatlas.lock import RunLocked
from frameatlas.search import SearchError, _rank, _suppress_neighbours, export_hits, search, write_text_channel
from frameatlas.store import RunPaths, read_table, write_table
from PIL import Image
from runs import embedded_run


def build_run(tmp_path: Path, image_model: dict) -> RunPaths:
    return embedded_run(tmp_path, image_model, name="s")[1]


@pytest.fixture
def run(tmp_path) -> RunPaths:
    return build_run(tmp_path, {"name": "fallback"})


@pytest.fixture
def clip_run(tmp_path) -> RunPaths:
    folder = tinyclip.save_tiny_local_dir(tmp_path / "tiny-clip")
    return build_run(tmp_path, {"name": f"local-dir:{folder}", "pretrained": None})


def frames_of(run: RunPaths) -> pd.DataFrame:
    return read_table(run.table("frames"))


def test_a_frame_queried_by_its_own_image_comes_first(run):
    frames = frames_of(run)
    for row in frames.sample(5, random_state=0).itertuples():
        result = search(run, image=run.absolute(row.thumbnail), top_k=3)
        assert result.hits.frame_key[0] == row.frame_key
        assert result.hits.score[0] == pytest.approx(1.0, abs=1e-5)
        assert list(result.hits["rank"]) == [1, 2, 3] and result.hits.score.is_monotonic_decreasing
    by_key = search(run, frame_key=frames.frame_key[3], top_k=1)
    assert list(by_key.hits.frame_key) == [frames.frame_key[3]]
    with Image.open(run.absolute(frames.thumbnail[2])) as image:
        assert search(run, image=np.asarray(image), top_k=1).hits.frame_key[0] == frames.frame_key[2]


def test_thresholds_relative_and_absolute(run):
    key = frames_of(run).frame_key[0]
    every = search(run, frame_key=key, top_k=1000).hits
    relative = search(run, frame_key=key, top_k=1, threshold=0.9)
    best = every.score.max()
    assert relative.threshold_value == pytest.approx(0.9 * best)
    assert set(relative.above_threshold.frame_key) == set(every[every.score >= 0.9 * best].frame_key)
    assert len(relative.top_k) == 1
    assert set(relative.hits.frame_key) == set(relative.top_k.frame_key) | set(relative.above_threshold.frame_key)
    absolute = search(run, frame_key=key, top_k=1, threshold=0.5, relative=False)
    assert set(absolute.above_threshold.frame_key) == set(every[every.score >= 0.5].frame_key)
    with pytest.raises(SearchError, match=r"relative threshold = 1.5: must be in \(0, 1\]"):
        search(run, frame_key=key, threshold=1.5)


def test_filters_and_an_empty_result_is_an_empty_table(run):
    key = frames_of(run).frame_key[0]
    only_two = search(run, frame_key=key, top_k=100, videos=["two.mp4"]).hits
    assert set(only_two.video_name) == {"two.mp4"} and len(only_two) == 4
    window = search(run, frame_key=key, top_k=100, time_range=(1.0, 2.0)).hits
    assert window.timestamp.between(1.0, 2.0).all() and len(window) == 3 + 2
    nothing = search(run, frame_key=key, top_k=5, videos=["two.mp4"], time_range=(50, None))
    assert nothing.hits.empty and list(nothing.hits.columns)[:3] == ["rank", "score", "score_visual"]
    with pytest.raises(SearchError, match="video\\(s\\) not in this run: three.mp4; videos are one.mp4, two.mp4"):
        search(run, frame_key=key, videos=["three.mp4"])


def test_temporal_suppression_keeps_the_best_hit_per_window():
    ranked = pd.DataFrame({
        "video_id": ["a", "a", "b", "a", "a"], "timestamp": [10.0, 11.0, 10.5, 13.5, 9.0],
        "score": [0.9, 0.8, 0.7, 0.6, 0.5],
    })  # fmt: skip
    kept = _suppress_neighbours(ranked, 2.0)
    assert list(zip(kept.video_id, kept.timestamp)) == [("a", 10.0), ("b", 10.5), ("a", 13.5)]
    assert _suppress_neighbours(ranked, 0).equals(ranked)


def test_suppression_applies_before_top_k(run):
    key = frames_of(run).frame_key[4]
    plain = search(run, frame_key=key, top_k=4).hits
    spread = search(run, frame_key=key, top_k=4, suppress_seconds=1.2).hits
    assert len(spread) == 4
    for _, group in spread.groupby("video_id"):
        times = sorted(group.timestamp)
        assert all(b - a >= 1.2 for a, b in zip(times, times[1:]))
    assert plain.frame_key[0] == spread.frame_key[0] == key


def test_reciprocal_rank_fusion_orders_by_summed_reciprocal_ranks():
    frames = pd.DataFrame({
        "frame_key": ["f1", "f2", "f3"], "video_id": "v", "video_name": "v.mp4",
        "timestamp": [0.0, 1.0, 2.0], "thumbnail": "t.jpg",
    })  # fmt: skip
    scores = {
        "visual": pd.Series([0.30, 0.20, 0.10], index=["f1", "f2", "f3"]),  # ranks 1, 2, 3
        "caption": pd.Series([0.10, 0.90, 0.80], index=["f1", "f2", "f3"]),  # ranks 3, 1, 2
    }
    fused = _rank(frames, scores)
    # f2: 1/62 + 1/61 > f1: 1/61 + 1/63 > f3: 1/63 + 1/62
    assert list(fused.frame_key) == ["f2", "f1", "f3"]
    assert fused.score[0] == pytest.approx(1 / 62 + 1 / 61)
    assert list(fused.score_caption) == [0.90, 0.10, 0.80]


def test_caption_channel_has_real_text_semantics(run):
    frames = frames_of(run)
    texts = ["a rabbit eating grass in a sunny meadow"] + [
        f"{word} on a desk" for word in ("a keyboard", "a coffee mug", "a stapler", "a pencil", "a lamp")
    ] * 3
    texts = (texts * 3)[: len(frames)]
    encoder = models.text_encoder(config_from_dict({}).models)
    write_text_channel(run, "caption", list(frames.frame_key), texts, encoder)
    result = search(run, "a bunny in a field", top_k=3, channels=["caption"])
    assert result.channels == ["caption"]
    assert result.hits.frame_key[0] in set(frames.frame_key[[i for i, t in enumerate(texts) if "rabbit" in t]])
    both = search(run, "a bunny in a field", top_k=3)
    assert both.channels == ["caption"] and any("visual channel off for text queries" in n for n in both.notes)


def test_visual_and_caption_channels_fuse_with_a_clip_model(clip_run):
    frames = frames_of(clip_run)
    encoder = models.text_encoder(config_from_dict({}).models)
    write_text_channel(clip_run, "caption", list(frames.frame_key), ["a red square"] * len(frames), encoder)
    result = search(clip_run, "a red square", top_k=5)
    assert result.channels == ["visual", "caption"]
    assert {"score_visual", "score_caption"} <= set(result.hits.columns)
    assert result.hits.score.is_monotonic_decreasing


def test_export_writes_tables_and_frame_folders(run, tmp_path):
    key = frames_of(run).frame_key[0]
    result = search(run, frame_key=key, top_k=3, threshold=0.95)
    dest = export_hits(result, run, tmp_path / "export")
    assert pd.read_csv(dest / "hits.csv").frame_key.tolist() == result.hits.frame_key.tolist()
    assert len(read_table(dest / "hits.parquet")) == len(result.hits)
    top = sorted(p.name for p in (dest / "top_k").iterdir())
    assert len(top) == 3 and top[0].startswith("0001_1.0000_")
    assert len(list((dest / "above_threshold").iterdir())) == len(result.above_threshold)
    assert "query: frame" in (dest / "query.txt").read_text()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_refuses_a_foreign_folder_and_touches_nothing_in_it(run, tmp_path):
    result = search(run, frame_key=frames_of(run).frame_key[0], top_k=3)
    foreign = tmp_path / "my-documents"
    (foreign / "top_k").mkdir(parents=True)
    (foreign / "top_k" / "holiday.jpg").write_bytes(b"not ours")
    (foreign / "hits.csv").write_text("mine")
    before = snapshot(foreign)
    with pytest.raises(SearchError, match=rf"{foreign}: folder is not empty and no frameatlas export wrote it"):
        export_hits(result, run, foreign)
    assert snapshot(foreign) == before

    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_hits(result, run, empty) == empty
    assert len(list((empty / "top_k").iterdir())) == 3 and (empty / ".frameatlas-export.json").is_file()


def test_re_export_replaces_only_what_the_previous_export_wrote(run, tmp_path):
    frames = frames_of(run)
    dest = tmp_path / "export"
    first = export_hits(search(run, frame_key=frames.frame_key[0], top_k=4), run, dest)
    first_frames = set(p.name for p in (dest / "top_k").iterdir())
    (dest / "top_k" / "my-note.txt").write_text("keep me")
    (dest / "README.txt").write_text("keep me too")
    second = search(run, frame_key=frames.frame_key[len(frames) - 1], top_k=2)
    export_hits(second, run, first)
    names = {p.name for p in (dest / "top_k").iterdir()}
    wanted = {p.name for p in (dest / "top_k").iterdir() if p.suffix == ".jpg"}
    assert names == wanted | {"my-note.txt"} and len(wanted) == 2 and not (first_frames - wanted) & names
    assert (dest / "README.txt").read_text() == "keep me too"
    assert pd.read_csv(dest / "hits.csv").frame_key.tolist() == second.hits.frame_key.tolist()
    for hit, name in zip(second.top_k.itertuples(), sorted(wanted)):
        assert (dest / "top_k" / name).read_bytes() == run.absolute(hit.thumbnail).read_bytes()
    assert not [p for p in dest.rglob("*") if ".fa-" in p.name]  # no temp file left


def test_export_refuses_a_thumbnail_outside_the_run(run, tmp_path):
    result = search(run, frame_key=frames_of(run).frame_key[0], top_k=3)
    result.hits.loc[1, "thumbnail"] = "../../../etc/passwd"
    with pytest.raises(UnsafePath, match=r"search hits row 1 \(frame .*\), column thumbnail: path '../../../etc/passwd'"):
        export_hits(result, run, tmp_path / "export")
    assert not (tmp_path / "export").exists()  # refused before anything was written

    frames = frames_of(run)  # a crafted run folder: the frames table itself points outside
    frames.loc[5, "thumbnail"] = "../../../etc/passwd"
    write_table(frames, run.table("frames"))
    crafted = search(run, frame_key=frames.frame_key[5], top_k=1)
    with pytest.raises(UnsafePath, match=r"tables/frames.parquet row 5, column thumbnail: path '../../../etc/passwd'"):
        export_hits(crafted, run, tmp_path / "export")


def test_export_into_the_run_takes_the_run_lock(run, tmp_path):
    with lock_held_elsewhere(run.root, "another writer"):
        result = search(run, frame_key=frames_of(run).frame_key[0], top_k=2)  # reading needs no lock
        with pytest.raises(RunLocked, match="another writer"):
            export_hits(result, run, run.root / "exports" / "q1")
        assert not (run.root / "exports").exists()
        assert export_hits(result, run, tmp_path / "outside").is_dir()  # outside the run: no lock needed
    export_hits(result, run, run.root / "exports" / "q1")
    assert len(list((run.root / "exports" / "q1" / "top_k").iterdir())) == 2


def test_query_errors(run, tmp_path):
    with pytest.raises(SearchError, match="exactly one query"):
        search(run, "   ")
    with pytest.raises(SearchError, match="run folder not found"):
        search(tmp_path / "nope", "x")
    with pytest.raises(SearchError, match="query image not found"):
        search(run, image=tmp_path / "missing.png")
    with pytest.raises(SearchError, match="is not in this run"):
        search(run, frame_key="0000:0")
    with pytest.raises(SearchError, match="no channel can answer"):
        search(run, "a rabbit")  # fallback descriptor: no text side, no caption channel
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text("{}")
    with pytest.raises(SearchError, match="run the embed stage"):
        search(tmp_path / "bare", "a rabbit")


def test_cli_prints_a_table_and_reports_errors(run, capsys, tmp_path):
    frames = frames_of(run)
    code = cli_main(["search", str(run.root), "--image", str(run.absolute(frames.thumbnail[1])), "--top-k", "3",
                     "--threshold", "0.99", "--export", str(tmp_path / "cli-export")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert "3 in top-k" in lines[0] and "channels: visual" in lines[0]
    assert lines[1].split() == ["rank", "score", "score_visual", "video", "time", ">=thr"]
    assert lines[2].split()[:3] == ["1", "1.0000", "1.0000"] and lines[2].endswith("*")
    assert (tmp_path / "cli-export" / "hits.csv").exists()

    assert cli_main(["search", str(tmp_path / "nowhere"), "a rabbit"]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert cli_main(["search", str(run.root), ""]) == 2
    assert "exactly one query" in capsys.readouterr().err
    (tmp_path / "foreign" / "keep.txt").parent.mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("mine")
    assert cli_main(["search", str(run.root), "--frame", frames.frame_key[0], "--export", str(tmp_path / "foreign")]) == 2
    assert "no frameatlas export wrote it" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "foreign").iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_cli_as_a_command(run):
    result = subprocess.run(
        [sys.executable, "-m", "frameatlas.cli", "search", str(run.root), "a rabbit"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "no channel can answer" in result.stderr
