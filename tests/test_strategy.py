"""Tests of the strategies: the custom FedAvg's averaging and bookkeeping, Flower's others by name."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord

from brainfl.config import settings_from_config
from brainfl.strategy import BrainFedAvg, SiteBookkeeping, build_strategy, weighted_average
from inprocess import InProcessGrid, make_reply


def test_weighted_average_matches_hand_computed_arrays():
    site_a = [np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32), np.array([10.0], dtype=np.float32)]
    site_b = [np.array([[5.0, 6.0], [7.0, 8.0]], dtype=np.float32), np.array([-2.0], dtype=np.float32)]
    averaged = weighted_average([site_a, site_b], [30, 10])
    # (30 * a + 10 * b) / 40 = 0.75 a + 0.25 b
    np.testing.assert_allclose(averaged[0], [[2.0, 3.0], [4.0, 5.0]])
    np.testing.assert_allclose(averaged[1], [7.0])
    assert averaged[0].dtype == np.float32


def test_weighted_average_rejects_zero_total_weight():
    with pytest.raises(ValueError, match="positive"):
        weighted_average([[np.ones(2)]], [0])


def test_aggregate_train_weights_by_example_count_and_records_each_site():
    strategy = BrainFedAvg(learning_rate_for_round=lambda r: 0.1, class_names=["a", "b"])
    replies = [
        make_reply(0, [np.full((2,), 1.0, np.float32)], examples=100, loss=1.0),
        make_reply(1, [np.full((2,), 4.0, np.float32)], examples=200, loss=4.0),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], [3.0, 3.0])
    assert metrics["train_loss"] == pytest.approx(3.0)
    assert "site-id" not in metrics
    record = strategy.record(1)
    assert record.sites_trained == 2 and record.sites_failed == 0
    assert record.sites[0]["train_loss"] == 1.0 and record.sites[1]["num_train"] == 200


def _strategy_after_configure(global_weights: list[np.ndarray]) -> BrainFedAvg:
    strategy = BrainFedAvg(learning_rate_for_round=lambda r: 0.1, class_names=["a", "b"])
    strategy.global_arrays = global_weights
    return strategy


@pytest.mark.parametrize(
    ("bad_weights", "reason"),
    [
        ([np.array([np.nan, 1.0], np.float32)], "NaN or infinite"),
        ([np.array([np.inf, 1.0], np.float32)], "NaN or infinite"),
        ([np.ones(3, np.float32)], "shape (3,), expected (2,)"),
        ([np.ones(2, np.float64)], "dtype float64, expected float32"),
        ([np.ones(2, np.float32), np.ones(1, np.float32)], "2 arrays, expected 1"),
    ],
)
def test_broken_replies_are_dropped_with_a_logged_reason(bad_weights, reason, caplog):
    strategy = _strategy_after_configure([np.zeros(2, np.float32)])
    replies = [
        make_reply(0, [np.full((2,), 2.0, np.float32)], examples=10, loss=1.0),
        make_reply(1, bad_weights, examples=1000, loss=9.0),
    ]
    with caplog.at_level("WARNING", logger="flwr"):
        arrays, _ = strategy.aggregate_train(3, replies)
    averaged = arrays.to_numpy_ndarrays()[0]
    np.testing.assert_array_equal(averaged, [2.0, 2.0])
    assert np.all(np.isfinite(averaged))
    assert strategy.record(3).sites_trained == 1 and strategy.record(3).sites_failed == 1
    assert "dropped the reply of site 1: " in caplog.text and reason in caplog.text


@pytest.mark.parametrize(
    ("name", "flower_class"),
    [
        ("fedavg", "FedAvg"),
        ("fedprox", "FedProx"),
        ("fedadam", "FedAdam"),
        ("fedyogi", "FedYogi"),
        ("fedavgm", "FedAvgM"),
        ("krum", "Krum"),
        ("multikrum", "MultiKrum"),
        ("trimmed-mean", "FedTrimmedAvg"),
        ("median", "FedMedian"),
    ],
)
def test_strategy_setting_builds_flowers_implementation_with_site_bookkeeping(name, flower_class):
    import flwr.serverapp.strategy as flower

    settings = settings_from_config({"strategy": name, "num-partitions": 5})
    strategy = build_strategy(settings, ["a", "b"], lambda r: 0.1)
    assert isinstance(strategy, getattr(flower, flower_class))
    assert isinstance(strategy, SiteBookkeeping)


def test_fedprox_sends_proximal_mu_and_the_round_settings():

    settings = settings_from_config({"strategy": "fedprox", "proximal-mu": 0.3})
    strategy = build_strategy(settings, ["a", "b"], lambda r: 0.05 * r)
    grid = InProcessGrid(2, {})
    messages = list(strategy.configure_train(2, ArrayRecord([np.ones(2, np.float32)]), ConfigRecord(), grid))
    config = messages[0].content["config"]
    assert config["proximal-mu"] == pytest.approx(0.3)
    assert config["learning-rate"] == pytest.approx(0.1) and config["class-names"] == "a,b"


def test_robust_strategy_ignores_an_outlier_that_fedavg_follows():
    results = {}
    for name in ("fedavg", "median", "trimmed-mean", "krum", "multikrum"):
        # Fresh replies each time: Flower's aggregators release the replies' arrays as they go.
        honest = [make_reply(site, [np.full(3, 1.0 + 0.01 * site, np.float32)], 10) for site in range(4)]
        outlier = make_reply(4, [np.full(3, -100.0, np.float32)], 10)
        strategy = build_strategy(settings_from_config({"strategy": name, "num-partitions": 5}), ["a"], float)
        arrays, _ = strategy.aggregate_train(1, [*honest, outlier])
        results[name] = float(arrays.to_numpy_ndarrays()[0][0])
    assert results["fedavg"] < -15
    for name in ("median", "trimmed-mean", "krum", "multikrum"):
        assert 1.0 <= results[name] <= 1.04, results
