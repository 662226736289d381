"""``brainfl local``: each site's model trained alone on exactly its own images, scored as sites and
server score models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from brainfl import cli
from brainfl.baselines import local_pooled as baselines
from brainfl.baselines import setup as baseline_sites
from brainfl.data.central import central_data
from brainfl.data.sites import site_data
from brainfl.evaluation.metrics import LEAK_FREE
from brainfl.evaluation.test_set import CentralEvaluator
from brainfl.federation.client_app import validate
from brainfl.federation.site_training import local_update
from brainfl.model.files import FINAL_MODEL, RUN_CONFIG
from brainfl.model.process_cache import model_for
from brainfl.model.training import round_learning_rate
from brainfl.report.results import RESULTS_CSV, SITE_CSV, read_rows
from brainfl.settings.run_settings import settings_from_config
from conftest import CLASSES, REPO_ROOT, make_dataset

ROUNDS = 2
FAST = f"image-size=16 num-server-rounds={ROUNDS} local-epochs=1 batch-size=8 val-fraction=0.25"


def run_local(
    capsys, tmp_path: Path, *run_configs: str, extra: tuple[str, ...] = (), command: str = "local"
) -> tuple[int, str, list[str]]:
    """(exit code, stdout, ``brainfl: error:`` lines) of ``brainfl local`` (or ``command``) writing into
    ``tmp_path/out``."""
    argv = [command, "--app-dir", str(REPO_ROOT), "--run-config", f"output-dir='{tmp_path / 'out'}'"]
    for run_config in run_configs:
        argv += ["--run-config", run_config]
    code = cli.main([*argv, *extra])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.startswith("brainfl: error:")]


@pytest.fixture
def spied_updates(monkeypatch) -> list[dict]:
    """Every call of ``local_update`` by the baseline (its arguments), still training for real."""
    calls: list[dict] = []

    def spy(settings, bundle, inputs, labels, **kwargs):
        calls.append({"inputs": np.array(inputs), "labels": np.array(labels), **kwargs})
        return local_update(settings, bundle, inputs, labels, **kwargs)

    monkeypatch.setattr(baselines, "local_update", spy)
    return calls


def settings_of(out: Path):
    return settings_from_config(json.loads((out / RUN_CONFIG).read_text()))


def check_trained_alone(calls: list[dict], settings, sites) -> None:
    """Each site's rounds, one after the other, on exactly its own training images and labels."""
    assert len(calls) == len(sites) * ROUNDS
    for index, site in enumerate(sites):
        for server_round, call in enumerate(calls[index * ROUNDS : (index + 1) * ROUNDS], start=1):
            assert call["site_id"] == site.site_id and call["server_round"] == server_round
            np.testing.assert_array_equal(call["inputs"], site.train.images)
            np.testing.assert_array_equal(call["labels"], site.train.labels)
            assert call["learning_rate"] == round_learning_rate(
                settings.training.learning_rate, server_round, ROUNDS
            )


def check_scores(out: Path, settings, sites, row_of: dict[str, dict[str, str]], pooled: bool = False) -> None:
    """The CSV's held-out scores are the final model's (the site's own, or the ``pooled`` one) on the
    site's validation split; its central scores are the server's evaluator's on the saved model."""
    central = central_data(settings)
    evaluator = CentralEvaluator(
        settings,
        central.test,
        central.class_names,
        official=central.official,
        leak_free=baseline_sites.federation_leak_free(central, sites),
    )
    for site in sites:
        row = row_of[str(site.site_id)]
        assert (int(row["num_train"]), int(row["num_val"])) == (len(site.train), len(site.val))
        assert len(site.val) > 0
        folder = out / baselines.POOLED_FOLDER if pooled else baselines.site_folder(out, site.site_id)
        saved = keras.models.load_model(folder / FINAL_MODEL)
        bundle = model_for(settings, central.class_names)
        bundle.trainable.set_weights(saved.get_weights())
        held_out = validate(settings.model, bundle, site)
        central_scores = evaluator(saved.get_weights()).metrics
        for key, value in held_out.items():
            assert float(row[key]) == pytest.approx(value, rel=1e-5, nan_ok=True), key
        for key in ("accuracy", "balanced_accuracy", "loss"):
            assert float(row[f"test_{key}"]) == pytest.approx(central_scores[key], rel=1e-5), key
        if LEAK_FREE in central_scores:
            assert float(row[f"test_{LEAK_FREE}"]) == pytest.approx(central_scores[LEAK_FREE], rel=1e-5)
        else:
            assert row[f"test_{LEAK_FREE}"] == ""


def test_each_partition_site_trains_alone_and_is_scored_like_a_site_and_the_server(
    capsys, tmp_path, spied_updates
):
    data = make_dataset(tmp_path / "data", train_per_class=6)
    copied = data / "Testing" / "glioma" / "copy-of-a-training-scan.jpg"
    shutil.copy(next((data / "Training" / "glioma").iterdir()), copied)
    code, out, errors = run_local(capsys, tmp_path, f"data-dir='{data}' num-partitions=2 {FAST}")
    assert code == 0 and not errors
    output = tmp_path / "out"
    settings = settings_of(output)
    configs = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    sites = [site_data(settings, config, CLASSES) for config in configs]
    check_trained_alone(spied_updates, settings, sites)

    rows = read_rows(output / baselines.LOCAL_CSV)
    header = list(rows[0])
    assert header == baselines.csv_header(CLASSES)
    assert [row["site"] for row in rows] == ["0", "1"]
    assert rows[0]["data"] == "partition 0 of 2"
    check_scores(output, settings, sites, {row["site"]: row for row in rows})
    central = central_data(settings)
    leak_free = baseline_sites.federation_leak_free(central, sites)
    assert leak_free is not None and not leak_free[central.test.files.index(str(copied.relative_to(data)))]
    assert leak_free.sum() == len(central.test) - 1

    for site in sites:  # a run folder per site: the recorder's files, read by the report
        folder = baselines.site_folder(output, site.site_id)
        assert [r["round"] for r in read_rows(folder / RESULTS_CSV)] == ["0", "1", "2"]
        assert {r["site"] for r in read_rows(folder / SITE_CSV)} == {str(site.site_id)}
        assert json.loads((folder / RUN_CONFIG).read_text())["local-site"] == site.site_id
    assert json.loads((output / RUN_CONFIG).read_text())["local-baseline"] is True
    table = out.splitlines()
    assert table[0].split()[:2] == ["site", "train/val"] and len(table) == 4, out


def test_sites_with_their_own_folders_train_on_all_their_own_scans(capsys, tmp_path, spied_updates):
    data = make_dataset(tmp_path / "data", train_per_class=2)  # the coordinator's test set
    folders = [make_dataset(tmp_path / f"hospital-{i}", train_per_class=4 + i) / "Training" for i in range(2)]
    extra = tuple(arg for folder in folders for arg in ("--site-data-dir", str(folder)))
    code, _, errors = run_local(capsys, tmp_path, f"data-dir='{data}' {FAST}", extra=extra)
    assert code == 0 and not errors
    output = tmp_path / "out"
    settings = settings_of(output)
    configs = [{"partition-id": i, "data-dir": str(folder)} for i, folder in enumerate(folders)]
    sites = [site_data(settings, config, CLASSES) for config in configs]
    assert [len(site.train) + len(site.val) for site in sites] == [16, 20]
    check_trained_alone(spied_updates, settings, sites)
    rows = read_rows(output / baselines.LOCAL_CSV)
    assert [row["data"] for row in rows] == [str(folder) for folder in folders]
    # the hospitals' scans are made with the same seeds as the test scans: each is held by a site,
    # so, as in the federated run, there is no leak-free subset
    assert baseline_sites.federation_leak_free(central_data(settings), sites) is None
    check_scores(output, settings, sites, {row["site"]: row for row in rows})


def test_the_pooled_model_trains_on_all_sites_training_splits_and_is_scored_at_each_site(
    capsys, tmp_path, spied_updates
):
    data = make_dataset(tmp_path / "data", train_per_class=6)
    run_config = f"data-dir='{data}' num-partitions=2 {FAST}"
    code, out, errors = run_local(capsys, tmp_path, run_config, command="pooled")
    assert code == 0 and not errors
    output = tmp_path / "out"
    settings = settings_of(output)
    sites = [site_data(settings, {"partition-id": i, "num-partitions": 2}, CLASSES) for i in range(2)]
    pooled_images = np.concatenate([site.train.images for site in sites])
    pooled_labels = np.concatenate([site.train.labels for site in sites])
    assert [call["server_round"] for call in spied_updates] == list(range(1, ROUNDS + 1))
    for call in spied_updates:  # every site's training split, none of their held-out images
        np.testing.assert_array_equal(call["inputs"], pooled_images)
        np.testing.assert_array_equal(call["labels"], pooled_labels)
    rows = read_rows(output / baselines.POOLED_CSV)
    assert [row["site"] for row in rows] == ["0", "1"]
    assert len({row["val_accuracy"] for row in rows} | {row["test_accuracy"] for row in rows}) >= 2
    assert len({row["test_accuracy"] for row in rows}) == 1  # one model, one central score
    check_scores(output, settings, sites, {row["site"]: row for row in rows}, pooled=True)
    rounds = read_rows(output / baselines.POOLED_FOLDER / RESULTS_CSV)
    assert [r["round"] for r in rounds] == ["0", "1", "2"]
    assert json.loads((output / RUN_CONFIG).read_text())["pooled-baseline"] is True
    assert "pooled_baseline.csv" in out


def test_without_a_central_test_set_only_the_held_out_scores_are_written(capsys, tmp_path):
    data = make_dataset(tmp_path / "data", train_per_class=4)
    names = ",".join(CLASSES)
    run_config = f"data-dir='{data}' test-dir='none' class-names='{names}' num-partitions=1 {FAST}"
    code, out, errors = run_local(capsys, tmp_path, run_config, "num-server-rounds=1")
    assert code == 0 and not errors
    (row,) = read_rows(tmp_path / "out" / baselines.LOCAL_CSV)
    assert row["val_accuracy"] != "" and row["test_accuracy"] == ""
    assert out.splitlines()[1].split()[-2:] == ["-", "-"]


@pytest.mark.parametrize(
    ("run_config", "extra", "expected"),
    [
        ("num-partitions=0", (), "'num-partitions' must be positive"),
        ("data-dir='/no/such/folder'", (), "data directory not found: /no/such/folder"),
        ("num-partitions=2", ("--site-data-dir", "/no/such/site"), "1 folders for 2 sites"),
        ("num-partitions=1", ("--site-data-dir", "/no/such/site"), "/no/such/site"),
    ],
)
def test_bad_input_gives_one_clear_line_and_exit_code_2(capsys, tmp_path, run_config, extra, expected):
    sample = f"data-dir='{REPO_ROOT / 'sample_data'}' image-size=16"
    code, _, errors = run_local(capsys, tmp_path, sample, run_config, extra=extra)
    assert code == 2
    assert len(errors) == 1 and expected in errors[0], errors
