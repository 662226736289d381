"""The fit-overhead benchmark: a tiny run on real images, so it cannot rot."""

from __future__ import annotations

import json

import pytest

from conftest import run_benchmark


def test_tiny_run_times_central_and_site_training_and_records_the_ratio(tmp_path, real_data):
    out = tmp_path / "overhead.jsonl"
    options = ["--image-size", "32", "--epochs", "1", "--sites", "2", "--max-images-per-class", "12"]
    run_benchmark("fit_overhead.py", "--data-dir", str(real_data), *options, "--out", str(out), timeout=600)
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["where"] == "process" and record["sites"] == 2
    assert record["central_s"] > 0 and record["sites_s"] > 0
    assert record["ratio"] == pytest.approx(record["sites_s"] / record["central_s"], rel=0.25)  # of unrounded
