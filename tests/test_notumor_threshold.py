"""The tumor-safe operating point: the notumor threshold rule, its federated fit and the tumor metrics."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from flwr.app import MessageType

from brainfl.core.errors import BrainFLError
from brainfl.evaluation import external as evaluate
from brainfl.evaluation.intervals import score_with_intervals
from brainfl.evaluation.metrics import result_columns, score
from brainfl.evaluation.notumor_threshold import (
    NOTUMOR_THRESHOLD_JSON,
    THRESHOLDS,
    ThresholdCounts,
    choose_threshold,
    threshold_counts,
)
from brainfl.federation.setup import QUERY
from brainfl.federation.threshold_query import FALSE_ALARMS, MISSED, THRESHOLD
from brainfl.inference import gradcam, predict
from brainfl.model.files import FINAL_MODEL, load_model, read_metadata, save_model, stored_metadata
from brainfl.model.outputs import NotumorRule, notumor_rule, predicted_classes
from brainfl.settings.run_settings import settings_with
from conftest import CLASSES, REPO_ROOT
from test_federation_setup import run_coordinated
from test_predict import tiny_model_with

NOTUMOR = CLASSES.index("notumor")  # 2: glioma, meningioma, notumor, pituitary

# Rows: glioma, notumor, notumor, notumor, pituitary; columns in CLASSES order.
PROBABILITIES = np.array(
    [
        [0.30, 0.10, 0.55, 0.05],  # notumor on top at 0.55, glioma the likeliest tumor
        [0.05, 0.05, 0.85, 0.05],  # notumor at 0.85
        [0.20, 0.40, 0.35, 0.05],  # meningioma on top: the threshold never touches it
        [0.10, 0.10, 0.70, 0.10],  # notumor at 0.70, a tie of tumors: the first wins
        [np.nan, 0.1, 0.8, 0.1],  # broken: no class
    ]
)


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        (0.0, [2, 2, 1, 2, -1]),  # plain argmax
        (0.55, [2, 2, 1, 2, -1]),  # reaching the threshold is enough
        (0.6, [0, 2, 1, 2, -1]),
        (0.8, [0, 2, 1, 0, -1]),
        (0.9, [0, 0, 1, 0, -1]),
    ],
)
def test_notumor_is_predicted_only_when_it_reaches_the_threshold(threshold, expected):
    rule = notumor_rule(CLASSES, threshold)
    assert rule == NotumorRule(NOTUMOR, threshold)
    np.testing.assert_array_equal(predicted_classes(PROBABILITIES, rule), expected)


def test_without_a_notumor_class_there_is_no_rule_and_argmax_stands():
    assert notumor_rule(("a", "b")) is None
    np.testing.assert_array_equal(predicted_classes(PROBABILITIES), [2, 2, 1, 2, -1])


def hand_made_set() -> tuple[np.ndarray, np.ndarray]:
    """20 scans; confusion (rows true, columns predicted; glioma, meningioma, notumor, pituitary):
    glioma 4 right, 1 called notumor; meningioma 3 right, 1 called glioma, 1 notumor; notumor 4 right,
    2 called pituitary; pituitary 3 right, 1 called notumor. Plus one glioma scan with a broken row."""
    cells = {
        (0, 0): 4,
        (0, 2): 1,
        (1, 1): 3,
        (1, 0): 1,
        (1, 2): 1,
        (2, 2): 4,
        (2, 3): 2,
        (3, 3): 3,
        (3, 2): 1,
    }
    labels, rows = [], []
    for (true, predicted), count in cells.items():
        labels += [true] * count
        rows += [np.eye(4)[predicted] * 0.7 + 0.075] * count
    return np.asarray([*labels, 0]), np.vstack([*rows, [np.nan] * 4])


def test_the_tumor_metrics_on_a_hand_made_confusion_matrix():
    labels, probabilities = hand_made_set()
    scores = score_with_intervals(labels, probabilities, CLASSES, resamples=200)
    # tumor scans: 5 + 1 broken glioma, 5 meningioma, 4 pituitary = 15; called a tumor class: 4 + 4 + 3 = 11
    # (meningioma called glioma is still a tumor); called notumor: 1 + 1 + 1 = 3; the broken row neither.
    assert scores.overall["tumor_sensitivity"].value == pytest.approx(11 / 15)
    assert scores.overall["missed_tumors"].value == pytest.approx(3 / 15)
    assert scores.overall["tumor_specificity"].value == pytest.approx(4 / 6)  # 2 notumor called pituitary
    for name in ("tumor_sensitivity", "tumor_specificity", "missed_tumors"):
        low, high = scores.overall[name].low, scores.overall[name].high
        assert low <= scores.overall[name].value <= high and low < high
    assert {"tumor_sensitivity", "missed_tumors"} <= set(scores.table()["metric"])
    # the server's results CSV records them with their bounds, NaN without a notumor class
    row = score(labels, probabilities, CLASSES, resamples=50)
    assert row["missed_tumors"] == pytest.approx(3 / 15) and "missed_tumors_high" in result_columns(CLASSES)
    without = score_with_intervals(labels, probabilities, list("abcd"), resamples=0)
    assert np.isnan(without.overall["missed_tumors"].value)  # no notumor class: undefined


def test_the_threshold_moves_evaluates_scores():
    labels = np.array([0, 2, 1, 2, 3])
    at_argmax = score_with_intervals(labels, PROBABILITIES, CLASSES, resamples=0)
    safer = score_with_intervals(labels, PROBABILITIES, CLASSES, resamples=0, notumor_threshold=0.6)
    assert at_argmax.overall["missed_tumors"].value == pytest.approx(1 / 3)  # the glioma scan
    assert safer.overall["missed_tumors"].value == 0.0
    assert safer.confusion[0, 0] == 1 and at_argmax.confusion[0, 2] == 1


def counts(missed, false_alarms, tumor=100, notumor=50) -> ThresholdCounts:
    return ThresholdCounts(tumor, notumor, np.asarray(missed), np.asarray(false_alarms))


def test_the_fit_picks_the_lowest_cost_threshold_that_meets_the_target():
    grid = [0.0, 0.5, 0.7, 0.9]
    site_a = counts([4, 2, 1, 0], [0, 1, 3, 10], tumor=60, notumor=30)
    site_b = counts([2, 1, 1, 0], [0, 0, 1, 8], tumor=40, notumor=20)
    fit = choose_threshold(site_a + site_b, grid, target=0.02)
    # pooled missed 6, 3, 2, 0 of 100: 0.7 and 0.9 meet 2%; costs 2+4=6 and 0+18=18: 0.7
    assert fit.threshold == 0.7 and fit.met and fit.missed_rate == pytest.approx(0.02)
    assert fit.false_alarm_rate == pytest.approx(4 / 50)
    assert choose_threshold(site_a + site_b, grid, target=0.05).threshold == 0.5  # cost 3+1: fewer
    never = choose_threshold(counts([9, 8, 7, 7], [0, 1, 2, 5]), grid, target=0.02)
    assert not never.met and never.threshold == 0.7  # the fewest missed, then the lowest cost


def test_counts_on_a_site_match_the_rule():
    labels = np.array([0, 2, 1, 2, 3])
    found = threshold_counts(labels, PROBABILITIES, CLASSES, [0.0, 0.6, 0.9])
    assert (found.tumor, found.notumor) == (3, 2)
    assert found.missed.tolist() == [1, 0, 0]
    assert found.false_alarms.tolist() == [0, 0, 2]  # at 0.9 both notumor scans turn tumor


@pytest.mark.parametrize("bad", ["maybe", "1.0", "-0.1"])
def test_a_bad_threshold_setting_is_one_line(bad):
    with pytest.raises(BrainFLError, match="setting 'notumor-threshold'"):
        settings_with(notumor_threshold=bad)
    with pytest.raises(BrainFLError, match="'missed-tumor-target'"):
        settings_with(missed_tumor_target=1.5)
    assert settings_with(notumor_threshold="0.7").evaluation.fixed_notumor_threshold == 0.7


@pytest.fixture(scope="module")
def threshold_files(tmp_path_factory):
    """The predict tests' tiny model, and the same model with a notumor threshold of 0.999."""
    return tiny_model_with(tmp_path_factory, notumor_threshold=0.999)


def test_predict_evaluate_and_old_files_follow_the_models_threshold(threshold_files, capsys):
    plain, safe = threshold_files
    assert load_model(plain).notumor_threshold == 0.0  # a file without one predicts as before
    sample = REPO_ROOT / "sample_data" / "Testing"
    before, after = predict.predict_files(plain, [sample]), predict.predict_files(safe, [sample])
    names = list(load_model(plain).class_names)
    np.testing.assert_allclose(before[names].to_numpy(), after[names].to_numpy())
    np.testing.assert_array_equal(
        after["predicted_class"],
        [names[i] for i in predicted_classes(after[names], notumor_rule(names, 0.999))],
    )
    assert (after["predicted_class"] != "notumor").all()
    uncertain = after[names].max(axis=1) < predict.UNCERTAIN_BELOW
    assert (after["uncertain"] >= uncertain).all()  # the predicted class is at most the top one
    evaluation = evaluate.evaluate_model(safe, sample.parent, resamples=10)
    assert (
        evaluation.notumor_threshold == 0.999 and evaluate.summary(evaluation)["notumor_threshold"] == 0.999
    )
    assert evaluation.scores.confusion[:, names.index("notumor")].sum() == 0
    evaluate.print_scores(evaluation)
    assert "probability >= 0.999" in capsys.readouterr().out


def test_a_model_file_with_a_bad_threshold_is_refused(threshold_files, tmp_path):
    plain, _ = threshold_files
    path = tmp_path / "bad.keras"
    save_model(keras.models.load_model(plain), path, {**read_metadata(plain), "notumor_threshold": 1.5})
    with pytest.raises(BrainFLError, match="notumor_threshold a number in"):
        load_model(path)


def test_the_run_fits_the_threshold_on_the_sites_counts_only(tmp_path):
    grid, replies, _ = run_coordinated(tmp_path, {"num-server-rounds": 1, "notumor-threshold": "fit"})
    run = tmp_path / "run"
    asked = [m.content["config"][QUERY] for m in grid.sent if m.metadata.message_type == MessageType.QUERY]
    assert asked[-2:] == [THRESHOLD, THRESHOLD]
    for answer in replies[-2:]:
        assert list(answer.content.keys()) == ["metrics"]
        metrics = answer.content["metrics"]
        assert len(metrics[MISSED]) == len(metrics[FALSE_ALARMS]) == len(THRESHOLDS)
    record = json.loads((run / NOTUMOR_THRESHOLD_JSON).read_text())
    assert stored_metadata(run / FINAL_MODEL)["notumor_threshold"] == record["threshold"]
    assert record["tumor"] == sum(a.content["metrics"]["tumor-scans"] for a in replies[-2:])
    assert "notumor threshold" in (run / "logs" / "server.log").read_text()


def test_gradcam_explains_the_class_predict_calls(threshold_files, tmp_path, monkeypatch):
    _, safe = threshold_files
    loaded = load_model(safe)
    scans = sorted((REPO_ROOT / "sample_data" / "Testing" / "notumor").glob("*.jpg"))[:4]
    called = predict.predict_files(safe, scans)["predicted_class"].tolist()
    explained = []
    heatmaps = gradcam.gradcam_heatmaps

    def recording(model, images, class_indices=None):
        explained.append(loaded.class_names[int(class_indices[0])])
        return heatmaps(model, images, class_indices)

    monkeypatch.setattr(gradcam, "gradcam_heatmaps", recording)
    for index, scan in enumerate(scans):
        gradcam.save_gradcam(loaded, scan, tmp_path / f"{index}.png")
    assert explained == called and "notumor" not in explained
