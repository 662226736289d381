"""Tests of the training augmentation: each transform, the registry and the ``augmentation`` setting."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from brainfl.core.errors import BrainFLError
from brainfl.model.architectures import build_cnn
from brainfl.model.augmentation import (
    AUGMENT_GAMMA,
    AUGMENTATIONS,
    BIAS_STRENGTH,
    NOISE_SIGMA,
    RandomBiasField,
    RandomBlur,
    RandomGamma,
    RandomIntensityCurve,
    RandomNoise,
    RandomTexture,
)
from brainfl.model.choices import (
    AUGMENTATION_NAMES,
    DEFAULT_AUGMENTATION,
    GEOMETRY_AND_GAMMA,
    augmentation_names,
)


def scans(count: int = 8, size: int = 32, seed: int = 0) -> np.ndarray:
    """Bright discs on black, each with its own brightness: scan-like 0-255 float images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2).astype("float32")
    texture = rng.uniform(0.5, 1.0, (count, size, size)).astype("float32")
    return (disc * texture * rng.uniform(100, 250, (count, 1, 1)))[..., None].astype("float32")


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_every_transform_is_the_identity_at_inference_and_changes_scans_in_training(name):
    keras.utils.set_random_seed(0)
    layer = AUGMENTATIONS[name]()
    if hasattr(layer, "probability"):
        layer.probability = 1.0  # every image, so that a change is certain
    images = scans()
    assert np.array_equal(np.asarray(layer(images, training=False)), images)
    out = np.asarray(layer(images, training=True))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
    assert not np.allclose(out, images)


@pytest.mark.parametrize(
    "layer", [RandomNoise, RandomIntensityCurve, RandomBlur, RandomBiasField, RandomTexture]
)
def test_a_transform_with_a_probability_changes_about_that_share_of_images_and_leaves_the_rest(layer):
    images = scans(400, 16)
    out = np.asarray(layer(seed=5, probability=0.25)(images, training=True))
    changed = np.abs(out - images).reshape(400, -1).max(axis=1) > 1e-3
    assert 0.17 < changed.mean() < 0.33
    np.testing.assert_array_equal(out[~changed], images[~changed])


def test_the_intensity_curve_is_monotonic_per_image_and_drawn_per_image():
    layer = RandomIntensityCurve(seed=1)
    ramp = np.tile(np.linspace(0, 255, 256, dtype="float32"), (16, 4, 1))[..., None]
    out = np.asarray(layer(ramp, training=True))[:, 0, :, 0]
    assert np.all(np.diff(out, axis=1) >= -1e-3)  # dark stays darker than bright, in every image
    assert np.allclose(out[:, 0], 0, atol=1e-3)  # black stays black
    assert out[:, 128].std() > 5  # each image its own curve
    assert (out[:, -1] >= 255 - 1e-3).all()  # the gain saturates the brightest pixels at 255


def test_the_bias_field_is_smooth_multiplicative_and_within_its_range():
    layer = RandomBiasField(seed=2)
    flat = np.full((8, 32, 32, 1), 100.0, dtype="float32")
    field = np.asarray(layer(flat, training=True))[..., 0] / 100
    assert np.array_equal(np.asarray(layer(np.zeros_like(flat), training=True)), np.zeros_like(flat))
    bound = np.exp(BIAS_STRENGTH * np.sqrt(2) + BIAS_STRENGTH / 2 * (2 - 2 / 3))
    assert field.min() >= 1 / bound - 1e-4 and field.max() <= bound + 1e-4
    assert np.abs(np.diff(field, axis=1)).max() < 0.1  # smooth: neighbours differ little
    assert field.max() / field.min() > 1.2  # but it does vary across the image


def test_blur_lowers_sharpness_and_noise_stays_within_its_sigma():
    images = scans(16)
    blurred = np.asarray(RandomBlur(seed=3)(images, training=True))
    assert np.abs(np.diff(blurred, axis=2)).mean() < np.abs(np.diff(images, axis=2)).mean()
    black = np.full((16, 32, 32, 1), 128.0, dtype="float32")
    noisy = np.asarray(RandomNoise(seed=4)(black, training=True)) - 128
    stds = noisy.reshape(16, -1).std(axis=1)
    assert stds.max() <= NOISE_SIGMA * 1.1 and stds.std() > 1  # per-image sigma in [0, NOISE_SIGMA]
    background = np.asarray(RandomNoise(seed=4)(np.zeros_like(black), training=True))
    assert (background > 0).mean() > 0.3  # noise over the black background too


def test_texture_keeps_each_scans_brightness_and_contrast_and_its_bright_tissue_bright():
    images = 60 + 0.5 * scans(16, 32, seed=1)  # a grey background: little is clipped at 0
    layer = RandomTexture(seed=2)
    first, second = (np.asarray(layer(images, training=True)) for _ in range(2))
    flat, out = images.reshape(16, -1), first.reshape(16, -1)
    np.testing.assert_allclose(out.mean(axis=1), flat.mean(axis=1), rtol=0.06)  # clipping moves it a little
    contrast = out.std(axis=1) / flat.std(axis=1)  # a blend of two images of equal spread, not identical
    assert (contrast > 0.4).all() and (contrast < 1.05).all()
    correlations = [np.corrcoef(a, b)[0, 1] for a, b in zip(flat, out, strict=True)]
    assert min(correlations) > 0  # never a contrast inversion
    blend = np.abs(out - flat).mean(axis=1)
    assert blend.std() > 0.2 * blend.mean()  # the blend weight is drawn per image
    assert not np.allclose(first, second)  # a new random network for each batch


def test_gamma_augmentation_changes_contrast_per_image_in_training_only():
    layer = RandomGamma(AUGMENT_GAMMA, seed=3)
    ramp = np.tile(np.linspace(0, 255, 64, dtype="float32"), (8, 64, 1))[..., None]
    assert np.array_equal(np.asarray(layer(ramp)), ramp)  # inference: untouched
    out = np.asarray(layer(ramp, training=True))
    assert np.allclose(out[:, :, 0], 0, atol=1e-3) and np.allclose(out[:, :, -1], 255, atol=1e-2)
    middle = out[:, 0, 32, 0] / 255
    exponents = np.log(middle) / np.log(ramp[0, 0, 32, 0] / 255)  # each image's own gamma
    assert (exponents >= 1 / AUGMENT_GAMMA - 1e-3).all() and (exponents <= AUGMENT_GAMMA + 1e-3).all()
    assert exponents.std() > 0.05  # drawn per image
    assert np.all(np.diff(out[0, 0, :, 0]) >= 0)  # a monotone curve: dark stays darker than bright


def test_the_setting_names_transforms_in_any_order_and_refuses_unknown_ones():
    assert augmentation_names("noise, flip") == ("flip", "noise")  # the registry's order
    assert augmentation_names("none") == augmentation_names("") == ()
    assert augmentation_names(DEFAULT_AUGMENTATION) == tuple(AUGMENTATIONS) == AUGMENTATION_NAMES
    with pytest.raises(BrainFLError, match="setting 'augmentation': unknown transform 'sharpen'"):
        augmentation_names("flip,sharpen")


def test_the_model_holds_exactly_the_named_transforms_and_the_earlier_recipe_builds_its_layers():
    names = lambda model: [layer.name for layer in model.layers if layer.name.startswith("aug_")]  # noqa: E731
    assert names(build_cnn(32, 1, 4)) == ["aug_flip", "aug_gamma", "aug_rotate", "aug_zoom", "aug_shift"]
    assert names(build_cnn(32, 1, 4, augmentation=GEOMETRY_AND_GAMMA)) == names(build_cnn(32, 1, 4))
    assert names(build_cnn(32, 1, 4, augmentation="noise,curve")) == ["aug_curve", "aug_noise"]
    assert names(build_cnn(32, 1, 4, augmentation="none")) == []


def test_a_model_with_every_transform_saves_loads_and_predicts_the_same(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_cnn(32, 1, 4, augmentation=DEFAULT_AUGMENTATION)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    images = scans()
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
