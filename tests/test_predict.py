"""Tests of ``brainfl predict`` on the committed sample images with a tiny model trained here."""

from __future__ import annotations

import argparse
import shutil
import zipfile
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainfl import cli
from brainfl.core.errors import BrainFLError
from brainfl.data.loading import load_dataset
from brainfl.inference import predict
from brainfl.model.architectures import build_model
from brainfl.model.files import model_metadata, read_metadata, save_model
from brainfl.model.training import predict_proba, train
from conftest import CLASSES, REPO_ROOT

SAMPLE = REPO_ROOT / "sample_data"
IMAGE_SIZE = 64
_TRAINED: dict[str, Path] = {}


def tiny_model_file(tmp_path_factory) -> Path:
    """A cnn trained for one epoch on the sample (64 px), saved with brainfl metadata; once per session."""
    if "cnn" not in _TRAINED:
        folder = tmp_path_factory.mktemp("tiny-model")
        data = load_dataset(SAMPLE, IMAGE_SIZE, 1, cache_dir=folder / "cache")
        keras.utils.set_random_seed(0)
        bundle = build_model("cnn", IMAGE_SIZE, len(data.train.class_names))
        train(
            bundle.trainable,
            data.train.images,
            data.train.labels,
            epochs=1,
            batch_size=16,
            learning_rate=3e-3,
        )
        path = folder / "final_model.keras"
        metadata = model_metadata("cnn", data.train.class_names, IMAGE_SIZE, 1)
        save_model(bundle.inference_model(), path, metadata)
        _TRAINED["cnn"] = path
    return _TRAINED["cnn"]


def tiny_model_with(tmp_path_factory, **metadata) -> tuple[Path, Path]:
    """:func:`tiny_model_file`, and a copy of it (``final_model.keras`` in a folder of its own) whose
    metadata adds ``metadata``."""
    plain = tiny_model_file(tmp_path_factory)
    changed = tmp_path_factory.mktemp("changed-metadata") / "final_model.keras"
    save_model(keras.models.load_model(plain), changed, {**read_metadata(plain), **metadata})
    return plain, changed


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return tiny_model_file(tmp_path_factory)


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> list[Path]:
    """Sample scans re-saved at other sizes and modes: RGB 301x207 JPEG, grayscale 150x97 PNG."""
    folder = tmp_path_factory.mktemp("odd")
    rgb = Image.open(SAMPLE / "Testing" / "glioma" / "Te-gl_0037.jpg").convert("RGB").resize((301, 207))
    gray = Image.open(SAMPLE / "Testing" / "pituitary" / "Te-pi_0242.jpg").convert("L").resize((150, 97))
    rgb.save(folder / "rgb.jpg")
    gray.save(folder / "gray.png")
    return [folder / "rgb.jpg", folder / "gray.png"]


def assert_named_probabilities(table: pd.DataFrame) -> None:
    assert list(table.columns[:2]) == ["file", "predicted_class"]
    assert list(table.columns[2:6]) == list(CLASSES)
    probabilities = table[list(CLASSES)].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    assert set(table["predicted_class"]) <= set(CLASSES)
    assert (table["predicted_class"] == np.asarray(CLASSES)[probabilities.argmax(axis=1)]).all()


def test_predicts_named_classes_with_probabilities_summing_to_one(model_file):
    table = predict.predict_files(model_file, [SAMPLE / "Testing"])
    assert len(table) == 32
    assert_named_probabilities(table)


def test_uses_exactly_the_training_preprocessing(model_file, tmp_path):
    """Predictions equal the model's output on the images as the training pipeline decodes them."""
    table = predict.predict_files(model_file, [SAMPLE / "Testing"])
    test_set = load_dataset(SAMPLE, IMAGE_SIZE, 1, cache_dir=tmp_path).test
    expected = predict_proba(keras.models.load_model(model_file), test_set.images)
    by_file = {str(Path(f).relative_to(SAMPLE)): i for i, f in enumerate(table["file"])}
    order = [by_file[f] for f in test_set.files]
    np.testing.assert_allclose(table[list(CLASSES)].to_numpy()[order], expected, atol=1e-5)


def test_reads_any_size_grayscale_or_rgb_and_writes_gradcam_of_the_input_size(
    model_file, odd_images, tmp_path
):
    table = predict.predict_files(model_file, odd_images, gradcam_dir=tmp_path / "cams")
    assert_named_probabilities(table)
    for source, cam in zip(odd_images, table["gradcam"], strict=True):
        cam = Path(cam)
        assert cam.parent == tmp_path / "cams" and cam.suffix == ".png"
        with Image.open(cam) as written, Image.open(source) as original:
            assert written.format == "PNG"
            assert written.size == original.size
            pixels = np.asarray(written)
        assert pixels.std() > 1.0, "Grad-CAM overlay is constant"


def test_folders_expand_recursively_skipping_hidden_and_non_images(model_file, tmp_path):
    root = tmp_path / "scans"
    for name in ("a/b/one.jpg", "a/two.JPG", ".hidden/three.jpg", "a/.four.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE / "Testing" / "notumor" / "Te-no_0254.jpg", root / name)
    (root / "a" / "notes.txt").write_text("not an image")
    table = predict.predict_files(model_file, [root])
    assert sorted(Path(f).relative_to(root).as_posix() for f in table["file"]) == ["a/b/one.jpg", "a/two.JPG"]


def test_a_folder_with_scan_files_the_decoder_does_not_read_is_refused_as_prepare_refuses_it(
    model_file, tmp_path, caplog
):
    root = tmp_path / "scans"
    root.mkdir()
    shutil.copy(SAMPLE / "Testing" / "notumor" / "Te-no_0254.jpg", root / "one.jpg")
    (root / "movie.gif").write_bytes(b"GIF89a")
    (root / "volume.nii.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(BrainFLError, match=r"unsupported scan file .*movie\.gif \(2 such files"):
        predict.predict_files(model_file, [root])
    table = predict.predict_files(model_file, [root], skip_unreadable=True)
    assert [Path(f).name for f in table["file"]] == ["one.jpg"]
    assert "skipping unsupported scan file" in caplog.text and "volume.nii.gz" in caplog.text


def test_same_stems_get_distinct_gradcam_files(model_file, tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        shutil.copy(SAMPLE / "Testing" / "glioma" / "Te-gl_0037.jpg", tmp_path / folder / "scan.jpg")
    table = predict.predict_files(model_file, [tmp_path / "x", tmp_path / "y"], gradcam_dir=tmp_path / "cams")
    assert len(set(table["gradcam"])) == 2
    assert all(Path(p).is_file() for p in table["gradcam"])


def one_line_error(call) -> str:
    with pytest.raises(BrainFLError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_user_mistakes_are_one_clear_line(model_file, tmp_path):
    image = SAMPLE / "Testing" / "glioma" / "Te-gl_0037.jpg"
    assert "image file or folder not found" in one_line_error(
        lambda: predict.predict_files(model_file, [tmp_path / "missing.jpg"])
    )
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    assert f"cannot decode image {broken}" in one_line_error(
        lambda: predict.predict_files(model_file, [broken])
    )
    (tmp_path / "empty").mkdir()
    assert "no image files" in one_line_error(lambda: predict.predict_files(model_file, [tmp_path / "empty"]))
    assert "model file not found" in one_line_error(
        lambda: predict.predict_files(tmp_path / "no.keras", [image])
    )
    assert "not a Keras .keras file" in one_line_error(lambda: predict.predict_files(broken, [image]))


def test_refuses_a_model_without_metadata(model_file, tmp_path):
    bare = tmp_path / "bare.keras"
    with zipfile.ZipFile(model_file) as source, zipfile.ZipFile(bare, "w") as target:
        for item in source.infolist():
            if item.filename != "brainfl.json":
                target.writestr(item, source.read(item))
    message = one_line_error(lambda: predict.predict_files(bare, [SAMPLE / "Testing" / "glioma"]))
    assert str(bare) in message and "no brainfl metadata" in message


def test_model_without_metadata_uses_the_run_config_beside_it(model_file, tmp_path):
    """A model saved without metadata inside a run folder takes it from that run's run_config.json."""
    run = tmp_path / "run"
    run.mkdir()
    bare = run / "final_model.keras"
    with zipfile.ZipFile(model_file) as source, zipfile.ZipFile(bare, "w") as target:
        for item in source.infolist():
            if item.filename != "brainfl.json":
                target.writestr(item, source.read(item))
    (run / "run_config.json").write_text(
        f'{{"model": "cnn", "image-size": {IMAGE_SIZE}, "class-names": {list(CLASSES)!r}}}'.replace("'", '"')
    )
    table = predict.predict_files(bare, [SAMPLE / "Testing" / "meningioma"])
    assert_named_probabilities(table)


def test_refuses_a_model_whose_input_disagrees_with_its_metadata(model_file, tmp_path):
    wrong = tmp_path / "wrong.keras"
    metadata = {"model": "cnn", "class_names": list(CLASSES), "image_size": 128, "channels": 1}
    save_model(keras.models.load_model(model_file), wrong, metadata)
    message = one_line_error(lambda: predict.predict_files(wrong, [SAMPLE / "Testing" / "glioma"]))
    assert str(wrong) in message and "(64, 64, 1)" in message and "image_size=128" in message
    fewer = tmp_path / "fewer.keras"
    metadata = {"model": "cnn", "class_names": ["a", "b"], "image_size": IMAGE_SIZE, "channels": 1}
    save_model(keras.models.load_model(model_file), fewer, metadata)
    assert "4 outputs" in one_line_error(
        lambda: predict.predict_files(fewer, [SAMPLE / "Testing" / "glioma"])
    )


@pytest.fixture(scope="module")
def nan_model_file(model_file, tmp_path_factory) -> Path:
    """The tiny model with a NaN output bias: every output is NaN, as after a poisoned round."""
    model = keras.models.load_model(model_file, compile=False)
    head = model.layers[-1]
    head.set_weights([*head.get_weights()[:-1], np.full_like(head.get_weights()[-1], np.nan)])
    path = tmp_path_factory.mktemp("nan-model") / "final_model.keras"
    save_model(model, path, read_metadata(model_file))
    return path


def test_a_model_with_nan_outputs_predicts_no_class(nan_model_file, tmp_path, capsys):
    table = predict.predict_files(
        nan_model_file, [SAMPLE / "Testing" / "glioma"], gradcam_dir=tmp_path / "cams"
    )
    assert len(table) > 0
    assert np.isnan(table[list(CLASSES)].to_numpy()).all()
    assert (table["predicted_class"] == predict.INVALID).all()  # not class 0 (glioma), as argmax gives
    assert (table["gradcam"] == "").all() and list((tmp_path / "cams").iterdir()) == []
    args = parse(["predict", str(SAMPLE / "Testing" / "glioma"), "--model", str(nan_model_file)])
    args.handler(args)
    out = capsys.readouterr().out
    assert predict.INVALID in out and "not finite" in out
    rows = [[cell.strip() for cell in line.split("│")] for line in out.splitlines() if "Te-gl" in line]
    assert len(rows) == len(table) and all(row[2] == predict.INVALID for row in rows)  # the class column


def test_only_the_images_with_finite_outputs_get_a_class_and_an_overlay(model_file, tmp_path, first_row_nan):
    files = sorted((SAMPLE / "Testing" / "pituitary").iterdir())[:3]
    table = predict.predict_files(model_file, files, gradcam_dir=tmp_path / "cams")
    assert table["predicted_class"].tolist()[0] == predict.INVALID
    assert set(table["predicted_class"].tolist()[1:]) <= set(CLASSES)
    expected = [f"{f.stem}_gradcam.png" for f in files[1:]]
    assert table["gradcam"].tolist()[0] == ""
    assert [Path(p).name for p in table["gradcam"].tolist()[1:]] == expected
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == sorted(expected)


def test_write_gradcams_stays_importable_from_predict():
    from brainfl.inference import gradcam
    from brainfl.inference.gradcam import write_gradcams

    assert write_gradcams is gradcam.write_gradcams


def parse(argv: list[str]) -> argparse.Namespace:
    return cli.build_parser().parse_args(argv)


def test_command_prints_a_table_and_saves_csv_and_gradcams(model_file, odd_images, tmp_path, capsys):
    csv_path, cams = tmp_path / "out" / "p.csv", tmp_path / "cams"
    args = parse(
        [
            "predict",
            *map(str, odd_images),
            "--model",
            str(model_file),
            "--csv",
            str(csv_path),
            "--gradcam",
            str(cams),
        ]
    )
    args.handler(args)
    out = capsys.readouterr().out
    for name in (*CLASSES, "rgb.jpg", "gray.png"):
        assert name in out
    saved = pd.read_csv(csv_path)
    assert_named_probabilities(saved)
    assert sorted(p.name for p in cams.iterdir()) == ["gray_gradcam.png", "rgb_gradcam.png"]


def test_cli_reports_a_mistake_with_exit_code_2(model_file, tmp_path, capsys):
    parser = cli.build_parser()
    choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if "predict" not in choices:
        pytest.skip("brainfl.cli does not register the predict sub-command yet")
    assert cli.main(["predict", str(tmp_path / "missing.jpg"), "--model", str(model_file)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "image file or folder not found" in errors[0]


def test_an_unreadable_file_fails_the_prediction_unless_skipped_and_named(
    model_file, tmp_path, capsys
) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    good = next((REPO_ROOT / "sample_data" / "Testing" / "glioma").glob("*.jpg"))
    (folder / "good.jpg").write_bytes(good.read_bytes())
    (folder / "broken.png").write_bytes(b"not an image")
    assert cli.main(["predict", str(folder), "--model", str(model_file)]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert cli.main(["predict", str(folder), "--model", str(model_file), "--skip-unreadable"]) == 0
    out = capsys.readouterr().out
    assert f"skipped unreadable file: {folder / 'broken.png'}" in out and "good.jpg" in out


def test_a_model_decodes_scans_as_its_metadata_says_it_was_trained(model_file, tmp_path):
    """New files crop to the head; a file written before cropping (no ``crop``) is decoded uncropped."""
    from brainfl.data.decoding import decode_scan
    from brainfl.model.files import load_model

    scan = next((SAMPLE / "Testing" / "glioma").glob("*.jpg"))
    wide = tmp_path / "wide.png"
    original = Image.open(scan).convert("L")
    canvas = Image.new("L", (original.width * 2, original.height * 2))
    canvas.paste(original, (10, 10))
    canvas.save(wide)
    loaded = load_model(model_file)
    assert read_metadata(model_file)["crop"] == "head" and loaded.crop == "head"
    assert np.array_equal(loaded.preprocess(wide), decode_scan(wide, IMAGE_SIZE, 1, "head"))
    older = tmp_path / "older.keras"
    metadata = {"model": "cnn", "class_names": list(CLASSES), "image_size": IMAGE_SIZE, "channels": 1}
    save_model(keras.models.load_model(model_file), older, metadata)
    loaded_older = load_model(older)
    assert loaded_older.crop == "none"
    assert np.array_equal(loaded_older.preprocess(wide), decode_scan(wide, IMAGE_SIZE, 1, "none"))
    assert not np.array_equal(loaded_older.preprocess(wide), loaded.preprocess(wide))
    odd = tmp_path / "odd.keras"
    save_model(keras.models.load_model(model_file), odd, {**metadata, "crop": "tight"})
    assert "crop one of head, head-otsu, none" in one_line_error(lambda: load_model(odd))


def test_an_output_under_a_file_is_one_line_before_any_scan_is_scored(
    model_file, tmp_path, capsys, monkeypatch
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(
        predict, "predict_files", lambda *args, **kwargs: pytest.fail("scored before the check")
    )
    scans = str(SAMPLE / "Testing" / "glioma")
    for option in ("--csv", "--gradcam"):
        assert cli.main(["predict", scans, "--model", str(model_file), option, str(blocker / "out")]) == 2
        err = capsys.readouterr().err
        assert f"{option}: cannot write {blocker / 'out'}: {blocker} is a file, not a folder" in err
