"""Poisoned sites: FedAvg collapses, Krum / trimmed mean / median hold; NaN replies are dropped.

The robustness test trains five real sites (the ClientApp's own training
function, real images) from a global model that already classifies above
chance, poisons site 0 with the ``attack`` setting's sign-flip (update
scaled by -10), and aggregates the same five replies with each strategy, so
the only difference between the outcomes is the aggregation rule.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from brainfl.client_app import attacked, train_site
from brainfl.config import settings_from_config
from brainfl.pipeline import SiteData, initial_weights, load_run_dataset, model_for
from brainfl.results import read_rows
from brainfl.strategy import build_strategy, round_settings
from brainfl.training import predict_proba, train
from conftest import REPO_ROOT
from inprocess import make_reply, run_in_process

SITES = 5
POISON_RUN = {
    "image-size": 32,
    "max-images-per-class": 250,
    "num-partitions": SITES,
    "learning-rate": 0.003,
    "local-epochs": 1,
}


@pytest.fixture(scope="module")
def five_site_round(real_data, tmp_path_factory):
    """(settings, test set, starting global model, the five sites' honest trained weights)."""
    run_config = {
        **POISON_RUN,
        "data-dir": str(real_data),
        "output-dir": str(tmp_path_factory.mktemp("out")),
        "cache-dir": str(tmp_path_factory.mktemp("cache")),  # module scope: before the per-test cache
    }
    settings = settings_from_config(run_config)
    dataset = load_run_dataset(settings)
    class_names = dataset.train.class_names
    model = model_for(settings, class_names).trainable
    model.set_weights(initial_weights(settings, class_names))
    train(model, dataset.train.images, dataset.train.labels, epochs=2, batch_size=32, learning_rate=0.003)
    start = model.get_weights()
    config = round_settings(1, lambda r: 0.003, class_names)
    honest = []
    for site in range(SITES):
        context = Context(
            run_id=1,
            node_id=site,
            node_config={"partition-id": site, "num-partitions": SITES},
            state=RecordDict(),
            run_config=run_config,
        )
        weights, metrics = train_site([w.copy() for w in start], config, context)
        honest.append((weights, int(metrics["num-examples"])))
    return settings, dataset.test, start, honest


def accuracy(settings, test, weights) -> float:
    model = model_for(settings, test.class_names).trainable
    model.set_weights(weights)
    return float(np.mean(predict_proba(model, test.images).argmax(axis=1) == test.labels))


def aggregate(settings, strategy: str, start, site_weights) -> list[np.ndarray]:
    chosen = build_strategy(dataclasses.replace(settings, strategy=strategy), ["a"], lambda r: 0.003)
    chosen.global_arrays = start
    replies = [make_reply(site, weights, examples) for site, (weights, examples) in enumerate(site_weights)]
    arrays, _ = chosen.aggregate_train(1, replies)
    return arrays.to_numpy_ndarrays()


def test_sign_flipped_site_wrecks_fedavg_but_not_the_robust_strategies(five_site_round):
    settings, test, start, honest = five_site_round
    poisoner = dataclasses.replace(settings, attack="sign-flip", attack_sites=1)
    site0 = SiteData(0, test, test)  # only its id matters to the attack
    poisoned = [(attacked(poisoner, site0, start, honest[0][0]), honest[0][1]), *honest[1:]]

    clean = accuracy(settings, test, aggregate(settings, "fedavg", start, honest))
    assert clean >= 0.45, f"the clean federation should classify above chance, got {clean:.3f}"
    wrecked = accuracy(settings, test, aggregate(settings, "fedavg", start, poisoned))
    assert wrecked <= clean - 0.15, (clean, wrecked)
    # Krum keeps one site's model: under attack it must be an honest site's, never the poisoner's.
    kept = aggregate(settings, "krum", start, poisoned)
    assert any(
        all(np.allclose(a, b) for a, b in zip(kept, weights, strict=True)) for weights, _ in honest[1:]
    ), "krum did not keep an honest site's model"
    assert accuracy(settings, test, kept) >= wrecked + 0.1, "krum did no better than fedavg under attack"
    for strategy in ("trimmed-mean", "median"):
        # Robustness is the cost of the attack to the rule itself, against the same rule without attacker.
        own_clean = accuracy(settings, test, aggregate(settings, strategy, start, honest))
        held = accuracy(settings, test, aggregate(settings, strategy, start, poisoned))
        print(f"{strategy}: clean {own_clean:.3f} poisoned {held:.3f} (fedavg {clean:.3f} -> {wrecked:.3f})")
        assert held >= own_clean - 0.03, f"{strategy}: {held:.3f} poisoned vs {own_clean:.3f} clean"
        assert held >= wrecked + 0.1, f"{strategy} did no better than fedavg under attack"


def test_attack_setting_changes_only_the_first_sites_updates():
    settings = settings_from_config({"attack": "noise", "attack-sites": 1})
    start, trained = [np.zeros(4, np.float32)], [np.full(4, 0.1, np.float32)]
    rng_site = SiteData(0, None, None)
    noisy = attacked(settings, rng_site, start, trained)
    assert not np.allclose(noisy[0], trained[0]) and noisy[0].dtype == np.float32
    assert attacked(settings, SiteData(1, None, None), start, trained) is trained
    flipped = attacked(dataclasses.replace(settings, attack="sign-flip"), rng_site, start, trained)
    np.testing.assert_allclose(flipped[0], -1.0)


def test_a_site_sending_nan_is_dropped_and_the_global_model_stays_finite(tmp_path):
    config = {
        "data-dir": str(REPO_ROOT / "sample_data"),
        "image-size": 32,
        "num-partitions": 3,
        "num-server-rounds": 1,
        "fraction-evaluate": 0.0,
        "attack": "nan",
        "output-dir": str(tmp_path),
    }
    run_in_process(3, config)
    rows = read_rows(tmp_path / "federated_learning_results.csv")
    assert (rows[1]["sites_trained"], rows[1]["sites_failed"]) == ("2", "1")
    assert np.isfinite(float(rows[1]["loss"]))
    server_log = (tmp_path / "logs" / "server.log").read_text()
    assert "dropped the reply of site 0: array 0 contains NaN" in server_log
