"""The recipe-screening emulator: its server step, its recipe parser and a tiny run on real images."""

from __future__ import annotations

import json

import numpy as np
import pytest

import recipe_screen
from brainfl.strategy import weighted_average
from conftest import run_benchmark


def _sites() -> tuple[list[np.ndarray], list[list[np.ndarray]], list[int]]:
    old = [np.zeros(3), np.ones(2)]  # a trained kernel, then a BatchNorm statistic
    sites = [
        [np.array([1.0, 2.0, 3.0]), np.array([3.0, 3.0])],
        [np.array([3.0, 2.0, 1.0]), np.array([5.0, 5.0])],
    ]
    return old, sites, [1, 3]


def test_server_step_with_defaults_is_fedavg():
    old, sites, counts = _sites()
    momentum = [np.zeros_like(w) for w in old]
    new = recipe_screen.server_step(old, sites, counts, [False, True], momentum, {})
    for got, expected in zip(new, weighted_average(sites, counts), strict=True):
        np.testing.assert_allclose(got, expected)


def test_server_learning_rate_and_momentum_scale_the_step_but_never_the_statistics():
    old, sites, counts = _sites()
    momentum = [np.zeros_like(w) for w in old]
    average = weighted_average(sites, counts)
    options = {"slr": 2.0, "beta": 0.5}
    first = recipe_screen.server_step(old, sites, counts, [False, True], momentum, options)
    np.testing.assert_allclose(first[0], 2.0 * average[0])  # old is zero: the step is 2x the average
    np.testing.assert_allclose(first[1], average[1])  # statistics: plain average
    second = recipe_screen.server_step(first, sites, counts, [False, True], momentum, options)
    np.testing.assert_allclose(second[0], first[0] + 2.0 * (0.5 * average[0] + (average[0] - first[0])))


def test_fedexp_extrapolates_when_site_updates_disagree():
    old = [np.zeros(2)]
    sites = [[np.array([1.0, 0.0])], [np.array([0.0, 1.0])]]  # orthogonal updates
    new = recipe_screen.server_step(old, sites, [1, 1], [False], [np.zeros(2)], {"fedexp": 1})
    # mean ||d_i||^2 = 1 and ||mean d||^2 = 0.5: the step is max(1, 1 / (2 * 0.5)) = 1, plain FedAvg.
    np.testing.assert_allclose(new[0], [0.5, 0.5])
    sites = [[np.array([1.0, 0.0])], [np.array([-1.0, 0.2])]]  # nearly opposite updates
    new = recipe_screen.server_step(old, sites, [1, 1], [False], [np.zeros(2)], {"fedexp": 1})
    # mean ||d_i||^2 = 1.02 and ||mean d||^2 = 0.01: the mean update (0, 0.1) is taken 51 times.
    np.testing.assert_allclose(new[0], [0.0, 5.1])


def test_recipe_typos_stop_with_a_clear_message():
    assert recipe_screen.parse_recipe("fedavg:local=2:bs=8") == ("fedavg", {"local": 2, "bs": 8})
    with pytest.raises(SystemExit, match="unknown option 'lcoal'"):
        recipe_screen.parse_recipe("fedavg:lcoal=2")
    with pytest.raises(SystemExit, match="unknown kind 'fedsgd'"):
        recipe_screen.parse_recipe("fedsgd")


def test_tiny_screen_on_real_images_records_every_round(tmp_path, real_data):
    out = tmp_path / "screen.jsonl"
    options = ["--max-images-per-class", "12", "--image-size", "32", "--passes", "2", "--out", str(out)]
    recipes = ["--recipes", "central,fedavg:local=2:sites=2"]
    run_benchmark("recipe_screen.py", "--data-dir", str(real_data), *options, *recipes, timeout=600)
    central, fedavg = (json.loads(line) for line in out.read_text().splitlines())
    assert central["recipe"] == "central" and len(central["accuracy"]) == 2  # one score per epoch
    assert len(fedavg["accuracy"]) == 1  # 2 passes as 1 round of 2 local epochs
    assert all(0.0 <= accuracy <= 1.0 for accuracy in central["accuracy"] + fedavg["accuracy"])
    assert len(central["flip_tta"]) == len(central["leak_free"]) == 2  # every score, every epoch
