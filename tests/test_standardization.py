"""Intensity standardization: each choice's defining property, the default unchanged, files that keep it,
and DICOM and PNG scans through it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from brainfl.core.errors import BrainFLError
from brainfl.federation.validation import architecture
from brainfl.model.architectures import build_cnn, build_model
from brainfl.model.files import load_model, model_metadata, save_model
from brainfl.model.standardization import (
    STANDARDIZATION_LAYERS,
    ForegroundStandardization,
    HistogramEqualization,
    OtsuHistogramEqualization,
    PercentileStandardization,
    PerImageStandardization,
    standardization_of,
)
from brainfl.settings.run_settings import STANDARDIZATIONS, check_settings, settings_with
from conftest import CLASSES
from scan_files import scan_to_dicom


def head_image(seed: int = 0, head: int = 12, pad: int = 6) -> np.ndarray:
    """One scan-like image: a bright, textured square head (``head`` pixels wide) with ``pad`` black
    pixels around it."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(100, 250, (1, head, head, 1)).astype(np.float32)
    return np.pad(values, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def standardized(layer_class, images: np.ndarray) -> np.ndarray:
    return np.asarray(layer_class()(images))


def test_registry_holds_every_setting_value_and_unknown_names_are_one_line():
    assert tuple(STANDARDIZATION_LAYERS) == STANDARDIZATIONS
    assert settings_with().model.standardization == "image"
    with pytest.raises(BrainFLError, match="setting 'standardization': unknown 'zscore'"):
        check_settings(settings_with(standardization="zscore"))


def test_default_builds_the_earlier_layer_under_its_name():
    model = build_cnn(32, 1, 4)
    layer = model.get_layer("standardize")
    assert type(layer) is PerImageStandardization and standardization_of(model) == "image"
    image = head_image()
    mean, std = image.mean(), image.std()
    assert np.allclose(standardized(PerImageStandardization, image), (image - mean) / (std + 1), atol=1e-5)


def test_equalize_ignores_any_monotonic_change_of_intensity():
    image = head_image()
    head = image > 0
    for changed in (255 * (image / 255) ** 1.4, 0.6 * image + 80 * head, np.sqrt(image) * 15):
        assert np.array_equal(
            standardized(HistogramEqualization, changed), standardized(HistogramEqualization, image)
        )
    out = standardized(HistogramEqualization, image)
    assert np.all(out[~head] == 0) and out[head].min() > 0 and out[head].max() == 1
    # the head's values are spread evenly: their shares are the ranks
    assert np.allclose(np.sort(out[head]), np.arange(1, head.sum() + 1) / head.sum())


def test_otsu_head_stays_the_head_under_a_contrast_stretch_and_an_equalization_of_a_noisy_background():
    rng = np.random.default_rng(1)
    image = np.rint(head_image(head=20, pad=4))  # the head about half the picture, as the head crop frames it
    head = image > 0
    image[~head] = rng.integers(0, 12, int((~head).sum()))  # a dark, noisy background, as JPEG leaves it
    stretched = 1.7 * image + 20  # Otsu's bins span each image's own range: the same pixels in each
    assert np.array_equal(*(standardized(OtsuHistogramEqualization, x) for x in (image, stretched)))
    equalized = np.asarray(ImageOps.equalize(Image.fromarray(image[0, ..., 0].astype(np.uint8))), np.float32)
    equalized = equalized[np.newaxis, ..., np.newaxis]
    assert equalized[~head].max() > 0.1 * np.percentile(equalized, 99)  # the background lifted
    otsu, lifted = (standardized(OtsuHistogramEqualization, x) for x in (image, equalized))
    assert np.all(otsu[~head] == 0) and np.all(lifted[~head] == 0)
    assert np.abs(otsu - lifted).max() < 0.05  # the same ranks, but where the equalization merged values
    # the tenth of the 99th percentile takes the lifted background for head
    assert not np.all(standardized(HistogramEqualization, equalized)[~head] == 0)


def test_otsu_head_of_a_flat_image_is_empty():
    flat = np.full((1, 8, 8, 1), 90.0, np.float32)
    assert np.all(standardized(OtsuHistogramEqualization, flat) == 0)


def test_percentile_ignores_brightness_and_contrast_of_the_head():
    image = head_image()
    head = image > 0
    out = standardized(PercentileStandardization, image)
    assert out.min() == 0 and out.max() == 1 and np.all(out[~head] == 0)
    stretched = np.clip(1.3 * image - 60 * head, 0, None)  # contrast stretched, the head kept above 0
    assert np.allclose(standardized(PercentileStandardization, stretched), out, atol=1e-5)
    assert not np.allclose(
        standardized(PerImageStandardization, stretched),
        standardized(PerImageStandardization, image),
        atol=0.05,
    )


def test_foreground_statistics_ignore_how_much_background_a_scan_has():
    tight, wide = head_image(pad=2), head_image(pad=14)
    tight_head, wide_head = tight > 0, wide > 0
    z_tight = standardized(ForegroundStandardization, tight)[tight_head]
    z_wide = standardized(ForegroundStandardization, wide)[wide_head]
    assert np.allclose(np.sort(z_tight), np.sort(z_wide), atol=1e-4)
    assert abs(z_tight.mean()) < 1e-4 and 0.95 < z_tight.std() < 1
    # over the whole image the head's values depend on the background's share
    image_tight = standardized(PerImageStandardization, tight)[tight_head]
    image_wide = standardized(PerImageStandardization, wide)[wide_head]
    assert not np.allclose(np.sort(image_tight), np.sort(image_wide), atol=0.1)


@pytest.mark.parametrize("name", STANDARDIZATIONS)
def test_a_model_file_keeps_its_standardization(name, tmp_path):
    bundle = build_model("cnn", 32, len(CLASSES), standardization=name)
    path = tmp_path / "model.keras"
    save_model(bundle.inference_model(), path, model_metadata("cnn", CLASSES, 32, 1))
    loaded = load_model(path)
    assert loaded.standardization == name == architecture(loaded)["standardization"]
    images = np.concatenate([head_image(seed, head=20) for seed in range(3)])
    assert np.allclose(loaded.model.predict(images, verbose=0), bundle.trainable.predict(images, verbose=0))


def test_a_dicom_and_a_brighter_png_of_one_scan_are_standardized_alike(real_data, tmp_path):
    source = sorted((real_data / "Training" / "glioma").glob("*.jpg"))[0]
    dicom = scan_to_dicom(source, tmp_path / "scan.dcm")  # 12-bit stored values, windowed by the decoder
    gray = np.asarray(Image.open(source).convert("L"), dtype=np.float32)
    brighter = tmp_path / "scan.png"  # another group's export: a brighter intensity curve
    Image.fromarray(np.rint(255 * (gray / 255) ** 0.7).astype(np.uint8)).save(brighter)
    gaps = {}
    for name in ("image", "equalize"):
        bundle = build_model("cnn", 64, len(CLASSES), standardization=name)
        path = tmp_path / f"{name}.keras"
        save_model(bundle.inference_model(), path, model_metadata("cnn", CLASSES, 64, 1))
        loaded = load_model(path)
        layer = loaded.model.get_layer("standardize")
        dicom_input, png_input = (
            loaded.preprocess(scan)[np.newaxis].astype(np.float32) for scan in (dicom, brighter)
        )
        gaps[name] = np.abs(np.asarray(layer(dicom_input)) - np.asarray(layer(png_input))).mean()
    assert gaps["equalize"] < 0.3 * gaps["image"]
