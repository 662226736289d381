"""Tests of the classification metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from brainfl.evaluation.metrics import classification_metrics


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

    from brainfl.evaluation.metrics import LEAK_FREE, score
    from brainfl.model.outputs import predicted_classes

    probabilities = np.array([[0.9, 0.1], [np.nan, 0.5], [0.2, 0.8], [np.inf, 0.0]])
    labels = np.array([0, 0, 1, 0])
    np.testing.assert_array_equal(predicted_classes(probabilities), [0, -1, 1, -1])
    scores = score(labels, probabilities, ["a", "b"], leak_free=np.array([True, True, False, False]))
    assert scores["accuracy"] == 0.5 and scores[LEAK_FREE] == 0.5
    assert scores["loss"] == float("inf")
    assert LEAK_FREE not in score(labels, probabilities, ["a", "b"], leak_free=np.zeros(4, bool))


# Six images, three classes: predictions 0, 1, 1, 1, 2, 0 (row 3 ties classes 1 and 2: the first wins).
SMALL_LABELS = np.array([0, 0, 1, 1, 2, 2])
SMALL_PROBABILITIES = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.4, 0.5, 0.1],
        [0.1, 0.8, 0.1],
        [0.2, 0.4, 0.4],
        [0.3, 0.1, 0.6],
        [0.5, 0.1, 0.4],
    ]
)


def test_server_scorer_adds_hand_computed_clinical_metrics():
    from brainfl.evaluation.metrics import interval_columns, score

    names = ["a", "b", "c"]
    scores = score(SMALL_LABELS, SMALL_PROBABILITIES, names, resamples=50)
    assert set(interval_columns(names)) <= set(scores)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    # specificity: a is predicted for one of its 4 negatives (row 5), b for one (row 1), c for none
    assert [scores[f"specificity_{n}"] for n in names] == pytest.approx([3 / 4, 3 / 4, 1.0])
    # one-vs-rest AUC, pairs of (positive, negative) won: a loses 0.4 < 0.5 (row 5); b loses 0.4 < 0.5
    # (row 1); c ties 0.4 = 0.4 (rows 5 and 3) for half a pair
    assert [scores[f"roc_auc_{n}"] for n in names] == pytest.approx([7 / 8, 7 / 8, 7.5 / 8])
    # every confidence bin holds only right or only wrong predictions: ECE is the mean |correct - confidence|
    assert scores["ece"] == pytest.approx((0.3 + 0.5 + 0.2 + 0.6 + 0.4 + 0.5) / 6)
    assert scores["sensitivity_b_low"] == scores["sensitivity_b_high"] == 1.0  # b is never missed


def test_server_scorer_intervals_contain_the_point_estimates():
    from brainfl.evaluation.metrics import score

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 400)
    logits = rng.normal(size=(400, 4))
    logits[np.arange(400), labels] += 1.5
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = ["w", "x", "y", "z"]
    scores = score(labels, probabilities, names, resamples=300)
    for point, prefix in [("accuracy", "accuracy"), ("balanced_accuracy", "balanced_accuracy")] + [
        (f"recall_{n}", f"sensitivity_{n}") for n in names
    ]:
        low, high = scores[f"{prefix}_low"], scores[f"{prefix}_high"]
        assert low < scores[point] < high, point
        assert high - low < 0.25, point  # 400 images: a few points wide, not the whole range


def test_server_scorer_survives_a_broken_model():
    from brainfl.evaluation.metrics import score

    scores = score(np.array([0, 1, 1]), np.full((3, 2), np.nan), ["a", "b"], resamples=20)
    assert scores["accuracy"] == scores["balanced_accuracy"] == scores["accuracy_high"] == 0.0
    assert np.isnan(scores["ece"]) and np.isnan(scores["roc_auc_a"])  # no finite row to rank or bin


def test_held_out_metrics_give_every_class_a_key_nan_where_the_split_lacks_it():
    from sklearn.metrics import balanced_accuracy_score

    from brainfl.evaluation.metrics import held_out_metrics

    labels = np.array([0, 0, 1, 1])  # no class c in this site's split
    metrics = held_out_metrics(labels, SMALL_PROBABILITIES[:4], ["a", "b", "c"])
    assert list(metrics) == [
        "val_loss",
        "val_accuracy",
        "val_balanced_accuracy",
        "val_sensitivity_a",
        "val_sensitivity_b",
        "val_sensitivity_c",
    ]
    predictions = SMALL_PROBABILITIES[:4].argmax(axis=1)
    assert metrics["val_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predictions))
    assert metrics["val_sensitivity_a"] == 0.5 and metrics["val_sensitivity_b"] == 1.0
    assert np.isnan(metrics["val_sensitivity_c"])
    assert metrics["val_accuracy"] == pytest.approx(3 / 4)
