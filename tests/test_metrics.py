"""Tests of the classification metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from brainfl.metrics import classification_metrics


def test_metrics_match_hand_computed_values():
    labels = np.array([0, 0, 1, 2])
    probabilities = np.array([[0.8, 0.2, 0.0], [0.4, 0.6, 0.0], [0.1, 0.9, 0.0], [0.0, 0.5, 0.5]])
    metrics = classification_metrics(labels, probabilities, ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(0.5)  # predictions 0, 1, 1, 1 (ties go to the first)
    assert metrics["recall_a"] == pytest.approx(0.5)
    assert metrics["recall_b"] == pytest.approx(1.0)
    assert metrics["recall_c"] == pytest.approx(0.0)
    assert metrics["recall_macro"] == pytest.approx(0.5)
    assert metrics["precision_macro"] == pytest.approx((1.0 + 1 / 3 + 0.0) / 3)
    expected_loss = -np.mean(np.log([0.8, 0.4, 0.9, 0.5]))
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-6)


def test_non_finite_outputs_count_as_wrong_with_infinite_loss():
    probabilities = np.array([[0.9, 0.1], [np.nan, np.nan], [0.2, 0.8]])
    metrics = classification_metrics(np.array([0, 1, 1]), probabilities, ["a", "b"])
    assert metrics["loss"] == float("inf")
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["recall_b"] == pytest.approx(0.5)


def test_score_counts_non_finite_rows_as_wrong_everywhere_including_leak_free():
    import numpy as np

    from brainfl.metrics import LEAK_FREE, predicted_classes, score

    probabilities = np.array([[0.9, 0.1], [np.nan, 0.5], [0.2, 0.8], [np.inf, 0.0]])
    labels = np.array([0, 0, 1, 0])
    np.testing.assert_array_equal(predicted_classes(probabilities), [0, -1, 1, -1])
    scores = score(labels, probabilities, ["a", "b"], leak_free=np.array([True, True, False, False]))
    assert scores["accuracy"] == 0.5 and scores[LEAK_FREE] == 0.5
    assert scores["loss"] == float("inf")
    assert LEAK_FREE not in score(labels, probabilities, ["a", "b"], leak_free=np.zeros(4, bool))
