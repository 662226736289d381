"""What a model's output probabilities say: the predicted class, and the probabilities temperature-scaled.

A row of probabilities that is not finite (a broken global model, e.g. after
a poisoned round) predicts no class: :func:`predicted_classes` gives it
``-1``. Temperature scaling works on the logarithms of the softmax outputs,
``softmax(log p / T)`` per image (:func:`scale_probabilities`); T is fitted
in :mod:`brainfl.evaluation.calibration`.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax

SMALLEST_PROBABILITY = 1e-12  # a probability the model rounded to 0 keeps a finite logarithm


def predicted_classes(probabilities: np.ndarray) -> np.ndarray:
    """The argmax class per row, ``-1`` for a row with a NaN or infinite value."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    broken = ~np.all(np.isfinite(probabilities), axis=1)
    return np.where(broken, -1, np.nan_to_num(probabilities, nan=-1.0).argmax(axis=1))


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
