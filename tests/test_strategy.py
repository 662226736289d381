"""Tests of the strategies: the custom FedAvg's averaging and bookkeeping, Flower's others by name."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error
from flwr.app.message import make_message

from brainfl.core.errors import BrainFLError
from brainfl.federation.bookkeeping import Participant, SiteBookkeeping, SiteReport
from brainfl.federation.strategy import (
    STRATEGIES,
    BrainFedAvg,
    build_strategy,
    check_strategy,
    weighted_average,
)
from brainfl.settings.run_settings import default_run_config, settings_from_config
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


def test_aggregate_train_weights_by_example_count_and_reports_each_site():
    reports: list[tuple[int, SiteReport]] = []
    strategy = BrainFedAvg(
        learning_rate_for_round=lambda r: 0.1,
        class_names=["a", "b"],
        report=lambda r, report: reports.append((r, report)),
        round_offset=5,
    )
    replies = [
        make_reply(0, [np.full((2,), 1.0, np.float32)], examples=100, loss=1.0),
        make_reply(1, [np.full((2,), 4.0, np.float32)], examples=200, loss=4.0),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], [3.0, 3.0])
    assert metrics["train_loss"] == pytest.approx(3.0)
    assert "site-id" not in metrics
    [(server_round, report)] = reports
    assert server_round == 6  # the strategy's round 1 after 5 rounds done before a resume
    assert report.stage == "train" and report.sites_replied == 2 and report.sites_failed == 0
    assert report.sites[0]["train_loss"] == 1.0 and report.sites[1]["num_train"] == 200
    assert report.aggregate["train_loss"] == pytest.approx(3.0)


def _strategy_after_configure(global_weights: list[np.ndarray], reports: list) -> BrainFedAvg:
    strategy = BrainFedAvg(
        learning_rate_for_round=lambda r: 0.1,
        class_names=["a", "b"],
        report=lambda _round, report: reports.append(report),
    )
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
    reports: list[SiteReport] = []
    strategy = _strategy_after_configure([np.zeros(2, np.float32)], reports)
    replies = [
        make_reply(0, [np.full((2,), 2.0, np.float32)], examples=10, loss=1.0),
        make_reply(1, bad_weights, examples=1000, loss=9.0),
    ]
    with caplog.at_level("WARNING", logger="flwr"):
        arrays, _ = strategy.aggregate_train(3, replies)
    averaged = arrays.to_numpy_ndarrays()[0]
    np.testing.assert_array_equal(averaged, [2.0, 2.0])
    assert np.all(np.isfinite(averaged))
    assert reports[0].sites_replied == 1 and reports[0].sites_failed == 1
    assert "dropped the reply of site 1: " in caplog.text and reason in caplog.text


def _timed_reply(site: int, weights: list[np.ndarray], total_s: float):
    reply = make_reply(site, weights, examples=10)
    reply.content["metrics"]["total_s"] = total_s
    return reply


def test_the_rounds_critical_path_is_the_slowest_site_not_the_sum_and_drops_are_named():
    """Sites train in parallel in a deployment: the round waits for the slowest reply, even a dropped one."""
    reports: list[SiteReport] = []
    strategy = _strategy_after_configure([np.zeros(2, np.float32)], reports)
    strategy.asked = [1000, 1001, 1002, 1003, 1004]  # the nodes configure_train sent the round's message
    good = [np.ones(2, np.float32)]
    failed = Error(code=2, reason="<class 'ValueError'>:<'bad scan /data/site4/x.jpg'>")
    replies = [
        _timed_reply(0, good, 3.0),
        _timed_reply(1, good, 7.5),
        _timed_reply(2, [np.array([np.nan, 1.0], np.float32)], 9.0),  # dropped, but the server waited for it
        make_message(metadata=make_reply(4, [], 1).metadata, error=failed),
    ]  # node 1003 never replied
    strategy.aggregate_train(1, replies)
    [report] = reports
    assert report.slowest_site_s == 9.0  # not 19.5, the sum a one-machine simulation spends
    assert 0 <= report.aggregation_s < 5
    assert report.participants == (
        Participant(1000, 0),
        Participant(1001, 1),
        Participant(1002, 2, "unusable update: array 0 contains NaN or infinite values"),
        Participant(1003, None, "missing reply"),
        Participant(1004, None, "error: client app raised exception (ValueError)"),
    )


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
    strategy = build_strategy(settings, ["a", "b"], lambda r: 0.1, num_sites=2)
    assert isinstance(strategy, getattr(flower, flower_class))
    assert isinstance(strategy, SiteBookkeeping)


def test_fedprox_sends_proximal_mu_and_the_round_settings():

    settings = settings_from_config({"strategy": "fedprox", "proximal-mu": 0.3})
    strategy = build_strategy(settings, ["a", "b"], lambda r: 0.05 * r, num_sites=2)
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
        strategy = build_strategy(settings_from_config({"strategy": name}), ["a"], float, num_sites=5)
        arrays, _ = strategy.aggregate_train(1, [*honest, outlier])
        results[name] = float(arrays.to_numpy_ndarrays()[0][0])
    assert results["fedavg"] < -15
    for name in ("median", "trimmed-mean", "krum", "multikrum"):
        assert 1.0 <= results[name] <= 1.04, results


def _fedavgm_round(strategy, server_round: int, global_arrays, site_arrays) -> list[np.ndarray]:
    strategy.configure_train(server_round, ArrayRecord(global_arrays), ConfigRecord(), InProcessGrid(2, {}))
    replies = [make_reply(site, arrays, 10) for site, arrays in enumerate(site_arrays)]
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return arrays.to_numpy_ndarrays()


def test_server_momentum_steps_weights_but_averages_batchnorm_statistics_plainly():
    """FedAvgM (momentum 0.9): statistics stay the sites' average instead of overshooting."""
    settings = settings_from_config({"strategy": "fedavgm", "server-momentum": 0.9})
    with_mask = build_strategy(settings, ["a"], float, num_sites=2, statistics_mask=[False, True])
    without_mask = build_strategy(settings, ["a"], float, num_sites=2)
    start = [np.zeros(2, np.float32), np.ones(2, np.float32)]  # a weight, a moving variance
    sites = [[np.full(2, 1.0, np.float32), np.full(2, 2.0, np.float32)]] * 2
    masked, plain_flower = list(start), list(start)
    for server_round in range(1, 4):
        masked = _fedavgm_round(with_mask, server_round, masked, sites)
        plain_flower = _fedavgm_round(without_mask, server_round, plain_flower, sites)
    np.testing.assert_allclose(masked[1], [2.0, 2.0])  # the sites' variance, every round
    np.testing.assert_allclose(masked[0], plain_flower[0])  # the weight takes the momentum step
    assert plain_flower[1][0] > 2.5  # momentum pushes the statistic past what any site reported


def test_statistics_mask_marks_the_batchnorm_moving_statistics():
    from brainfl.federation.server_app import statistics_mask
    from brainfl.model.architectures import build_model

    model = build_model("cnn", 32, 4).trainable
    mask = statistics_mask(model)
    names = [v.path for v, is_statistic in zip(model.weights, mask, strict=True) if is_statistic]
    assert names and all("moving_mean" in n or "moving_variance" in n for n in names)
    assert len(mask) == len(model.get_weights())


def test_class_counts_reach_the_report_but_are_never_averaged():
    reports: list[SiteReport] = []
    strategy = BrainFedAvg(
        learning_rate_for_round=float,
        class_names=["a", "b"],
        report=lambda _r, report: reports.append(report),
    )
    replies = []
    for site, counts in enumerate(((3, 1), (0, 4))):
        reply = make_reply(site, [np.ones(2, np.float32)], examples=4)
        reply.content["metrics"]["class-count-0"], reply.content["metrics"]["class-count-1"] = counts
        replies.append(reply)
    _, metrics = strategy.aggregate_train(1, replies)
    assert not any(key.startswith("class-count-") for key in metrics)
    assert reports[0].sites[1]["class-count-1"] == 4


def test_held_out_sensitivities_reach_the_report_but_are_never_averaged():
    reports: list[SiteReport] = []
    strategy = BrainFedAvg(
        learning_rate_for_round=float, class_names=["a", "b"], report=lambda _r, r: reports.append(r)
    )
    replies = []
    for site, (examples, balanced, sensitivity_b) in enumerate(((1, 0.5, 0.0), (3, 0.9, float("nan")))):
        reply = make_reply(site, [np.ones(2, np.float32)], examples=examples)
        metrics = reply.content["metrics"]
        metrics["val_balanced_accuracy"], metrics["val_sensitivity_a"] = balanced, 1.0
        metrics["val_sensitivity_b"] = sensitivity_b  # site 1's split has no b: NaN, same keys
        replies.append(reply)
    _, metrics = strategy.aggregate_train(1, replies)
    assert not any(key.startswith("val_sensitivity_") for key in metrics)
    assert metrics["val_balanced_accuracy"] == pytest.approx((0.5 * 1 + 0.9 * 3) / 4)
    assert reports[0].sites[0]["val_sensitivity_b"] == 0.0 and np.isnan(
        reports[0].sites[1]["val_sensitivity_b"]
    )


def test_multikrum_keeps_all_but_the_byzantine_sites_of_those_that_joined():
    settings = settings_from_config({"strategy": "multikrum", "byzantine-sites": 1, "num-partitions": 2})
    assert build_strategy(settings, ["a"], float, num_sites=7).num_nodes_to_select == 6


def test_strategies_are_named_in_one_registry_and_checked_against_it():
    defaults = default_run_config()
    with pytest.raises(BrainFLError, match=r"unknown 'fedsgd' \(choose one of: fedavg, fedprox, fedadam"):
        check_strategy(settings_from_config({"strategy": "fedsgd"}), defaults)
    ignored = settings_from_config({"proximal-mu": 0.1})
    with pytest.raises(BrainFLError, match=r"'proximal-mu'=0\.1 has no effect unless strategy=fedprox"):
        check_strategy(ignored, defaults)
    check_strategy(settings_from_config({"proximal-mu": 0.1, "strategy": "fedprox"}), defaults)
    shared = settings_from_config({"server-learning-rate": 0.5})
    with pytest.raises(BrainFLError, match="unless strategy is fedadam/fedyogi/fedavgm"):
        check_strategy(shared, defaults)
    check_strategy(settings_from_config(defaults), defaults)  # a full config restating the defaults
    for name, entry in STRATEGIES.items():  # every entry builds its class from the settings
        config = {"strategy": name, "optimizer": "sgd" if name == "scaffold" else "adamw"}
        built = build_strategy(settings_from_config(config), ["a", "b"], lambda r: 0.1, num_sites=3)
        assert type(built) is entry.strategy_class
