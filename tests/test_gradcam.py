"""Tests of Grad-CAM for both model kinds: a faithful split, heatmaps in [0, 1], overlays at input size."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from brainfl.core.errors import BrainFLError
from brainfl.data.framing import crop_box
from brainfl.inference import gradcam
from brainfl.model.architectures import build_model
from brainfl.model.files import load_model
from conftest import REPO_ROOT
from test_predict import tiny_model_file

SCAN = REPO_ROOT / "sample_data" / "Testing" / "meningioma" / "Te-me_0077.jpg"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_model(tiny_model_file(tmp_path_factory))


@pytest.fixture(scope="module")
def scans(loaded) -> np.ndarray:
    folder = REPO_ROOT / "sample_data" / "Testing"
    files = [
        folder / name / sorted(p.name for p in (folder / name).iterdir())[0] for name in loaded.class_names
    ]
    return np.stack([loaded.preprocess(path) for path in files])


def test_cnn_split_is_faithful_to_the_model(loaded, scans):
    features, rest = gradcam.split_model(loaded.model)
    maps = features(scans.astype("float32"))
    assert maps.shape[0] == len(scans) and maps.shape[1] == maps.shape[2] >= 4  # the last conv stage's map
    assert tuple(maps.shape[1:]) == tuple(gradcam.feature_layer(loaded.model).output.shape[1:])
    np.testing.assert_allclose(
        np.asarray(rest(maps)), np.asarray(loaded.model(scans.astype("float32"), training=False)), atol=1e-5
    )


def test_vgg16_split_is_faithful_to_the_model():
    keras.utils.set_random_seed(0)
    model = build_model("vgg16", 32, 4).inference_model()
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    features, rest = gradcam.split_model(model)
    maps = features(images)
    assert tuple(maps.shape[1:]) == (1, 1, 512)
    np.testing.assert_allclose(np.asarray(rest(maps)), np.asarray(model(images, training=False)), atol=1e-4)
    heatmaps = gradcam.gradcam_heatmaps(model, images)
    assert heatmaps.shape == (2, 1, 1) and ((heatmaps >= 0) & (heatmaps <= 1)).all()


def test_heatmaps_are_normalized_per_image_and_follow_the_class(loaded, scans):
    heatmaps = gradcam.gradcam_heatmaps(loaded.model, scans)
    grid = gradcam.feature_layer(loaded.model).output.shape[1:3]
    assert heatmaps.shape == (len(scans), *grid)
    assert ((heatmaps >= 0) & (heatmaps <= 1)).all()
    peaks = heatmaps.max(axis=(1, 2))
    assert np.all((np.isclose(peaks, 1.0)) | (peaks == 0))
    assert peaks.max() == pytest.approx(1.0)
    per_class = np.stack(
        [gradcam.gradcam_heatmaps(loaded.model, scans[:1], np.asarray([c]))[0] for c in range(4)]
    )
    assert not all(np.allclose(per_class[0], other) for other in per_class[1:])


@pytest.mark.parametrize(("mode", "size"), [("L", (123, 77)), ("RGB", (64, 200)), ("RGBA", (90, 90))])
def test_overlay_has_the_original_size_in_rgb(mode, size):
    original = Image.open(SCAN).convert(mode).resize(size)
    heatmap = np.zeros((4, 4), dtype=np.float32)
    heatmap[1, 2] = 1.0
    result = gradcam.overlay(original, heatmap, "none")
    assert result.mode == "RGB" and result.size == size
    pixels = np.asarray(result, dtype=float)
    assert pixels.std() > 1.0
    # the hot cell is red, cold areas lean blue (jet colormap)
    hot = pixels[int(size[1] * 1.5 / 4), int(size[0] * 2.5 / 4)]
    cold = pixels[int(size[1] * 3.5 / 4), int(size[0] * 0.5 / 4)]
    assert hot[0] > cold[0]


def test_save_gradcam_writes_a_png_of_the_input_size(loaded, tmp_path):
    source = tmp_path / "scan.png"
    Image.open(SCAN).convert("L").resize((211, 173)).save(source)
    out = gradcam.save_gradcam(loaded, source, tmp_path / "cam" / "scan.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (211, 173)
        assert np.asarray(image).std() > 1.0


def test_write_gradcams_names_files_by_stem_and_refuses_no_class(loaded, tmp_path):
    files = [SCAN, SCAN]
    inputs = np.stack([loaded.preprocess(path) for path in files])
    written = gradcam.write_gradcams(loaded, files, inputs, [0, 3], tmp_path / "cams")
    assert [p.name for p in written] == ["Te-me_0077_gradcam.png", "Te-me_0077_2_gradcam.png"]
    assert all(p.is_file() for p in written)
    with pytest.raises(ValueError, match="class indices"):
        gradcam.write_gradcams(loaded, files, inputs, [0, -1], tmp_path / "none")


def test_unknown_model_layout_is_a_clear_error():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs), name="plain")
    with pytest.raises(BrainFLError, match="has no convolutional feature map"):
        gradcam.split_model(model)


def test_undecodable_original_is_a_clear_error(tmp_path: Path):
    broken = tmp_path / "x.png"
    broken.write_bytes(b"nope")
    with pytest.raises(BrainFLError, match="cannot decode image"):
        gradcam.open_original(broken)


def test_overlay_of_a_head_cropped_model_covers_only_the_head():
    scan = np.zeros((100, 200), dtype=np.uint8)
    scan[30:70, 130:170] = 200  # the head: a square on the right
    original = Image.fromarray(scan, "L")
    left, top, right, bottom = crop_box(original, "head")
    hot, cold = (
        np.asarray(gradcam.overlay(original, heat, "head"), dtype=int)
        for heat in (np.ones((4, 4), dtype=np.float32), np.zeros((4, 4), dtype=np.float32))
    )
    heated = (hot != cold).any(axis=-1)
    assert left > 0 and right < 200  # the box is the head, not the whole image
    assert heated[top + 2 : bottom - 2, left + 2 : right - 2].all()
    assert not heated[:, : left - 1].any() and not heated[:, right + 1 :].any()
