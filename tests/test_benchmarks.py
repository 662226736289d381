"""The benchmark suite: its time ratios, and its tiny mode (real engines, a few dozen images, one round)."""

from __future__ import annotations

import pytest

from conftest import run_benchmark
from suite import add_time_ratios


def test_median_epoch_ratio_ignores_a_stall_that_the_wall_ratio_counts():
    rows = [
        {"setting": "centralized", "wall_s": 40.0, "median_round_s": 5.0},  # a typical epoch: 5 s
        {"setting": "4 IID", "wall_s": 44.0, "median_round_s": 22.0},  # a typical round of 4 epochs
    ]
    add_time_ratios(rows, local_epochs=4)
    assert [row["fed/central wall"] for row in rows] == [1.0, 1.1]
    assert [row["fed/central median epoch"] for row in rows] == [1.0, 1.1]
    rows[0]["wall_s"] = 45.0  # the same centralized run with one 5 s stall
    add_time_ratios(rows, local_epochs=4)
    assert rows[1]["fed/central wall"] == 0.98
    assert rows[1]["fed/central median epoch"] == 1.1


@pytest.mark.e2e
def test_suite_tiny_mode_writes_the_table_and_the_plot(tmp_path, real_data):
    out = tmp_path / "suite"
    run_benchmark("suite.py", "--tiny", "--data-dir", str(real_data), "--out", str(out))
    table = (out / "suite.md").read_text()
    for setting in ("| centralized |", "| 4 IID |", "| 10 Dir 0.3 |"):
        assert setting in table
    central_row = next(line for line in table.splitlines() if line.startswith("| centralized |"))
    assert central_row.rstrip(" |").endswith("1.0 | 1.0"), central_row  # its own time ratios
    assert (out / "suite_accuracy.png").stat().st_size > 10_000
