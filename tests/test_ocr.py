"""On-screen text: RapidOCR (weights from its package) reads generated frames, the ocr channel finds them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import videogen
from frameatlas.config import ConfigError, config_from_dict
from frameatlas.embed import embed_text_channels
from frameatlas.files import UnsafePath, is_temp_name
from frameatlas.ocr import OCR_COLUMNS, ocr_sample_html, read_frame_text
from frameatlas.report import _stage_sentence
from frameatlas.search import SearchError, search
from frameatlas.store import read_table, read_thumbnail, write_table
from runs import embedded_run

# One caption per second; frames are sampled every 0.5 s, so two frames show each.
CAPTIONS = ["FRAME ATLAS", "", "RED CAR PARKING", "OPEN MOVIE"]


def text_run(tmp_path, **ocr):
    videogen.make_text_video(tmp_path / "videos" / "signs.mp4", CAPTIONS)
    return embedded_run(tmp_path, {"name": "fallback"}, name="ocr", extract={"thumbnail_long_side": 384},
                        caption={"ocr": {"enabled": True, **ocr}})  # fmt: skip


def squeeze(text: str) -> str:
    """OCR may drop or add the space between two words; compare letters only."""
    return "".join(text.split()).upper()


def test_every_frame_gets_the_text_it_shows_and_a_rerun_reads_nothing(tmp_path):
    cfg, run = text_run(tmp_path)
    summary = read_frame_text(cfg, run)
    table = read_table(run.table("ocr"))
    assert list(table.columns) == OCR_COLUMNS and len(table) == 8
    assert table.timestamp.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    assert [squeeze(text) for text in table.text] == [squeeze(CAPTIONS[int(t)]) for t in table.timestamp]
    shown = table[table.text != ""]
    assert (shown.lines == 1).all() and (shown.score >= cfg.caption.ocr.min_score).all()
    assert (table[table.text == ""].lines == 0).all()
    assert set(table.engine) == {"rapidocr-ppocrv4"}
    counts = summary.counts
    assert (counts["ocr_frames_read"], counts["ocr_frames_cached"], counts["ocr_frames_with_text"]) == (8, 0, 6)
    assert summary.record.model_id == "rapidocr-ppocrv4" and summary.record.weights.endswith("models")

    again = read_frame_text(cfg, run)
    assert (again.read, again.cached) == (0, 8)
    assert again.table.equals(summary.table)
    html = ocr_sample_html(run, again.table)
    assert html.count("<img") == 6 and "PARKING" in html and "ATLAS" in html


def test_the_ocr_channel_finds_a_frame_by_the_words_it_shows(tmp_path):
    cfg, run = text_run(tmp_path)
    read_frame_text(cfg, run)
    counts, record = embed_text_channels(cfg, run)
    assert counts["ocr_vectors"] == 6 and counts["ocr_index_upserted"] == 6 and counts["caption_vectors"] == 0
    assert record.model_id == counts["ocr_text_model"]

    result = search(run, "a red car is parked", top_k=2)
    assert result.channels == ["ocr"]  # the fallback descriptor has no text side: only the text answers
    assert sorted(result.hits.timestamp) == [2.0, 2.5]
    assert result.hits.score_ocr.min() >= cfg.search.min_text_score

    with pytest.raises(SearchError, match=r"ocr channel: no frame's text is similar enough to the query \(best -?0\.\d+, "
                                          r"below search.min_text_score 0.35\)"):  # fmt: skip
        search(run, "a flock of birds over the sea")
    everything = search(run, "a flock of birds over the sea", min_text_score=-1, top_k=100)
    assert len(everything.hits) == 6  # every frame with text, however unrelated; the blank ones have no vector


def test_ocr_off_leaves_no_table_and_no_channel(tmp_path):
    cfg, run = text_run(tmp_path)
    read_frame_text(cfg, run)
    embed_text_channels(cfg, run)
    assert run.table("ocr_embeddings").exists()
    cfg.caption.ocr.enabled = False
    summary = read_frame_text(cfg, run)
    assert summary.counts == {"ocr": "off"} and not run.table("ocr").exists()
    counts, _ = embed_text_channels(cfg, run)
    assert counts["ocr_vectors"] == 0 and not run.table("ocr_embeddings").exists()  # stale text never outlives its table


def test_without_the_ocr_package_the_stage_says_so_and_goes_on(tmp_path, monkeypatch):
    cfg, run = text_run(tmp_path)
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # import fails as if not installed
    summary = read_frame_text(cfg, run)
    assert summary.record.model_id == "ocr-off" and not run.table("ocr").exists()
    assert "pip install rapidocr-onnxruntime" in summary.record.fallback_reason
    assert "caption.ocr.enabled: false" in summary.notes[0]
    assert "Off in this run: on-screen text (OCR) search channel" in summary.record.banner


def test_an_unreadable_thumbnail_is_left_out_with_its_reason_and_the_rest_is_read(tmp_path):
    cfg, run = text_run(tmp_path)
    frames = read_table(run.table("frames"))
    broken = run.absolute(frames.thumbnail[4])  # 2.0 s: "RED CAR PARKING"
    original = broken.read_bytes()
    broken.write_bytes(original[: len(original) // 3])  # cut short, as a full disk would leave it
    summary = read_frame_text(cfg, run)
    [skipped] = summary.skipped
    assert (skipped.path, skipped.stage, skipped.status) == (frames.video_path[4], "caption", "partial")
    assert skipped.reason.startswith(f"on-screen text of 1 of 8 frames not read: frame {frames.frame_key[4]}: ")
    assert str(broken) in skipped.reason
    table = read_table(run.table("ocr"))
    assert table.timestamp.tolist() == [0.0, 0.5, 1.0, 1.5, 2.5, 3.0, 3.5]
    assert [squeeze(text) for text in table.text] == [squeeze(CAPTIONS[int(t)]) for t in table.timestamp]
    assert summary.counts["ocr_frames_skipped"] == 1 and summary.model_records[0]["model_id"] == "rapidocr-ppocrv4"
    assert [p for p in run.root.rglob("*") if is_temp_name(p.name)] == []

    broken.write_bytes(original)  # the incomplete video was not cached: it is read again, whole
    again = read_frame_text(cfg, run)
    assert (again.read, again.cached, again.skipped) == (8, 0, [])
    assert len(read_table(run.table("ocr"))) == 8


def test_a_thumbnail_outside_the_run_is_refused(tmp_path):
    cfg, run = text_run(tmp_path)
    frames = read_table(run.table("frames"))
    frames.loc[3, "thumbnail"] = "frames/../../../elsewhere.jpg"
    write_table(frames, run.table("frames"))
    with pytest.raises(
        UnsafePath, match=r"tables/frames.parquet row 3, column thumbnail: path 'frames/\.\./\.\./\.\./elsewhere.jpg'"
    ):
        read_frame_text(cfg, run)
    assert not run.table("ocr").exists()


class _CountingEngine:
    """RapidOCR's engine with its full-size reads counted (the gate's small detection is not one)."""

    def __init__(self, engine):
        self.engine, self.calls = engine, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.engine(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def counting_reader(cfg, threads: int | None = None):
    from frameatlas.models.ocr import OcrReader

    reader = OcrReader(cfg.caption.ocr, cfg.models.threads if threads is None else threads)
    reader.engine = _CountingEngine(reader.engine)
    return reader


def test_the_text_gate_skips_blank_frames_and_keeps_every_text(tmp_path):
    cfg, run = text_run(tmp_path)
    exact = read_frame_text(cfg, run, reader=(plain := counting_reader(cfg)))
    assert plain.engine.calls == 8 and exact.gated == 0 and exact.counts["ocr_gate_short_side"] == "off"

    cfg.caption.ocr.gate_short_side = 160
    reader = counting_reader(cfg)
    gated = read_frame_text(cfg, run, reader=reader)
    assert (gated.read, gated.cached) == (8, 0)  # gated texts are never taken from (or given to) the exact cache
    assert gated.table.text.tolist() == exact.table.text.tolist()
    assert reader.engine.calls == 6  # the two blank frames (1.0 s, 1.5 s) were not read at full size
    counts = gated.counts
    assert (counts["ocr_frames_gated"], counts["ocr_gate_short_side"], counts["ocr_frames_with_text"]) == (2, 160, 6)
    assert gated.result()["counts"]["ocr_frames_gated"] == 2  # the stage's manifest entry
    sentence, _ = _stage_sentence("caption", counts)
    assert "2 frames showed no text candidate" in sentence

    blank = reader.text_probability(read_thumbnail(run.thumbnails(read_table(run.table("frames")))[2]))
    shown = reader.text_probability(read_thumbnail(run.thumbnails(read_table(run.table("frames")))[0]))
    assert blank < cfg.caption.ocr.gate_score <= shown


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"ocr_frames_read": 12, "ocr_frames_cached": 0, "ocr_frames_with_text": 5, "ocr_seconds_per_frame": 0.04},
         "Read on-screen text on 12 frames; 5 show text (0.04 s per frame read)."),
        ({"ocr_frames_read": 12, "ocr_frames_cached": 667, "ocr_frames_with_text": 84, "ocr_seconds_per_frame": 0.05},
         "Read on-screen text on 12 frames (667 more from earlier runs); 84 show text (0.05 s per frame read)."),
        ({"ocr_frames_read": 0, "ocr_frames_cached": 679, "ocr_frames_with_text": 84, "ocr_seconds_per_frame": 0.0},
         "On-screen text of 679 frames, all from earlier runs; 84 show text."),
    ],
)  # fmt: skip
def test_the_caption_sentence_tells_frames_read_from_texts_kept(counts, expected):
    sentence, numbers = _stage_sentence("caption", counts)
    assert expected in sentence
    assert ("frames with text", str(counts["ocr_frames_with_text"])) in numbers


def test_the_text_gate_passes_over_every_frame_of_a_video_without_text(tmp_path):
    videogen.make_text_video(tmp_path / "videos" / "blank.mp4", ["", "", ""])
    cfg, run = embedded_run(tmp_path, {"name": "fallback"}, name="blank", extract={"thumbnail_long_side": 384},
                            caption={"ocr": {"enabled": True, "gate_short_side": 128}})  # fmt: skip
    reader = counting_reader(cfg)
    summary = read_frame_text(cfg, run, reader=reader)
    assert (summary.read, summary.gated, reader.engine.calls) == (6, 6, 0)
    assert (summary.table.text == "").all() and (summary.table.lines == 0).all()


@pytest.mark.parametrize(("value", "expected"), [("off", None), (False, None), (None, None), (160, 160)])
def test_gate_short_side_takes_pixels_or_off(value, expected):
    assert config_from_dict({"caption": {"ocr": {"gate_short_side": value}}}).caption.ocr.gate_short_side == expected


@pytest.mark.parametrize("value", [True, 16, 4096, "small"])
def test_a_bad_gate_short_side_names_the_key(value):
    with pytest.raises(ConfigError, match=r"caption\.ocr\.gate_short_side"):
        config_from_dict({"caption": {"ocr": {"gate_short_side": value}}})


def test_threads_that_sleep_instead_of_spinning_read_the_same_text(tmp_path):
    from frameatlas.models.ocr import OcrReader

    cfg, run = text_run(tmp_path)
    images = [read_thumbnail(path) for path in run.thumbnails(read_table(run.table("frames")))]
    on_onnxruntime = cfg.caption.ocr.model_copy(update={"runtime": "onnxruntime"})  # spin_wait is ONNX Runtime's
    spinning = OcrReader(on_onnxruntime.model_copy(update={"spin_wait": True}))
    sleeping = OcrReader(on_onnxruntime.model_copy(update={"spin_wait": False}))
    for session in (sleeping.engine.text_det.infer.session, sleeping.engine.text_rec.session.session):
        entries = session.get_session_options()
        assert entries.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert [[line.text for line in sleeping.read(image)] for image in images] == [
        [line.text for line in spinning.read(image)] for image in images
    ]


def test_openvino_reads_exactly_the_text_onnx_runtime_reads_and_keeps_its_own_cache(tmp_path):
    from frameatlas.models.ocr import OcrReader

    cfg, run = text_run(tmp_path)
    images = [read_thumbnail(path) for path in run.thumbnails(read_table(run.table("frames")))]
    runtimes = ("openvino", "onnxruntime")
    readers = {runtime: OcrReader(cfg.caption.ocr.model_copy(update={"runtime": runtime})) for runtime in runtimes}
    assert [reader.runtime for reader in readers.values()] == list(runtimes)
    assert " on openvino " in readers["openvino"].record.backend and "openvino" not in readers["onnxruntime"].record.backend
    texts = {runtime: [[line.text for line in reader.read(image)] for image in images] for runtime, reader in readers.items()}
    assert texts["openvino"] == texts["onnxruntime"]
    assert [squeeze("".join(lines)) for lines in texts["openvino"]] == [squeeze(CAPTIONS[i // 2]) for i in range(len(images))]

    # The stage names the runtime: texts read on one are not taken for the other's.
    on_openvino = read_frame_text(cfg, run, reader=readers["openvino"])
    assert (on_openvino.read, on_openvino.cached) == (len(images), 0)
    on_onnxruntime = read_frame_text(cfg, run, reader=readers["onnxruntime"])
    assert (on_onnxruntime.read, on_onnxruntime.cached) == (len(images), 0)
    assert list(on_onnxruntime.table.text) == list(on_openvino.table.text)
    again = read_frame_text(cfg, run, reader=readers["openvino"])
    assert (again.read, again.cached) == (0, len(images))


def test_openvino_asked_for_but_missing_reads_with_onnx_runtime_and_says_so(monkeypatch, caplog):
    from frameatlas.config import OcrConfig
    from frameatlas.models import ocr as ocr_model

    def no_openvino():
        raise ImportError("No module named 'openvino'")

    monkeypatch.setattr(ocr_model, "_openvino_core", no_openvino)
    with caplog.at_level("WARNING", logger="frameatlas.models.ocr"):
        asked = ocr_model.OcrReader(OcrConfig(enabled=True, runtime="openvino"))
    assert asked.runtime == "onnxruntime" and "openvino" not in asked.record.backend
    assert "caption.ocr.runtime is openvino" in caplog.text and "pip install openvino" in caplog.text
    caplog.clear()
    assert ocr_model.OcrReader(OcrConfig(enabled=True, runtime="auto")).runtime == "onnxruntime"
    assert not caplog.text  # auto without the package is ONNX Runtime, as before, without a warning


def test_openvino_failing_to_compile_reads_with_onnx_runtime_and_says_why(tmp_path, monkeypatch, caplog):
    from frameatlas.models import ocr as ocr_model

    def compile_fails(model_path, threads):
        if "rec" in Path(model_path).name:  # the detector compiles, the recogniser does not: neither is swapped
            raise RuntimeError("Exception from src/inference/src/cpp/core.cpp: unsupported CPU")
        return real_compiled(model_path, threads)

    real_compiled = ocr_model._compiled
    monkeypatch.setattr(ocr_model, "_compiled", compile_fails)
    cfg, run = text_run(tmp_path, runtime="auto")
    with caplog.at_level("WARNING", logger="frameatlas.models.ocr"):
        summary = read_frame_text(cfg, run)
    assert "OpenVINO could not compile" in caplog.text and "unsupported CPU" in caplog.text
    assert "caption.ocr.runtime: onnxruntime" in caplog.text
    assert "openvino" not in summary.record.backend
    assert [squeeze(text) for text in summary.table.text] == [squeeze(CAPTIONS[i // 2]) for i in range(len(summary.table))]


def test_openvino_runs_without_its_telemetry():
    """Only OpenVINO's runtime is loaded: neither its model converter nor the converter's telemetry client."""
    import subprocess

    script = (
        "import sys; from frameatlas.config import OcrConfig; from frameatlas.models.ocr import OcrReader; "
        "reader = OcrReader(OcrConfig(enabled=True, runtime='openvino')); "
        "print(reader.runtime, 'openvino_telemetry' in sys.modules, 'openvino.tools.ovc' in sys.modules); "
        "from openvino.tools.ovc import convert_model"  # a user's own code can still import the converter
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=os.environ | {"HF_HUB_OFFLINE": "1"}
    )
    assert done.stdout.split() == ["openvino", "False", "False"]


TWO_FIRST_REQUESTS_AT_ONCE = """
import threading, numpy as np
from frameatlas.config import OcrConfig
from frameatlas.models.ocr import OcrReader
readers = [OcrReader(OcrConfig(enabled=True, runtime="openvino"), threads=1) for _ in range(2)]
both = threading.Barrier(2)
def first_request(reader):
    both.wait()
    reader.engine.text_det.infer(np.zeros((1, 3, 64, 64), np.float32))
threads = [threading.Thread(target=first_request, args=(reader,)) for reader in readers]
[thread.start() for thread in threads]
[thread.join() for thread in threads]
print("done")
"""


@pytest.mark.slow
def test_two_readers_first_requests_at_once_do_not_deadlock():
    """Each fresh process lets two OpenVINO readers make their first request at the same moment. Before the
    numpy bridge was made while loading, half such processes hung for good (a GIL / C++ static deadlock)."""
    import subprocess

    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    processes = [subprocess.Popen([sys.executable, "-c", TWO_FIRST_REQUESTS_AT_ONCE], stdout=subprocess.PIPE, text=True, env=env)
                 for _ in range(8)]  # fmt: skip
    outcomes = []
    for process in processes:
        try:
            outcomes.append(process.communicate(timeout=60)[0].strip())
        except subprocess.TimeoutExpired:
            process.kill()
            outcomes.append("hung")
    assert outcomes == ["done"] * len(processes)


@pytest.mark.parametrize("value", ["tensorrt", "", 1])
def test_a_bad_runtime_names_the_key_and_the_choices(value):
    with pytest.raises(ConfigError, match=r"caption\.ocr\.runtime") as error:
        config_from_dict({"caption": {"ocr": {"runtime": value}}})
    assert "openvino" in str(error.value)


def test_two_readers_at_once_give_exactly_the_texts_of_one_reader(tmp_path):
    from frameatlas.ocr import ocr_workers

    captions = ["FRAME ATLAS", "RED CAR PARKING", "", "OPEN MOVIE", "SALE TODAY", "SALE TODAV"]
    videogen.make_text_video(tmp_path / "videos" / "signs.mp4", captions)
    cfg, run = embedded_run(tmp_path, {"name": "fallback"}, name="workers", extract={"thumbnail_long_side": 384},
                            caption={"ocr": {"enabled": True, "workers": 1}})  # fmt: skip
    assert ocr_workers(cfg) == (1, 0)  # one reader keeps models.threads: 0 = every core
    one = read_frame_text(cfg, run)
    assert one.counts["ocr_workers"] == 1 and one.counts["ocr_frames_with_text"] == 10
    assert [squeeze(text) for text in one.table.text] == [squeeze(captions[int(t)]) for t in one.table.timestamp]

    cfg.caption.ocr.workers = 2
    assert ocr_workers(cfg) == (2, 1)  # the cores shared among the readers, at least one thread each
    readers = [counting_reader(cfg, threads=1) for _ in range(2)]
    two = read_frame_text(cfg, run, force=True, reader=readers)
    assert two.counts["ocr_workers"] == 2 and (two.read, two.cached) == (12, 0)
    calls = [reader.engine.calls for reader in readers]
    assert sum(calls) == 12 and min(calls) > 0  # both readers read frames
    assert two.table.equals(one.table)  # texts, line counts and scores, frame for frame
    assert read_table(run.table("ocr")).equals(one.table)

    cfg.caption.ocr.workers = None  # the default: one reader per CPU this process may use
    assert ocr_workers(cfg)[0] == len(os.sched_getaffinity(0))
    default = read_frame_text(cfg, run, force=True)
    assert default.workers == 1 and default.table.equals(one.table)  # 12 frames: another reader costs more than it saves


@pytest.mark.parametrize("value", [0, -1, "many", True])
def test_a_bad_workers_value_names_the_key(value):
    with pytest.raises(ConfigError, match=r"caption\.ocr\.workers"):
        config_from_dict({"caption": {"ocr": {"workers": value}}})
