"""Tests of run outputs: per-round CSV rows, resume truncation, model metadata."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest

from brainfl.core.errors import BrainFLError
from brainfl.model.files import save_model, stored_metadata
from brainfl.report.results import (
    RESULTS_CSV,
    CsvAppender,
    resolve_output_dir,
    results_header,
    truncate_rows_after,
)
from brainfl.settings.run_settings import settings_with


def test_results_header_starts_with_round_loss_accuracy_and_names_classes():
    header = results_header(["glioma", "notumor"])
    assert header[:3] == ["round", "loss", "accuracy"]
    assert "recall_glioma" in header and "recall_notumor" in header and "leak_free_accuracy" in header


def test_rows_are_appended_to_an_existing_file_without_a_second_header(tmp_path):
    path = tmp_path / "r.csv"
    CsvAppender(path, ["round", "loss"]).append({"round": 0, "loss": 1.234567891})
    CsvAppender(path, ["round", "loss"]).append({"round": 1})
    assert path.read_text().splitlines() == ["round,loss", "0,1.23457", "1,"]


def test_truncate_keeps_rounds_up_to_the_checkpoint_and_returns_elapsed(tmp_path):
    path = tmp_path / "r.csv"
    appender = CsvAppender(path, ["round", "accuracy", "elapsed_s"])
    for round_number in range(5):
        appender.append(
            {"round": round_number, "accuracy": 0.1 * round_number, "elapsed_s": 10.0 * round_number}
        )
    assert truncate_rows_after(path, 2) == 20.0
    with open(path, newline="") as handle:
        assert [row["round"] for row in csv.DictReader(handle)] == ["0", "1", "2"]


def test_saved_model_carries_metadata_and_loads(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path / "m.keras"
    save_model(model, path, {"class_names": ["a", "b"], "round": 4})
    assert stored_metadata(path) == {"class_names": ["a", "b"], "round": 4}
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.get_weights()[0], model.get_weights()[0])
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]


def test_an_existing_file_keeps_its_header_and_rows_follow_it(tmp_path, caplog):
    path = tmp_path / "r.csv"
    CsvAppender(path, ["round", "accuracy"]).append({"round": 1, "accuracy": 0.5})  # an older version's file
    resumed = CsvAppender(path, ["round", "loss", "accuracy", "balanced_accuracy"])
    resumed.append({"round": 2, "loss": 1.0, "accuracy": 0.75, "balanced_accuracy": 0.7})
    assert path.read_text().splitlines() == ["round,accuracy", "1,0.5", "2,0.75"]
    assert "left out: loss, balanced_accuracy" in caplog.text


def test_site_header_puts_the_held_out_scores_after_val_accuracy():
    from brainfl.report.results import SITE_FIELDS, site_header

    header = site_header(["glioma", "notumor"])
    at = header.index("val_accuracy")
    assert header[at + 1 : at + 4] == [
        "val_balanced_accuracy",
        "val_sensitivity_glioma",
        "val_sensitivity_notumor",
    ]
    assert [c for c in header if c in SITE_FIELDS] == list(SITE_FIELDS)


def test_a_folder_holding_a_run_is_never_written_twice_unless_resumed(tmp_path):
    folder = tmp_path / "run"
    assert resolve_output_dir(settings_with(output_dir=str(folder))) == folder.resolve()  # new: made
    CsvAppender(folder / RESULTS_CSV, results_header(["a", "b"])).append({"round": 0, "accuracy": 0.5})
    with pytest.raises(
        BrainFLError, match=r"output-dir .*run already holds a run \(federated_learning_results\.csv\)"
    ):
        resolve_output_dir(settings_with(output_dir=str(folder)))
    assert resolve_output_dir(settings_with(output_dir=str(folder), resume=True)) == folder.resolve()
