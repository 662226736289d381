"""Tests of :mod:`brainfl.evaluation.intervals`: each metric against a case done by hand; the bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from brainfl.evaluation.intervals import (
    OVERALL,
    PER_CLASS,
    resample_weights,
    score_with_intervals,
)
from brainfl.evaluation.registry import weighted_auc

NAMES = ("a", "b", "c")


def soft(predicted: list[int], num_classes: int = 3, top: float = 0.8) -> np.ndarray:
    """Probability rows with ``top`` on the predicted class and the rest spread evenly."""
    rows = np.full((len(predicted), num_classes), (1 - top) / (num_classes - 1))
    rows[np.arange(len(predicted)), predicted] = top
    return rows


# true a a a b b c, predicted a a b b c c: confusion [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
LABELS = [0, 0, 0, 1, 1, 2]
PREDICTED = [0, 0, 1, 1, 2, 2]


def values(scores, name: str) -> list[float]:
    return [interval.value for interval in scores.per_class[name]]


def test_count_metrics_match_the_hand_computed_confusion_matrix():
    scores = score_with_intervals(LABELS, soft(PREDICTED), NAMES, resamples=50)
    assert scores.confusion.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0]]
    assert scores.overall["accuracy"].value == pytest.approx(4 / 6)
    assert values(scores, "sensitivity") == pytest.approx([2 / 3, 1 / 2, 1])
    assert scores.overall["balanced_accuracy"].value == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # specificity: true negatives / negatives; a: 3 of 3, b: 3 of 4 (an a called b), c: 4 of 5 (a b called c)
    assert values(scores, "specificity") == pytest.approx([1, 3 / 4, 4 / 5])
    assert values(scores, "precision") == pytest.approx([1, 1 / 2, 1 / 2])
    assert scores.overall["f1_macro"].value == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert scores.overall["f1_macro"].value == pytest.approx(f1_score(LABELS, PREDICTED, average="macro"))
    assert scores.overall["balanced_accuracy"].value == pytest.approx(
        balanced_accuracy_score(LABELS, PREDICTED)
    )


def test_a_non_finite_row_is_wrong_for_its_class_and_no_false_alarm_for_the_others():
    probabilities = np.vstack([soft(PREDICTED), [np.nan, 0.5, 0.5]])
    scores = score_with_intervals([*LABELS, 2], probabilities, NAMES, resamples=50)
    assert scores.non_finite == 1
    assert scores.confusion[2].tolist() == [0, 0, 1, 1]  # last column: no prediction
    assert scores.overall["accuracy"].value == pytest.approx(4 / 7)
    assert values(scores, "sensitivity") == pytest.approx([2 / 3, 1 / 2, 1 / 2])
    assert values(scores, "specificity") == pytest.approx([1, 4 / 5, 4 / 5])
    assert values(scores, "precision") == pytest.approx([1, 1 / 2, 1 / 2])
    infinite = np.vstack([soft(PREDICTED), [np.inf, 0.0, 0.0]])
    assert score_with_intervals([*LABELS, 0], infinite, NAMES, resamples=50).overall["accuracy"].value == (
        pytest.approx(4 / 7)
    )


def test_ece_of_four_scans_computed_by_hand_and_non_finite_rows_left_out():
    probabilities = np.array(
        [
            [0.61, 0.39],  # confidence 0.61, correct -> bin 9 (0.600, 0.667]
            [0.35, 0.65],  # confidence 0.65, wrong   -> bin 9
            [0.95, 0.05],  # confidence 0.95, correct -> bin 14 (0.933, 1]
            [0.25, 0.75],  # confidence 0.75, wrong   -> bin 11 (0.733, 0.800]
        ]
    )
    labels = [0, 0, 0, 0]
    # bin 9: accuracy 1/2, confidence 0.63, 2 of 4 scans -> 0.13 * 2/4 = 0.065
    # bin 14: |1 - 0.95| * 1/4 = 0.0125; bin 11: |0 - 0.75| * 1/4 = 0.1875
    expected = 0.065 + 0.0125 + 0.1875
    scores = score_with_intervals(labels, probabilities, ("x", "y"), resamples=50)
    assert scores.overall["ece"].value == pytest.approx(expected)
    table = scores.reliability.set_index("bin")
    assert len(table) == 15 and table["count"].sum() == 4
    assert table.loc[9, ["count", "confidence", "accuracy"]].tolist() == pytest.approx([2, 0.63, 0.5])
    assert table.loc[11, ["count", "confidence", "accuracy"]].tolist() == pytest.approx([1, 0.75, 0.0])
    assert table.loc[14, ["count", "confidence", "accuracy"]].tolist() == pytest.approx([1, 0.95, 1.0])
    assert table.loc[0, "count"] == 0 and math.isnan(table.loc[0, "accuracy"])
    assert table.loc[9, "lower"] == pytest.approx(0.6) and table.loc[9, "upper"] == pytest.approx(2 / 3)

    with_nan = score_with_intervals([*labels, 1], np.vstack([probabilities, [np.nan, np.nan]]), ("x", "y"))
    assert with_nan.non_finite == 1
    assert with_nan.overall["ece"].value == pytest.approx(expected)
    assert with_nan.reliability["count"].sum() == 4


def test_roc_auc_of_a_tiny_case_with_a_tie():
    # class a scores: positives 0.9, 0.4; negatives 0.6, 0.2, 0.4 (a tie counts one half)
    # pairs won: 0.9 beats all 3; 0.4 beats 0.2, ties 0.4 -> (3 + 1 + 0.5) / 6
    score_a = np.array([0.9, 0.4, 0.6, 0.2, 0.4])
    probabilities = np.column_stack([score_a, 1 - score_a])
    scores = score_with_intervals([0, 0, 1, 1, 1], probabilities, ("a", "b"), resamples=50)
    assert scores.per_class["roc_auc"][0].value == pytest.approx(4.5 / 6)
    assert scores.per_class["roc_auc"][1].value == pytest.approx(4.5 / 6)


def test_the_vectorised_auc_equals_scikit_learn_and_is_nan_without_both_classes():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(200), 2)  # rounded: many ties
    positive = rng.random(200) < 0.3
    assert weighted_auc(scores, positive, np.ones((1, 200)))[0] == pytest.approx(
        roc_auc_score(positive, scores)
    )
    twice = np.ones((1, 200))
    twice[0, :50] = 2  # counts as the first 50 scans drawn twice
    repeated = np.r_[np.arange(200), np.arange(50)]
    assert weighted_auc(scores, positive, twice)[0] == pytest.approx(
        roc_auc_score(positive[repeated], scores[repeated])
    )
    assert math.isnan(weighted_auc(scores, np.zeros(200, dtype=bool), np.ones((1, 200)))[0])


def test_an_absent_class_has_no_sensitivity_nor_auc_and_is_left_out_of_the_averages():
    labels, predicted = [0, 0, 1, 1], [0, 1, 1, 1]
    scores = score_with_intervals(labels, soft(predicted), NAMES, resamples=100)
    assert math.isnan(scores.per_class["sensitivity"][2].value)
    assert all(math.isnan(v) for v in scores.per_class["roc_auc"][2])
    assert not math.isnan(scores.per_class["roc_auc"][0].value)
    assert scores.overall["balanced_accuracy"].value == pytest.approx((1 / 2 + 1) / 2)
    assert scores.overall["f1_macro"].value == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert values(scores, "specificity")[2] == pytest.approx(1.0)
    assert math.isnan(values(scores, "precision")[2])  # never predicted


def random_case(n: int, seed: int = 0, num_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), labels] += 1.5
    probabilities = np.exp(logits)
    return labels, probabilities / probabilities.sum(axis=1, keepdims=True)


def every_interval(scores) -> list:
    return [scores.overall[name] for name in OVERALL] + [
        i for name in PER_CLASS for i in scores.per_class[name]
    ]


def test_intervals_contain_the_point_estimate_and_narrow_with_more_scans():
    classes = ["a", "b", "c", "notumor"]  # with the tumor-vs-notumor metrics defined
    small = score_with_intervals(*random_case(120), classes, resamples=400)
    large = score_with_intervals(*random_case(2400, seed=1), classes, resamples=400)
    for scores in (small, large):
        for value, low, high in every_interval(scores):
            assert low <= value <= high
    widths = [
        [high - low for _, low, high in every_interval(scores)] for scores in (small, large)
    ]  # same metric order
    assert all(wide > 2 * narrow for wide, narrow in zip(*widths, strict=True))


def test_the_bootstrap_is_seeded():
    labels, probabilities = random_case(300)
    first = score_with_intervals(labels, probabilities, list("abcd"), resamples=200, seed=7).table()
    again = score_with_intervals(labels, probabilities, list("abcd"), resamples=200, seed=7).table()
    other = score_with_intervals(labels, probabilities, list("abcd"), resamples=200, seed=8).table()
    assert first.equals(again)
    assert not first[["low", "high"]].equals(other[["low", "high"]])
    assert first["value"].equals(other["value"])


def test_resample_weights_draw_every_scan_set_of_the_right_size():
    chunks = list(resample_weights(50, 1000, seed=0))
    weights = np.concatenate(chunks)
    assert weights.shape == (1000, 50)
    assert (weights.sum(axis=1) == 50).all()
    assert weights.mean() == pytest.approx(1.0, abs=0.01)


def test_table_and_json_form_name_every_metric():
    scores = score_with_intervals(LABELS, soft(PREDICTED), NAMES, resamples=50)
    table = scores.table()
    assert list(table.columns) == ["metric", "class", "value", "low", "high"]
    assert len(table) == len(OVERALL) + len(PER_CLASS) * len(NAMES)
    assert set(table.loc[table["class"] == "", "metric"]) == set(OVERALL)
    data = scores.to_dict()
    assert data["images_per_class"] == {"a": 3, "b": 2, "c": 1}
    assert data["metrics"][0]["class"] is None and data["metrics"][-1]["class"] == "c"


def test_without_resamples_the_points_stay_and_the_bounds_are_nan():
    points = score_with_intervals(LABELS, soft(PREDICTED), NAMES, resamples=0)
    with_bounds = score_with_intervals(LABELS, soft(PREDICTED), NAMES, resamples=50)
    for name in OVERALL:
        assert points.overall[name].value == pytest.approx(with_bounds.overall[name].value, nan_ok=True)
        assert math.isnan(points.overall[name].low) and math.isnan(points.overall[name].high)
    for name in PER_CLASS:
        assert values(points, name) == pytest.approx(values(with_bounds, name), nan_ok=True)
        assert all(math.isnan(i.low) and math.isnan(i.high) for i in points.per_class[name])
