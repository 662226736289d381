"""SecAgg+ (legacy workflow path): the run completes, the aggregate is FedAvg's, no update is seen alone.

How the test shows that the server never holds a site's unmasked update:
every reply the server receives passes through the grid's tap, and none of
them carries an array equal (or close) to any site's trained weights, which
the test records inside the sites; and the strategy logs that all it got
was the unmasked sum (identical arrays in every result).
"""

from __future__ import annotations

import keras
import numpy as np

import brainfl.federation.client_app as client_app
from brainfl.federation.secure_aggregation import QUANTIZATION_RANGE
from brainfl.model.files import FINAL_MODEL
from brainfl.report.results import read_rows
from conftest import REPO_ROOT
from inprocess import run_in_process

SECAGG_RUN = {
    "data-dir": str(REPO_ROOT / "sample_data"),
    "image-size": 32,
    "num-partitions": 3,
    "num-server-rounds": 1,
    "wait-for-sites": 3,
    "secagg": True,
}


def test_secagg_run_matches_fedavg_of_the_same_updates_and_never_exposes_one(tmp_path, monkeypatch):
    trained: dict[int, tuple[list[np.ndarray], int]] = {}
    original = client_app.train_site

    def recording_train_site(weights, config, context, control=None):
        new_weights, metrics, update = original(weights, config, context, control)
        trained[int(metrics["site-id"])] = ([w.copy() for w in new_weights], int(metrics["num-examples"]))
        return new_weights, metrics, update

    monkeypatch.setattr(client_app, "train_site", recording_train_site)
    seen_by_server = []
    run_in_process(3, {**SECAGG_RUN, "output-dir": str(tmp_path)}, tap=seen_by_server.append)

    rows = read_rows(tmp_path / "federated_learning_results.csv")
    assert [r["round"] for r in rows] == ["0", "1"]
    assert rows[1]["sites_trained"] == "3"
    assert sorted(trained) == [0, 1, 2]

    aggregate = keras.models.load_model(tmp_path / FINAL_MODEL).get_weights()
    total = sum(examples for _, examples in trained.values())
    expected = [
        sum(weights[i].astype(np.float64) * examples / total for weights, examples in trained.values())
        for i in range(len(aggregate))
    ]
    # Each site sends round(w * n / max_weight) in steps of 2 * 32 / 2**22 (max_weight = the largest
    # site's count, as the sites reported it); dividing the sum by the summed ratios scales that error up.
    step = 2 * 32.0 / QUANTIZATION_RANGE
    largest = max(examples for _, examples in trained.values())
    tolerance = len(trained) * step / (total / largest)
    for got, want in zip(aggregate, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=tolerance, rtol=0)

    site_arrays = [w for weights, _ in trained.values() for w in weights if w.size > 8]
    for reply in seen_by_server:
        for record in reply.content.array_records.values():
            for array in record.to_numpy_ndarrays():
                for site_array in site_arrays:
                    if array.shape == site_array.shape:
                        assert not np.allclose(array.astype(np.float64), site_array, atol=1e-3)
    server_log = (tmp_path / "logs" / "server.log").read_text()
    assert "secagg round 1: the strategy received only the unmasked aggregate" in server_log
