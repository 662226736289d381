"""The one scorer of predicted probabilities, used by server, sites, report and benchmarks.

Every score treats a row of probabilities that is not finite (a broken global
model, e.g. after a poisoned round) as a wrong prediction: it predicts no class
(:func:`brainfl.model.outputs.predicted_classes`), and the loss becomes ``inf``
instead of failing the run.

What is scored, and under which column, comes from the metric registry
(:mod:`brainfl.evaluation.registry`): :func:`score` gives the server's row of the
results CSV (the summary block, the leak-free accuracy, then with
``resamples`` the clinical block and the bootstrap 95% bounds, from
:mod:`brainfl.evaluation.intervals`); :func:`held_out_metrics` is a site's
score of a received model on its held-out split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from brainfl.evaluation import registry
from brainfl.evaluation.intervals import ECE_BINS, scores_of
from brainfl.evaluation.registry import BOUNDS, CLINICAL, SUMMARY, LabelledSet, Metric, recorded
from brainfl.model.outputs import notumor_rule

LEAK_FREE = "leak_free_accuracy"
SITE_PREFIX = "val_"  # a site's held-out score of a metric: val_<name>


def _labelled(labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]) -> LabelledSet:
    return LabelledSet(
        np.asarray(labels), probabilities, len(class_names), ECE_BINS, notumor_rule(class_names)
    )


def _point_columns(data: LabelledSet, block: str, class_names: Sequence[str]) -> dict[str, float]:
    row = {}
    for metric in recorded(block):
        values = np.atleast_1d(metric.point(data))
        row.update(zip(metric.columns(class_names, metric.round_column), map(float, values), strict=True))
    return row


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict[str, float]:
    """The summary block of the results CSV: ``loss, accuracy, precision_macro, recall_macro, f1_macro``
    then ``recall_<class>`` (sensitivity) for each class, as the registry orders them."""
    return _point_columns(_labelled(labels, probabilities, class_names), SUMMARY, class_names)


def bounded() -> list[Metric]:
    """The metrics recorded each round with their interval's bounds."""
    return [metric for metric in registry.METRICS if metric.round and metric.bounds]


def interval_columns(class_names: Sequence[str]) -> list[str]:
    """The columns of the clinical block and of the bounds, in the results CSV's order."""
    clinical = [column for m in recorded(CLINICAL) for column in m.columns(class_names, m.round_column)]
    bounds = [
        column
        for metric in bounded()
        for stem in metric.columns(class_names)
        for column in (f"{stem}_{bound}" for bound in BOUNDS)
    ]
    return [*clinical, *bounds]


def result_columns(class_names: Sequence[str]) -> list[str]:
    """Every score column of the results CSV: summary block, leak-free accuracy, clinical block, bounds."""
    summary = [column for m in recorded(SUMMARY) for column in m.columns(class_names, m.round_column)]
    return [*summary, LEAK_FREE, *interval_columns(class_names)]


def interval_metrics(data: LabelledSet, class_names: Sequence[str], resamples: int) -> dict[str, float]:
    """The clinical block and the ``_low``/``_high`` bounds of the 95% bootstrap intervals (``resamples``
    resamples, seeded). NaN where a metric is undefined (e.g. an absent class)."""
    scores = scores_of(data, class_names, resamples=resamples)
    intervals = {name: [interval] for name, interval in scores.overall.items()} | scores.per_class
    result = _point_columns(data, CLINICAL, class_names)
    for metric in bounded():
        for stem, interval in zip(metric.columns(class_names), intervals[metric.name], strict=True):
            result.update({f"{stem}_{bound}": getattr(interval, bound) for bound in BOUNDS})
    return result


def score(
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    leak_free: np.ndarray | None = None,
    resamples: int = 0,
) -> dict[str, float]:
    """The summary block, plus ``leak_free_accuracy`` on the ``leak_free`` mask when given, plus
    :func:`interval_metrics` when ``resamples`` > 0."""
    data = _labelled(labels, probabilities, class_names)
    metrics = _point_columns(data, SUMMARY, class_names)
    if leak_free is not None and np.any(leak_free):
        metrics[LEAK_FREE] = float(np.mean(data.predicted[leak_free] == data.labels[leak_free]))
    if resamples > 0:
        metrics.update(interval_metrics(data, class_names, resamples))
    return metrics


def site_metrics() -> list[Metric]:
    """The metrics each site scores on its held-out split, in registry order."""
    return [metric for metric in registry.METRICS if metric.at_sites]


def held_out_keys(class_names: Sequence[str]) -> list[str]:
    """The keys of :func:`held_out_metrics`, in order: ``val_<name>`` of each metric the sites score."""
    return [column for m in site_metrics() for column in m.columns(class_names, SITE_PREFIX + "{name}")]


def site_score_labels(class_names: Sequence[str]) -> dict[str, str]:
    """The sites' held-out scores (not the loss) in words, by key: ``val_sensitivity_glioma``:
    ``sensitivity glioma``."""
    scores = [m for m in site_metrics() if m.evaluate]
    keys = [column for m in scores for column in m.columns(class_names, SITE_PREFIX + "{name}")]
    words = [word for m in scores for word in m.columns(class_names, m.label + " {cls}" * m.per_class)]
    return dict(zip(keys, words, strict=True))


def site_per_class_prefixes() -> tuple[str, ...]:
    """Key prefixes of the sites' per-class held-out scores (``val_sensitivity_``): never averaged,
    since a class a site lacks is NaN there."""
    return tuple(f"{SITE_PREFIX}{m.name}_" for m in site_metrics() if m.per_class)


def held_out_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict[str, float]:
    """A site's score of a model on its held-out split: ``val_loss``, ``val_accuracy``,
    ``val_balanced_accuracy`` (mean sensitivity over the classes the split holds) and
    ``val_sensitivity_<class>`` for every one of the server's ``class_names``, NaN for a class
    the split lacks, so that every site replies with the same keys (:func:`held_out_keys`)."""
    data = _labelled(labels, probabilities, class_names)
    values = [np.atleast_1d(m.point(data)) for m in site_metrics()]
    return dict(zip(held_out_keys(class_names), map(float, np.concatenate(values)), strict=True))
