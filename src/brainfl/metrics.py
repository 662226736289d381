"""The one scorer of predicted probabilities (scikit-learn), used by server, report and benchmarks.

Every score treats a row of probabilities that is not finite (a broken global
model, e.g. after a poisoned round) as a wrong prediction: :func:`predicted_classes`
gives it class ``-1``, and the loss becomes ``inf`` instead of failing the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, precision_recall_fscore_support

METRIC_NAMES = ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro")
LEAK_FREE = "leak_free_accuracy"


def predicted_classes(probabilities: np.ndarray) -> np.ndarray:
    """The argmax class per row, ``-1`` for a row with a NaN or infinite value."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    broken = ~np.all(np.isfinite(probabilities), axis=1)
    return np.where(broken, -1, np.nan_to_num(probabilities, nan=-1.0).argmax(axis=1))


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


def score(
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    leak_free: np.ndarray | None = None,
) -> dict[str, float]:
    """:func:`classification_metrics`, plus ``leak_free_accuracy`` on the ``leak_free`` mask when given."""
    metrics = classification_metrics(labels, probabilities, class_names)
    if leak_free is not None and np.any(leak_free):
        predictions = predicted_classes(probabilities)[leak_free]
        metrics[LEAK_FREE] = float(np.mean(predictions == np.asarray(labels)[leak_free]))
    return metrics
