"""Tests of SCAFFOLD: control variates kept by each site in Context.state and by the server."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from flwr.app import ArrayRecord, MessageType, RecordDict

from brainfl.core.errors import BrainFLError
from brainfl.federation.scaffold import CONTROL, CONTROL_UPDATE, SITE_CONTROL, SiteControl
from brainfl.federation.site_round import scaffold_step_scale
from brainfl.model.training import OptimizerRecipe, train
from brainfl.settings.run_settings import settings_with
from conftest import make_dataset
from inprocess import run_in_process

RUN = {
    "strategy": "scaffold",
    "optimizer": "sgd",
    "image-size": 16,
    "local-epochs": 1,
    "batch-size": 4,
    "num-server-rounds": 2,
}


def test_control_variates_survive_between_rounds_and_move_the_servers(tmp_path):
    data = make_dataset(tmp_path / "data")
    replies = []
    grid = run_in_process(
        2,
        {**RUN, "data-dir": str(data), "output-dir": str(tmp_path / "run"), "calibrate": False},
        tap=lambda reply: replies.append(reply) if reply.metadata.message_type == MessageType.TRAIN else None,
    )
    sent = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    first, second = sent[:2], sent[2:]
    assert all(
        not np.any(np.concatenate([a.ravel() for a in m.content[CONTROL].to_numpy_ndarrays()])) for m in first
    )
    updates = [r.content[CONTROL_UPDATE].to_numpy_ndarrays() for r in replies[:2]]
    expected = [(a + b) / 2 for a, b in zip(*updates, strict=True)]  # c = 0 + (1/N) * sum, N = 2
    for message in second:
        received = message.content[CONTROL].to_numpy_ndarrays()
        assert all(np.allclose(r, e) for r, e in zip(received, expected, strict=True))
        assert any(np.abs(r).max() > 0 for r in received)
    for context, first_update in zip(grid.contexts.values(), updates, strict=True):
        kept = context.state[SITE_CONTROL].to_numpy_ndarrays()  # after round 2: c_i(1) + update(2)
        assert len(kept) < len(first_update)  # trained weights only; statistics have none
        assert any(np.abs(k).max() > 0 for k in kept)


def test_the_correction_is_added_to_every_gradient():
    """One full-batch step of plain SGD from the same start: the corrected weights end exactly
    ``lr * (c - c_i)`` behind the uncorrected ones."""
    rng = np.random.default_rng(0)
    images, labels = rng.normal(size=(16, 8)).astype("float32"), rng.integers(0, 4, 16)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="softmax")])
    start = model.get_weights()
    correction = [np.full(w.shape, 0.25, np.float32) for w in start]

    def trained_from_start(correction=None) -> list[np.ndarray]:
        model.set_weights(start)
        train(model, images, labels, epochs=1, batch_size=16, learning_rate=0.1, label_smoothing=0.0,
              optimizer=OptimizerRecipe("sgd", 0.0, 0.0), correction=correction)  # fmt: skip
        return model.get_weights()

    plain, corrected = trained_from_start(), trained_from_start(correction)
    for p, c in zip(plain, corrected, strict=True):
        np.testing.assert_allclose(p - c, 0.1 * 0.25, rtol=1e-4)


def test_a_sites_control_is_its_mean_corrected_step_and_survives_in_its_state():
    """Option II: ``c_i+ = c_i - c + (x - y_i) / (K * lr / (1 - m))``, over trained weights only."""
    state = RecordDict()
    weights = [np.ones(3, np.float32), np.ones(2, np.float32)]  # a trained weight, then a statistic
    control = SiteControl(state, [True, False], weights)
    server = [np.full(3, 2.0, np.float32), np.zeros(2, np.float32)]
    assert [c.tolist() for c in control.correction(server)] == [[2.0, 2.0, 2.0]]
    trained = [np.full(3, 0.5, np.float32), np.full(2, 7.0, np.float32)]  # moved by 0.5 in 4 steps of 0.25
    update = control.renew(weights, trained, server, step_scale=4 * 0.25)
    assert [u.tolist() for u in update] == [[-1.5, -1.5, -1.5], [0.0, 0.0]]  # 0.5 / 1 - 2
    again = SiteControl(state, [True, False], weights)
    assert isinstance(state[SITE_CONTROL], ArrayRecord) and again.current[0].tolist() == [-1.5, -1.5, -1.5]


def test_the_step_scale_counts_the_rounds_sgd_steps_and_momentum():
    settings = settings_with(
        strategy="scaffold", optimizer="sgd", sgd_momentum=0.5, batch_size=4, local_epochs=2
    )
    assert scaffold_step_scale(settings, 10, 0.1, None) == pytest.approx(2 * 3 * 0.1 / 0.5)
    assert scaffold_step_scale(settings, 10, 0.1, 1) == pytest.approx(3 * 0.1 / 0.5)


def test_scaffold_without_sgd_is_refused_in_one_line():
    with pytest.raises(BrainFLError, match="use optimizer='sgd' \\(got optimizer=adamw\\)") as caught:
        settings_with(strategy="scaffold")
    assert "\n" not in str(caught.value)


def test_scaffold_with_differential_privacy_is_refused_in_one_line():
    with pytest.raises(BrainFLError, match="scaffold") as caught:
        settings_with(strategy="scaffold", optimizer="sgd", dp="server-fixed", norm="group")
    assert "\n" not in str(caught.value)
