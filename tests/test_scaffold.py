"""Tests of SCAFFOLD: control variates kept by each site in Context.state and by the server."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, MessageType, RecordDict

from brainfl.core.errors import BrainFLError
from brainfl.federation.scaffold import CONTROL, CONTROL_UPDATE, SITE_CONTROL, SiteControl
from brainfl.model.architectures import build_cnn
from brainfl.model.training import OptimizerRecipe, mean_gradient, train
from brainfl.settings.run_settings import settings_with
from conftest import make_dataset
from inprocess import run_in_process

RUN = {"strategy": "scaffold", "image-size": 16, "local-epochs": 1, "batch-size": 4, "num-server-rounds": 2}


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
    """With c - c_i equal to minus the gradient at the start, a plain SGD-like first step goes nowhere: the
    corrected model moves less than the uncorrected one from the same start."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (16, 16, 16, 1)).astype("uint8"), rng.integers(0, 4, 16)
    model = build_cnn(16, 1, 4)
    start = model.get_weights()
    gradient = mean_gradient(model, images, labels, batch_size=16, label_smoothing=0.0)
    model.set_weights(start)
    trained_masks = [v.trainable for v in model.weights]
    assert len(gradient) == sum(trained_masks)

    def trained_from_start(correction=None) -> list[np.ndarray]:
        model.set_weights(start)
        train(model, images, labels, epochs=1, batch_size=16, learning_rate=0.01, label_smoothing=0.0,
              optimizer=OptimizerRecipe("sgd", 0.0, 0.0), correction=correction)  # fmt: skip
        return [w for w, t in zip(model.get_weights(), trained_masks, strict=True) if t]

    plain, corrected = trained_from_start(), trained_from_start([-g for g in gradient])
    initial = [w for w, t in zip(start, trained_masks, strict=True) if t]
    moved = lambda weights: sum(np.abs(w - s).sum() for w, s in zip(weights, initial, strict=True))  # noqa: E731
    assert moved(corrected) < moved(plain)


def test_a_sites_control_starts_at_zero_and_keeps_its_gradient():
    state = RecordDict()
    weights = [np.ones(3, np.float32), np.ones(2, np.float32)]
    control = SiteControl(state, [True, False], weights)
    assert [c.tolist() for c in control.correction([np.full(3, 2.0), np.zeros(2)])] == [[2.0, 2.0, 2.0]]
    update = control.renew([np.full(3, 0.5, np.float32)], weights)
    assert [u.tolist() for u in update] == [[0.5, 0.5, 0.5], [0.0, 0.0]]
    again = SiteControl(state, [True, False], weights)
    assert isinstance(state[SITE_CONTROL], ArrayRecord) and again.current[0].tolist() == [0.5, 0.5, 0.5]


def test_scaffold_with_differential_privacy_is_refused_in_one_line():
    with pytest.raises(BrainFLError, match="scaffold") as caught:
        settings_with(strategy="scaffold", dp="server-fixed", norm="group")
    assert "\n" not in str(caught.value)
