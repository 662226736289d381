"""The fit-overhead benchmark: its timer, and a tiny run on real images so it cannot rot."""

from __future__ import annotations

import json
import time

import pytest

from conftest import run_benchmark
from fit_overhead import timed
from subset import make_subset


def test_timed_counts_wall_time_and_the_cpu_time_behind_the_cores():
    wall, cores = timed(lambda: time.sleep(0.2))
    assert wall >= 0.2 and wall * cores < 0.05  # sleeping costs no CPU time
    wall, cores = timed(lambda: sum(range(5_000_000)))
    assert wall > 0 and wall * cores > 0.02  # counting does


@pytest.mark.realdata
def test_tiny_run_times_a_pooled_and_a_federated_round_and_records_the_ratio(tmp_path, real_data):
    data = make_subset(real_data, tmp_path / "data", per_class=8)
    out = tmp_path / "overhead.jsonl"
    config = "image-size=32 batch-size=8 local-epochs=1 num-partitions=2"
    run_benchmark("fit_overhead.py", "--data-dir", str(data), "--run-config", config, "--out", str(out))
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["where"] == "process" and (record["sites"], record["epochs"]) == (2, 1)
    assert record["central_s"] > 0 and record["sites_s"] > 0
    assert record["ratio"] == pytest.approx(record["sites_s"] / record["central_s"], rel=0.25)  # of unrounded
