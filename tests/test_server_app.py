"""The ServerApp end to end in one process: strategies with a server step train on real scans."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from brainfl.model.files import FINAL_MODEL
from brainfl.report.results import read_rows
from conftest import cache_at
from inprocess import run_in_process


@pytest.mark.realdata
def test_fedavgm_with_momentum_trains_on_four_iid_sites(real_subset, tmp_path):
    """FedAvgM (momentum 0.9) steps the weights only; BatchNorm statistics stay plain averages."""
    config = {
        "data-dir": str(real_subset(40)),
        "image-size": 32,
        "num-partitions": 4,
        "num-server-rounds": 4,
        "local-epochs": 1,
        "strategy": "fedavgm",
        "server-momentum": 0.9,
        "fraction-evaluate": 0.0,
        "output-dir": str(tmp_path / "run"),
    }
    with cache_at(tmp_path / "cache"):
        run_in_process(4, config)
    rows = read_rows(tmp_path / "run" / "federated_learning_results.csv")
    accuracies = [float(row["accuracy"]) for row in rows]
    assert len(rows) == 5 and all(np.isfinite(float(row["loss"])) for row in rows)
    assert max(accuracies[1:]) >= accuracies[0] + 0.15, accuracies  # learns: 4 classes start near 0.25
    model = keras.models.load_model(tmp_path / "run" / FINAL_MODEL)
    variances = [v.numpy() for v in model.weights if v.path.endswith("moving_variance")]
    assert variances and all(np.all(v > 0) for v in variances)
