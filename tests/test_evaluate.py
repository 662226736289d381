"""Tests of ``brainfl evaluate`` on the committed sample images with the tiny model of the predict tests."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainfl import cli
from brainfl.evaluation import external as evaluate
from brainfl.evaluation.intervals import OVERALL, PER_CLASS
from brainfl.inference import predict
from conftest import CLASSES, REPO_ROOT
from test_predict import one_line_error, tiny_model_file

SAMPLE = REPO_ROOT / "sample_data"
OUTPUTS = ("evaluation.csv", "evaluation.json", "confusion_matrix.png", "reliability.png")
RESAMPLES = "100"  # enough to check the outputs, quick on a shared machine


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return tiny_model_file(tmp_path_factory)


def parse(argv: list[str]) -> argparse.Namespace:
    return cli.build_parser().parse_args(argv)


def run(*argv: str | Path) -> None:
    model, *rest = map(str, argv)
    args = parse(["evaluate", "--model", model, *rest, "--resamples", RESAMPLES])
    args.handler(args)


def copy_classes(target: Path, names=CLASSES, per_class: int = 3) -> Path:
    """A hospital-like folder ``target/<class>/*.jpg`` with a few sample test scans per class."""
    for name in names:
        (target / name).mkdir(parents=True)
        for path in sorted((SAMPLE / "Testing" / name).iterdir())[:per_class]:
            shutil.copy(path, target / name / path.name)
    return target


def test_command_prints_every_metric_and_writes_the_four_files(model_file, tmp_path, capsys):
    out = tmp_path / "out"
    run(model_file, SAMPLE / "Testing", "--output-dir", out)
    printed = capsys.readouterr().out
    for word in (*OVERALL, *PER_CLASS, *CLASSES, "95% interval", "32 scans"):
        assert word in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    table = pd.read_csv(out / "evaluation.csv")  # an undefined value (NaN) is an empty cell
    assert list(table.columns) == ["metric", "class", "value", "low", "high", "adapted"]
    assert not table["adapted"].any()  # the model as saved (--adapt: true on every row)
    assert len(table) == len(OVERALL) + len(PER_CLASS) * len(CLASSES)
    assert table["class"].isna().sum() == len(OVERALL)
    defined = table.dropna(subset=["value"])
    assert defined["metric"].isin(["accuracy", "roc_auc", "sensitivity"]).sum() == 1 + 2 * len(CLASSES)
    assert ((defined["low"] <= defined["value"]) & (defined["value"] <= defined["high"])).all()
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["images"] == 32 and summary["images_per_class"] == dict.fromkeys(CLASSES, 8)
    assert summary["class_names"] == list(CLASSES) and summary["skipped_unreadable"] == []
    assert np.asarray(summary["confusion_matrix"]["counts"]).sum() == 32
    assert len(summary["reliability"]) == 15 and summary["bootstrap"]["resamples"] == int(RESAMPLES)
    for figure in OUTPUTS[2:]:
        with Image.open(out / figure) as image:
            assert image.format == "PNG" and image.size[0] > 300


def test_scores_the_probabilities_predict_gives(model_file):
    """The same decoder and model as ``brainfl predict``: the probabilities agree scan by scan."""
    result = evaluate.evaluate_model(model_file, SAMPLE, resamples=20)  # DATA/Testing is used
    table = predict.predict_files(model_file, [SAMPLE / "Testing"])
    assert [str(f) for f in result.files] == table["file"].tolist()
    np.testing.assert_allclose(result.probabilities, table[list(CLASSES)].to_numpy(), atol=1e-6)
    assert [CLASSES[i] for i in result.labels] == [Path(f).parent.name for f in table["file"]]


def test_default_output_folder_is_named_after_model_and_data(model_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run(model_file, copy_classes(tmp_path / "hospital"))
    folder = tmp_path / "evaluation-final_model-hospital"
    assert sorted(p.name for p in folder.iterdir()) == sorted(OUTPUTS)
    assert str(Path("evaluation-final_model-hospital")) in capsys.readouterr().out


def test_a_class_folder_the_model_does_not_know_is_named(model_file, tmp_path):
    data = copy_classes(tmp_path / "hospital")
    shutil.copytree(data / "glioma", data / "astrocytoma")
    message = one_line_error(lambda: run(model_file, data, "--output-dir", tmp_path / "out"))
    assert str(data / "astrocytoma") in message and "glioma" in message
    assert not (tmp_path / "out").exists()


def test_a_class_without_scans_is_reported_as_absent(model_file, tmp_path, capsys):
    data = copy_classes(tmp_path / "hospital", names=CLASSES[:3])
    run(model_file, data, "--output-dir", tmp_path / "out")
    assert "no scans of pituitary" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert summary["images_per_class"]["pituitary"] == 0
    auc = {row["class"]: row["value"] for row in summary["metrics"] if row["metric"] == "roc_auc"}
    assert auc["pituitary"] is None and auc["glioma"] is not None


def test_an_unreadable_scan_is_an_error_unless_skipped(model_file, tmp_path, capsys):
    data = copy_classes(tmp_path / "hospital")
    broken = data / "meningioma" / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    message = one_line_error(lambda: run(model_file, data, "--output-dir", tmp_path / "out"))
    assert str(broken) in message and "--skip-unreadable" in message
    run(model_file, data, "--output-dir", tmp_path / "out", "--skip-unreadable")
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable files" in printed and str(broken) in printed
    summary = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert summary["skipped_unreadable"] == [str(broken)] and summary["images"] == 12


def test_user_mistakes_are_one_line(model_file, tmp_path):
    data = copy_classes(tmp_path / "hospital", per_class=1)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert f"--output-dir: cannot write {blocker}" in one_line_error(
        lambda: run(model_file, data, "--output-dir", blocker)
    )
    assert "data folder not found" in one_line_error(lambda: run(model_file, tmp_path / "nowhere"))
    assert "model file not found" in one_line_error(lambda: run(tmp_path / "no.keras", data))
    assert "--leak-free-only needs" in one_line_error(lambda: run(model_file, data, "--leak-free-only"))
    with pytest.raises(SystemExit):
        parse(["evaluate", "--model", str(model_file), str(data), "--resamples", "0"])


def test_leak_free_only_scores_the_testing_scans_without_a_copy_in_training(model_file, tmp_path):
    run(model_file, SAMPLE, "--leak-free-only", "--output-dir", tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert summary["leak_free_only"] is True and 0 < summary["images"] < 32


def test_scans_with_non_finite_outputs_count_wrong(model_file, tmp_path, first_row_nan, capsys):
    data = copy_classes(tmp_path / "hospital", per_class=2)
    run(model_file, data, "--output-dir", tmp_path / "out")
    assert "1 of 8 scans: the model's outputs are not finite" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert summary["non_finite"] == 1
    assert summary["confusion_matrix"]["counts"][0][-1] == 1  # a glioma scan with no prediction
    assert sum(row["count"] for row in summary["reliability"]) == 7


def test_cli_runs_the_command_when_registered(model_file, tmp_path, capsys):
    parser = cli.build_parser()
    choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if "evaluate" not in choices:
        pytest.skip("brainfl.cli does not register the evaluate sub-command yet")
    data = copy_classes(tmp_path / "hospital", per_class=1)
    argv = ["evaluate", "--model", str(model_file), str(data), "--output-dir", str(tmp_path / "out")]
    assert cli.main([*argv, "--resamples", "20"]) == 0
    assert cli.main(["evaluate", "--model", str(model_file), str(tmp_path / "nowhere")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    # the spellings of earlier releases still work, each with a warning naming the new one
    old = ["evaluate", str(model_file), str(data), "--output", str(tmp_path / "old"), "--resamples", "20"]
    assert cli.main(old) == 0
    err = capsys.readouterr().err
    assert "--output is deprecated, use --output-dir" in err and "use --model MODEL DATA" in err
    assert (tmp_path / "old" / "evaluation.csv").is_file()
    assert cli.main(["evaluate", str(data)]) == 2  # no model at all
    assert "--model" in capsys.readouterr().err
