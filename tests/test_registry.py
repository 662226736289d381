"""The metric registry: one declaration reaches the server's CSV, the report, evaluate and the sites."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from brainfl.evaluation import registry
from brainfl.evaluation.intervals import score_with_intervals
from brainfl.evaluation.metrics import held_out_keys, held_out_metrics, score
from brainfl.evaluation.registry import SUMMARY, Metric, divide
from brainfl.report.page import make_report
from brainfl.report.results import RESULTS_CSV, SITE_CSV, CsvAppender, results_header, site_header
from brainfl.settings.run_settings import default_run_config

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def error_rate(tally) -> np.ndarray:
    return 1 - divide(tally.hits.sum(axis=1), tally.total)


TOY = Metric(
    "error_rate", "error rate", error_rate, round=SUMMARY, at_sites=True, headline="final test error rate"
)


@pytest.fixture
def toy_metric(monkeypatch):
    monkeypatch.setattr(registry, "METRICS", (*registry.METRICS, TOY))


def scored_set(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), 80)
    logits = rng.normal(size=(80, len(CLASSES)))
    logits[np.arange(80), labels] += 1.0
    return labels, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_one_name_per_quantity_and_the_csv_columns_in_their_published_order():
    names = [metric.name for metric in registry.METRICS]
    assert len(names) == len(set(names))
    header = results_header(["a", "b"])
    assert header[:12] == [
        "round", "loss", "accuracy", "precision_macro", "recall_macro", "f1_macro", "recall_a", "recall_b",
        "leak_free_accuracy", "balanced_accuracy", "ece", "specificity_a",
    ]  # fmt: skip
    assert header.index("sensitivity_a_low") > header.index("accuracy_high")
    sites = ["val_loss", "val_accuracy", "val_balanced_accuracy", "val_sensitivity_a", "val_sensitivity_b"]
    assert held_out_keys(["a", "b"]) == sites


def test_a_metric_added_to_the_registry_reaches_every_output(toy_metric, tmp_path):
    labels, probabilities = scored_set()
    row = score(labels, probabilities, CLASSES, resamples=20)
    assert row["error_rate"] == pytest.approx(1 - row["accuracy"])
    header = results_header(CLASSES)
    assert header.index("error_rate") < header.index("leak_free_accuracy")  # in the summary block
    # the sites score it too, as val_error_rate
    site = held_out_metrics(labels, probabilities, CLASSES)
    assert site["val_error_rate"] == pytest.approx(1 - site["val_accuracy"])
    assert "val_error_rate" in site_header(CLASSES)
    # brainfl evaluate scores it with its interval
    scores = score_with_intervals(labels, probabilities, CLASSES, resamples=50)
    toy = scores.overall["error_rate"]
    assert toy.low <= toy.value <= toy.high and "error_rate" in set(scores.table()["metric"])
    # the run's CSV holds it, and the report shows it among the headline numbers
    run = tmp_path / "run"
    run.mkdir()
    config = {**default_run_config(), "class-names": list(CLASSES), "output-dir": str(run)}
    (run / "run_config.json").write_text(json.dumps(config))
    CsvAppender(run / RESULTS_CSV, header).append({"round": 0, **row, "elapsed_s": 1.0})
    CsvAppender(run / SITE_CSV, site_header(CLASSES))
    assert pd.read_csv(run / RESULTS_CSV)["error_rate"].iloc[0] == pytest.approx(row["error_rate"], abs=1e-6)
    page = make_report(run).read_text()
    assert "final test error rate (round 0)" in page
    assert f"{row['error_rate']:.4f}" in page


def test_without_the_declaration_the_metric_is_nowhere():
    labels, probabilities = scored_set()
    assert "error_rate" not in score(labels, probabilities, CLASSES, resamples=20)
    assert "error_rate" not in results_header(CLASSES)
    assert "error_rate" not in score_with_intervals(labels, probabilities, CLASSES, resamples=0).overall
