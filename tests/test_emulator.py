"""The emulator's server step is the app's strategy: FedAvg's average, or FedAvgM's step with statistics
plainly averaged, taken by ``aggregate_train`` on the sites' replies as the ServerApp receives them; its
sites run the ClientApp's round, so a SCAFFOLD run equals the in-process app's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from flwr.app import ArrayRecord, ConfigRecord

import emulator
from brainfl.evaluation.test_set import CentralEvaluator
from brainfl.federation.bookkeeping import example_weighted_average
from brainfl.federation.ditto import DITTO_MODEL
from brainfl.federation.scaffold import CONTROL
from brainfl.federation.server_app import statistics_mask
from brainfl.federation.statistics_query import STATISTICS
from brainfl.federation.strategy import BrainFedAvgM, build_strategy
from brainfl.model.training import round_learning_rate
from brainfl.report.results import DITTO_SITE_FIELDS, PERSONALIZATION_CSV, SITE_CSV
from brainfl.settings.run_config import parse_pairs
from brainfl.settings.run_settings import settings_with
from conftest import make_dataset
from inprocess import InProcessGrid, run_in_process


def settings(**changes):
    return settings_with(**changes)


def reply(site: int, weights: list[np.ndarray], examples: int):
    return emulator.site_reply(
        site, 1, weights, {"num-examples": examples, "num_train": examples, "site-id": site}
    )


def test_fedavg_takes_the_average():
    step = emulator.ServerStep(settings(strategy="fedavg"), [False, True])
    old = [np.zeros(2), np.zeros(2)]
    replies = [reply(0, [np.zeros(2), np.ones(2)], 1), reply(1, [np.full(2, 1.5), np.full(2, 4.0)], 2)]
    averaged = step(1, old, replies)  # by example count: (1 * site 0 + 2 * site 1) / 3
    assert np.allclose(averaged[0], 1.0) and np.allclose(averaged[1], 3.0)
    assert sorted(step.last_report.sites) == [0, 1] and step.last_report.sites_replied == 2


def test_fedavgm_steps_trained_weights_and_averages_statistics():
    step = emulator.ServerStep(
        settings(strategy="fedavgm", server_learning_rate=2.0, server_momentum=0.5), [False, True]
    )
    assert isinstance(step.strategy, BrainFedAvgM)  # the app's FedAvgM
    old, averaged = [np.zeros(2), np.zeros(2)], [np.ones(2), np.full(2, 3.0)]
    first = step(1, old, [reply(0, averaged, 10)])
    assert np.allclose(first[0], 2.0)  # old - 2 * (old - average)
    assert np.allclose(first[1], 3.0)  # a statistic: the plain average
    second = step(2, first, [reply(0, [np.full(2, 3.0), np.full(2, 4.0)], 10)])
    # pseudo-gradient -1, velocity 0.5 * -1 - 1
    assert np.allclose(second[0], 2.0 + 2.0 * 1.5)
    assert np.allclose(second[1], 4.0)


def test_no_usable_reply_keeps_the_global_weights():
    step = emulator.ServerStep(settings(strategy="fedavgm", server_momentum=0.9), [False])
    old = [np.zeros(2, np.float32)]
    broken = [reply(0, [np.array([np.nan, 1.0], np.float32)], 10), reply(1, [np.ones(3, np.float32)], 10)]
    np.testing.assert_array_equal(step(1, old, broken)[0], old[0])  # both dropped, as by the ServerApp
    assert step.last_report.sites_replied == 0 and step.last_report.sites_failed == 2


@pytest.mark.parametrize("strategy", ["fedadam", "fedyogi"])
def test_fedopt_steps_trained_weights_as_flowers_strategy_and_averages_statistics(strategy):
    chosen = settings(strategy=strategy, server_learning_rate=0.1)
    step = emulator.ServerStep(chosen, [False, True])
    old = [np.zeros(2, np.float32), np.zeros(2, np.float32)]
    rounds = [[np.ones(2, np.float32), np.full(2, 3.0, np.float32)], [np.full(2, 2.0, np.float32)] * 2]
    reference = build_strategy(
        chosen, (), lambda server_round: 0.01, num_sites=1, statistics_mask=[False, True]
    )
    weights, expected = old, old
    for server_round, averaged in enumerate(rounds, start=1):
        reference.configure_train(
            server_round, ArrayRecord(list(expected)), ConfigRecord(), InProcessGrid(1, {})
        )
        aggregated, _ = reference.aggregate_train(server_round, [reply(0, averaged, 10)])
        expected = aggregated.to_numpy_ndarrays()
        weights = step(server_round, weights, [reply(0, averaged, 10)])
        np.testing.assert_allclose(weights[0], expected[0], rtol=1e-6)
        np.testing.assert_allclose(weights[1], averaged[1])  # a statistic: the plain average
    assert not np.allclose(weights[0], rounds[-1][0])  # a server step, not the average


def test_other_strategies_are_refused():
    with pytest.raises(emulator.BrainFLError, match="fedavg, fedavgm, fedadam, fedyogi, scaffold only"):
        emulator.federation(settings(strategy="krum"))


def test_a_fedavgm_run_takes_the_strategys_step_on_the_sites_replies(tmp_path, monkeypatch):
    """Two rounds with momentum: every global model the run scores is what the app's BrainFedAvgM,
    configured as the ServerApp configures it, makes of the replies the emulated sites sent."""
    data = make_dataset(tmp_path / "data", train_per_class=6, test_per_class=2)
    run_settings = emulator.settings_for(
        f'data-dir="{data}"',
        "image-size=32 batch-size=8 num-partitions=2 num-server-rounds=2",
        'strategy="fedavgm" server-learning-rate=2.0 server-momentum=0.9',
    )
    fed = emulator.federation(run_settings)
    learning_rates = []

    def drift(settings, bundle, inputs, labels, *, learning_rate, server_round, site_id):
        """An update without training: each site moves every weight by its own step."""
        learning_rates.append(learning_rate)
        model = bundle.trainable
        model.set_weights([w + np.float32(0.01 * (site_id + 1) * server_round) for w in model.get_weights()])
        return {"train_loss": 1.0 + site_id, "train_accuracy": 0.5}

    calls, scored = [], []
    aggregate_train, evaluate = BrainFedAvgM.aggregate_train, CentralEvaluator.__call__

    def recorded_aggregate_train(self, server_round, replies):
        calls.append((server_round, list(replies)))
        return aggregate_train(self, server_round, calls[-1][1])

    def recorded_evaluate(self, weights):
        scored.append([np.array(w) for w in weights])
        return evaluate(self, weights)

    monkeypatch.setattr(BrainFedAvgM, "aggregate_train", recorded_aggregate_train)
    monkeypatch.setattr(CentralEvaluator, "__call__", recorded_evaluate)
    scores = emulator.run(fed, tmp_path / "run", drift)
    monkeypatch.undo()

    assert len(scores) == len(scored) == 3  # the initial model, then each round
    assert [(server_round, len(replies)) for server_round, replies in calls] == [(1, 2), (2, 2)]
    assert learning_rates == [
        round_learning_rate(run_settings.training.learning_rate, r, 2) for r in (1, 1, 2, 2)
    ]
    mask = statistics_mask(fed.evaluator.bundle.trainable)
    assert any(mask) and not all(mask)
    direct = build_strategy(run_settings, fed.class_names, float, num_sites=2, statistics_mask=mask)
    for server_round, replies in calls:  # the ServerApp's sequence: configure_train, then aggregate_train
        grid = InProcessGrid(2, {})
        direct.configure_train(server_round, ArrayRecord(scored[server_round - 1]), ConfigRecord(), grid)
        arrays, _ = direct.aggregate_train(server_round, replies)
        expected = arrays.to_numpy_ndarrays()
        for got, want in zip(scored[server_round], expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    plain = example_weighted_average(calls[-1][1], "arrays")
    for got, average, is_statistic in zip(scored[2], plain, mask, strict=True):
        if is_statistic:
            np.testing.assert_allclose(got, average, rtol=1e-6, atol=1e-7)
        else:  # the server step (learning rate 2, momentum 0.9) goes past the sites' average
            assert not np.allclose(got, average)


SCAFFOLD_RUN = (
    "image-size=16 batch-size=4 local-epochs=1 num-partitions=2 num-server-rounds=2 strategy='scaffold' "
    "optimizer='sgd' learning-rate=0.01 calibrate=false"
)


def scored_weights(monkeypatch) -> list[list[np.ndarray]]:
    """Every global model a central evaluator scores from now on (the emulator's and the ServerApp's)."""
    scored, evaluate = [], CentralEvaluator.__call__

    def recorded_evaluate(self, weights):
        scored.append([np.array(w) for w in weights])
        return evaluate(self, weights)

    monkeypatch.setattr(CentralEvaluator, "__call__", recorded_evaluate)
    return scored


def test_a_scaffold_run_equals_the_in_process_client_apps(tmp_path, monkeypatch):
    """Two SCAFFOLD rounds (round 2 uses the control variates of round 1: the server's c and each
    site's c_i kept in its Context.state) give the same global models in the emulator as in the
    ServerApp with the ClientApp on an in-process grid."""
    data = make_dataset(tmp_path / "data", train_per_class=6, test_per_class=2)
    pairs = f"data-dir='{data}' {SCAFFOLD_RUN}"
    app_scored = scored_weights(monkeypatch)
    grid = run_in_process(2, {**parse_pairs(pairs), "output-dir": str(tmp_path / "app")})
    sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert len(sent) == 4 and all(CONTROL in m.content.array_records for m in sent)
    monkeypatch.undo()

    fed = emulator.federation(emulator.settings_for(pairs))
    emulated = scored_weights(monkeypatch)
    emulator.run(fed, tmp_path / "emulated")
    monkeypatch.undo()

    assert len(app_scored) == len(emulated) == 3  # the initial model, then each round
    for server_round, (app, emulated_round) in enumerate(zip(app_scored, emulated, strict=True)):
        for got, want in zip(emulated_round, app, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"round {server_round}")
    moved = [np.abs(a - b).max() for a, b in zip(app_scored[2], app_scored[1], strict=True)]
    assert max(moved) > 1e-3  # the rounds trained


def test_a_run_with_pooled_statistics_equals_the_in_process_client_apps(tmp_path, monkeypatch):
    """bn-statistics='pooled': the emulated sites answer the statistics query as the ClientApp does, and
    the global model scored after the round is the ServerApp's, statistics included."""
    data = make_dataset(tmp_path / "data", train_per_class=6, test_per_class=2)
    pairs = (
        f"data-dir='{data}' image-size=16 batch-size=4 local-epochs=1 num-partitions=2 num-server-rounds=1 "
        "strategy='fedavgm' server-learning-rate=2.0 server-momentum=0.0 bn-statistics='pooled' "
        "calibrate=false"
    )
    app_scored = scored_weights(monkeypatch)
    grid = run_in_process(2, {**parse_pairs(pairs), "output-dir": str(tmp_path / "app")})
    queries = [m.content["config"]["query"] for m in grid.sent if m.metadata.message_type == "query"]
    monkeypatch.undo()

    fed = emulator.federation(emulator.settings_for(pairs))
    emulated = scored_weights(monkeypatch)
    emulator.run(fed, tmp_path / "emulated")
    monkeypatch.undo()

    assert queries.count(STATISTICS) == 2 and len(app_scored) == len(emulated) == 2
    mask = statistics_mask(fed.evaluator.bundle.trainable)
    for got, want, is_statistic in zip(emulated[1], app_scored[1], mask, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4, err_msg=f"statistic: {is_statistic}")


def test_a_ditto_run_scores_the_personal_models_as_the_in_process_client_apps(tmp_path):
    """With ditto-lambda the emulated sites keep and score their personal models as the ClientApp does:
    the same held-out scores each round (site_metrics.csv) and after the last (personalization.csv)."""
    data = make_dataset(tmp_path / "data", train_per_class=6, test_per_class=2)
    pairs = f"data-dir='{data}' {SCAFFOLD_RUN.replace('scaffold', 'fedavg')} ditto-lambda=0.5"
    run_in_process(2, {**parse_pairs(pairs), "output-dir": str(tmp_path / "app")})
    emulator.run(emulator.federation(emulator.settings_for(pairs)), tmp_path / "emulated")

    def table(folder, name, columns):
        frame = pd.read_csv(tmp_path / folder / name)
        return frame[columns].to_numpy(dtype=float)

    ditto_columns = ["round", "site", *DITTO_SITE_FIELDS]
    np.testing.assert_allclose(
        table("emulated", SITE_CSV, ditto_columns), table("app", SITE_CSV, ditto_columns), atol=1e-4
    )
    answers = ["site", "global_accuracy", "ditto_accuracy", "ditto_balanced_accuracy", "gain_accuracy"]
    np.testing.assert_allclose(
        table("emulated", PERSONALIZATION_CSV, answers), table("app", PERSONALIZATION_CSV, answers), atol=1e-4
    )
    assert (tmp_path / "emulated" / "sites" / "site_1" / DITTO_MODEL).is_file()
