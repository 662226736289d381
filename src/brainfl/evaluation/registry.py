"""The metric registry: one declaration per quantity gives its computation, its columns and its words.

A :class:`Metric` says how the quantity is computed from a :class:`Tally` (the
labelled set's counts under one or more rows of bootstrap weights) and where it
appears, and everything else reads the registry:

- the bootstrap engine (:func:`brainfl.evaluation.intervals.score_with_intervals`)
  computes every registered statistic, with its interval, for ``brainfl evaluate``
  (its table, JSON and printout) and for the server;
- the server's results CSV (:func:`result_columns`) records each metric with a
  ``round`` block each round, and the ``_low``/``_high`` bounds of those with
  ``bounds``;
- each site's held-out score (:func:`site_columns`) holds those with ``at_sites``,
  as ``val_<name>``;
- the run report's headline shows those with ``headline`` words, and its per-class
  table those per class with a ``round`` block, in the words of ``label`` (with the
  interval of those with ``bounds``).

One name per quantity: the name is the column stem (``sensitivity_glioma_low``,
``val_sensitivity_glioma``), the JSON key and the table's row. The only other
spelling is ``round_column``, for a results-CSV column that keeps the name it was
published under (``recall_<class>``, sensitivity's point value each round).
Adding a metric is one :class:`Metric` in :data:`METRICS`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from brainfl.model.outputs import NotumorRule, predicted_classes

SUMMARY, CLINICAL = "summary", "clinical"  # results-CSV blocks: every round / when intervals are recorded
BOUNDS = ("low", "high")


def divide(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """``top / bottom``, NaN where ``bottom`` is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1), np.nan)


def nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """The mean of the values that are not NaN; NaN where all are."""
    counts = np.sum(~np.isnan(values), axis=axis)
    return divide(np.nansum(values, axis=axis), counts)


class LabelledSet:
    """The labelled set encoded once, so that each statistic is linear in the resample counts.

    Built from the images' probabilities, or with :meth:`from_predictions` from each
    image's label, predicted class and top-label confidence alone (what a site's
    counts describe, :mod:`brainfl.evaluation.count_summary`): then every statistic
    of a :class:`Tally` is the same, and the metrics that need the probabilities
    (ROC-AUC, the loss) are NaN. ``notumor`` names the ``notumor`` class (None: the
    classes have none, and the tumor-vs-notumor metrics are NaN) and the threshold the
    predictions are made with (:func:`brainfl.model.outputs.predicted_classes`).
    """

    def __init__(
        self,
        labels: np.ndarray,
        probabilities: np.ndarray,
        num_classes: int,
        bins: int,
        notumor: NotumorRule | None = None,
    ) -> None:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.ndim != 2 or len(probabilities) != len(labels):
            raise ValueError(f"probabilities {probabilities.shape} do not match {len(labels)} labels")
        predicted = predicted_classes(probabilities, notumor)
        finite = predicted >= 0
        confidence = np.zeros(len(predicted))
        confidence[finite] = probabilities[finite].max(axis=1)
        encoded = LabelledSet.from_predictions(
            labels, predicted, confidence, confidence_bins(confidence, bins), num_classes, bins, notumor
        )
        self.__dict__.update(vars(encoded))
        self.probabilities = probabilities
        self.scores = probabilities[finite]

    @classmethod
    def from_predictions(
        cls,
        labels: np.ndarray,
        predicted: np.ndarray,
        confidence: np.ndarray,
        bin_index: np.ndarray,
        num_classes: int,
        bins: int,
        notumor: NotumorRule | None = None,
    ) -> LabelledSet:
        """A set known by each image's label, predicted class (-1: none), top-label confidence and its
        confidence bin, without probabilities."""
        data = cls.__new__(cls)
        data.labels = np.asarray(labels, dtype=np.int64)
        if len(data.labels) and (data.labels.min() < 0 or data.labels.max() >= num_classes):
            raise ValueError(f"labels must lie in 0..{num_classes - 1}")
        data.k, data.bins, data.notumor = num_classes, bins, notumor
        data.predicted = np.asarray(predicted, dtype=np.int64)
        cell = data.labels * (num_classes + 1) + np.where(data.predicted < 0, num_classes, data.predicted)
        data.cells = np.eye(num_classes * (num_classes + 1))[cell]  # n x (true, predicted or broken)
        data.present = np.bincount(data.labels, minlength=num_classes) > 0
        data.finite = data.predicted >= 0
        data.confidence = np.asarray(confidence)[data.finite]
        correct = (data.predicted[data.finite] == data.labels[data.finite]).astype(float)
        data.bin = np.asarray(bin_index)[data.finite]
        one_hot = np.eye(bins)[data.bin]
        data.calibration = np.hstack(
            [one_hot, one_hot * data.confidence[:, None], one_hot * correct[:, None]]
        )
        data.probabilities = None
        data.scores = np.empty((0, num_classes))
        return data

    @functools.cached_property
    def whole(self) -> Tally:
        """The set itself (every image weighed once), counted once for every metric's point estimate."""
        return Tally(self, np.ones((1, len(self.labels))))

    def confusion(self, weights: np.ndarray) -> np.ndarray:
        """(resamples, classes, classes + 1) counts: true class by predicted class, then broken rows."""
        return (weights @ self.cells).reshape(len(weights), self.k, self.k + 1)


class Tally:
    """A labelled set under rows of image weights (all ones: the set itself; draw counts: resamples)."""

    def __init__(self, data: LabelledSet, weights: np.ndarray) -> None:
        self.data, self.weights = data, weights

    @functools.cached_property
    def confusion(self) -> np.ndarray:
        """(resamples, classes, classes + 1): true class by predicted class, then broken rows."""
        return self.data.confusion(self.weights)

    @functools.cached_property
    def _counts(self) -> tuple[np.ndarray, ...]:
        confusion = self.confusion
        k = self.data.k
        hits = np.diagonal(confusion[:, :, :k], axis1=1, axis2=2)
        actual = confusion.sum(axis=2)
        predicted = confusion[:, :, :k].sum(axis=1)
        return hits, actual, predicted, actual.sum(axis=1)

    @property
    def hits(self) -> np.ndarray:
        """(resamples, classes) images of each class predicted as it."""
        return self._counts[0]

    @property
    def actual(self) -> np.ndarray:
        """(resamples, classes) images of each class."""
        return self._counts[1]

    @property
    def predicted(self) -> np.ndarray:
        """(resamples, classes) images predicted as each class (non-finite rows predict none)."""
        return self._counts[2]

    @property
    def total(self) -> np.ndarray:
        """(resamples,) images."""
        return self._counts[3]


def confidence_bins(confidence: np.ndarray, bins: int) -> np.ndarray:
    """The index of each confidence's bin among ``bins`` equal-width bins of (0, 1] (upper edge in)."""
    return np.clip(np.ceil(np.asarray(confidence) * bins).astype(np.int64) - 1, 0, bins - 1)


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
    return divide(wins, pos.sum(axis=1) * neg.sum(axis=1))


def _sensitivity(t: Tally) -> np.ndarray:
    return divide(t.hits, t.actual)


def _specificity(t: Tally) -> np.ndarray:
    negatives = t.total[:, None] - t.actual
    return divide(negatives - (t.predicted - t.hits), negatives)


def _f1(t: Tally) -> np.ndarray:
    return divide(2 * t.hits, t.actual + t.predicted)


class TumorCounts(NamedTuple):
    """The binary tumor-vs-notumor view of a confusion matrix, each (resamples,)."""

    tumor: np.ndarray  # tumor scans (every class but notumor)
    called_tumor: np.ndarray  # tumor scans predicted as a tumor class (any one)
    missed: np.ndarray  # tumor scans predicted notumor
    notumor: np.ndarray  # notumor scans
    called_notumor: np.ndarray  # notumor scans predicted notumor


def tumor_counts(t: Tally) -> TumorCounts | None:
    """The tally's :class:`TumorCounts` (None without a ``notumor`` class); a broken row (no
    prediction) is neither called a tumor nor notumor."""
    if t.data.notumor is None:
        return None
    j, k = t.data.notumor.index, t.data.k
    tumor = np.arange(k) != j
    from_tumors = t.confusion[:, tumor, :]
    called_tumor = from_tumors[:, :, :k][:, :, tumor].sum(axis=(1, 2))
    return TumorCounts(
        from_tumors.sum(axis=(1, 2)),
        called_tumor,
        from_tumors[:, :, j].sum(axis=1),
        t.actual[:, j],
        t.hits[:, j],
    )


def _tumor_rate(part: str, whole: str) -> Callable[[Tally], np.ndarray]:
    """The statistic ``part / whole`` of :class:`TumorCounts` (NaN without a ``notumor`` class)."""

    def statistic(t: Tally) -> np.ndarray:
        counts = tumor_counts(t)
        if counts is None:
            return np.full(len(t.weights), np.nan)
        return divide(getattr(counts, part), getattr(counts, whole))

    return statistic


def _roc_auc(t: Tally) -> np.ndarray:
    """(resamples, classes) one-vs-rest ROC-AUC on the finite rows."""
    data = t.data
    out = np.full((len(t.weights), data.k), np.nan)
    if data.scores.size == 0:
        return out
    kept, labels = t.weights[:, data.finite], data.labels[data.finite]
    for k in range(data.k):
        out[:, k] = weighted_auc(data.scores[:, k], labels == k, kept)
    return out


def _roc_auc_exact(data: LabelledSet) -> np.ndarray:
    """One-vs-rest ROC-AUC per class on the finite rows (scikit-learn); NaN without both sides."""
    labels = data.labels[data.finite]
    out = np.full(data.k, np.nan)
    if data.probabilities is None:  # known by its predictions only
        return out
    for k in range(data.k):
        positive = labels == k
        if positive.any() and not positive.all():
            out[k] = roc_auc_score(positive, data.scores[:, k])
    return out


def _ece(t: Tally) -> np.ndarray:
    """(resamples,) top-label expected calibration error on the finite rows."""
    sums = t.weights[:, t.data.finite] @ t.data.calibration
    count, confidence, correct = np.split(sums, 3, axis=1)
    return divide(np.abs(correct - confidence).sum(axis=1), count.sum(axis=1))


def _cross_entropy(data: LabelledSet) -> float:
    """Mean cross-entropy, ``inf`` with a non-finite row; rows are renormalized (probabilities read back
    from a CSV are rounded); NaN for a set known by its predictions only."""
    if data.probabilities is None:
        return float("nan")
    if not data.finite.all():
        return float("inf")
    clipped = np.clip(data.probabilities, 1e-7, 1.0)
    return float(
        log_loss(data.labels, clipped / clipped.sum(axis=1, keepdims=True), labels=list(range(data.k)))
    )


@dataclasses.dataclass(frozen=True)
class Metric:
    """One quantity: how it is computed, and where it appears."""

    name: str
    label: str  # in words: the report's rows and headline, evaluate's table, the benchmark tables
    statistic: Callable[[Tally], np.ndarray] | None = None  # per weight row: (rows,) or (rows, classes)
    exact: Callable[[LabelledSet], float | np.ndarray] | None = None  # the point estimate, computed otherwise
    per_class: bool = False
    evaluate: bool = True  # scored with its interval by brainfl evaluate (needs a statistic)
    round: str | None = None  # the results-CSV block it is recorded in each round (SUMMARY, CLINICAL)
    bounds: bool = False  # its interval's _low/_high recorded each round too
    at_sites: bool = False  # in each site's held-out score, as val_<name>
    headline: str = ""  # its words among the run report's headline numbers (empty: not there)
    round_column: str = "{name}"  # the results-CSV column of the point value ({name}, {cls})

    def columns(self, class_names: Sequence[str], template: str = "{name}") -> list[str]:
        """The metric's column names from ``template`` (``{name}``; per class, ``_{cls}`` appended)."""
        if not self.per_class:
            return [template.format(name=self.name)]
        if "{cls}" not in template:
            template += "_{cls}"
        return [template.format(name=self.name, cls=name) for name in class_names]

    def point(self, data: LabelledSet) -> np.ndarray:
        """The point estimate on the whole set: (classes,) or a 0-d array."""
        if self.exact is not None:
            return np.asarray(self.exact(data), dtype=np.float64)
        return self.statistic(data.whole)[0]


METRICS: tuple[Metric, ...] = (
    Metric("loss", "cross-entropy loss", exact=_cross_entropy, evaluate=False, round=SUMMARY, at_sites=True),
    Metric(
        "accuracy",
        "accuracy",
        lambda t: divide(t.hits.sum(axis=1), t.total),
        round=SUMMARY,
        bounds=True,
        at_sites=True,
        headline="final test accuracy",
    ),
    Metric(
        "balanced_accuracy",
        "balanced accuracy",
        lambda t: nanmean(_sensitivity(t), axis=1),
        round=CLINICAL,
        bounds=True,
        at_sites=True,
        headline="final test balanced accuracy",
    ),
    Metric(
        "precision_macro",
        "macro precision",
        lambda t: np.nan_to_num(divide(t.hits, t.predicted)).mean(axis=1),
        evaluate=False,
        round=SUMMARY,
    ),
    Metric(
        "recall_macro",
        "macro recall (absent classes as 0)",
        lambda t: np.nan_to_num(_sensitivity(t)).mean(axis=1),
        evaluate=False,
        round=SUMMARY,
    ),
    Metric(
        "f1_macro",
        "macro F1",
        lambda t: nanmean(np.where(t.data.present, np.nan_to_num(_f1(t)), np.nan), axis=1),
        round=SUMMARY,
        headline="macro F1",
    ),
    Metric(
        "sensitivity",
        "sensitivity",
        _sensitivity,
        per_class=True,
        round=SUMMARY,
        bounds=True,
        at_sites=True,
        round_column="recall_{cls}",
    ),
    Metric("ece", "calibration error, ECE", _ece, round=CLINICAL, headline="calibration error, ECE"),
    Metric("specificity", "specificity", _specificity, per_class=True, round=CLINICAL),
    Metric("precision", "precision", lambda t: divide(t.hits, t.predicted), per_class=True),
    Metric("roc_auc", "ROC-AUC", _roc_auc, exact=_roc_auc_exact, per_class=True, round=CLINICAL),
    Metric(
        "tumor_sensitivity",
        "tumor sensitivity (tumor scans called a tumor class)",
        _tumor_rate("called_tumor", "tumor"),
        round=CLINICAL,
        bounds=True,
        headline="tumor sensitivity (tumor vs notumor)",
    ),
    Metric(
        "tumor_specificity",
        "tumor specificity (notumor scans called notumor)",
        _tumor_rate("called_notumor", "notumor"),
        round=CLINICAL,
        bounds=True,
    ),
    Metric(
        "missed_tumors",
        "missed tumors (tumor scans called notumor)",
        _tumor_rate("missed", "tumor"),
        round=CLINICAL,
        bounds=True,
        headline="missed tumors (tumor scans called notumor)",
    ),
)


def evaluated() -> list[Metric]:
    """The metrics ``brainfl evaluate`` scores with intervals, in registry order."""
    return [metric for metric in METRICS if metric.evaluate and metric.statistic is not None]


def recorded(block: str) -> list[Metric]:
    """The metrics of one results-CSV block, in registry order."""
    return [metric for metric in METRICS if metric.round == block]


def metric(name: str) -> Metric:
    """The registered metric called ``name``."""
    return next(m for m in METRICS if m.name == name)
