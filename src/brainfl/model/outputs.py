"""What a model's output probabilities say: the predicted class, and the probabilities temperature-scaled.

A row of probabilities that is not finite (a broken global model, e.g. after
a poisoned round) predicts no class: :func:`predicted_classes` gives it
``-1``. :func:`predicted_classes` is the one place that turns probabilities
into classes (``brainfl predict``, ``brainfl evaluate``, Grad-CAM, the server,
the sites): the class with the highest probability, except that a model with a
:class:`NotumorRule` (a ``notumor_threshold`` in its file) predicts ``notumor``
only when ``notumor`` is the most probable class *and* its probability reaches
the threshold; otherwise it predicts the most probable tumor class. The rule
only ever turns a ``notumor`` call into a tumor call (threshold 0: plain argmax).
Temperature scaling works on the logarithms of the softmax outputs,
``softmax(log p / T)`` per image (:func:`scale_probabilities`); T is fitted
in :mod:`brainfl.evaluation.calibration`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy.special import softmax

SMALLEST_PROBABILITY = 1e-12  # a probability the model rounded to 0 keeps a finite logarithm


NOTUMOR = "notumor"  # the class of scans without a tumor: every other class is a tumor


@dataclasses.dataclass(frozen=True)
class NotumorRule:
    """Which column is ``notumor``, and the probability it must reach to be predicted (0: argmax)."""

    index: int
    threshold: float = 0.0


def notumor_rule(class_names: Sequence[str], threshold: float = 0.0) -> NotumorRule | None:
    """The rule of a model with these classes (None: no ``notumor`` class, or no tumor class)."""
    names = list(class_names)
    if NOTUMOR not in names or len(names) < 2:
        return None
    return NotumorRule(names.index(NOTUMOR), float(threshold))


def predicted_classes(probabilities: np.ndarray, rule: NotumorRule | None = None) -> np.ndarray:
    """The argmax class per row, ``-1`` for a row with a NaN or infinite value; with ``rule``, a row
    whose argmax is ``notumor`` below the rule's threshold gets its most probable tumor class."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    broken = ~np.all(np.isfinite(probabilities), axis=1)
    filled = np.nan_to_num(probabilities, nan=-1.0)
    top = filled.argmax(axis=1)
    if rule is not None and rule.threshold > 0 and len(filled):
        doubtful = (top == rule.index) & (filled[:, rule.index] < rule.threshold)
        tumors = filled.copy()
        tumors[:, rule.index] = -np.inf
        top = np.where(doubtful, tumors.argmax(axis=1), top)
    return np.where(broken, -1, top)


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), SMALLEST_PROBABILITY, 1.0))


def finite_rows(probabilities: np.ndarray) -> np.ndarray:
    """Mask of the rows whose probabilities are all finite (a broken model's NaN rows are not)."""
    return predicted_classes(probabilities) >= 0


def scale_probabilities(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` per row, in the input's dtype; ``T = 1`` returns the input unchanged and a
    row that is not finite stays as it is (predicted as no class)."""
    probabilities = np.asarray(probabilities)
    if temperature == 1.0 or probabilities.size == 0:
        return probabilities
    with np.errstate(invalid="ignore"):
        scaled = softmax(log_probabilities(probabilities) / temperature, axis=1)
    return np.where(finite_rows(probabilities)[:, None], scaled, probabilities).astype(probabilities.dtype)
