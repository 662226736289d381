"""The one-process federation of the benchmarks (emulator) and the scripts built on it.

The emulator must train, average and score exactly as the app does: its
round is FedAvg of the app's site update at the app's sites, its outputs
are the app's files, and the precise-BN benchmark's other arm differs from
the app's update only in the BatchNorm statistics.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import emulator
import precise_bn
import recipe_screen
from brainfl.data.sites import load_run_dataset
from brainfl.federation.site_training import local_update
from brainfl.federation.strategy import weighted_average
from brainfl.model.process_cache import initial_weights
from brainfl.model.training import round_learning_rate
from brainfl.report.results import RESULTS_CSV, SITE_CSV, results_header
from conftest import make_dataset, run_benchmark
from subset import make_subset

TINY = "image-size=32 batch-size=8 local-epochs=1 num-server-rounds=1 num-partitions=2"


@pytest.fixture(scope="module")
def tiny_settings(tmp_path_factory):
    """Settings of a 2-site, 1-round run on 6 training and 2 test images per class (random textures)."""
    data = make_dataset(tmp_path_factory.mktemp("emulated") / "data", train_per_class=6, test_per_class=2)
    return emulator.settings_for(f'data-dir="{data}"', TINY)


def _augmentation_state(model) -> list[np.ndarray]:
    """The model's augmentation RNG states: they advance at every training call, whatever its seed."""
    return [variable.numpy() for variable in model.variables if "seed_generator_state" in variable.path]


def _restore_augmentation_state(model, states: list[np.ndarray]) -> None:
    variables = [variable for variable in model.variables if "seed_generator_state" in variable.path]
    for variable, state in zip(variables, states, strict=True):
        variable.assign(state)


def test_later_overrides_win_and_unknown_keys_fail(tmp_path):
    settings = emulator.settings_for(f'data-dir="{tmp_path}" local-epochs=1', "local-epochs=3 image-size=48")
    assert (settings.training.local_epochs, settings.model.image_size, settings.data.data_dir) == (
        3,
        48,
        str(tmp_path),
    )
    with pytest.raises(SystemExit, match="lcoal-epochs"):
        recipe_screen.recipe_settings("fedavg:lcoal-epochs=2", tmp_path, "", passes=2)


def test_recipes_get_equal_passes_and_central_pools_the_sites(tmp_path):
    assert recipe_screen.parse_recipe("fedavg:local-epochs=2:batch-size=8") == (
        "fedavg",
        "local-epochs=2 batch-size=8",
    )
    with pytest.raises(SystemExit, match="unknown kind 'fedsgd'"):
        recipe_screen.parse_recipe("fedsgd")
    pooled, central = recipe_screen.recipe_settings("central", tmp_path, "", passes=6)
    assert pooled and (central.federation.num_server_rounds, central.training.local_epochs) == (6, 1)
    pooled, fedavg = recipe_screen.recipe_settings("fedavg:local-epochs=2", tmp_path, "num-partitions=3", 6)
    assert not pooled and (
        fedavg.federation.num_server_rounds,
        fedavg.training.local_epochs,
        fedavg.data.num_partitions,
    ) == (3, 2, 3)


def test_sites_are_the_apps_sites_and_pooled_is_one_site_with_every_image(tiny_settings):
    train = load_run_dataset(tiny_settings).train
    fed = emulator.federation(tiny_settings)
    assert [site.data.site_id for site in fed.sites] == [0, 1]
    sizes = [(len(site.data.train), len(site.data.val)) for site in fed.sites]
    assert sum(a + b for a, b in sizes) == len(train)  # the partitions cover the training set
    assert all(num_val > 0 for _, num_val in sizes)  # each less its validation hold-out
    (pooled,) = emulator.federation(tiny_settings, pooled=True).sites
    np.testing.assert_array_equal(pooled.data.train.labels, train.labels)


def test_a_round_is_fedavg_of_each_sites_local_update(tiny_settings):
    fed = emulator.federation(tiny_settings)
    bundle = fed.evaluator.bundle
    start = initial_weights(tiny_settings, fed.class_names)
    augmentation = _augmentation_state(bundle.trainable)
    averaged, report = emulator.fedavg_round(fed, start, server_round=1)
    learning_rate = round_learning_rate(
        tiny_settings.training.learning_rate, 1, tiny_settings.federation.num_server_rounds
    )
    _restore_augmentation_state(bundle.trainable, augmentation)
    trained = []
    for site in fed.sites:  # what each ClientApp would do with the same global weights
        bundle.trainable.set_weights(start)
        local_update(
            tiny_settings,
            bundle,
            site.inputs,
            site.data.train.labels,
            learning_rate=learning_rate,
            server_round=1,
            site_id=site.data.site_id,
        )
        trained.append(bundle.trainable.get_weights())
    expected = weighted_average(trained, [len(site.data.train) for site in fed.sites])
    assert any(not np.allclose(a, b) for a, b in zip(averaged, start, strict=True))  # it trained
    for got, want in zip(averaged, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert sorted(report.sites) == [0, 1] and report.sites_replied == 2  # what the strategy reports
    assert report.sites[1]["num_train"] == len(fed.sites[1].data.train)
    losses = [report.sites[site]["train_loss"] for site in (0, 1)]
    weights = [len(site.data.train) for site in fed.sites]
    assert report.aggregate["train_loss"] == pytest.approx(np.average(losses, weights=weights))


def test_a_run_writes_the_apps_result_files_and_scores_every_round(tiny_settings, tmp_path):
    fed = emulator.federation(tiny_settings)
    scores = emulator.run(fed, tmp_path)
    assert len(scores) == 2  # the initial model, then each round
    assert all(0.0 <= row["leak_free_accuracy"] <= 1.0 for row in scores)  # random images: all leak-free
    with open(tmp_path / RESULTS_CSV, newline="") as handle:
        results = list(csv.DictReader(handle))
    assert list(results[0]) == results_header(fed.class_names)
    assert [row["round"] for row in results] == ["0", "1"] and results[1]["sites_trained"] == "2"
    assert float(results[1]["accuracy"]) == pytest.approx(scores[1]["accuracy"], abs=1e-5)
    with open(tmp_path / SITE_CSV, newline="") as handle:
        sites = list(csv.DictReader(handle))
    assert [(row["round"], row["site"]) for row in sites] == [("1", "0"), ("1", "1")]
    config = json.loads((tmp_path / "run_config.json").read_text())
    assert config["num-partitions"] == 2 and config["centralized"] is False
    emulator.run(fed, tmp_path)  # again in the same folder: a fresh run, not appended
    with open(tmp_path / RESULTS_CSV, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2


def test_the_keras_averages_arm_trains_the_same_weights_and_differs_only_in_bn_statistics(tiny_settings):
    fed = emulator.federation(tiny_settings)
    site, bundle = fed.sites[0], fed.evaluator.bundle
    start = initial_weights(tiny_settings, fed.class_names)
    augmentation = _augmentation_state(bundle.trainable)
    arms = {}
    for name, update in precise_bn.ARMS.items():
        bundle.trainable.set_weights(start)
        _restore_augmentation_state(bundle.trainable, augmentation)
        update(tiny_settings, bundle, site.inputs, site.data.train.labels, learning_rate=1e-3, server_round=1)
        arms[name] = bundle.trainable.get_weights()
    statistic = ["moving_" in weight.path for weight in bundle.trainable.weights]
    assert any(statistic)
    keras_averages, precise = arms["keras averages"], arms["precise BN"]
    for is_statistic, a, b in zip(statistic, keras_averages, precise, strict=True):
        if not is_statistic:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert any(not np.allclose(a, b) for s, a, b in zip(statistic, keras_averages, precise, strict=True) if s)


@pytest.mark.realdata
def test_tiny_screen_on_real_images_records_every_round(tmp_path, real_data):
    data = make_subset(real_data, tmp_path / "data", per_class=6)
    out = tmp_path / "screen"
    options = ["--passes", "2", "--output-dir", str(out), "--run-config", "image-size=32 batch-size=8"]
    recipes = ["--recipes", "central,fedavg:local-epochs=2"]
    run_benchmark("recipe_screen.py", "--data-dir", str(data), *options, *recipes, timeout=600)
    central, fedavg = (json.loads(line) for line in (out / "recipe_screen.jsonl").read_text().splitlines())
    assert central["recipe"] == "central" and len(central["accuracy"]) == 2  # one score per epoch
    assert len(fedavg["accuracy"]) == 1  # 2 passes as 1 round of 2 local epochs
    assert all(0.0 <= accuracy <= 1.0 for accuracy in central["accuracy"] + fedavg["accuracy"])
    assert len(central["leak_free"]) == 2
    assert (out / "fedavg_local-epochs=2" / RESULTS_CSV).is_file()


@pytest.mark.realdata
def test_tiny_precise_bn_comparison_on_real_images_prints_both_arms_every_round(tmp_path, real_data):
    data = make_subset(real_data, tmp_path / "data", per_class=6)
    config = "image-size=32 batch-size=8 num-server-rounds=1 local-epochs=1"
    options = ["--data-dir", str(data), "--run-config", config, "--output-dir", str(tmp_path / "runs")]
    output = run_benchmark("precise_bn.py", *options, timeout=600).stdout
    assert "| round | keras averages | precise BN |" in output
    rounds = [line.split(" | ")[0] for line in output.splitlines() if line.startswith("| ") and "/" in line]
    assert rounds == ["| 0", "| 1"]  # the initial model, then the round
    for arm in ("keras_averages", "precise_BN"):
        assert (tmp_path / "runs" / arm / RESULTS_CSV).is_file()
