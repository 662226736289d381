"""Differential privacy: clipping bound on real replies, seeded noise, and the epsilon reported."""

from __future__ import annotations

import numpy as np
import pytest
from dp_accounting import dp_event, rdp
from flwr.app import ArrayRecord

from brainfl.core.errors import BrainFLError
from brainfl.federation.privacy import PrivacyLedger, accounting_problem, with_privacy
from brainfl.federation.strategy import build_strategy
from brainfl.report.results import read_rows
from brainfl.settings.run_settings import RunSettings, settings_from_config
from conftest import REPO_ROOT, cache_at
from inprocess import keep_train_replies, make_reply, run_in_process, train_messages

SAMPLE = str(REPO_ROOT / "sample_data")
DP_RUN = {
    "data-dir": SAMPLE,
    "image-size": 32,
    "num-partitions": 3,
    "num-server-rounds": 1,
    "fraction-evaluate": 0.0,
    "norm": "group",
    "learning-rate": 0.01,
}


def update_norm(reply_arrays: list[np.ndarray], global_arrays: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((r - g) ** 2) for r, g in zip(reply_arrays, global_arrays, strict=True))))


def test_client_side_clipping_bounds_every_update_that_reaches_aggregation(tmp_path):
    clipping_norm = 0.5
    replies = []
    config = {**DP_RUN, "output-dir": str(tmp_path), "dp": "client-fixed", "dp-clipping-norm": clipping_norm}
    grid = run_in_process(3, config, tap=keep_train_replies(replies))
    global_arrays = train_messages(grid)[0].content["arrays"].to_numpy_ndarrays()
    norms = [update_norm(r.content["arrays"].to_numpy_ndarrays(), global_arrays) for r in replies]
    assert len(norms) == 3
    assert max(norms) <= clipping_norm * (1 + 1e-5), norms
    assert min(norms) > 0.99 * clipping_norm, f"no update was large enough to be clipped: {norms}"
    rows = read_rows(tmp_path / "federated_learning_results.csv")
    assert rows[0]["epsilon"] == "" or float(rows[0]["epsilon"]) == 0.0
    assert float(rows[1]["epsilon"]) > 0
    assert "privacy: epsilon" in (tmp_path / "logs" / "server.log").read_text()


@pytest.fixture(scope="module")
def real_round(tmp_path_factory):
    """The global model and the three sites' replies of one plain round of the real app."""
    replies = []
    out = tmp_path_factory.mktemp("plain")
    with cache_at(tmp_path_factory.mktemp("cache")):
        grid = run_in_process(3, {**DP_RUN, "output-dir": str(out)}, tap=keep_train_replies(replies))
    global_arrays = train_messages(grid)[0].content["arrays"].to_numpy_ndarrays()
    return global_arrays, [r.content["arrays"].to_numpy_ndarrays() for r in replies]


def noised_aggregate(settings: RunSettings, global_arrays, site_arrays) -> list[np.ndarray]:
    strategy = build_strategy(settings, ["a", "b", "c", "d"], lambda r: 0.01, num_sites=4)
    private = with_privacy(strategy, settings, 4)
    private.current_arrays = ArrayRecord(global_arrays)
    replies = [make_reply(site, [a.copy() for a in arrays], 10) for site, arrays in enumerate(site_arrays)]
    arrays, _ = private.aggregate_train(1, replies)
    return arrays.to_numpy_ndarrays()


def test_dp_noise_differs_between_seeds_and_repeats_for_a_seed(real_round):
    global_arrays, site_arrays = real_round
    base = settings_from_config({**DP_RUN, "dp": "server-fixed", "dp-noise-multiplier": 0.5})
    first = noised_aggregate(base, global_arrays, site_arrays)
    again = noised_aggregate(base, global_arrays, site_arrays)
    other = noised_aggregate(base.replace(seed=7), global_arrays, site_arrays)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.allclose(a, b) for a, b in zip(first, other, strict=True))
    assert all(np.all(np.isfinite(a)) for a in first)


def test_epsilon_is_the_rdp_accountants_for_the_gaussian_mechanism():
    settings = settings_from_config({**DP_RUN, "dp": "server-fixed", "dp-noise-multiplier": 1.1})
    ledger = PrivacyLedger(settings, settings.data.num_partitions)
    assert ledger.epsilon == 0.0
    for _ in range(5):
        ledger.release(sites_aggregated=3)
    reference = rdp.RdpAccountant()
    reference.compose(dp_event.GaussianDpEvent(1.1), 5)
    assert ledger.epsilon == pytest.approx(reference.get_epsilon(settings.privacy.dp_delta), rel=1e-6)
    fewer = PrivacyLedger(settings, settings.data.num_partitions)
    for _ in range(5):
        fewer.release(sites_aggregated=2)  # noise calibrated for 3: less noise per site
    assert fewer.epsilon > ledger.epsilon
    assert "epsilon" in ledger.summary() and "delta 1e-05" in ledger.summary()


def test_robust_strategies_get_no_epsilon_and_say_why():
    settings = settings_from_config({**DP_RUN, "dp": "server-fixed", "strategy": "median"})
    assert "uniform mean" in accounting_problem(settings)
    ledger = PrivacyLedger(settings, settings.data.num_partitions)
    ledger.release(3)
    assert ledger.epsilon is None
    assert ledger.summary().startswith("privacy: epsilon not reported: strategy 'median'")


def test_dp_with_batchnorm_is_refused_with_one_line():
    with pytest.raises(BrainFLError, match="norm=group"):
        settings_from_config({"dp": "server-fixed"})


@pytest.mark.parametrize("mode", ["server-adaptive", "client-adaptive", "server-fixed"])
def test_every_dp_mode_completes_a_round_and_reports_epsilon(tmp_path, mode):
    run_in_process(3, {**DP_RUN, "output-dir": str(tmp_path), "dp": mode, "dp-noise-multiplier": 0.8})
    rows = read_rows(tmp_path / "federated_learning_results.csv")
    assert rows[1]["sites_trained"] == "3"
    assert np.isfinite(float(rows[1]["loss"])) and float(rows[1]["epsilon"]) > 0
