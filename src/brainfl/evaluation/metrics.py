"""The one scorer of predicted probabilities (scikit-learn), used by server, sites, report and benchmarks.

Every score treats a row of probabilities that is not finite (a broken global
model, e.g. after a poisoned round) as a wrong prediction: :func:`predicted_classes`
gives it class ``-1``, and the loss becomes ``inf`` instead of failing the run.

With ``resamples``, :func:`score` adds the server's clinical metrics
(:func:`interval_metrics`): balanced accuracy, ECE, per-class specificity and
ROC-AUC, and bootstrap 95% intervals of accuracy, balanced accuracy and each
class's sensitivity, all from :mod:`brainfl.evaluation.intervals`. :func:`held_out_metrics`
is a site's score of a received model on its held-out split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, precision_recall_fscore_support

from brainfl.evaluation.intervals import score_with_intervals
from brainfl.model.outputs import predicted_classes

METRIC_NAMES = ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro")
LEAK_FREE = "leak_free_accuracy"
INTERVALS = ("accuracy", "balanced_accuracy")  # overall metrics recorded with their interval bounds
BOUNDS = ("low", "high")
SITE_SENSITIVITY = "val_sensitivity_"  # + class name: a site's held-out sensitivity of that class


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict[str, float]:
    """Cross-entropy, accuracy, macro precision/recall/F1 and per-class recall.

    Keys: ``loss, accuracy, precision_macro, recall_macro, f1_macro`` then
    ``recall_<class>`` for each class, in class order.
    """
    class_ids = list(range(len(class_names)))
    predictions = predicted_classes(probabilities)
    broken = bool((predictions < 0).any())
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predictions, labels=class_ids, average="macro", zero_division=0
    )
    per_class_recall = precision_recall_fscore_support(
        labels, predictions, labels=class_ids, average=None, zero_division=0
    )[1]
    result = {
        "loss": float("inf") if broken else _cross_entropy(labels, probabilities, class_ids),
        "accuracy": float(accuracy_score(labels, predictions)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
    }
    result.update({f"recall_{name}": float(r) for name, r in zip(class_names, per_class_recall, strict=True)})
    return result


def _cross_entropy(labels: np.ndarray, probabilities: np.ndarray, class_ids: list[int]) -> float:
    """Mean cross-entropy; rows are renormalized (probabilities read back from a CSV are rounded)."""
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1.0)
    return float(log_loss(labels, clipped / clipped.sum(axis=1, keepdims=True), labels=class_ids))


def interval_columns(class_names: Sequence[str]) -> list[str]:
    """The keys of :func:`interval_metrics`, in the results CSV's order."""
    return [
        "balanced_accuracy",
        "ece",
        *(f"specificity_{name}" for name in class_names),
        *(f"roc_auc_{name}" for name in class_names),
        *(f"{metric}_{bound}" for metric in INTERVALS for bound in BOUNDS),
        *(f"sensitivity_{name}_{bound}" for name in class_names for bound in BOUNDS),
    ]


def interval_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], resamples: int
) -> dict[str, float]:
    """Balanced accuracy, top-label ECE, per-class specificity and one-vs-rest ROC-AUC, and the
    ``_low``/``_high`` bounds of the 95% bootstrap intervals (``resamples`` resamples, seeded) of
    accuracy, balanced accuracy and each class's sensitivity (``recall_<class>``'s interval is
    ``sensitivity_<class>_low``/``_high``). NaN where a metric is undefined (e.g. an absent class).
    """
    scores = score_with_intervals(labels, probabilities, class_names, resamples=resamples)
    overall, per_class = scores.overall, scores.per_class
    result = {"balanced_accuracy": overall["balanced_accuracy"].value, "ece": overall["ece"].value}
    for metric in ("specificity", "roc_auc"):
        result.update({f"{metric}_{n}": i.value for n, i in zip(class_names, per_class[metric], strict=True)})
    for metric in INTERVALS:
        result.update({f"{metric}_{bound}": getattr(overall[metric], bound) for bound in BOUNDS})
    for name, interval in zip(class_names, per_class["sensitivity"], strict=True):
        result.update({f"sensitivity_{name}_{bound}": getattr(interval, bound) for bound in BOUNDS})
    return result


def score(
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    leak_free: np.ndarray | None = None,
    resamples: int = 0,
) -> dict[str, float]:
    """:func:`classification_metrics`, plus ``leak_free_accuracy`` on the ``leak_free`` mask when given,
    plus :func:`interval_metrics` when ``resamples`` > 0."""
    metrics = classification_metrics(labels, probabilities, class_names)
    if leak_free is not None and np.any(leak_free):
        predictions = predicted_classes(probabilities)[leak_free]
        metrics[LEAK_FREE] = float(np.mean(predictions == np.asarray(labels)[leak_free]))
    if resamples > 0:
        metrics.update(interval_metrics(labels, probabilities, class_names, resamples))
    return metrics


def held_out_keys(class_names: Sequence[str]) -> list[str]:
    """The keys of :func:`held_out_metrics`, in order."""
    return [
        "val_loss",
        "val_accuracy",
        "val_balanced_accuracy",
        *(f"{SITE_SENSITIVITY}{name}" for name in class_names),
    ]


def held_out_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict[str, float]:
    """A site's score of a model on its held-out split: ``val_loss``, ``val_accuracy``,
    ``val_balanced_accuracy`` (mean sensitivity over the classes the split holds) and
    ``val_sensitivity_<class>`` for every one of the server's ``class_names``, NaN for a class
    the split lacks, so that every site replies with the same keys (:func:`held_out_keys`)."""
    metrics = classification_metrics(labels, probabilities, class_names)
    scores = score_with_intervals(labels, probabilities, class_names, resamples=0)  # no intervals
    values = [
        metrics["loss"],
        metrics["accuracy"],
        scores.overall["balanced_accuracy"].value,
        *(interval.value for interval in scores.per_class["sensitivity"]),
    ]
    return dict(zip(held_out_keys(class_names), values, strict=True))
