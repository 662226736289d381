"""The throughput benchmark times the app's steps and a tight loop of the same model, and keeps them."""

from __future__ import annotations

import csv

import pytest

import throughput
from conftest import REPO_ROOT


def test_measures_every_step_against_its_tight_loop_and_keeps_the_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINFL_CACHE_DIR", str(tmp_path / "cache"))
    sample = str(REPO_ROOT / "sample_data")
    rows = throughput.measure(sample, "image-size=32 batch-size=4", epochs=1, repeats=1)
    assert [row["step"] for row in rows] == ["training", "evaluation", "precise BN"]
    for row in rows:
        assert row["app_images_per_s"] > 0 and row["tight_images_per_s"] > 0
        share = row["app_images_per_s"] / row["tight_images_per_s"]
        assert row["app_share"] == pytest.approx(share, abs=0.002)
    folder = throughput.keep(rows, tmp_path / "kept")
    with open(folder / throughput.RESULT_CSV) as handle:
        kept = list(csv.DictReader(handle))
    assert [row["step"] for row in kept] == ["training", "evaluation", "precise BN"]
    assert (folder / "command.txt").read_text().strip() and (folder / "machine.txt").is_file()
