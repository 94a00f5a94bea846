"""Trained classifiers per modality, early and late fusion, cross-validated grouped by video.

* One classifier per modality (scikit-learn: logistic regression, linear SVM or a small MLP, all
  after standardisation; class weights balance the classes, the MLP, which takes no weights, sees
  the smaller classes oversampled).
* **Early fusion**: the modalities, each standardised (and reduced to its principal components), joined into
  one vector for one classifier.
* **Late fusion**: the modalities' probabilities averaged (`late-mean`), or weighted by a logistic
  regression learned on their out-of-fold probabilities (`late-learned`, stacking). Its cross-validated
  score is nested: each test fold's weights are learned by an inner cross-validation on the training
  videos alone.

Cross-validation is `StratifiedGroupKFold` grouped by video: the windows of one video are never
on both sides of a split. Every sample gets an out-of-fold prediction; scores are computed from
them (accuracy, macro-F1, recall per class, confusion matrix).

Example:
    >>> result = cross_validate(matrices, labels, groups, classifier="logreg")  # doctest: +SKIP
    >>> result.scores[["modality", "accuracy", "macro_f1"]]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from .features import FeatureSet

log = logging.getLogger(__name__)

__all__ = [
    "CLASSIFIERS",
    "FUSIONS",
    "CrossValidation",
    "FusionModel",
    "ModalityClassifier",
    "cross_validate",
    "grouped_folds",
    "modality_matrices",
    "score_table",
]

CLASSIFIERS = ("logreg", "svm", "mlp")
COMPONENTS = 64  # principal components a modality's standardised vectors are reduced to (early fusion: per modality)
FUSIONS = ("early", "late-mean", "late-learned")


def _one_thread(function):
    """Run `function` with one BLAS/OpenMP thread: these fits are small, and on cores shared with other
    work competing threads made them 10-100x slower (benchmarks/bench_classify.py)."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1):
            return function(*args, **kwargs)

    return wrapper


class ModalityClassifier(ClassifierMixin, BaseEstimator):
    """Standardise, then classify with probabilities, balancing the classes.

    `kind`: `logreg` (multinomial logistic regression), `svm` (linear SVM; probabilities are a
    softmax of its decision values), `mlp` (one hidden layer of `hidden` units, trained on
    oversampled classes).
    """

    def __init__(
        self, kind: str = "logreg", hidden: int = 64, seed: int = 0, components: int | None = COMPONENTS,
        blocks: list[tuple[int, int]] | None = None,
    ):  # fmt: skip
        self.kind, self.hidden, self.seed, self.components, self.blocks = kind, hidden, seed, components, blocks

    def _reducer(self, samples: int, width: int):
        """Standardise; and keep `components` principal components when there are more inputs and enough samples."""
        steps: list[Any] = [StandardScaler()]
        if self.components and self.components < width and samples > 2 * self.components:  # (small sets: no reduction)
            steps.append(PCA(n_components=self.components, svd_solver="covariance_eigh"))
        return make_pipeline(*steps)

    @_one_thread
    def fit(self, X: np.ndarray, y: np.ndarray) -> ModalityClassifier:
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        if self.kind == "logreg":
            model = LogisticRegression(max_iter=500, class_weight="balanced", C=1.0)
        elif self.kind == "svm":
            model = LinearSVC(class_weight="balanced", C=0.1, max_iter=5000)
        elif self.kind == "mlp":
            model = MLPClassifier(hidden_layer_sizes=(self.hidden,), max_iter=400, random_state=self.seed, alpha=1e-3)
            X, y = _oversample(X, y, self.seed)
        else:
            raise ValueError(f"classifier {self.kind!r}: choose {', '.join(CLASSIFIERS)}")
        if self.blocks:  # early fusion: each modality's columns standardised and reduced on their own, then joined
            reduce = ColumnTransformer([(f"block{i}", self._reducer(len(X), stop - start), list(range(start, stop)))
                                        for i, (start, stop) in enumerate(self.blocks)])  # fmt: skip
        else:
            reduce = self._reducer(len(X), X.shape[1])
        self.model_ = make_pipeline(reduce, model).fit(X, y)
        return self

    @_one_thread
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if self.kind == "svm":
            decision = self.model_.decision_function(X)
            if decision.ndim == 1:  # two classes: one decision value
                decision = np.column_stack([-decision, decision])
            decision = decision - decision.max(axis=1, keepdims=True)
            weights = np.exp(2.0 * decision)
            return weights / weights.sum(axis=1, keepdims=True)
        return self.model_.predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _oversample(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Every class repeated (randomly, with replacement) up to the size of the largest."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    picks = [np.flatnonzero(y == c) for c in classes]
    picks = [np.concatenate([p, rng.choice(p, counts.max() - len(p))]) if len(p) < counts.max() else p for p in picks]
    order = np.concatenate(picks)
    return X[order], y[order]


def modality_matrices(features: FeatureSet, modalities: list[str] | None = None) -> dict[str, np.ndarray]:
    """Per modality, the classifier's input: its pooled vectors, plus a presence column for
    modalities some samples lack (text, sound)."""
    out = {}
    for name in modalities or features.modalities:
        block, present = features.blocks[name], features.present[name]
        out[name] = block if present.all() else np.hstack([block, present[:, None].astype(np.float32)])
    return out


def grouped_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """The fold of each sample: stratified by label, grouped by video (a video's samples share a fold).

    Uses at most as many folds as the smallest class has videos.
    """
    per_class = _videos_per_class(labels, groups)
    n_splits = int(max(2, min(folds, per_class.min())))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fold = np.full(len(labels), -1, np.int64)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        fold[test] = k
    return fold


def _videos_per_class(labels: np.ndarray, groups: np.ndarray) -> pd.Series:
    return pd.DataFrame({"y": labels, "g": groups}).groupby("y").g.nunique()


def _align(proba: np.ndarray, model_classes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Probabilities over `classes` (a class missing from a training fold gets 0)."""
    out = np.zeros((len(proba), len(classes)))
    index = {c: i for i, c in enumerate(classes)}
    for j, c in enumerate(model_classes):
        out[:, index[c]] = proba[:, j]
    return out


def _stack_input(probabilities: dict[str, np.ndarray], modalities: list[str]) -> np.ndarray:
    return np.hstack([np.log(np.clip(probabilities[m], 1e-6, 1.0)) for m in modalities])


def _stacker() -> LogisticRegression:
    return LogisticRegression(max_iter=500, class_weight="balanced", C=1.0)


@dataclass
class CrossValidation:
    """Out-of-fold probabilities of every modality and fusion, their scores, and the folds."""

    classes: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    folds: np.ndarray
    classifier: str
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)  # modality or fusion -> (n, classes)
    scores: pd.DataFrame = field(default_factory=pd.DataFrame)

    def predicted(self, name: str) -> np.ndarray:
        return self.classes[np.argmax(self.probabilities[name], axis=1)]

    def carriers(self) -> pd.DataFrame:
        """Per class, each single modality's recall, and the modality that recalls it best."""
        singles = self.scores[(self.scores.kind == "modality") & (self.scores.classifier == self.classifier)]
        table = pd.DataFrame({row.modality: json.loads(row.recall) for row in singles.itertuples()})
        if table.empty:
            return table
        table.index.name = "class"
        table["carried by"] = table.idxmax(axis=1)
        return table.reset_index()


def _fit_predict(
    kind: str, seed: int, X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, classes: np.ndarray,
    blocks: list[tuple[int, int]] | None = None,
) -> np.ndarray:  # fmt: skip
    model = ModalityClassifier(kind, seed=seed, blocks=blocks).fit(X[train], y[train])
    return _align(model.predict_proba(X[test]), model.classes_, classes)


def _joined(matrices: dict[str, np.ndarray], modalities: list[str]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The modalities side by side, and each one's columns (early fusion reduces each on its own)."""
    widths = np.cumsum([0, *(matrices[m].shape[1] for m in modalities)])
    return np.hstack([matrices[m] for m in modalities]), [(int(a), int(b)) for a, b in zip(widths[:-1], widths[1:])]


def _nested_late_learned(
    matrices: dict[str, np.ndarray], labels: np.ndarray, groups: np.ndarray, fold: np.ndarray,
    outer: dict[str, np.ndarray], classes: np.ndarray, *, classifier: str, folds: int, seed: int,
) -> np.ndarray:  # fmt: skip
    """Out-of-fold probabilities of the learned late fusion, nested: for each outer fold, the weights are
    learned from probabilities an inner grouped cross-validation gives on the training videos only, so
    neither the test fold's labels nor models that saw them shape its answers.

    With three outer folds or more, the inner folds are the other outer folds (grouped and stratified
    already): the model fitted without folds j and k gives fold j's inner probabilities when k is the
    test fold and fold k's when j is, so each pair is fitted once. With two outer folds, the training
    videos get grouped folds of their own, or, when some class has a single training video, the fold takes
    the plain mean of the modalities (late-mean). `outer`: each modality's outer out-of-fold probabilities,
    which the learned weights combine on the test fold.
    """
    modalities = list(matrices)
    outer_folds = np.unique(fold)
    learned = np.zeros((len(labels), len(classes)))
    shared: dict[frozenset, dict[str, np.ndarray]] = {}  # held-out pair of outer folds -> probabilities on their rows

    def fitted_without(rows_out: np.ndarray, rows_fit: np.ndarray) -> dict[str, np.ndarray]:
        probabilities = {}
        for m in modalities:
            if len(np.unique(labels[rows_fit])) < 2:  # too few videos left to learn from: no opinion
                probabilities[m] = np.full((len(rows_out), len(classes)), 1.0 / len(classes))
            else:
                probabilities[m] = _fit_predict(classifier, seed, matrices[m], labels, rows_fit, rows_out, classes)
        return probabilities

    for k in outer_folds:
        train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        if len(outer_folds) == 2 and _videos_per_class(labels[train], groups[train]).min() < 2:
            # the training videos cannot be split again with every class on both sides (the demo: one video
            # per class): no weights can be learned without the test fold, so this fold gets the plain mean
            learned[test] = np.mean([outer[m][test] for m in modalities], axis=0)
            continue
        inner = fold[train] if len(outer_folds) > 2 else grouped_folds(labels[train], groups[train], folds, seed + 1)
        inner_probabilities = {m: np.zeros((len(train), len(classes))) for m in modalities}
        for j in np.unique(inner):
            held = inner == j
            if len(outer_folds) > 2:
                key = frozenset((int(j), int(k)))
                if key not in shared:
                    rows_out = np.flatnonzero(np.isin(fold, list(key)))
                    predicted = fitted_without(rows_out, np.flatnonzero(~np.isin(fold, list(key))))
                    shared[key] = {}
                    for m, p in predicted.items():
                        shared[key][m] = np.zeros((len(labels), len(classes)))
                        shared[key][m][rows_out] = p
                for m in modalities:
                    inner_probabilities[m][held] = shared[key][m][train[held]]
            else:
                predicted = fitted_without(train[held], train[~held])
                for m in modalities:
                    inner_probabilities[m][held] = predicted[m]
        meta = _stacker().fit(_stack_input(inner_probabilities, modalities), labels[train])
        test_input = _stack_input({m: outer[m][test] for m in modalities}, modalities)
        learned[test] = _align(meta.predict_proba(test_input), meta.classes_, classes)
    return learned


@_one_thread
def cross_validate(
    matrices: dict[str, np.ndarray], labels: np.ndarray, groups: np.ndarray, *, classifier: str = "logreg",
    folds: int = 5, seed: int = 0, fold_of: np.ndarray | None = None,
) -> CrossValidation:  # fmt: skip
    """Out-of-fold probabilities for each modality, early fusion and both late fusions.

    `matrices` (modality -> (n, dim)), `labels` and `groups` (the video of each sample) are the
    labelled samples only. `fold_of` gives the folds (tests); default `grouped_folds`.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    classes = np.unique(labels)
    fold = grouped_folds(labels, groups, folds, seed) if fold_of is None else np.asarray(fold_of)
    modalities = list(matrices)
    result = CrossValidation(classes, labels, groups, fold, classifier)
    out = {m: np.zeros((len(labels), len(classes))) for m in [*modalities, "early"]}
    joined, blocks = _joined(matrices, modalities)
    for k in np.unique(fold):
        train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        for m in modalities:
            out[m][test] = _fit_predict(classifier, seed, matrices[m], labels, train, test, classes)
        if len(modalities) > 1:
            out["early"][test] = _fit_predict(classifier, seed, joined, labels, train, test, classes, blocks)
    result.probabilities.update({m: out[m] for m in modalities})
    if len(modalities) > 1:
        result.probabilities["early"] = out["early"]
        result.probabilities["late-mean"] = np.mean([out[m] for m in modalities], axis=0)
        result.probabilities["late-learned"] = _nested_late_learned(
            matrices, labels, groups, fold, out, classes, classifier=classifier, folds=folds, seed=seed
        )
    result.scores = score_table({name: result.classes[np.argmax(p, axis=1)] for name, p in result.probabilities.items()},
                                labels, classes, classifier=classifier)  # fmt: skip
    return result


def score_table(predictions: dict[str, np.ndarray], labels: np.ndarray, classes: np.ndarray, *, classifier: str) -> pd.DataFrame:
    """One row per modality or fusion: accuracy, macro-F1, recall per class (JSON), confusion matrix (JSON)."""
    rows = []
    for name, predicted in predictions.items():
        recall = recall_score(labels, predicted, labels=classes, average=None, zero_division=0)
        rows.append({
            "classifier": classifier, "modality": name,
            "kind": "fusion" if name in FUSIONS else ("zero-shot" if classifier == "zero-shot" else "modality"),
            "samples": int(len(labels)), "accuracy": float(accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, labels=classes, average="macro", zero_division=0)),
            "recall": json.dumps({str(c): round(float(r), 4) for c, r in zip(classes, recall)}),
            "confusion": json.dumps(confusion_matrix(labels, predicted, labels=classes).tolist()),
            "classes": json.dumps([str(c) for c in classes]),
        })  # fmt: skip
    return pd.DataFrame(rows)


class FusionModel:
    """Per-modality classifiers, the early-fusion classifier and the late-fusion weights, fitted on
    every labelled sample; `mode` chooses which answer `predict_proba` gives."""

    def __init__(self, classifier: str, modalities: list[str], mode: str, seed: int = 0):
        self.classifier, self.modalities, self.mode, self.seed = classifier, list(modalities), mode, seed

    @_one_thread
    def fit(
        self, matrices: dict[str, np.ndarray], labels: np.ndarray, out_of_fold: dict[str, np.ndarray] | None = None
    ) -> FusionModel:
        labels = np.asarray(labels)
        self.classes_ = np.unique(labels)
        self.dims_ = {m: int(matrices[m].shape[1]) for m in self.modalities}
        self.models_ = {m: ModalityClassifier(self.classifier, seed=self.seed).fit(matrices[m], labels) for m in self.modalities}
        self.early_ = None
        self.stacker_ = None
        if len(self.modalities) > 1:
            joined, blocks = _joined(matrices, self.modalities)
            self.early_ = ModalityClassifier(self.classifier, seed=self.seed, blocks=blocks).fit(joined, labels)
            if out_of_fold is not None:  # stacking learns from out-of-fold probabilities, never in-sample ones
                self.stacker_ = _stacker().fit(_stack_input(out_of_fold, self.modalities), labels)
        return self

    @_one_thread
    def predict_proba(self, matrices: dict[str, np.ndarray], mode: str | None = None) -> np.ndarray:
        mode = mode or self.mode
        for m in self.modalities:
            if m not in matrices:
                raise ValueError(f"the model needs the {m} modality, which these features lack")
            if matrices[m].shape[1] != self.dims_[m]:
                raise ValueError(
                    f"the model's {m} modality has {self.dims_[m]} dimensions, these features {matrices[m].shape[1]}"
                )
        per = {m: _align(self.models_[m].predict_proba(matrices[m]), self.models_[m].classes_, self.classes_)
               for m in self.modalities}  # fmt: skip
        if mode in per:
            return per[mode]
        if mode == "early" and self.early_ is not None:
            joined = np.hstack([matrices[m] for m in self.modalities])
            return _align(self.early_.predict_proba(joined), self.early_.classes_, self.classes_)
        if mode == "late-learned" and self.stacker_ is not None:
            return _align(self.stacker_.predict_proba(_stack_input(per, self.modalities)), self.stacker_.classes_, self.classes_)
        if mode == "late-mean" or len(self.modalities) > 1:
            return np.mean([per[m] for m in self.modalities], axis=0)
        return per[self.modalities[0]]
