"""Classification metrics with percentile-bootstrap 95% intervals, for a model scored on a labelled set.

Every metric is a point estimate on all images and an interval from
:data:`RESAMPLES` bootstrap resamples of the images (seeded): the 2.5th and
97.5th percentiles of the metric over the resamples. A resample is a row of
counts (how often each image was drawn), so every metric of every resample is
a matrix product or a cumulative sum, with no loop over resamples.

- accuracy, balanced accuracy (mean recall over the classes present), macro F1
  (over the classes present in the labels);
- per class: sensitivity (recall), specificity, precision (NaN when the class
  is never predicted), one-vs-rest ROC-AUC (NaN when the class, or every
  other class, is absent);
- the top-label expected calibration error over :data:`ECE_BINS` equal-width
  confidence bins, and its reliability table.

A row of probabilities that is not finite (a broken model) is a wrong
prediction, class ``-1`` of :func:`brainfl.model.outputs.predicted_classes`: it
counts against accuracy and its true class's sensitivity, is no false alarm
for the others, and is left out of ROC-AUC and ECE (see ``non_finite``).
``brainfl evaluate`` reports every metric; through :mod:`brainfl.evaluation.metrics` the
server records some each round, and each site its point estimates (``resamples=0``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from brainfl.model.outputs import predicted_classes

RESAMPLES = 1000
CONFIDENCE = 0.95
ECE_BINS = 15
SEED = 0
_CHUNK_CELLS = 2_000_000  # resamples x images held at once
OVERALL = ("accuracy", "balanced_accuracy", "f1_macro", "ece")
PER_CLASS = ("sensitivity", "specificity", "precision", "roc_auc")
BOUNDS = ("value", "low", "high")
NO_PREDICTION = "no prediction"  # the confusion column of rows with non-finite probabilities


class Interval(NamedTuple):
    """A metric's point estimate and the bounds of its bootstrap interval."""

    value: float
    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class Scores:
    """Every metric of a labelled set with its interval, the confusion matrix and the reliability table."""

    class_names: tuple[str, ...]
    overall: dict[str, Interval]  # OVERALL names
    per_class: dict[str, list[Interval]]  # PER_CLASS names, one per class in class order
    confusion: np.ndarray  # rows: true class; columns: predicted class, then non-finite rows
    reliability: pd.DataFrame  # bin, lower, upper, count, confidence, accuracy
    images: int
    non_finite: int  # rows left out of ROC-AUC and ECE
    resamples: int
    seed: int
    confidence: float

    def table(self) -> pd.DataFrame:
        """One row per metric (and class): ``metric, class, value, low, high``; ``class`` empty if overall."""
        rows = [(name, "", *self.overall[name]) for name in OVERALL]
        for name in PER_CLASS:
            rows += [(name, c, *i) for c, i in zip(self.class_names, self.per_class[name], strict=True)]
        return pd.DataFrame(rows, columns=["metric", "class", *BOUNDS])

    def to_dict(self) -> dict[str, Any]:
        """The scores as JSON-ready values (NaN as None; ``class`` None when overall)."""
        names = list(self.class_names)
        return {
            "class_names": names,
            "images": self.images,
            "images_per_class": dict(zip(names, self.confusion.sum(axis=1).tolist(), strict=True)),
            "non_finite": self.non_finite,
            "bootstrap": {"resamples": self.resamples, "seed": self.seed, "confidence": self.confidence},
            "metrics": [
                {"metric": r.metric, "class": r[1] or None, **{k: json_number(getattr(r, k)) for k in BOUNDS}}
                for r in self.table().itertuples(index=False)
            ],
            "confusion_matrix": {
                "rows": names,
                "columns": [*names, NO_PREDICTION],
                "counts": self.confusion.tolist(),
            },
            "reliability": [
                {k: int(v) if k in ("bin", "count") else json_number(v) for k, v in row.items()}
                for row in self.reliability.to_dict("records")
            ],
        }


def json_number(value: float) -> float | None:
    """A JSON-safe number: NaN and infinities as None."""
    return float(value) if math.isfinite(value) else None


class _Prepared:
    """The labelled set encoded once, so that each statistic is linear in the resample counts."""

    def __init__(self, labels: np.ndarray, probabilities: np.ndarray, num_classes: int, bins: int) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.ndim != 2 or len(probabilities) != len(self.labels):
            raise ValueError(f"probabilities {probabilities.shape} do not match {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= num_classes):
            raise ValueError(f"labels must lie in 0..{num_classes - 1}")
        self.k = num_classes
        predicted = predicted_classes(probabilities)
        cell = self.labels * (num_classes + 1) + np.where(predicted < 0, num_classes, predicted)
        self.cells = np.eye(num_classes * (num_classes + 1))[cell]  # n x (true, predicted or broken)
        self.present = np.bincount(self.labels, minlength=num_classes) > 0
        self.finite = predicted >= 0
        self.scores = probabilities[self.finite]
        confidence = self.scores.max(axis=1)
        correct = (predicted[self.finite] == self.labels[self.finite]).astype(float)
        self.bin = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
        one_hot = np.eye(bins)[self.bin]
        self.calibration = np.hstack([one_hot, one_hot * confidence[:, None], one_hot * correct[:, None]])
        self.bins = bins

    def confusion(self, weights: np.ndarray) -> np.ndarray:
        """(resamples, classes, classes + 1) counts: true class by predicted class, then broken rows."""
        return (weights @ self.cells).reshape(len(weights), self.k, self.k + 1)


def _divide(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1), np.nan)


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    counts = np.sum(~np.isnan(values), axis=axis)
    return _divide(np.nansum(values, axis=axis), counts)


def _count_metrics(data: _Prepared, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro F1 (resamples,) and per-class rates (resamples, classes)."""
    confusion = data.confusion(weights)
    hits = np.diagonal(confusion[:, :, : data.k], axis1=1, axis2=2)
    actual = confusion.sum(axis=2)
    predicted = confusion[:, :, : data.k].sum(axis=1)
    total = actual.sum(axis=1)
    negatives = total[:, None] - actual
    sensitivity = _divide(hits, actual)
    f1 = _divide(2 * hits, actual + predicted)
    return {
        "accuracy": _divide(hits.sum(axis=1), total),
        "balanced_accuracy": _nanmean(sensitivity, axis=1),
        "f1_macro": _nanmean(np.where(data.present, np.nan_to_num(f1), np.nan), axis=1),
        "sensitivity": sensitivity,
        "specificity": _divide(negatives - (predicted - hits), negatives),
        "precision": _divide(hits, predicted),
    }


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC-AUC of ``scores`` for each row of image ``weights`` (ties count one half); NaN without both sides.

    With weights of one it equals :func:`sklearn.metrics.roc_auc_score`.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = weights[:, order]
    pos = np.add.reduceat(w * positive[order], starts, axis=1)
    neg = np.add.reduceat(w * ~positive[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    wins = np.sum(pos * (below + 0.5 * neg), axis=1)
    return _divide(wins, pos.sum(axis=1) * neg.sum(axis=1))


def _auc(data: _Prepared, weights: np.ndarray) -> np.ndarray:
    """(resamples, classes) one-vs-rest ROC-AUC on the finite rows."""
    out = np.full((len(weights), data.k), np.nan)
    if data.scores.size == 0:
        return out
    kept = weights[:, data.finite]
    labels = data.labels[data.finite]
    for k in range(data.k):
        out[:, k] = weighted_auc(data.scores[:, k], labels == k, kept)
    return out


def _ece(data: _Prepared, weights: np.ndarray) -> np.ndarray:
    """(resamples,) top-label expected calibration error on the finite rows."""
    sums = weights[:, data.finite] @ data.calibration
    count, confidence, correct = np.split(sums, 3, axis=1)
    return _divide(np.abs(correct - confidence).sum(axis=1), count.sum(axis=1))


def _statistics(data: _Prepared, weights: np.ndarray) -> dict[str, np.ndarray]:
    return {**_count_metrics(data, weights), "roc_auc": _auc(data, weights), "ece": _ece(data, weights)}


def resample_weights(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples of ``n`` images as rows of draw counts, in chunks of bounded size."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(n, 1))
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        drawn = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
        yield np.bincount(drawn.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def _bounds(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bounds along axis 0, ignoring NaN resamples; NaN where every resample is NaN."""
    tail = 100 * (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": an absent class
        low, high = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    return low, high


def _point_auc(data: _Prepared) -> np.ndarray:
    """One-vs-rest ROC-AUC per class on the finite rows (scikit-learn); NaN without both sides."""
    labels = data.labels[data.finite]
    out = np.full(data.k, np.nan)
    for k in range(data.k):
        positive = labels == k
        if positive.any() and not positive.all():
            out[k] = roc_auc_score(positive, data.scores[:, k])
    return out


def _reliability(data: _Prepared) -> pd.DataFrame:
    """Per confidence bin: its bounds, image count, mean confidence and accuracy (NaN when empty)."""
    count, confidence, correct = np.split(data.calibration.sum(axis=0), 3)
    edges = np.linspace(0.0, 1.0, data.bins + 1)
    return pd.DataFrame(
        {
            "bin": np.arange(data.bins),
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count.astype(np.int64),
            "confidence": _divide(confidence, count),
            "accuracy": _divide(correct, count),
        }
    )


def score_with_intervals(
    labels: Sequence[int] | np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
    bins: int = ECE_BINS,
) -> Scores:
    """Every metric of ``probabilities`` (images x classes) against ``labels``, with bootstrap intervals
    (NaN bounds with ``resamples=0``: point estimates only)."""
    data = _Prepared(np.asarray(labels), probabilities, len(class_names), bins)
    n = len(data.labels)
    if n == 0:
        raise ValueError("no images to score")
    point = {name: values[0] for name, values in _statistics(data, np.ones((1, n))).items()}
    point["roc_auc"] = _point_auc(data)
    chunks = [_statistics(data, weights) for weights in resample_weights(n, resamples, seed)]
    intervals = {}
    for name, value in point.items():
        samples = [chunk[name] for chunk in chunks] or [np.full((1, *np.shape(value)), np.nan)]
        low, high = _bounds(np.concatenate(samples), confidence)
        if name in PER_CLASS:
            intervals[name] = [Interval(*map(float, v)) for v in zip(value, low, high, strict=True)]
        else:
            intervals[name] = Interval(float(value), float(low), float(high))
    return Scores(
        class_names=tuple(class_names),
        overall={name: intervals[name] for name in OVERALL},
        per_class={name: intervals[name] for name in PER_CLASS},
        confusion=np.rint(data.confusion(np.ones((1, n)))[0]).astype(np.int64),
        reliability=_reliability(data),
        images=n,
        non_finite=int((~data.finite).sum()),
        resamples=resamples,
        seed=seed,
        confidence=confidence,
    )
