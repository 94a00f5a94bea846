"""The classify stage: labels or class names in, classes per video and per window out.

* `classify_run` builds the features (`features.py`), scores class names zero-shot
  (`zeroshot.py`), cross-validates the classifiers per modality and fused (`train.py`), fits the
  chosen one on every labelled sample and saves it, and writes `tables/classify_scores.parquet`,
  `tables/predictions.parquet`, `models/classify.joblib` (+ `.json`, its features' fingerprint
  and config) and a 3D map per projection coloured by predicted class (`plots/map_<method>_classes.html`).
* `predict_run` labels another run's videos with a saved model, refusing (`FeatureMismatch`,
  naming the modality and both models) when that run's features were made by other models.

Every file is written atomically under the run's lock.

Example:
    >>> summary = classify_run(cfg, "outputs/demo")  # doctest: +SKIP
    >>> summary.scores[["classifier", "modality", "accuracy", "macro_f1"]]  # doctest: +SKIP
    >>> predict_run("outputs/demo/models/classify.joblib", "outputs/other")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from ..config import PipelineConfig, config_from_dict
from ..files import atomic_path, atomic_write_json
from ..lock import run_lock
from ..store import RunPaths, read_table, write_table
from ..summary import StageSummary
from .audio import LOGMEL_ID, LogMelDescriptor, audio_descriptor
from .features import FeatureSet, build_features
from .labels import check_classes, class_counts, folder_labels, read_segment_labels, read_video_labels, window_labels
from .train import CrossValidation, FusionModel, cross_validate, modality_matrices, score_table
from .zeroshot import class_prompts, zero_shot

log = logging.getLogger(__name__)

__all__ = [
    "PREDICTION_COLUMNS",
    "SCORE_COLUMNS",
    "ClassifySummary",
    "FeatureMismatch",
    "classify_run",
    "load_model",
    "model_path",
    "predict_run",
    "sample_labels",
]

PREDICTION_COLUMNS = ["sample_id", "video_id", "video_name", "level", "start", "end", "source", "modality", "label",
                      "probability", "true_label", "fold", "split"]  # fmt: skip
SCORE_COLUMNS = ["classifier", "modality", "kind", "samples", "accuracy", "macro_f1", "recall", "confusion", "classes"]
MODEL_FILE = "models/classify.joblib"


class FeatureMismatch(ValueError):
    """A saved model meets features made by other models (or windows); the message names the difference."""


def model_path(run: RunPaths | Path | str) -> Path:
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    return run.root / MODEL_FILE


@dataclass(kw_only=True)
class ClassifySummary(StageSummary):
    """What the classify stage did: samples, scores, predictions, and the files it wrote."""

    samples: pd.DataFrame = field(default_factory=pd.DataFrame)
    scores: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SCORE_COLUMNS))
    predictions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PREDICTION_COLUMNS))
    carriers: pd.DataFrame = field(default_factory=pd.DataFrame)
    class_counts: dict[str, int] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)  # the zero-shot classes
    modalities: list[str] = field(default_factory=list)
    label_source: str = ""
    level: str = "window"
    chosen: str = ""  # the fusion (or modality) whose answers the predictions and the saved model give
    model_file: Path | None = None
    model: FusionModel | None = None  # the fitted model (also saved in model_file)
    maps: dict[str, Path] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, Any]:
        trained = self.scores[self.scores.modality == self.chosen] if len(self.scores) else self.scores
        counts: dict[str, Any] = {
            "samples": int(len(self.samples)), "videos": int(self.samples.video_id.nunique()) if len(self.samples) else 0,
            "classes": len(self.class_counts) or len(self.class_names), "labelled": int(sum(self.class_counts.values())),
            "modalities": len(self.modalities),
        }  # fmt: skip
        if len(trained):
            counts.update({"chosen": self.chosen, "accuracy": round(float(trained.accuracy.iat[0]), 4),
                           "macro_f1": round(float(trained.macro_f1.iat[0]), 4)})  # fmt: skip
        return counts

    @property
    def model_records(self) -> list[dict[str, Any]]:
        return list(self.records)

    def overview(self) -> pd.DataFrame:
        """The scores as one table: a row per classifier and modality or fusion, recall per class as columns."""
        if not len(self.scores):
            return pd.DataFrame()
        recall = pd.DataFrame([json.loads(r) for r in self.scores.recall]).add_prefix("recall: ")
        table = pd.concat([self.scores[["classifier", "modality", "kind", "samples", "accuracy", "macro_f1"]].reset_index(drop=True),
                           recall], axis=1)  # fmt: skip
        return table.round(3)

    def confusions(self, classifier: str | None = None) -> dict[str, pd.DataFrame]:
        """Confusion matrices (rows: true class, columns: predicted) per modality or fusion of one classifier."""
        trained = self.scores.classifier[self.scores.kind != "zero-shot"]
        classifier = classifier or (trained.iat[0] if len(trained) else "")  # the saved model's, listed first
        out = {}
        for row in self.scores.itertuples():
            if row.classifier == classifier or row.kind == "zero-shot":
                classes = json.loads(row.classes)
                out[row.modality] = pd.DataFrame(json.loads(row.confusion), index=pd.Index(classes, name="true"),
                                                 columns=pd.Index(classes, name="predicted"))  # fmt: skip
        return out

    def video_predictions(self) -> pd.DataFrame:
        """One row per video: its predicted class and probability (trained, else zero-shot fused)."""
        table = self.predictions
        if not len(table):
            return table
        videos = table[(table.level == "video") & table.modality.isin([self.chosen, "zero-shot"])]
        return videos.sort_values(["video_name", "source"]).reset_index(drop=True)


def sample_labels(cfg: PipelineConfig, run: RunPaths, samples: pd.DataFrame) -> tuple[pd.Series, str]:
    """The label of each sample (None: unlabelled) from the configured source, and that source's name."""
    options = cfg.classify
    videos = read_table(run.table("videos"))
    labels = pd.Series([None] * len(samples), index=samples.index, dtype=object)
    if options.segments is not None:
        segments = read_segment_labels(options.segments, videos, cfg.corpus.videos)
        return window_labels(samples, segments), str(options.segments)
    if options.labels is not None:
        by_video, source = read_video_labels(options.labels, videos, cfg.corpus.videos), str(options.labels)
    elif options.labels_from_folders:
        by_video, source = folder_labels(videos, cfg.corpus.videos), f"sub-folders of {cfg.corpus.videos}"
    else:
        return labels, ""
    return samples.video_id.map(by_video).astype(object).where(samples.video_id.isin(list(by_video)), None), source


def _prediction_rows(samples: pd.DataFrame, probabilities: np.ndarray, classes: np.ndarray, *, source: str, modality: str,
                     truth: pd.Series | None = None, fold: np.ndarray | None = None, split: str = "") -> pd.DataFrame:  # fmt: skip
    best = np.argmax(probabilities, axis=1)
    return pd.DataFrame({
        "sample_id": samples.sample_id.to_numpy(), "video_id": samples.video_id.to_numpy(),
        "video_name": samples.video_name.to_numpy(), "level": samples.level.to_numpy(),
        "start": samples.start.to_numpy(float), "end": samples.end.to_numpy(float), "source": source, "modality": modality,
        "label": np.asarray(classes, dtype=object)[best], "probability": probabilities[np.arange(len(best)), best].astype(float),
        "true_label": (truth.to_numpy(object) if truth is not None else np.full(len(samples), None, object)),
        "fold": fold if fold is not None else np.full(len(samples), -1), "split": split,
    })  # fmt: skip


def _video_means(samples: pd.DataFrame, rows: np.ndarray, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Per video, the mean of its windows' probabilities."""
    table = pd.DataFrame(probabilities, index=samples.video_id.to_numpy()[rows])
    return {video: group.to_numpy().mean(0) for video, group in table.groupby(level=0)}


def _choose(cv: CrossValidation, fusion: str) -> str:
    if fusion != "best":
        return fusion if fusion in cv.probabilities else next(iter(cv.probabilities))
    ranked = cv.scores.sort_values(["macro_f1", "accuracy"], ascending=False, kind="stable")
    return str(ranked.modality.iat[0])


def _encoders(cfg: PipelineConfig, image_encoder: Any, text_encoder: Any, features: FeatureSet):
    from .. import models

    image_text = None
    if any(m in features.blocks for m in ("image", "keyframes")):
        if image_encoder is None and str(features.models.get("image", "")).startswith(models.FALLBACK_MODEL_ID.split("-")[0]):
            return None, _sentence(cfg, text_encoder, features)  # the weight-free descriptor has no text side
        encoder = image_encoder or models.image_encoder(cfg.models)
        if getattr(encoder, "has_text", False) and encoder.record.model_id == features.models.get(
            "image", encoder.record.model_id
        ):
            image_text = encoder.encode_text
    return image_text, _sentence(cfg, text_encoder, features)


def _sentence(cfg: PipelineConfig, text_encoder: Any, features: FeatureSet):
    from .. import models

    if any(m in features.blocks for m in ("caption", "ocr", "speech")):
        return (text_encoder or models.text_encoder(cfg.models)).encode
    return None


def classify_run(
    cfg: PipelineConfig, run: RunPaths | Path | str, *, image_encoder: Any = None, text_encoder: Any = None,
    audio: Any = None,
) -> ClassifySummary:  # fmt: skip
    """Run the classify stage on `run` (see the module docstring); raises `LabelError` for unusable labels."""
    started = time.perf_counter()
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    options = cfg.classify
    image_model = getattr(getattr(image_encoder, "record", None), "model_id", None)
    detected = None
    if cfg.objects.enabled and "objects" in options.channels:
        from .. import models
        from ..objects import detect_run

        with run_lock(run.root, "classify: objects"):
            detected = detect_run(run, cfg.objects, text_encoder=text_encoder or models.text_encoder(cfg.models))
    elif "objects" in options.channels:
        with run_lock(run.root, "classify"):
            for stale in ("objects", "objects_embeddings"):  # objects.enabled is off: no detections of an earlier setting
                run.table(stale).unlink(missing_ok=True)
    features = build_features(cfg, run, image_model=image_model, audio=audio)
    if detected is not None:
        features.notes[:0] = detected.notes
        features.records.extend(detected.model_records)
    samples = features.samples
    summary = ClassifySummary(
        samples=samples, modalities=features.modalities, notes=list(features.notes), records=features.records
    )
    summary.level = "window" if options.window_seconds else "video"
    labels, summary.label_source = sample_labels(cfg, run, samples)
    tables: list[pd.DataFrame] = []
    scores: list[pd.DataFrame] = []
    model_bundle = None

    if options.class_names:
        prompts = class_prompts(options.class_names, options.prompts)
        summary.class_names = list(prompts)
        image_text, sentence = _encoders(cfg, image_encoder, text_encoder, features)
        shot = zero_shot(features, prompts, image_text=image_text, sentence=sentence)
        summary.notes.extend(shot.notes)
        classes = np.array(shot.classes, dtype=object)
        for modality, probabilities in shot.probabilities.items():
            have = shot.present[modality]
            tables.append(_prediction_rows(samples[have], probabilities[have], classes, source="zero-shot",
                                           modality=f"zero-shot {modality}", truth=labels[have], split="zero-shot"))  # fmt: skip
        fused, have = shot.fused()
        if have.any():
            tables.append(_prediction_rows(samples[have], fused[have], classes, source="zero-shot", modality="zero-shot",
                                           truth=labels[have], split="zero-shot"))  # fmt: skip
        # against the labels, where the labels are class names
        judged = (samples.level == summary.level).to_numpy() & labels.isin(list(prompts)).to_numpy()
        if judged.any():
            named = {f"zero-shot {m}": classes[np.argmax(p, axis=1)] for m, p in shot.probabilities.items()}
            if have.any():
                named["zero-shot"] = classes[np.argmax(fused, axis=1)]
            for name, predicted in named.items():
                ok = judged & (shot.present.get(name.removeprefix("zero-shot "), have))
                if ok.any():
                    scores.append(
                        score_table({name: predicted[ok]}, labels[ok].to_numpy(object), classes, classifier="zero-shot")
                    )

    trained = samples.level.eq(summary.level).to_numpy() & labels.notna().to_numpy()
    if summary.label_source:
        check_classes(labels[samples.level == summary.level], samples.video_id[samples.level == summary.level],
                      min_groups=options.min_videos_per_class, source=summary.label_source)  # fmt: skip
        summary.class_counts = {str(k): int(v) for k, v in class_counts(labels[trained]).items()}
        y, groups = labels[trained].to_numpy(object).astype(str), samples.video_id[trained].to_numpy()
        for modality in list(features.modalities):  # a channel almost no labelled video has teaches nothing but noise
            videos = len(set(groups[features.present[modality][trained]]))
            if videos < options.min_videos_per_class:
                summary.notes.append(f"{modality}: present in {videos} of the {len(set(groups))} labelled videos; "
                                     "left out of the trained classifiers")  # fmt: skip
                features = features.without(modality)
        summary.modalities = features.modalities
        matrices = modality_matrices(features)
        chosen_cv = None
        for classifier in dict.fromkeys([options.classifier, *options.compare_classifiers]):
            cv = cross_validate({m: x[trained] for m, x in matrices.items()}, y, groups, classifier=classifier,
                                folds=options.folds, seed=options.seed)  # fmt: skip
            scores.append(cv.scores)
            if classifier == options.classifier:
                chosen_cv = cv
        assert chosen_cv is not None
        summary.chosen = _choose(chosen_cv, options.fusion)
        summary.carriers = chosen_cv.carriers()
        model = FusionModel(options.classifier, features.modalities, summary.chosen, seed=options.seed)
        model.fit({m: x[trained] for m, x in matrices.items()}, y,
                  out_of_fold={m: chosen_cv.probabilities[m] for m in features.modalities})  # fmt: skip
        probabilities = np.zeros((len(samples), len(model.classes_)))
        probabilities[trained] = chosen_cv.probabilities[summary.chosen]
        others = samples.level.eq(summary.level).to_numpy() & ~trained
        if others.any():
            probabilities[others] = model.predict_proba({m: x[others] for m, x in matrices.items()})
        level_rows = np.flatnonzero(samples.level.eq(summary.level).to_numpy())
        fold = np.full(len(samples), -1)
        fold[trained] = chosen_cv.folds
        split = np.where(trained, "cross-validated", "predicted")
        rows = _prediction_rows(samples.iloc[level_rows], probabilities[level_rows], model.classes_, source="trained",
                                modality=summary.chosen, truth=labels.iloc[level_rows], fold=fold[level_rows])  # fmt: skip
        rows["split"] = split[level_rows]
        tables.append(rows)
        if summary.level == "window":  # a video's answer: the mean of its windows'
            means = _video_means(samples, level_rows, probabilities[level_rows])
            video_rows = np.flatnonzero((samples.level == "video").to_numpy() & samples.video_id.isin(list(means)).to_numpy())
            video_probabilities = np.stack([means[v] for v in samples.video_id.iloc[video_rows]])
            video_truth = samples.video_id.iloc[video_rows].map(
                labels[trained].groupby(samples.video_id[trained]).agg(lambda s: s.iat[0] if s.nunique() == 1 else None)
            )
            tables.append(_prediction_rows(samples.iloc[video_rows], video_probabilities, model.classes_, source="trained",
                                           modality=summary.chosen, truth=video_truth, split="mean of windows"))  # fmt: skip
        summary.model = model
        model_bundle = _bundle(cfg, features, model, summary)
    elif not options.class_names:
        summary.notes.append("no labels and no class names: nothing to classify (set classify.class_names, classify.labels, "
                             "classify.segments or classify.labels_from_folders)")  # fmt: skip

    summary.scores = pd.concat(scores, ignore_index=True)[SCORE_COLUMNS] if scores else pd.DataFrame(columns=SCORE_COLUMNS)
    summary.predictions = (pd.concat(tables, ignore_index=True)[PREDICTION_COLUMNS] if tables
                           else pd.DataFrame(columns=PREDICTION_COLUMNS))  # fmt: skip
    if not summary.chosen and options.class_names:
        summary.chosen = "zero-shot"
    with run_lock(run.root, "classify"):
        write_table(summary.scores, run.table("classify_scores"))
        write_table(_storable(summary.predictions), run.table("predictions"))
        target = model_path(run)
        if model_bundle is not None:
            save_model(model_bundle, target)
            summary.model_file = target
        else:
            for stale in (target, target.with_suffix(".json")):
                stale.unlink(missing_ok=True)  # a model of earlier labels must not outlive them
        summary.maps = write_class_maps(run, summary)
    summary.seconds = time.perf_counter() - started
    return summary


def _storable(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    table["true_label"] = table.true_label.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    table["fold"] = pd.to_numeric(table.fold).astype("int64")
    return table


# --------------------------------------------------------------------------- saved models


def _bundle(cfg: PipelineConfig, features: FeatureSet, model: FusionModel, summary: ClassifySummary) -> dict[str, Any]:
    from .. import __version__

    return {
        "model": model, "spec": features.spec(), "fingerprint": features.fingerprint(),
        "config": json.loads(cfg.classify.model_dump_json()), "classes": [str(c) for c in model.classes_],
        "chosen": summary.chosen, "frameatlas": __version__,
    }  # fmt: skip


def save_model(bundle: dict[str, Any], path: Path) -> Path:
    """The fitted model (joblib) and, beside it, its features' fingerprint and config as JSON."""
    with atomic_path(path) as tmp:
        joblib.dump(bundle, tmp)
    atomic_write_json(path.with_suffix(".json"), {k: v for k, v in bundle.items() if k != "model"})
    return path


def load_model(path: Path | str) -> dict[str, Any]:
    """A saved classify model: a `.joblib` file, or a run folder holding `models/classify.joblib`."""
    path = Path(path)
    if path.is_dir():
        path = model_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no saved classify model; run the classify stage with labels first")
    bundle = joblib.load(path)
    if not isinstance(bundle, dict) or "model" not in bundle or "spec" not in bundle:
        raise ValueError(f"{path}: not a frameatlas classify model")
    return bundle


def _compare(expected: dict[str, Any], found: dict[str, Any], source: str, target: str) -> None:
    problems = []
    if expected.get("window_seconds") != found.get("window_seconds"):
        problems.append(f"windows of {expected.get('window_seconds')} s in the model, {found.get('window_seconds')} s here")
    for modality, want in expected["modalities"].items():
        have = found["modalities"].get(modality)
        if have is None:
            problems.append(f"the {modality} modality ({want['model']}) is missing from {target}")
        elif have["model"] != want["model"]:
            problems.append(f"{modality} vectors made by {have['model']} in {target}, by {want['model']} for the model")
        elif have["dim"] != want["dim"]:
            problems.append(f"{modality} vectors of {have['dim']} dimensions in {target}, {want['dim']} for the model")
    if problems:
        raise FeatureMismatch(f"the model from {source} cannot label {target}: " + "; ".join(problems)
                              + ". Run that run's stages with the same models (models.image, models.text, classify.audio), "
                              "or train a model on it")  # fmt: skip


def predict_run(model: Path | str, target: RunPaths | Path | str) -> pd.DataFrame:
    """Label another run's videos and windows with a saved model; writes its `tables/predictions.parquet`.

    Raises `FeatureMismatch` when the other run's features come from other models or windows.
    """
    target = target if isinstance(target, RunPaths) else RunPaths(target)
    bundle = load_model(model)
    source = str(model)
    if not target.config_file.exists():
        raise FileNotFoundError(f"{target.config_file}: not a frameatlas run (no config.json); run its stages first")
    cfg = config_from_dict(json.loads(target.config_file.read_text()), source=str(target.config_file))
    spec = bundle["spec"]
    settings = dict(bundle["config"])
    cfg.classify = cfg.classify.model_copy(update={"window_seconds": spec["window_seconds"],
                                                   "channels": list(spec["modalities"])})  # fmt: skip
    audio = None
    if "audio" in spec["modalities"]:
        wanted = spec["modalities"]["audio"]["model"]
        if wanted == LOGMEL_ID:
            audio = LogMelDescriptor()
        else:
            audio, _ = audio_descriptor(
                "auto", settings.get("yamnet", ""), None, cfg.classify.yamnet_python or settings.get("yamnet_python")
            )
    image_model = spec["modalities"].get("image", spec["modalities"].get("keyframes", {})).get("model")
    features = build_features(cfg, target, image_model=image_model, audio=audio)
    _compare(spec, features.spec(), source, str(target.root))
    fusion: FusionModel = bundle["model"]
    level = "window" if spec["window_seconds"] else "video"
    rows = np.flatnonzero(features.samples.level.eq(level).to_numpy())
    matrices = modality_matrices(features, fusion.modalities)
    probabilities = fusion.predict_proba({m: x[rows] for m, x in matrices.items()})
    samples = features.samples
    tables = [_prediction_rows(samples.iloc[rows], probabilities, fusion.classes_, source=f"model {source}",
                               modality=fusion.mode, split="predicted")]  # fmt: skip
    if level == "window":
        means = _video_means(samples, rows, probabilities)
        video_rows = np.flatnonzero((samples.level == "video").to_numpy() & samples.video_id.isin(list(means)).to_numpy())
        tables.append(_prediction_rows(samples.iloc[video_rows], np.stack([means[v] for v in samples.video_id.iloc[video_rows]]),
                                       fusion.classes_, source=f"model {source}", modality=fusion.mode, split="mean of windows"))  # fmt: skip
    predictions = _storable(pd.concat(tables, ignore_index=True)[PREDICTION_COLUMNS])
    with run_lock(target.root, "classify --predict"):
        write_table(predictions, target.table("predictions"))
    return predictions


# --------------------------------------------------------------------------- maps coloured by class


def frame_classes(run: RunPaths, predictions: pd.DataFrame, modality: str) -> pd.Series:
    """frame_key -> the predicted class of the window (else the video) the frame belongs to."""
    frames = read_table(run.table("frames"))
    chosen = predictions[predictions.modality == modality]
    if not len(chosen):
        return pd.Series(dtype=object)
    out = pd.Series([None] * len(frames), index=frames.frame_key.to_numpy(), dtype=object)
    for level in ("video", "window"):  # windows last: they win where both exist
        part = chosen[chosen.level == level]
        for row in part.itertuples():
            inside = frames.video_id.to_numpy() == row.video_id
            if level == "window":
                inside &= (frames.timestamp.to_numpy() >= row.start) & (frames.timestamp.to_numpy() < row.end)
            out[inside] = row.label
    return out.dropna()


def write_class_maps(run: RunPaths, summary: ClassifySummary) -> dict[str, Path]:
    """The visualize stage's 3D maps again, coloured by predicted class (`plots/map_<method>_classes.html`)."""
    from ..visualize import METHOD_LABELS, annotated_frames, map_3d, write_standalone_html

    path = run.table("projections")
    written: dict[str, Path] = {}
    stale = set((run.root / "plots").glob("map_*_classes.html"))
    if path.exists() and len(summary.predictions) and summary.chosen:
        classes = frame_classes(run, summary.predictions, summary.chosen)
        projections = read_table(path)
        frames = annotated_frames(run).set_index("frame_key", drop=False)
        for method, points in projections.groupby("method", sort=False):
            keys = points.frame_key[points.frame_key.isin(classes.index) & points.frame_key.isin(frames.index)]
            if not len(keys):
                continue
            table = frames.loc[keys.to_numpy()].reset_index(drop=True)
            table["predicted_class"] = classes.loc[keys.to_numpy()].to_numpy()
            xyz = points.set_index("frame_key").loc[keys.to_numpy(), ["x", "y", "z"]].to_numpy()
            label = METHOD_LABELS.get(method, method)
            fig = map_3d(
                xyz, table, color_by="class", title=f"Frames in 3D ({label}), coloured by predicted class ({summary.chosen})"
            )
            target = run.root / "plots" / f"map_{method}_classes.html"
            written[method] = write_standalone_html(fig, target, run, title=f"frameatlas classes ({label})")
            stale.discard(target)
    for old in stale:
        old.unlink(missing_ok=True)
    return written
