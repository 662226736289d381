"""The model-cost benchmark times each candidate's training pass in turn and keeps the rows."""

from __future__ import annotations

import csv

import pytest

import model_cost
from conftest import REPO_ROOT


def test_times_each_candidate_relative_to_the_first_and_keeps_the_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINFL_CACHE_DIR", str(tmp_path / "cache"))
    sample = str(REPO_ROOT / "sample_data")
    candidates = ["image-size=16 batch-size=4", "image-size=32 batch-size=4 model='rescnn'"]
    rows = model_cost.measure(sample, candidates, images=8, repeats=1)
    assert [(row["model"], row["image_size"]) for row in rows] == [("cnn", 16), ("rescnn", 32)]
    assert rows[0]["relative_cost"] == 1.0 and rows[1]["ms_per_image"] > 0
    assert rows[1]["parameters"] > rows[0]["parameters"]
    ratio = rows[1]["ms_per_image"] / rows[0]["ms_per_image"]
    assert rows[1]["relative_cost"] == pytest.approx(ratio, abs=0.02)
    folder = model_cost.keep_timing_table(rows, model_cost.COLUMNS, tmp_path / "kept", model_cost.RESULT_CSV)
    with open(folder / model_cost.RESULT_CSV) as handle:
        assert [row["model"] for row in csv.DictReader(handle)] == ["cnn", "rescnn"]
