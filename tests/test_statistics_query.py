"""The global model's BatchNorm statistics pooled from the sites: the answers, the pooling, the ServerApp."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest
from flwr.app import MessageType

import brainfl.model.architectures  # noqa: F401 - registers the custom layers for loading
from brainfl.data.sites import site_data
from brainfl.federation.statistics_query import STATISTICS_ARRAYS, pool_answers, site_statistics
from brainfl.model.batch_norm import batch_statistics, batchnorm_layers
from brainfl.model.files import FINAL_MODEL
from brainfl.model.process_cache import model_for, model_inputs
from brainfl.report.audit import read_audit
from brainfl.report.results import AUDIT_JSONL
from brainfl.settings.run_settings import settings_from_config
from conftest import CLASSES, cache_at
from emulator import site_message
from inprocess import run_in_process


def chain_model() -> keras.Model:
    """Two BatchNorm layers in a chain, with trained weights between them."""
    inputs = keras.Input((5,))
    x = keras.layers.BatchNormalization(name="bn1")(inputs)
    x = keras.layers.Dense(4, name="dense")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="out")(x))


def answer(model, weights, inputs, site_id: int):
    content = site_statistics(model, weights, inputs, batch_size=16, site_id=site_id)
    return site_message(site_id, "bn-statistics-1", content, MessageType.QUERY)


def test_pooled_statistics_are_the_sites_weighted_by_images_and_nothing_else_changes():
    model = chain_model()
    weights = [w.copy() for w in model.get_weights()]
    rng = np.random.default_rng(0)
    small = rng.normal(loc=-2.0, size=(32, 5)).astype("float32")  # 32 images
    large = rng.normal(loc=4.0, scale=3.0, size=(96, 5)).astype("float32")  # 96 images
    replies = [answer(model, weights, small, 0), answer(model, weights, large, 1)]

    pooled = pool_answers(model, 1, weights, replies)

    model.set_weights(weights)
    parts = [batch_statistics(model, inputs, 16) for inputs in (small, large)]
    model.set_weights(pooled)
    for index, layer in enumerate(batchnorm_layers(model)):
        mean = (32 * parts[0].means[index] + 96 * parts[1].means[index]) / 128
        variance = (32 * parts[0].variances[index] + 96 * parts[1].variances[index]) / 128
        # the same passes again: equal but for the order of multithreaded sums (means near 0)
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=1e-5, atol=1e-6)
    # The second layer's statistics follow the first's input shift (-2 and 4 pooled: mostly 4).
    assert batchnorm_layers(model)[0].moving_mean.numpy().mean() == pytest.approx(2.5, abs=0.5)
    statistics = {
        id(v) for layer in batchnorm_layers(model) for v in (layer.moving_mean, layer.moving_variance)
    }
    for variable, before, after in zip(model.weights, weights, pooled, strict=True):
        if id(variable) not in statistics:
            assert np.array_equal(before, after), variable.path  # trained weights are untouched


def test_unusable_answers_are_dropped_and_without_any_the_weights_are_kept(caplog):
    model = chain_model()
    weights = [w.copy() for w in model.get_weights()]
    inputs = np.random.default_rng(1).normal(size=(40, 5)).astype("float32")
    good = answer(model, weights, inputs, 0)

    def broken(site_id: int, change) -> object:
        reply = answer(model, weights, inputs, site_id)
        arrays = reply.content[STATISTICS_ARRAYS].to_numpy_ndarrays()
        reply.content[STATISTICS_ARRAYS] = type(reply.content[STATISTICS_ARRAYS])(change(arrays))
        return reply

    empty = answer(model, weights, inputs, 4)
    del empty.content[STATISTICS_ARRAYS]  # a site that answered something else
    bad = [
        broken(1, lambda arrays: arrays[:-1]),  # a layer short
        broken(2, lambda arrays: [np.full_like(a, np.nan) for a in arrays]),
        broken(3, lambda arrays: [*arrays[:1], -np.abs(arrays[1]) - 1, *arrays[2:]]),  # negative variance
        empty,
    ]
    with caplog.at_level(logging.WARNING):
        alone = pool_answers(model, 1, weights, [good])
        with_bad = pool_answers(model, 1, weights, [good, *bad])
    assert all(np.array_equal(a, b) for a, b in zip(alone, with_bad, strict=True))
    dropped = [r.getMessage() for r in caplog.records if "dropped site" in r.getMessage()]
    assert len(dropped) == 4 and "other shapes" in dropped[0] and "not finite" in dropped[1]
    assert "negative variance" in dropped[2] and "no statistics" in dropped[3]

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        kept = pool_answers(model, 1, weights, bad)
    assert all(np.array_equal(a, b) for a, b in zip(kept, weights, strict=True))
    assert "keeps the averaged statistics" in caplog.text


@pytest.mark.realdata
def test_the_server_puts_the_sites_pooled_statistics_of_each_aggregate_in_its_model(real_subset, tmp_path):
    config = {
        "data-dir": str(real_subset(12)),
        "image-size": 32,
        "num-partitions": 2,
        "num-server-rounds": 2,
        "local-epochs": 1,
        "strategy": "fedavgm",
        "server-learning-rate": 2.0,
        "server-momentum": 0.0,
        "bn-statistics": "pooled",
        "calibrate": False,
        "output-dir": str(tmp_path / "run"),
    }
    answers = []

    def keep_statistics_answers(reply) -> None:
        if reply.has_content() and STATISTICS_ARRAYS in reply.content.array_records:
            answers.append(reply)

    with cache_at(tmp_path / "cache"):
        run_in_process(2, config, tap=keep_statistics_answers)
        settings = settings_from_config(config)
        model = keras.models.load_model(tmp_path / "run" / FINAL_MODEL)
        bundle = model_for(settings, CLASSES)
        sites = [site_data(settings, {"partition-id": i, "num-partitions": 2}, CLASSES) for i in (0, 1)]
        measured = [batch_statistics(model, model_inputs(settings.model, bundle, s.train), 32) for s in sites]

    assert len(answers) == 4  # both sites, after each of the 2 rounds
    server_log = (tmp_path / "run" / "logs" / "server.log").read_text()
    assert server_log.count("bn-statistics: pooled from") == 2
    audit = read_audit(tmp_path / "run" / AUDIT_JSONL)
    asked = [e["round"] for e in audit if e.get("query") == "bn-statistics" and e["direction"] == "sent"]
    assert asked == [1, 1, 2, 2]  # each round's aggregate, to both sites that trained it
    # The saved model's statistics are its own, measured at the sites and pooled: not an average of the
    # sites' statistics of their own models, which FedAvgM's step at rate 2 left behind.
    images = np.array([m.images for m in measured], dtype=float)
    for index, layer in enumerate(batchnorm_layers(model)):
        mean = np.average([m.means[index] for m in measured], axis=0, weights=images)
        variance = np.average([m.variances[index] for m in measured], axis=0, weights=images)
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, atol=0.005 * np.abs(mean).max())
        np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=0.01)
