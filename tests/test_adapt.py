"""``brainfl adapt``, ``evaluate --adapt`` and ``adapt-sites``: BatchNorm statistics from unlabelled scans."""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainfl import cli
from brainfl.core.errors import BrainFLError
from brainfl.evaluation import external as evaluate
from brainfl.federation.personalization import PERSONALIZE, PERSONALIZED_MODEL
from brainfl.federation.setup import QUERY
from brainfl.inference import predict
from brainfl.inference.adaptation import ADAPTED_MODEL, file_sha256
from brainfl.model.architectures import build_model
from brainfl.model.files import FINAL_MODEL, load_model, model_metadata, save_model, stored_metadata
from brainfl.report.results import PERSONALIZATION_CSV, read_rows
from brainfl.settings.run_settings import settings_with
from conftest import REPO_ROOT
from test_federation_setup import run_coordinated
from test_predict import IMAGE_SIZE, tiny_model_file

SAMPLE_TESTING = REPO_ROOT / "sample_data" / "Testing"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return tiny_model_file(tmp_path_factory)


@pytest.fixture(scope="module")
def other_hospital(tmp_path_factory) -> Path:
    """The sample's Testing scans prepared differently (darker, lower contrast), flat, in their order."""
    folder = tmp_path_factory.mktemp("hospital-b")
    scans = sorted(SAMPLE_TESTING.rglob("*.jpg"))
    for index, scan in enumerate(scans):
        pixels = np.asarray(Image.open(scan).convert("L"), dtype=np.float32)
        Image.fromarray((40 + 0.5 * pixels).astype(np.uint8)).save(folder / f"{index:03d}.png")
    return folder


def batchnorm_statistics(layer: keras.layers.Layer) -> list[int]:
    """Indices of a layer's weights that are BatchNorm moving statistics."""
    if not isinstance(layer, keras.layers.BatchNormalization):
        return []
    names = [weight.path.split("/")[-1] for weight in layer.weights]
    return [i for i, name in enumerate(names) if name in ("moving_mean", "moving_variance")]


def assert_only_batchnorm_statistics_changed(source_file: Path, adapted_file: Path) -> None:
    """Every BatchNorm layer's moving mean and variance changed, every other weight kept bit for bit."""
    source, adapted = load_model(source_file).model, load_model(adapted_file).model
    changed = 0
    for before, after in zip(source.layers, adapted.layers, strict=True):
        statistics = batchnorm_statistics(before)
        for index, (old, new) in enumerate(zip(before.get_weights(), after.get_weights(), strict=True)):
            if index in statistics:
                assert not np.allclose(old, new), f"{before.name} statistics unchanged"
                changed += 1
            else:
                assert old.dtype == new.dtype and np.array_equal(old, new), f"{before.name} weight {index}"
    assert (
        changed == 2 * sum(isinstance(layer, keras.layers.BatchNormalization) for layer in source.layers) > 0
    )


def test_adapt_changes_only_the_batchnorm_statistics_and_records_what_it_saw(
    model_file, other_hospital, tmp_path, capsys
):
    out = tmp_path / "adapted"
    assert cli.main(["adapt", "--model", str(model_file), str(other_hospital), "--output-dir", str(out)]) == 0
    assert "re-estimated on 32 of the 32 scans" in capsys.readouterr().out
    assert_only_batchnorm_statistics_changed(model_file, out / ADAPTED_MODEL)
    metadata = stored_metadata(out / ADAPTED_MODEL)
    record = metadata["adapted"]
    assert record["folder"] == other_hospital.name and "/" not in json.dumps(record["folder"])
    assert record["scans_found"] == record["scans_used"] == 32
    assert datetime.datetime.fromisoformat(record["date"]).tzinfo is not None
    assert record["source_model"]["sha256"] == file_sha256(model_file)
    assert record["source_model"]["file"] == model_file.name
    assert metadata["class_names"] == stored_metadata(model_file)["class_names"]


def batchnorm_scales_and_offsets(layer: keras.layers.Layer) -> list[int]:
    """Indices of a layer's weights that are BatchNorm's scale (gamma) and offset (beta)."""
    if not isinstance(layer, keras.layers.BatchNormalization):
        return []
    names = [weight.path.split("/")[-1] for weight in layer.weights]
    return [i for i, name in enumerate(names) if name in ("gamma", "beta")]


def mean_entropy(probabilities: np.ndarray) -> float:
    return float(np.mean(-np.sum(probabilities * np.log(probabilities + 1e-12), axis=1)))


def test_entropy_epochs_train_only_batchnorm_and_make_the_predictions_on_the_scans_confident(
    model_file, other_hospital, tmp_path, capsys
):
    statistics_only, tent = tmp_path / "adabn", tmp_path / "tent"
    argv = ["adapt", "--model", str(model_file), str(other_hospital)]
    assert cli.main([*argv, "--output-dir", str(statistics_only)]) == 0
    assert cli.main([*argv, "--output-dir", str(tent), "--entropy-epochs", "3"]) == 0
    assert "trained for 3 entropy-minimization passes" in capsys.readouterr().out
    source, adapted = load_model(model_file).model, load_model(tent / ADAPTED_MODEL).model
    trained = 0
    for before, after in zip(source.layers, adapted.layers, strict=True):
        batchnorm = batchnorm_statistics(before) + batchnorm_scales_and_offsets(before)
        for index, (old, new) in enumerate(zip(before.get_weights(), after.get_weights(), strict=True)):
            if index in batchnorm:
                trained += not np.allclose(old, new)
            else:
                assert np.array_equal(old, new), f"{before.name} weight {index} changed"
    assert trained == 4 * sum(isinstance(layer, keras.layers.BatchNormalization) for layer in source.layers)
    record = stored_metadata(tent / ADAPTED_MODEL)["adapted"]
    assert record["entropy_epochs"] == 3 and len(record["mean_entropy"]) == 3
    assert stored_metadata(statistics_only / ADAPTED_MODEL)["adapted"]["entropy_epochs"] == 0
    # what it minimizes: the predictions on these scans are more confident than with statistics alone
    scans = [other_hospital]
    names = list(load_model(model_file).class_names)
    confident = predict.predict_files(tent / ADAPTED_MODEL, scans)[names].to_numpy()
    plain = predict.predict_files(statistics_only / ADAPTED_MODEL, scans)[names].to_numpy()
    assert mean_entropy(confident) < mean_entropy(plain)


def test_entropy_epochs_need_adapt_and_a_count(model_file, other_hospital, capsys):
    argv = ["evaluate", "--model", str(model_file), str(other_hospital)]
    assert cli.main([*argv, "--entropy-epochs", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert "--entropy-epochs adapts the model: give it with --adapt" in error and len(error.splitlines()) == 1
    with pytest.raises(SystemExit) as stopped:
        cli.main(["adapt", "--model", str(model_file), str(other_hospital), "--entropy-epochs", "-1"])
    assert stopped.value.code == 2 and "must be 0 or more" in capsys.readouterr().err


def test_evaluate_adapt_scores_the_model_adapted_on_the_scored_scans_without_their_labels(
    model_file, other_hospital, tmp_path, capsys
):
    labelled = tmp_path / "labelled"  # the same scans, in their class folders, in the same order
    scans = sorted(other_hospital.glob("*.png"))
    for scan, original in zip(scans, sorted(SAMPLE_TESTING.rglob("*.jpg")), strict=True):
        (labelled / original.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(scan, labelled / original.parent.name / scan.name)
    out = tmp_path / "scores"
    argv = ["evaluate", "--model", str(model_file), str(labelled), "--adapt", "--resamples", "10"]
    assert cli.main([*argv, "--output-dir", str(out)]) == 0
    assert "ADAPTED to these scans" in capsys.readouterr().out
    assert pd.read_csv(out / evaluate.CSV_NAME)["adapted"].all()
    assert json.loads((out / evaluate.JSON_NAME).read_text())["adapted"]["scans_used"] == 32
    # the flat folder has no labels: the model adapted there predicts what evaluate --adapt scored
    cli.main(["adapt", "--model", str(model_file), str(other_hospital), "--output-dir", str(tmp_path / "a")])
    flat = predict.predict_files(tmp_path / "a" / ADAPTED_MODEL, [labelled])
    evaluation = evaluate.evaluate_model(model_file, labelled, resamples=10, adapt=True)
    names = list(load_model(model_file).class_names)
    np.testing.assert_allclose(evaluation.probabilities, flat[names].to_numpy(), atol=1e-6)
    plain = evaluate.evaluate_model(model_file, labelled, resamples=10)
    assert plain.adapted is None and not np.allclose(plain.probabilities, evaluation.probabilities, atol=1e-4)


def test_adapt_reaches_the_batchnorm_layers_of_the_residual_cnn(other_hospital, tmp_path, capsys):
    source = tmp_path / "rescnn.keras"
    metadata = model_metadata("rescnn", ["a", "b", "c", "d"], IMAGE_SIZE, 1)
    save_model(build_model("rescnn", IMAGE_SIZE, 4).inference_model(), source, metadata)
    out = tmp_path / "adapted"
    assert cli.main(["adapt", "--model", str(source), str(other_hospital), "--output-dir", str(out)]) == 0
    assert "13 BatchNorm layers" in capsys.readouterr().out  # each block's two, the projections', the stem's
    assert_only_batchnorm_statistics_changed(source, out / ADAPTED_MODEL)


def no_batchnorm_model(folder: Path) -> Path:
    bundle = build_model("cnn", IMAGE_SIZE, 4, norm="group")
    path = folder / "group.keras"
    save_model(bundle.inference_model(), path, model_metadata("cnn", ["a", "b", "c", "d"], IMAGE_SIZE, 1))
    return path


def test_refusals_are_one_line(model_file, other_hospital, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken.keras"
    broken.write_text("not a model")
    cases = [
        ([str(no_batchnorm_model(tmp_path)), str(other_hospital)], "has no BatchNorm layers"),
        ([str(broken), str(other_hospital)], "is not a Keras .keras file"),
        ([str(model_file), str(empty)], "no image files"),
        ([str(model_file), str(tmp_path / "missing")], "data folder not found"),
    ]
    for (model, data), message in cases:
        assert cli.main(["adapt", "--model", model, data, "--output-dir", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1 and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_adapt_sites_keeps_a_label_free_adapted_copy_at_each_site_and_sends_only_scores(tmp_path):
    grid, replies, _ = run_coordinated(tmp_path, {"num-server-rounds": 1, "adapt-sites": True})
    run = tmp_path / "run"
    assert [m.content["config"][QUERY] for m in grid.sent[-2:]] == [PERSONALIZE, PERSONALIZE]
    for answer in replies[-2:]:
        assert list(answer.content.keys()) == ["metrics"]  # no arrays: the copy stays at the site
        assert all(isinstance(value, int | float) for value in answer.content["metrics"].values())
    rows = read_rows(run / PERSONALIZATION_CSV)
    assert [row["site"] for row in rows] == ["0", "1"]
    final = load_model(run / FINAL_MODEL)
    for row in rows:
        assert "personalized_accuracy" not in row and float(row["gain_balanced_accuracy"]) == pytest.approx(
            float(row["adapted_balanced_accuracy"]) - float(row["global_balanced_accuracy"]), abs=1e-5
        )
        path = run / "sites" / f"site_{row['site']}" / ADAPTED_MODEL
        adapted = load_model(path)
        assert adapted.temperature == final.temperature
        assert stored_metadata(path)["adapted"]["scans_used"] == int(row["num_train"]) > 0
        for before, after in zip(final.model.layers, adapted.model.layers, strict=True):
            statistics = batchnorm_statistics(before)
            for index, (old, new) in enumerate(zip(before.get_weights(), after.get_weights(), strict=True)):
                assert np.array_equal(old, new) != (index in statistics), f"{before.name} weight {index}"
        assert not (run / "sites" / f"site_{row['site']}" / PERSONALIZED_MODEL).exists()
    assert "sites saved their personalized models" in (run / "logs" / "server.log").read_text()
    assert "adapted balanced accuracy" in (run / "report.html").read_text()  # the report's site table


def test_adapt_sites_needs_batchnorm():
    with pytest.raises(BrainFLError, match="setting 'adapt-sites'"):
        settings_with(adapt_sites=True, norm="group")
