"""The benchmark suite's tiny mode (real engines, a few dozen images, one round) so it cannot rot."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.e2e


def test_suite_tiny_mode_writes_the_table_and_the_plot(tmp_path, real_data):
    out = tmp_path / "suite"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "suite.py"), "--tiny"]
    result = subprocess.run(
        [*command, "--data-dir", str(real_data), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (out / "suite.md").read_text()
    for setting in ("| centralized |", "| 4 IID |", "| 10 Dir 0.3 |"):
        assert setting in table
    central_row = next(line for line in table.splitlines() if line.startswith("| centralized |"))
    assert central_row.rstrip(" |").endswith("1.0"), central_row  # its own wall-time ratio
    assert (out / "suite_accuracy.png").stat().st_size > 10_000
