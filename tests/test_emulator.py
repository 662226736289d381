"""The emulator's server step: FedAvg's average, or FedAvgM's step with statistics plainly averaged."""

from __future__ import annotations

import numpy as np
import pytest

import emulator
from brainfl.settings.run_settings import settings_with


def settings(**changes):
    return settings_with(**changes)


def test_fedavg_takes_the_average():
    step = emulator.ServerStep(settings(strategy="fedavg"), [False, True])
    old, averaged = [np.zeros(2), np.zeros(2)], [np.ones(2), np.full(2, 3.0)]
    assert step(old, averaged) is averaged


def test_fedavgm_steps_trained_weights_and_averages_statistics():
    step = emulator.ServerStep(
        settings(strategy="fedavgm", server_learning_rate=2.0, server_momentum=0.5), [False, True]
    )
    old, averaged = [np.zeros(2), np.zeros(2)], [np.ones(2), np.full(2, 3.0)]
    first = step(old, averaged)
    assert np.allclose(first[0], 2.0)  # old - 2 * (old - average)
    assert np.allclose(first[1], 3.0)  # a statistic: the plain average
    second = step(first, [np.full(2, 3.0), np.full(2, 4.0)])  # pseudo-gradient -1, velocity 0.5 * -1 - 1
    assert np.allclose(second[0], 2.0 + 2.0 * 1.5)
    assert np.allclose(second[1], 4.0)


def test_other_strategies_are_refused():
    with pytest.raises(emulator.BrainFLError, match="fedavg and fedavgm only"):
        emulator.federation(settings(strategy="krum"))
