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
  confidence bins, and its reliability table;
- tumor vs notumor (when a class is called ``notumor``): tumor sensitivity (tumor
  scans called any tumor class), tumor specificity (notumor scans called notumor)
  and missed tumors (tumor scans called notumor), with the classes predicted under
  the model's ``notumor`` threshold (``notumor_threshold``, 0: argmax).

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

from brainfl.evaluation.registry import LabelledSet, Tally, divide, evaluated
from brainfl.model.outputs import notumor_rule

RESAMPLES = 1000
CONFIDENCE = 0.95
ECE_BINS = 15
SEED = 0
_CHUNK_CELLS = 2_000_000  # resamples x images held at once
OVERALL = tuple(
    m.name for m in evaluated() if not m.per_class
)  # as registered in brainfl.evaluation.registry
PER_CLASS = tuple(m.name for m in evaluated() if m.per_class)
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
    overall: dict[str, Interval]  # the evaluated metrics that are not per class, in registry order
    per_class: dict[str, list[Interval]]  # the per-class ones, one interval per class in class order
    confusion: np.ndarray  # rows: true class; columns: predicted class, then non-finite rows
    reliability: pd.DataFrame  # bin, lower, upper, count, confidence, accuracy
    images: int
    non_finite: int  # rows left out of ROC-AUC and ECE
    resamples: int
    seed: int
    confidence: float

    def table(self) -> pd.DataFrame:
        """One row per metric (and class): ``metric, class, value, low, high``; ``class`` empty if overall."""
        rows = [(name, "", *interval) for name, interval in self.overall.items()]
        for name, intervals in self.per_class.items():
            rows += [(name, c, *i) for c, i in zip(self.class_names, intervals, strict=True)]
        return pd.DataFrame(rows, columns=["metric", "class", *BOUNDS])

    def columns(self) -> dict[str, float]:
        """Every metric as ``<stem>``, ``<stem>_low``, ``<stem>_high`` (the stem of a per-class metric is
        ``<name>_<class>``, as in the results CSV), in registry order."""
        intervals = {name: [interval] for name, interval in self.overall.items()} | self.per_class
        row = {}
        for metric in evaluated():
            for stem, interval in zip(metric.columns(self.class_names), intervals[metric.name], strict=True):
                row |= {stem: interval.value, f"{stem}_low": interval.low, f"{stem}_high": interval.high}
        return row

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


def _reliability(data: LabelledSet) -> pd.DataFrame:
    """Per confidence bin: its bounds, image count, mean confidence and accuracy (NaN when empty)."""
    count, confidence, correct = np.split(data.calibration.sum(axis=0), 3)
    edges = np.linspace(0.0, 1.0, data.bins + 1)
    return pd.DataFrame(
        {
            "bin": np.arange(data.bins),
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count.astype(np.int64),
            "confidence": divide(confidence, count),
            "accuracy": divide(correct, count),
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
    notumor_threshold: float = 0.0,
) -> Scores:
    """Every metric of ``probabilities`` (images x classes) against ``labels``, with bootstrap intervals
    (NaN bounds with ``resamples=0``: point estimates only); the classes are predicted under
    ``notumor_threshold`` (:func:`brainfl.model.outputs.predicted_classes`)."""
    rule = notumor_rule(class_names, notumor_threshold)
    data = LabelledSet(np.asarray(labels), probabilities, len(class_names), bins, rule)
    return scores_of(data, class_names, resamples, seed, confidence)


def scores_of(
    data: LabelledSet,
    class_names: Sequence[str],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> Scores:
    """:func:`score_with_intervals` of a labelled set already encoded."""
    n = len(data.labels)
    if n == 0:
        raise ValueError("no images to score")
    metrics = evaluated()
    chunks = [
        [m.statistic(tally) for m in metrics]
        for tally in map(lambda weights: Tally(data, weights), resample_weights(n, resamples, seed))
    ]
    overall, per_class = {}, {}
    for index, metric in enumerate(metrics):
        value = metric.point(data)
        samples = [chunk[index] for chunk in chunks] or [np.full((1, *np.shape(value)), np.nan)]
        low, high = _bounds(np.concatenate(samples), confidence)
        if metric.per_class:
            per_class[metric.name] = [Interval(*map(float, v)) for v in zip(value, low, high, strict=True)]
        else:
            overall[metric.name] = Interval(float(value), float(low), float(high))
    return Scores(
        class_names=tuple(class_names),
        overall=overall,
        per_class=per_class,
        confusion=np.rint(data.confusion(data.whole.weights)[0]).astype(np.int64),
        reliability=_reliability(data),
        images=n,
        non_finite=int((~data.finite).sum()),
        resamples=resamples,
        seed=seed,
        confidence=confidence,
    )
