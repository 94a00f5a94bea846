"""The classify stage: labels, features per window, zero-shot, trained classifiers, fusion, saved models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import videogen
from frameatlas.classify import (
    FeatureMismatch,
    LabelError,
    LogMelDescriptor,
    build_features,
    class_prompts,
    classify_run,
    cross_validate,
    grouped_folds,
    load_model,
    predict_run,
    zero_shot,
)
from frameatlas.classify.audio import (
    SAMPLE_RATE,
    YamnetUnavailable,
    YamnetWorkerError,
    audio_descriptor,
    yamnet_location,
    yamnet_python,
)
from frameatlas.classify.labels import check_classes, folder_labels, read_segment_labels, read_video_labels
from frameatlas.classify.train import modality_matrices
from frameatlas.config import ConfigError, config_from_dict
from frameatlas.embed import embed_frames
from frameatlas.files import atomic_write_json
from frameatlas.frames import extract_corpus
from frameatlas.pipeline.registry import stage_named
from frameatlas.store import RunPaths, read_table, write_table
from sklearn.model_selection import StratifiedKFold

# Four classes, each a picture (background colour) AND a tone: the picture alone tells only the colour, the sound
# only the pitch, so each single modality can be right on at most half the samples; together they tell all four.
COLOURS = {"blue": 0, "yellow": 1}  # videogen scene numbers: dark blue, bright yellow
TONES = {"low": 300.0, "high": 2000.0}
VIDEOS_PER_CLASS = 3


def _labelled_run(root: Path, name: str = "fusion") -> tuple[object, RunPaths]:
    videos = root / "videos"
    if not videos.exists():
        for colour, scene in COLOURS.items():
            for tone, hz in TONES.items():
                for k in range(VIDEOS_PER_CLASS):  # lengths differ, so every file (and its content hash) is its own
                    videogen.make_video(videos / f"{colour}-{tone}" / f"v{k}.mp4", seconds=4 + k, fps=5, size=(64, 48),
                                        audio=True, audio_hz=hz, first_scene=scene)  # fmt: skip
    cfg = config_from_dict({
        "run": {"output_dir": str(root / "out"), "name": name},
        "corpus": {"videos": str(videos), "demo": False},
        "extract": {"every_seconds": 1.0, "thumbnail_long_side": 64},
        "models": {"image": {"name": "fallback"}},
        "embed": {"during_extract": False, "quality": "off"},
        "classify": {"labels_from_folders": True, "window_seconds": 2.0, "channels": ["image", "audio"], "folds": 3},
    })  # fmt: skip
    extract_corpus(cfg, cfg.run_dir)
    embed_frames(cfg, cfg.run_dir)
    run = RunPaths(cfg.run_dir)
    atomic_write_json(run.config_file, cfg.to_parameters())
    return cfg, run


@pytest.fixture(scope="module")
def fusion(tmp_path_factory):
    """The labelled run, classified once: (config, run, summary)."""
    cfg, run = _labelled_run(tmp_path_factory.mktemp("classify"))
    return cfg, run, classify_run(cfg, run)


def _score(summary, modality: str) -> pd.Series:
    scores = summary.scores
    return scores[(scores.modality == modality) & (scores.classifier == "logreg")].iloc[0]


@pytest.mark.slow
def test_fusion_beats_every_single_modality(fusion):
    _, run, summary = fusion
    assert summary.label_source.startswith("sub-folders")
    assert set(summary.class_counts) == {"blue-high", "blue-low", "yellow-high", "yellow-low"}
    assert summary.modalities == ["image", "audio"]
    singles = {m: _score(summary, m) for m in ("image", "audio")}
    for modality, row in singles.items():
        assert row.kind == "modality" and row.samples == sum(summary.class_counts.values())
        assert row.accuracy <= 0.6, (modality, row.accuracy)  # each sees one half of the class only
    best_single = max(row.macro_f1 for row in singles.values())
    for fused in ("early", "late-mean", "late-learned"):
        row = _score(summary, fused)
        assert row.kind == "fusion" and row.macro_f1 >= best_single + 0.25, (fused, row.macro_f1, best_single)
    # joined features, or probabilities weighted by what was learned, tell all four classes; a plain mean of
    # the probabilities is pulled by whichever modality is over-confident on its half
    for fused in ("early", "late-learned"):
        assert _score(summary, fused).accuracy >= 0.9, fused
    # which modality carries which class: the picture tells the colours, never the pitch
    carriers = summary.carriers.set_index("class")
    assert set(carriers.columns) >= {"image", "audio", "carried by"}
    # the confusion matrix of the picture mixes exactly the classes of one colour
    image = summary.confusions()["image"]
    for true_class in image.index:
        confused = set(image.columns[image.loc[true_class] > 0])
        assert {c.split("-")[0] for c in confused} == {true_class.split("-")[0]}, (true_class, confused)
    # the tables
    scores = read_table(run.table("classify_scores"))
    assert {"early", "late-mean", "late-learned", "image", "audio"} <= set(scores.modality)
    predictions = read_table(run.table("predictions"))
    windows = predictions[(predictions.level == "window") & (predictions.source == "trained")]
    assert (windows.split == "cross-validated").all() and windows.label.notna().all()
    assert (windows.label == windows.true_label).mean() >= 0.9
    assert set(windows.modality) == {summary.chosen} and summary.chosen in {"early", "late-mean", "late-learned"}
    videos = predictions[predictions.level == "video"]
    assert len(videos) == len(COLOURS) * len(TONES) * VIDEOS_PER_CLASS


@pytest.mark.slow
def test_windows_of_one_video_never_sit_in_two_folds(fusion):
    _, run, summary = fusion
    predictions = read_table(run.table("predictions"))
    windows = predictions[(predictions.level == "window") & (predictions.source == "trained")]
    assert windows.groupby("video_id").fold.nunique().max() == 1
    assert windows.fold.nunique() == 3  # classify.folds
    # each window: [k * 2 s, (k + 1) * 2 s) of its video, holding that video's frames
    assert set(np.round(windows.end - windows.start, 6)) <= {2.0, 1.0}


def test_grouping_by_video_prevents_the_leak_an_ungrouped_split_shows():
    """Labels drawn at random per video, features that identify the video: nothing to learn, except
    by recognising videos seen in training. Ungrouped folds leak that; grouped folds do not."""
    rng = np.random.default_rng(0)
    videos, windows, dim = 16, 12, 32
    identity = rng.normal(size=(videos, dim)) * 3
    groups = np.repeat(np.arange(videos), windows)
    features = identity[groups] + rng.normal(scale=0.3, size=(videos * windows, dim))
    labels = np.repeat(np.array(["a", "b"] * (videos // 2))[rng.permutation(videos)], windows)

    grouped = cross_validate({"x": features}, labels, groups, folds=4, seed=0)
    leaky_folds = np.zeros(len(labels), np.int64)
    for k, (_, test) in enumerate(StratifiedKFold(4, shuffle=True, random_state=0).split(features, labels)):
        leaky_folds[test] = k
    leaky = cross_validate({"x": features}, labels, groups, fold_of=leaky_folds)

    assert pd.Series(grouped.folds).groupby(groups).nunique().max() == 1
    assert pd.Series(leaky_folds).groupby(groups).nunique().max() > 1
    leaked, honest = leaky.scores.accuracy.iat[0], grouped.scores.accuracy.iat[0]
    assert leaked >= 0.95 and honest <= 0.75, (leaked, honest)


@pytest.mark.parametrize("folds", [2, 4])  # 2: the training videos get inner folds of their own
def test_late_learned_fusion_is_nested_so_a_fold_is_never_scored_by_its_own_labels(folds):
    """Four classes, each the pair (bit of modality a, bit of modality b). Whatever the labels of the test
    fold say, every answer given on it, the learned late fusion's included, stays the same: its weights are
    learned on the training videos alone. (Weights learned from out-of-fold probabilities of the same
    folds change: the other folds' probabilities come from models that saw the test fold's labels.)"""
    rng = np.random.default_rng(3)
    videos, windows = 16, 6
    classes = np.array(["00", "01", "10", "11"])
    video_class = np.tile(np.arange(4), videos // 4)
    groups = np.repeat(np.arange(videos), windows)
    y = video_class[groups]
    matrices = {name: np.column_stack([((y >> shift) & 1) + rng.normal(scale=0.35, size=len(y)),
                                       rng.normal(size=(len(y), 3))])
                for name, shift in (("a", 1), ("b", 0))}  # fmt: skip
    labels = classes[y]
    fold = grouped_folds(labels, groups, folds, seed=0)
    first = cross_validate(matrices, labels, groups, fold_of=fold, folds=folds)
    test = fold == 0
    relabelled = labels.copy()
    relabelled[test] = np.roll(classes, 1)[y[test]]  # every test label changed, each class still there
    second = cross_validate(matrices, relabelled, groups, fold_of=fold, folds=folds)
    for name in ("a", "b", "early", "late-mean", "late-learned"):
        np.testing.assert_allclose(first.probabilities[name][test], second.probabilities[name][test], err_msg=name)
    assert not np.allclose(first.probabilities["late-learned"][~test], second.probabilities["late-learned"][~test])
    learned = first.scores.set_index("modality").macro_f1
    assert learned["late-learned"] > max(learned["a"], learned["b"]) + 0.2, learned.to_dict()


def test_two_videos_per_class_give_late_learned_the_mean_where_no_inner_split_exists():
    """The demo's shape: two classes of two videos each, so two outer folds whose training side holds one
    video per class. No weights can be learned there without the test fold: late-learned is late-mean."""
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(4), 5)
    labels = np.array(["cat", "dog", "cat", "dog"])[groups]
    matrices = {name: rng.normal(size=(len(groups), 3)) + (labels == "dog")[:, None] for name in ("a", "b")}
    result = cross_validate(matrices, labels, groups, folds=5)
    assert len(set(result.folds)) == 2
    np.testing.assert_allclose(result.probabilities["late-learned"], result.probabilities["late-mean"])
    assert set(result.scores.modality) >= {"a", "b", "early", "late-mean", "late-learned"}


def test_folds_are_stratified_and_capped_by_the_smallest_class():
    labels = np.array(["a"] * 6 + ["b"] * 4)
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])  # b: videos 3 and 4 only
    folds = grouped_folds(labels, groups, folds=5)
    assert len(set(folds)) == 2  # two videos of b: two folds
    for k in set(folds):
        assert set(labels[folds == k]) == {"a", "b"}


@pytest.mark.slow
def test_saved_model_predicts_the_same_after_reload(fusion, tmp_path):
    cfg, run, summary = fusion
    bundle = load_model(run.root)
    assert bundle["fingerprint"] == build_features(cfg, run).fingerprint()
    assert bundle["spec"]["modalities"]["image"]["model"] == "fallback-colour-texture-v2"
    assert bundle["config"]["window_seconds"] == 2.0 and bundle["classes"] == sorted(summary.class_counts)
    sidecar = json.loads(run.root.joinpath("models", "classify.json").read_text())
    assert sidecar["fingerprint"] == bundle["fingerprint"] and "model" not in sidecar
    features = build_features(cfg, run)
    windows = np.flatnonzero(features.samples.level.eq("window").to_numpy())
    matrices = {m: x[windows] for m, x in modality_matrices(features).items()}
    before = summary.model.predict_proba(matrices)
    after = bundle["model"].predict_proba(matrices)
    np.testing.assert_allclose(after, before)
    # through another run holding the same videos: the same labels
    other = tmp_path / "other"
    shutil.copytree(run.root, other)
    (other / "tables" / "predictions.parquet").unlink()
    predicted = predict_run(run.root / "models" / "classify.joblib", other)
    by_window = predicted[predicted.level == "window"].set_index("sample_id").label
    expected = pd.Series(summary.model.classes_[before.argmax(1)], index=features.samples.sample_id.iloc[windows])
    assert by_window.sort_index().equals(expected.sort_index())
    assert read_table(RunPaths(other).table("predictions")).equals(predicted)


@pytest.mark.slow
def test_a_model_meeting_features_of_another_model_is_refused(fusion, tmp_path, capsys):
    _, run, _ = fusion
    other = tmp_path / "other"
    shutil.copytree(run.root, other)
    embeddings = read_table(RunPaths(other).table("embeddings"))
    write_table(embeddings.assign(model_id="clip-ViT-B-32-laion2b_s34b_b79k"), RunPaths(other).table("embeddings"))
    with pytest.raises(
        FeatureMismatch, match=r"image vectors made by clip-ViT-B-32-laion2b_s34b_b79k .* by fallback-colour-texture-v2"
    ):
        predict_run(run.root, other)
    assert (
        not RunPaths(other).table("predictions").exists()
        or read_table(RunPaths(other).table("predictions")).source.eq("trained").all()
    )

    from frameatlas.cli import main

    assert main(["classify", str(run.root), "--predict", str(other)]) == 2
    error = capsys.readouterr().err
    assert "cannot label" in error and "clip-ViT-B-32-laion2b_s34b_b79k" in error and "fallback-colour-texture-v2" in error


@pytest.mark.slow  # the shared pipeline run
def test_zero_shot_ranks_the_written_class_name_first(finished_run):
    """gamma.mp4 shows HELLO, then nothing, then WORLD (OCR on): with the tiny CLIP and the packaged sentence
    encoder, the on-screen text channel ranks the written class name first in those windows."""
    from frameatlas import models

    cfg = config_from_dict(json.loads((finished_run / "config.json").read_text()))
    cfg.classify = cfg.classify.model_copy(update={"window_seconds": 1.0, "channels": ["image", "ocr"],
                                                   "class_names": ["world", "a red car", "hello"]})  # fmt: skip
    features = build_features(cfg, finished_run)  # no audio: nothing is written into the shared run
    encoder = models.image_encoder(cfg.models)
    prompts = class_prompts(cfg.classify.class_names)
    result = zero_shot(features, prompts, image_text=encoder.encode_text, sentence=models.text_encoder(cfg.models).encode)
    assert set(result.probabilities) == {"image", "ocr"}  # the tiny CLIP has a text side (random weights: not judged)
    samples = features.samples
    gamma = (samples.video_name == "gamma.mp4") & (samples.level == "window")
    ocr, present = result.probabilities["ocr"], result.present["ocr"]
    by_start = {row.start: i for i, row in samples[gamma].iterrows()}
    assert result.classes[int(np.argmax(ocr[by_start[0.0]]))] == "hello"
    assert result.classes[int(np.argmax(ocr[by_start[2.0]]))] == "world"
    assert not present[by_start[1.0]]  # the blank second has no text to judge
    assert not present[(samples.video_name != "gamma.mp4").to_numpy()].any()
    np.testing.assert_allclose(ocr[present].sum(1), 1.0, rtol=1e-6)
    fused, covered = result.fused()
    assert covered.all() and fused.shape == (len(samples), 3)


def test_stage_is_off_unless_class_names_or_labels_are_given():
    stage = stage_named("classify")
    assert stage.notebook == "07_classify.ipynb" and stage.optional
    assert not stage.enabled(config_from_dict({}))
    assert stage.enabled(config_from_dict({"classify": {"class_names": ["cat", "dog"]}}))
    assert stage.enabled(config_from_dict({"classify": {"labels_from_folders": True}}))
    with pytest.raises(ConfigError, match="classify.prompts names classes that are not in classify.class_names: bird"):
        config_from_dict({"classify": {"class_names": ["cat"], "prompts": {"bird": ["a bird"]}}})
    with pytest.raises(ConfigError, match="classify.labels and classify.segments"):
        config_from_dict({"classify": {"labels": "a.csv", "segments": "b.csv"}})


# --------------------------------------------------------------------------- labels

VIDEOS = pd.DataFrame({"video_id": ["id-cat1", "id-cat2", "id-dog1", "id-dog2"],
                       "video_name": ["cat1.mp4", "cat2.mp4", "dog1.mp4", "dog2.mp4"],
                       "video_path": ["/v/cats/cat1.mp4", "/v/cats/cat2.mp4", "/v/dogs/dog1.mp4", "/v/dogs/dog2.mp4"]})  # fmt: skip


def _csv(tmp_path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_video_labels_name_videos_by_file_name_path_or_id(tmp_path):
    path = _csv(tmp_path, "video,label\ncat1.mp4,cat\ncats/cat2.mp4,cat\nid-dog1,dog\n/v/dogs/dog2.mp4,dog\n")
    assert read_video_labels(path, VIDEOS, "/v") == {"id-cat1": "cat", "id-cat2": "cat", "id-dog1": "dog", "id-dog2": "dog"}
    assert folder_labels(VIDEOS, "/v") == {"id-cat1": "cats", "id-cat2": "cats", "id-dog1": "dogs", "id-dog2": "dogs"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "video,label\ncat1.mp4,cat\nbird.mp4,bird\nfish.mp4,fish\n",
            r"2 row\(s\) name a video this run does not have: 'bird.mp4', 'fish.mp4' \(rows 3, 4\)",
        ),
        ("film,label\ncat1.mp4,cat\n", "needs the columns video, label .* missing video, found film, label"),
        ("video,label\ncat1.mp4,\n", "rows 2 have an empty value"),
        ("video,label\ncat1.mp4,cat\ncat1.mp4,dog\n", "videos with two different labels: cat1.mp4"),
    ],
)
def test_bad_label_files_are_refused_naming_what_is_wrong(tmp_path, text, expected):
    with pytest.raises(LabelError, match=expected):
        read_video_labels(_csv(tmp_path, text), VIDEOS, "/v")


def test_classes_that_cannot_be_cross_validated_are_named_with_counts():
    groups = pd.Series(["v1", "v1", "v2", "v3", "v3", "v3"])
    with pytest.raises(LabelError, match=r"only one class \('cat': 6 samples, 3 videos\)"):
        check_classes(pd.Series(["cat"] * 6), groups)
    with pytest.raises(LabelError, match=r"too few videos.*need at least 2 videos each.*: 'dog' \(1 video\(s\), 3 sample\(s\)\)"):
        check_classes(pd.Series(["cat", "cat", "cat", "dog", "dog", "dog"]), groups)
    check_classes(pd.Series(["cat", "cat", "dog", "cat", "dog", None]), pd.Series(["v1", "v1", "v2", "v3", "v4", "v4"]))


def test_segment_labels_label_the_windows_whose_centre_they_hold(tmp_path):
    path = tmp_path / "segments.csv"
    path.write_text("video,start,end,label\ncat1.mp4,0,4,sitting\ncat1.mp4,4,10,running\n")
    segments = read_segment_labels(path, VIDEOS, "/v")
    from frameatlas.classify.labels import window_labels

    samples = pd.DataFrame({"video_id": ["id-cat1"] * 4 + ["id-dog1"], "level": ["video", "window", "window", "window", "window"],
                            "start": [0.0, 0.0, 3.0, 6.0, 0.0], "end": [10.0, 3.0, 6.0, 9.0, 3.0]})  # fmt: skip
    assert window_labels(samples, segments).tolist() == [None, "sitting", "running", "running", None]
    path.write_text("video,start,end,label\ncat1.mp4,5,2,x\ncat1.mp4,a,3,y\n")
    with pytest.raises(LabelError, match="rows 2, 3 need start and end in seconds"):
        read_segment_labels(path, VIDEOS, "/v")


# --------------------------------------------------------------------------- audio


def _tone(hz: float, seconds: float = 2.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE)).astype(np.float32)


def test_log_mel_statistics_tell_tones_apart_per_window():
    descriptor = LogMelDescriptor()
    blocks = np.array_split(np.concatenate([_tone(300), _tone(2000)]), 37)  # blocks of any size
    stats = descriptor.window_stats(blocks, window_seconds=1.0)
    features = stats.features()
    assert features.shape == (4, 128) and stats.counts.sum() == (4 * SAMPLE_RATE - descriptor.frame) // descriptor.hop + 1
    loudest = features[:, :64].argmax(1)
    assert loudest[0] == loudest[1] < loudest[2] == loudest[3]  # the high tone's band is higher
    whole = stats.whole().features()
    np.testing.assert_allclose(whole[0, :64], (stats.sums.sum(0) / stats.counts.sum()), rtol=1e-5)


def test_yamnet_without_tensorflow_hub_or_weights_falls_back_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    descriptor, note = audio_descriptor("auto", "https://tfhub.dev/google/yamnet/1")
    assert isinstance(descriptor, LogMelDescriptor)
    assert "log-mel" in note and "YAMNet weights not found" in note
    assert "classify.yamnet_python is not set" in note  # this python has no tensorflow-hub
    with pytest.raises(YamnetUnavailable, match="classify.audio = yamnet, but"):
        audio_descriptor("yamnet", "https://tfhub.dev/google/yamnet/1")
    assert yamnet_location("https://tfhub.dev/google/yamnet/1") is None
    # a handle is found where TensorFlow Hub caches it: TFHUB_CACHE_DIR / sha1(handle)
    import hashlib

    cached = tmp_path / hashlib.sha1(b"https://tfhub.dev/google/yamnet/1").hexdigest()
    cached.mkdir()
    (cached / "saved_model.pb").write_bytes(b"model")
    assert yamnet_location("https://tfhub.dev/google/yamnet/1") == cached


def test_yamnet_python_is_named_when_it_cannot_run_yamnet(tmp_path):
    import sys

    with pytest.raises(YamnetUnavailable, match=r"classify.yamnet_python = '/no/such/python' is not an executable python"):
        yamnet_python("/no/such/python")
    with pytest.raises(YamnetUnavailable, match="has no tensorflow and tensorflow-hub .*scripts/setup_tf.sh"):
        yamnet_python(sys.executable)  # frameatlas's own environment never gets TensorFlow
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"model")
    descriptor, note = audio_descriptor("auto", str(folder), python=sys.executable)
    assert isinstance(descriptor, LogMelDescriptor) and "log-mel" in note and sys.executable in note
    # a path in the config is relative to the config's folder; a bare name is looked up on PATH when used
    cfg = config_from_dict({"classify": {"yamnet_python": ".venv-tf/bin/python"}}, base_dir=tmp_path)
    assert cfg.classify.yamnet_python == str(tmp_path / ".venv-tf" / "bin" / "python")
    assert config_from_dict({"classify": {"yamnet_python": "python3"}}).classify.yamnet_python == "python3"


def _fake_python(folder: Path, worker: str) -> Path:
    """An executable standing in for a TensorFlow python: it passes the tensorflow-hub check, and runs `worker`
    (shell) as the YAMNet worker: a real process whose failure frameatlas has to report."""
    script = folder / "fake-python"
    script.write_text(f'#!/bin/sh\nif [ "$2" = "-c" ]; then exit 0; fi\n{worker}\n')
    script.chmod(0o755)
    return script


@pytest.mark.parametrize(
    ("worker", "status"),
    [("echo 'Traceback: OSError: SavedModel file does not exist' >&2; exit 1", "exit status 1"),
     ("echo 'loading the model' >&2; kill -SEGV $$", "killed by SIGSEGV")],
)  # fmt: skip
def test_a_failing_yamnet_worker_is_reported_with_its_stderr_and_the_model(tmp_path, worker, status):
    folder = tmp_path / "yamnet"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"model")
    python = _fake_python(tmp_path, worker)
    descriptor, note = audio_descriptor("yamnet", str(folder), python=str(python))
    assert note is None and descriptor.python == str(python)
    with pytest.raises(YamnetWorkerError) as failure:
        descriptor.window_stats([_tone(300)], 1.0)
    message = str(failure.value)
    assert str(folder) in message and str(python) in message and status in message
    assert worker.split("'")[1] in message  # the worker's stderr


@pytest.mark.slow
def test_auto_falls_back_to_log_mel_when_the_yamnet_worker_fails(fusion, tmp_path):
    cfg, run, _ = fusion
    root = tmp_path / "run"
    shutil.copytree(run.root, root)
    folder = tmp_path / "yamnet"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"not a SavedModel")
    python = _fake_python(tmp_path, "echo 'Traceback: DecodeError: Error parsing message' >&2; exit 1")
    settings = {"audio": "auto", "yamnet": str(folder), "yamnet_python": str(python), "channels": ["audio"]}
    auto = cfg.model_copy(update={"classify": cfg.classify.model_copy(update=settings)})
    features = build_features(auto, root)
    assert features.models["audio"] == LogMelDescriptor.model_id
    (note,) = [n for n in features.notes if "log-mel" in n]
    assert str(folder) in note and "DecodeError: Error parsing message" in note
    strict = cfg.model_copy(update={"classify": cfg.classify.model_copy(update={**settings, "audio": "yamnet"})})
    with pytest.raises(YamnetWorkerError, match="DecodeError"):
        build_features(strict, root)


# ---------------------------------------------------------------- YAMNet in TensorFlow's own environment


@pytest.fixture(scope="module")
def tf_python() -> str:
    """The python of TensorFlow's own environment (scripts/setup_tf.sh makes .venv-tf; scripts/test.sh and so CI
    run it first). FRAMEATLAS_TF_PYTHON names another. Missing: skipped locally, a failure on CI."""
    import os

    python = Path(os.environ.get("FRAMEATLAS_TF_PYTHON") or Path(__file__).resolve().parent.parent / ".venv-tf/bin/python")
    if not python.exists():
        message = f"{python} is missing: run `bash scripts/setup_tf.sh` (TensorFlow's own environment)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return str(python)


@pytest.fixture(scope="module")
def tiny_yamnet(tf_python, tmp_path_factory) -> Path:
    """A SavedModel with YAMNet's signature, built by TensorFlow's python in a process of its own."""
    import subprocess

    folder = tmp_path_factory.mktemp("yamnet") / "model"
    built = subprocess.run([tf_python, str(Path(__file__).with_name("tinyyamnet.py")), str(folder)],
                           capture_output=True, text=True, timeout=900)  # fmt: skip
    assert built.returncode == 0 and (folder / "saved_model.pb").exists(), built.stderr[-3000:]
    return folder


def _unreadable(after: np.ndarray):
    yield after
    raise OSError("the file ends here")


def test_yamnet_runs_in_a_worker_process_of_its_own(tiny_yamnet, tf_python):
    """TensorFlow's python embeds the waveforms in one worker call; this process never imports TensorFlow."""
    import sys

    from frameatlas.files import sha256_file

    descriptor, note = audio_descriptor("yamnet", str(tiny_yamnet), python=tf_python)
    assert note is None and descriptor.kind == "yamnet"
    assert descriptor.model_id == "yamnet-" + sha256_file(tiny_yamnet / "saved_model.pb")[:8]
    assert descriptor.record["backend"] == "tensorflow-hub" and descriptor.record["weights"] == str(tiny_yamnet)
    low, high = _tone(300, 3.0), _tone(2000, 3.0)
    sources = [("low-high", np.array_split(np.concatenate([low, high]), 5)), ("broken", _unreadable(low)),
               ("high", [high]), ("low again", [low[:20000], low[20000:]]), ("silent", [])]  # fmt: skip
    out = dict(descriptor.window_stats_many(sources, 3.0))
    assert descriptor.calls == 1  # every source's audio in one worker process
    assert descriptor.last_call["pieces"] == 3 and descriptor.last_call["dim"] == 1024
    assert isinstance(out["broken"], OSError) and len(out["silent"].counts) == 0
    both, high_only, low_only = out["low-high"].features(), out["high"].features()[0], out["low again"].features()[0]
    assert both.shape[1] == 2048 and len(both) >= 2 and np.abs(both).max() > 0
    assert np.abs(both[0] - both[1]).max() > 1e-2  # the two tones' windows differ
    np.testing.assert_allclose(both[0], low_only, rtol=1e-4, atol=1e-4)  # the same sound, the same features
    # the second window (its first patch straddles the change of tone) is the high tone's
    assert np.abs(both[1, :1024] - high_only[:1024]).mean() < 0.35 * np.abs(both[1, :1024] - low_only[:1024]).mean()
    assert "tensorflow" not in sys.modules


@pytest.mark.slow
def test_the_classify_audio_path_runs_yamnet_through_the_configured_python(fusion, tiny_yamnet, tf_python, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    """classify.audio auto + classify.yamnet_python: the run's audio features are YAMNet's, from one worker call."""
    from frameatlas.classify.audio import YamnetDescriptor
    from frameatlas.files import sha256_file

    calls = []
    run_worker = YamnetDescriptor._run
    monkeypatch.setattr(YamnetDescriptor, "_run", lambda self, job: calls.append(len(job.entries)) or run_worker(self, job))
    cfg, run, _ = fusion
    root = tmp_path / "run"
    shutil.copytree(run.root, root)
    settings = {"audio": "auto", "yamnet": str(tiny_yamnet), "yamnet_python": tf_python, "channels": ["audio"]}
    yamnet_cfg = cfg.model_copy(update={"classify": cfg.classify.model_copy(update=settings)})
    features = build_features(yamnet_cfg, root)
    model_id = "yamnet-" + sha256_file(tiny_yamnet / "saved_model.pb")[:8]
    assert features.models["audio"] == model_id and not [n for n in features.notes if "log-mel" in n]
    assert [r["model_id"] for r in features.records] == [model_id]
    assert calls == [len(COLOURS) * len(TONES) * VIDEOS_PER_CLASS]  # one piece per video, all in one call
    block, present = features.blocks["audio"], features.present["audio"]
    assert block.shape[1] == 2048 and present.all()
    windows = features.samples.level.eq("window").to_numpy()
    videos = read_table(RunPaths(root).table("videos"))
    pitch = features.samples.video_id.isin(videos.video_id[videos.video_path.str.contains("-high")]).to_numpy()
    low, high = block[windows & ~pitch].mean(0), block[windows & pitch].mean(0)
    spread = block[windows & pitch].std(0).mean()
    assert np.abs(low - high).mean() > 3 * spread  # the tone, not the video, sets the embeddings
    # cached per video under the model's id: a second pass starts no worker
    assert len(list(RunPaths(root).cache.glob(f"classify/audio/{model_id}-w*/*.npz"))) == calls[0]
    build_features(yamnet_cfg, root)
    assert len(calls) == 1


@pytest.mark.slow
def test_the_stage_notebook_reports_scores_and_the_dashboard_lists_classes(fusion, tmp_path):
    """07_classify through run_pipeline.py on a copy of the labelled run (its earlier stages made by library calls)."""
    import subprocess
    import sys

    import yaml

    cfg, run, _ = fusion
    root = tmp_path / "out" / "fusion"
    shutil.copytree(run.root, root)
    frames = read_table(RunPaths(root).table("frames"))
    points = np.random.default_rng(0).normal(size=(len(frames), 3))
    write_table(pd.DataFrame({"frame_key": frames.frame_key, "method": "pca", "x": points[:, 0], "y": points[:, 1],
                              "z": points[:, 2]}), RunPaths(root).table("projections"))  # fmt: skip
    data = cfg.to_parameters()
    data.pop("source", None)
    data["run"].update({"output_dir": str(tmp_path / "out"), "name": "fusion"})
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(data))
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, str(repo / "run_pipeline.py"), str(tmp_path / "pipeline.yaml"), "--stages", "classify",
                             "--no-progress"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    entry = json.loads((root / "manifest.json").read_text())["stages"]["classify"]
    assert entry["status"] == "done" and entry["counts"]["classes"] == 4 and entry["counts"]["accuracy"] >= 0.9
    report = (root / "reports" / "07_classify.html").read_text()
    assert "late-learned" in report and "Which modality carries which class" in report and "Traceback" not in report
    page = (root / "plots" / "map_pca_classes.html").read_text()
    for name in ("blue-high", "blue-low", "yellow-high", "yellow-low"):
        assert name in page
    dashboard = (root / "index.html").read_text()
    table = dashboard[dashboard.index('<table id="classes">') :]
    assert table[: table.index("</table>")].count("<tr>") == 1 + len(COLOURS) * len(TONES) * VIDEOS_PER_CLASS
    assert "map pca classes" in dashboard


# --------------------------------------------------------------------------- objects


@pytest.mark.slow
def test_objects_from_a_detector_with_random_weights_become_a_channel(fusion, tmp_path):
    """The real ssdlite320_mobilenet_v3_large architecture with random weights, loaded from a file."""
    import torch
    from frameatlas.objects import OBJECT_COLUMNS, detect_run, detector_categories, object_text
    from torchvision.models import detection

    cfg, run, _ = fusion
    torch.manual_seed(0)
    weights = tmp_path / "ssdlite.pth"
    torch.save(detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91).state_dict(), weights)
    root = tmp_path / "run"
    shutil.copytree(run.root, root)
    frames = read_table(RunPaths(root).table("frames"))  # two videos are enough (and keep the test quick)
    write_table(frames[frames.video_id.isin(frames.video_id.unique()[:2])], RunPaths(root).table("frames"))
    options = cfg.objects.model_copy(update={"enabled": True, "weights": weights, "min_score": 0.0, "batch_size": 16})
    from frameatlas import models

    summary = detect_run(root, options, text_encoder=models.text_encoder(cfg.models))
    table = read_table(RunPaths(root).table("objects"))
    frames = read_table(RunPaths(root).table("frames"))
    assert list(table.columns) == OBJECT_COLUMNS and summary.frames == len(frames)
    assert set(table.frame_key) == set(frames.frame_key)  # with min_score 0 every frame has detections
    assert set(table.label) <= set(detector_categories(summary.record["model_id"]))
    assert (
        (table.x0 >= 0).all() and (table.x1 <= 64 + 1e-3).all() and (table.y1 <= 48 + 1e-3).all() and (table.x0 <= table.x1).all()
    )
    assert summary.record["model_id"] == f"ssdlite320_mobilenet_v3_large-{summary.record['weights_sha256'][:8]}"
    texts = object_text(table)
    key = frames.frame_key.iat[0]
    numbers = [int(part.split(" ", 1)[0]) for part in texts[key].split(", ")]
    assert sum(numbers) == (table.frame_key == key).sum() and numbers == sorted(numbers, reverse=True)
    # "2 person, 1 car" is a search channel: the frames showing the most of one label come first
    from frameatlas.search import available_channels, search

    assert "objects" in available_channels(root)
    label = table.label.value_counts().index[0]
    most = table[table.label == label].groupby("frame_key").size()
    hits = search(root, label, channels=["objects"], top_k=3, min_text_score=-1)
    assert hits.hits.frame_key.iat[0] in set(most.index) and label in texts[hits.hits.frame_key.iat[0]]
    again = detect_run(root, options)  # cached per video and detector; without a sentence encoder no search channel
    assert again.cached_videos == frames.video_id.nunique() and again.table.equals(summary.table)
    assert not RunPaths(root).table("objects_embeddings").exists()
    with_objects = cfg.model_copy(update={"objects": options, "classify": cfg.classify.model_copy(
        update={"channels": ["image", "audio", "objects"]})})  # fmt: skip
    features = build_features(with_objects, root)
    assert features.blocks["objects"].shape == (len(features.samples), 91)
    assert features.spec()["modalities"]["objects"]["model"] == summary.record["model_id"]
    # a video's objects: the mean count per frame over its frames
    video = features.samples.index[features.samples.level == "video"][0]
    mine = frames.frame_key[frames.video_id == features.samples.video_id.iat[video]]
    assert features.blocks["objects"][video].sum() == pytest.approx(table.frame_key.isin(mine).sum() / len(mine), rel=1e-5)


def test_a_detector_without_its_weights_is_off_and_says_where_it_looked(tmp_path):
    from frameatlas.objects import load_detector

    detector, record = load_detector("fasterrcnn_mobilenet_v3_large_fpn", tmp_path / "missing.pth")
    assert detector is None and str(tmp_path / "missing.pth") in record["fallback_reason"]
    assert record["disabled_features"] == ["objects channel"]
    (tmp_path / "junk.pth").write_bytes(b"not weights")
    detector, record = load_detector("ssdlite320_mobilenet_v3_large", tmp_path / "junk.pth")
    assert detector is None and "is not ssdlite320_mobilenet_v3_large's weights" in record["fallback_reason"]


@pytest.mark.slow
def test_segment_labels_train_on_windows_and_label_the_rest(fusion, tmp_path):
    """Windows labelled by time ranges (the colour only, which the picture tells); an unlabelled video is predicted."""
    cfg, run, _ = fusion
    root = tmp_path / "run"
    shutil.copytree(run.root, root)
    videos = read_table(RunPaths(root).table("videos"))
    corpus = Path(cfg.corpus.videos)
    rows, unlabelled = [], videos.video_id.iat[0]
    for video in videos.itertuples():
        if video.video_id != unlabelled:
            relative = Path(video.video_path).relative_to(corpus).as_posix()
            rows.append(f"{relative},0,{video.duration},{relative.split('-')[0]}")
    (tmp_path / "segments.csv").write_text("video,start,end,label\n" + "\n".join(rows) + "\n")
    options = cfg.classify.model_copy(update={"labels_from_folders": False, "segments": tmp_path / "segments.csv"})
    summary = classify_run(cfg.model_copy(update={"classify": options}), root)
    assert summary.label_source == str(tmp_path / "segments.csv") and set(summary.class_counts) == {"blue", "yellow"}
    assert _score(summary, "image").accuracy >= 0.9  # the colour is the picture's to tell
    predictions = read_table(RunPaths(root).table("predictions"))
    windows = predictions[(predictions.level == "window") & (predictions.source == "trained")]
    mine = windows[windows.video_id == unlabelled]
    assert len(mine) and (mine.split == "predicted").all() and mine.true_label.isna().all()
    assert (windows[windows.video_id != unlabelled].split == "cross-validated").all()
