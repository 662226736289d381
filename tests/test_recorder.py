"""The recorder writes each round's outputs from what the strategy and the evaluator hand it."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from brainfl.evaluation.metrics import score
from brainfl.evaluation.test_set import CentralTestSet, Evaluation
from brainfl.federation.bookkeeping import SiteReport
from brainfl.federation.recorder import RunRecorder, resume_point
from brainfl.model.architectures import build_model
from brainfl.model.files import CHECKPOINT, ModelWriter, model_metadata, stored_metadata
from brainfl.report.results import (
    PARTITION_CSV,
    PREDICTIONS_CSV,
    RESULTS_CSV,
    SITE_CSV,
    last_recorded_round,
    read_rows,
)

CLASSES = ("a", "b")


@pytest.fixture(scope="module")
def writer() -> ModelWriter:
    bundle = build_model("cnn", 32, len(CLASSES))
    return ModelWriter(bundle, model_metadata("cnn", CLASSES, 32, 1))


def _test_set() -> CentralTestSet:
    return CentralTestSet(
        ["x.png", "y.png", "z.png"], np.array([0, 1, 1]), CLASSES, np.array([True, False, True]), True
    )


def _evaluation(probabilities: np.ndarray) -> Evaluation:
    test = _test_set()
    return Evaluation(score(test.labels, probabilities, CLASSES, test.leak_free), probabilities)


def _train_report(sites: dict[int, tuple[int, int]]) -> SiteReport:
    metrics = {
        site: {
            "train_loss": 0.5 + site,
            "num_train": a + b,
            "num_val": 1,
            "class-count-0": a,
            "class-count-1": b,
        }
        for site, (a, b) in sites.items()
    }
    return SiteReport("train", metrics, {"train_loss": 0.7, "train_accuracy": 0.8}, len(sites), 1)


def test_a_round_is_written_from_the_site_reports_and_the_evaluation(tmp_path, writer, caplog) -> None:
    recorder = RunRecorder(tmp_path, _test_set(), CLASSES, writer, total_rounds=3)
    weights = writer.bundle.trainable.get_weights()
    with caplog.at_level(logging.INFO, logger="flwr"):
        recorder.round_done(0, weights, _evaluation(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])))
    assert "nan" not in caplog.text and "left" not in caplog.text  # no time estimate before round 1
    recorder.site_report(1, _train_report({0: (3, 1), 1: (0, 4)}))
    recorder.site_report(1, SiteReport("evaluate", {0: {"val_accuracy": 1.0}}, {"val_accuracy": 0.5}, 2, 0))
    probabilities = np.array([[0.9, 0.1], [np.nan, np.nan], [0.1, 0.9]])
    recorder.round_done(1, weights, _evaluation(probabilities))

    rows = read_rows(tmp_path / RESULTS_CSV)
    assert [row["round"] for row in rows] == ["0", "1"]
    assert float(rows[1]["accuracy"]) == pytest.approx(2 / 3)  # the NaN row counts as wrong
    assert float(rows[1]["leak_free_accuracy"]) == 1.0
    assert rows[1]["sites_trained"] == "2" and rows[1]["sites_failed"] == "1"
    assert float(rows[1]["train_loss"]) == 0.7 and float(rows[1]["val_accuracy"]) == 0.5
    sites = read_rows(tmp_path / SITE_CSV)
    assert [(r["site"], r["train_loss"], r["val_accuracy"]) for r in sites] == [
        ("0", "0.5", "1"),
        ("1", "1.5", ""),
    ]
    partition = read_rows(tmp_path / PARTITION_CSV)
    assert [(r["site"], r["a"], r["b"], r["num_train"]) for r in partition] == [
        ("0", "3", "1", "4"),
        ("1", "0", "4", "4"),
    ]
    predictions = read_rows(tmp_path / PREDICTIONS_CSV)
    assert [p["file"] for p in predictions] == ["x.png", "y.png", "z.png"]
    assert [p["leak_free"] for p in predictions] == ["1", "0", "1"]
    assert predictions[1]["a"] == "nan" and float(predictions[2]["b"]) == 0.9
    assert stored_metadata(tmp_path / CHECKPOINT)["round"] == 1


def test_the_deployment_clock_adds_each_rounds_critical_path_and_continues_after_a_resume(
    tmp_path, writer
) -> None:
    weights = writer.bundle.trainable.get_weights()
    evaluation = dataclasses.replace(_evaluation(np.full((3, 2), 0.5)), seconds=0.5)
    recorder = RunRecorder(tmp_path, _test_set(), CLASSES, writer, total_rounds=3, deployment_clock=True)
    recorder.round_done(0, weights, evaluation)
    for server_round in (1, 2):
        report = dataclasses.replace(_train_report({0: (2, 2)}), slowest_site_s=4.0, aggregation_s=0.25)
        recorder.site_report(server_round, report)
        recorder.round_done(server_round, weights, evaluation)
    resume_point(tmp_path, writer)
    recorder = RunRecorder(
        tmp_path, _test_set(), CLASSES, writer, total_rounds=3, first_round=2, deployment_clock=True
    )
    recorder.site_report(3, dataclasses.replace(_train_report({0: (2, 2)}), slowest_site_s=1.0))
    recorder.round_done(3, weights, evaluation)
    rows = read_rows(tmp_path / RESULTS_CSV)
    # round 0: the evaluation; then the slowest site + aggregation + evaluation, summed over rounds
    assert [float(r["parallel_elapsed_s"]) for r in rows] == [0.5, 5.2, 10.0, 11.5]
    assert all(r["elapsed_s"] for r in rows)
    (tmp_path / "plain").mkdir()
    plain = RunRecorder(tmp_path / "plain", _test_set(), CLASSES, writer, total_rounds=1)  # centralized
    plain.round_done(0, weights, evaluation)
    assert read_rows(tmp_path / "plain" / RESULTS_CSV)[0]["parallel_elapsed_s"] == ""


def test_a_site_enters_the_partition_table_once(tmp_path, writer) -> None:
    recorder = RunRecorder(tmp_path, _test_set(), CLASSES, writer, total_rounds=2)
    weights = writer.bundle.trainable.get_weights()
    for server_round in (1, 2):
        recorder.site_report(server_round, _train_report({0: (2, 2)}))
        recorder.round_done(server_round, weights, _evaluation(np.full((3, 2), 0.5)))
    assert len(read_rows(tmp_path / PARTITION_CSV)) == 1


def test_resume_point_returns_the_checkpoint_and_drops_later_rows(tmp_path, writer) -> None:
    recorder = RunRecorder(tmp_path, _test_set(), CLASSES, writer, total_rounds=5)
    trained = [w + 1.0 for w in writer.bundle.trainable.get_weights()]
    for server_round in (1, 2):
        recorder.site_report(server_round, _train_report({0: (2, 2)}))
        recorder.round_done(server_round, trained, _evaluation(np.full((3, 2), 0.5)))
    recorder.results.append({"round": 3, "accuracy": 0.1, "elapsed_s": 99.0})  # a round the checkpoint lacks
    last_round, weights, elapsed = resume_point(tmp_path, writer)
    assert last_round == 2
    np.testing.assert_allclose(weights[0], trained[0])
    assert [row["round"] for row in read_rows(tmp_path / RESULTS_CSV)] == ["1", "2"]
    assert elapsed < 99.0
    assert last_recorded_round(tmp_path / RESULTS_CSV) == 2  # the resumed model's row is there


def test_a_row_written_before_its_checkpoint_is_dropped_and_the_round_before_stays(tmp_path, writer) -> None:
    """Killed between a round's row and its checkpoint: resume from the round before, keeping its row once."""
    recorder = RunRecorder(tmp_path, _test_set(), CLASSES, writer, total_rounds=3)
    weights = writer.bundle.trainable.get_weights()
    recorder.round_done(0, weights, _evaluation(np.full((3, 2), 0.5)))
    recorder.results.append({"round": 1, "accuracy": 0.1, "elapsed_s": 9.0})  # no checkpoint of round 1
    last_round, _, _ = resume_point(tmp_path, writer)
    assert last_round == 0
    assert [row["round"] for row in read_rows(tmp_path / RESULTS_CSV)] == ["0"]
    assert last_recorded_round(tmp_path / RESULTS_CSV) == last_round  # so the server does not re-add row 0


def test_clinical_columns_and_held_out_site_scores_are_recorded_and_survive_a_resume(
    tmp_path, writer
) -> None:
    from brainfl.report.results import results_header, site_header

    test = _test_set()
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    evaluation = Evaluation(
        score(test.labels, probabilities, CLASSES, test.leak_free, resamples=50), probabilities
    )
    held_out = {"val_accuracy": 0.5, "val_balanced_accuracy": 0.5, "val_sensitivity_a": 0.0}
    trained = [w + 1.0 for w in writer.bundle.trainable.get_weights()]
    recorder = RunRecorder(tmp_path, test, CLASSES, writer, total_rounds=3)
    for server_round in (1, 2):
        report = _train_report({0: (2, 2)})
        report.sites[0].update(held_out, val_sensitivity_b=float("nan"))  # no b in the site's split
        recorder.site_report(server_round, report)
        recorder.round_done(server_round, trained, evaluation)
    resume_point(tmp_path, writer)  # the checkpoint is round 2: nothing dropped
    recorder = RunRecorder(tmp_path, test, CLASSES, writer, total_rounds=3, first_round=2)
    recorder.round_done(3, trained, evaluation)

    rows = read_rows(tmp_path / RESULTS_CSV)
    assert list(rows[0]) == results_header(CLASSES) and [r["round"] for r in rows] == ["1", "2", "3"]
    for row in rows:
        assert float(row["balanced_accuracy"]) == pytest.approx(0.75)  # a: 1 of 1, b: 1 of 2
        assert float(row["specificity_b"]) == 1.0 and float(row["roc_auc_a"]) == 1.0
        assert float(row["accuracy_low"]) <= float(row["accuracy"]) <= float(row["accuracy_high"])
        assert row["sensitivity_a_low"] == row["sensitivity_a_high"] == "1"
    sites = read_rows(tmp_path / SITE_CSV)
    assert list(sites[0]) == site_header(CLASSES)
    assert [(s["val_balanced_accuracy"], s["val_sensitivity_a"], s["val_sensitivity_b"]) for s in sites] == [
        ("0.5", "0", "nan")
    ] * 2
