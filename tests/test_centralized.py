"""Centralized baseline: same recipe on pooled data, the federated run's output format."""

from __future__ import annotations

import pytest

from brainfl.baselines.centralized import run_centralized
from brainfl.model.files import FINAL_MODEL
from brainfl.report.results import RESULTS_CSV, read_rows
from brainfl.settings.run_settings import settings_from_config


@pytest.mark.realdata
def test_centralized_run_writes_one_evaluated_row_per_epoch(tmp_path, real_subset):
    settings = settings_from_config(
        {
            "data-dir": str(real_subset(60)),
            "image-size": 32,
            "num-server-rounds": 3,
            "learning-rate": 0.003,
            "output-dir": str(tmp_path),
        }
    )
    (tmp_path / "logs").mkdir()
    run_centralized(settings, tmp_path)
    rows = read_rows(tmp_path / RESULTS_CSV)
    assert [r["round"] for r in rows] == ["0", "1", "2", "3"]
    assert float(rows[-1]["accuracy"]) > float(rows[0]["accuracy"]) + 0.1, rows
    assert rows[-1]["leak_free_accuracy"] != ""
    assert (tmp_path / FINAL_MODEL).exists() and (tmp_path / "report.html").exists()
