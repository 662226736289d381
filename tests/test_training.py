"""Local training: FedProx's proximal term and the learning-rate schedule over rounds."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from brainfl.training import round_learning_rate, train


def _distance_after_training(mu: float) -> float:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="softmax")])
    start = [w.copy() for w in model.get_weights()]
    rng = np.random.default_rng(0)
    inputs, labels = rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 4, 64)
    train(model, inputs, labels, epochs=3, batch_size=16, learning_rate=0.05, proximal_mu=mu)
    return float(np.sqrt(sum(np.sum((w - s) ** 2) for w, s in zip(model.get_weights(), start, strict=True))))


def test_proximal_term_keeps_local_weights_near_the_global_model():
    free, held = _distance_after_training(0.0), _distance_after_training(50.0)
    assert held < 0.5 * free, (free, held)


def test_learning_rate_decays_from_base_to_floor_over_rounds():
    assert round_learning_rate(0.01, 1, 10) == pytest.approx(0.01)
    assert round_learning_rate(0.01, 10, 10) == pytest.approx(0.0002)
    assert round_learning_rate(0.01, 5, 10) < round_learning_rate(0.01, 4, 10)
