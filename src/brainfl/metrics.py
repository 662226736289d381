"""Classification metrics of a model's predicted probabilities (scikit-learn)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, precision_recall_fscore_support

METRIC_NAMES = ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro")


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...] | list[str]
) -> dict[str, float]:
    """Cross-entropy, accuracy, macro precision/recall/F1 and per-class recall.

    Keys: ``loss, accuracy, precision_macro, recall_macro, f1_macro`` then
    ``recall_<class>`` for each class, in class order. A model whose outputs
    are not finite (a broken global model, e.g. after a poisoned round) gets
    loss ``inf`` and those images count as wrong, rather than failing the run.
    """
    class_ids = list(range(len(class_names)))
    broken = ~np.all(np.isfinite(probabilities), axis=1)
    predictions = np.where(broken, -1, np.nan_to_num(probabilities, nan=-1.0).argmax(axis=1))
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predictions, labels=class_ids, average="macro", zero_division=0
    )
    per_class_recall = precision_recall_fscore_support(
        labels, predictions, labels=class_ids, average=None, zero_division=0
    )[1]
    result = {
        "loss": float("inf")
        if broken.any()
        else float(log_loss(labels, np.clip(probabilities, 1e-7, 1.0), labels=class_ids)),
        "accuracy": float(accuracy_score(labels, predictions)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
    }
    result.update({f"recall_{name}": float(r) for name, r in zip(class_names, per_class_recall, strict=True)})
    return result
