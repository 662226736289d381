"""Tests of the models: shapes, VGG-16 weight sources, cached frozen features."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from brainfl.core.errors import BrainFLError
from brainfl.data.loading import load_dataset
from brainfl.model import process_cache
from brainfl.model.architectures import build_model, build_vgg16_extractor
from brainfl.settings.run_settings import MODEL_NAMES, settings_with


def test_cnn_takes_raw_grayscale_pixels_and_outputs_probabilities():
    bundle = build_model("cnn", 48, 4)
    assert bundle.extractor is None
    probabilities = bundle.inference_model().predict(np.full((2, 48, 48, 1), 255.0), verbose=0)
    assert probabilities.shape == (2, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_every_model_setting_builds_its_model():
    for name in MODEL_NAMES:
        bundle = build_model(name, 32, 4)
        assert bundle.name == name and bundle.trainable.output_shape == (None, 4)


def test_the_residual_cnn_adds_each_blocks_input_to_its_convolutions():
    """With the second convolution's normalization zeroed, each block passes on ReLU of its (projected)
    input: the shortcut is really added."""
    model = build_model("rescnn", 32, 4).trainable
    adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert [layer.name for layer in adds] == [f"stage{stage}_add" for stage in range(1, 5)]
    for stage in range(1, 5):
        norm = model.get_layer(f"stage{stage}_b_bn")
        norm.set_weights(
            [np.zeros_like(weight) for weight in norm.get_weights()[:2]] + norm.get_weights()[2:]
        )
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 1)).astype("float32")
    probe = keras.Model(
        model.input, [model.get_layer("stage2_relu").output, model.get_layer("stage2_project_bn").output]
    )
    block_output, shortcut = probe.predict(images, verbose=0)
    np.testing.assert_allclose(block_output, np.maximum(shortcut, 0), atol=1e-5)


def test_vgg16_base_is_frozen_and_only_the_head_trains():
    bundle = build_model("vgg16", 32, 4)
    assert bundle.extractor is not None and not any(w.trainable for w in bundle.extractor.weights)
    assert bundle.trainable.input_shape == (None, 512)
    assert bundle.inference_model().input_shape == (None, 32, 32, 3)


def test_vgg16_loads_a_local_weights_file(tmp_path):
    keras.utils.set_random_seed(1)
    source = build_vgg16_extractor(32, "none")
    weights_file = tmp_path / "vgg16_notop.weights.h5"
    source.get_layer("vgg16").save_weights(weights_file)
    keras.utils.set_random_seed(2)
    loaded = build_vgg16_extractor(32, str(weights_file))
    fresh = build_vgg16_extractor(32, "none")
    first = source.get_layer("vgg16").get_weights()[0]
    np.testing.assert_array_equal(loaded.get_layer("vgg16").get_weights()[0], first)
    assert not np.array_equal(fresh.get_layer("vgg16").get_weights()[0], first)


def test_vgg16_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(BrainFLError, match=r"'vgg-weights': weights file not found: .*nope\.h5"):
        build_vgg16_extractor(32, str(tmp_path / "nope.h5"))


def test_unknown_model_name():
    with pytest.raises(BrainFLError, match="unknown model 'resnet50'"):
        build_model("resnet50", 32, 4)


def test_vgg16_features_are_computed_once_and_cached(tiny_dataset, monkeypatch):
    settings = settings_with(model="vgg16", image_size=32)
    images = load_dataset(tiny_dataset, 32, 3).train
    bundle = build_model("vgg16", 32, 4)
    first = process_cache.model_inputs(settings.model, bundle, images)
    assert first.shape == (16, 512)
    monkeypatch.setattr(bundle, "features", lambda *a, **k: pytest.fail("features recomputed"))
    np.testing.assert_array_equal(process_cache.model_inputs(settings.model, bundle, images), first)
