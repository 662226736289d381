"""Keras models: a compact CNN and a residual CNN trained from scratch, and a VGG-16 transfer model.

Every model takes raw pixel values (0-255, uint8 cast to float) and does its
own normalization, so the preprocessing travels inside the saved model. A
:class:`ModelBundle` separates what federated learning trains and exchanges
(``trainable``) from a frozen ``extractor`` whose outputs can be computed once
and cached (the VGG-16 base); ``inference_model()`` joins them for saving and
prediction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from brainfl.core.errors import BrainFLError
from brainfl.model.augmentation import augment
from brainfl.model.choices import GEOMETRY_AND_GAMMA, augmentation_names
from brainfl.model.standardization import standardization_layer
from brainfl.settings.run_settings import MODEL_NAMES

VGG_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="brainfl")
class VGGPreprocess(keras.layers.Layer):
    """Caffe-style VGG input: RGB 0-255 to BGR minus the ImageNet mean."""

    def call(self, inputs):
        bgr = keras.ops.flip(inputs, axis=-1)
        return bgr - keras.ops.convert_to_tensor(VGG_MEAN_BGR, dtype=inputs.dtype)


@dataclasses.dataclass
class ModelBundle:
    """A model split into a frozen feature ``extractor`` (or None) and the ``trainable`` part."""

    name: str
    trainable: keras.Model
    extractor: keras.Model | None = None
    class_names: tuple[str, ...] = ()

    def inference_model(self) -> keras.Model:
        """The whole model from image to class probabilities (shares layers)."""
        if self.extractor is None:
            return self.trainable
        inputs = keras.Input(self.extractor.input_shape[1:], name="image")
        outputs = self.trainable(self.extractor(inputs))
        return keras.Model(inputs, outputs, name=f"{self.name}_full")

    def features(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """What ``trainable`` consumes: the images, or the extractor's outputs."""
        if self.extractor is None:
            return images
        return self.extractor.predict(images.astype("float32"), batch_size=batch_size, verbose=0)


GROUPS = 8


def _normalization(norm: str, name: str) -> keras.layers.Layer:
    """BatchNorm (momentum 0.9) or GroupNorm, which keeps no statistics to average or noise."""
    if norm == "group":
        return keras.layers.GroupNormalization(groups=GROUPS, name=f"{name}_gn")
    return keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")


def _conv_norm_relu(x, filters: int, name: str, norm: str, strides: int = 1):
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(
        x
    )
    x = _normalization(norm, name)(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


# Output channels of the stride-2 stem, then of each 3x3 convolution stage.
CNN_STEM = 16
CNN_STAGES = (32, 64, 128, 256)


def _from_scratch(
    name: str,
    stage: Callable,
    widths: tuple[int, ...],
    image_size: int,
    channels: int,
    num_classes: int,
    norm: str,
    augmentation: str,
    standardization: str,
) -> keras.Model:
    """The frame both CNNs share: the training augmentation, the intensity standardization, a
    stride-2 stem, one ``stage(x, filters, name, norm)`` per width with max pooling between them,
    global average pooling, dropout and a softmax layer."""
    inputs = keras.Input((image_size, image_size, channels), name="image")
    x = augment(inputs, augmentation_names(augmentation))
    x = standardization_layer(standardization)(x)
    x = _conv_norm_relu(x, CNN_STEM, "stem", norm, strides=2)
    for index, filters in enumerate(widths, start=1):
        x = stage(x, filters, f"stage{index}", norm)
        if index < len(widths):
            x = keras.layers.MaxPooling2D(name=f"stage{index}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.3, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def build_cnn(
    image_size: int,
    channels: int,
    num_classes: int,
    norm: str = "batch",
    augmentation: str = GEOMETRY_AND_GAMMA,
    standardization: str = "image",
) -> keras.Model:
    """Compact CNN (~0.4M parameters) trained from scratch.

    The named ``augmentation`` transforms (:mod:`brainfl.model.augmentation`, active only in
    training) cover how other hospitals prepare scans; then the named per-image intensity
    ``standardization`` (:mod:`brainfl.model.standardization`), a stride-2 stem and four
    conv-BN-ReLU stages (max pooling between them), global average pooling,
    dropout and a softmax layer. BatchNorm momentum is 0.9: Keras' default
    0.99 leaves the moving statistics far from the data after the few
    hundred steps of a federated round. ``norm="group"`` uses GroupNorm
    (8 groups) instead: nothing data-dependent to average across sites, and
    nothing that DP noise can push out of range.
    """
    args = (image_size, channels, num_classes, norm, augmentation, standardization)
    return _from_scratch("cnn", _conv_norm_relu, CNN_STAGES, *args)


# Output channels of the residual CNN's stages: narrower than the plain CNN's, as each stage has two
# convolutions (a training pass still costs about twice the CNN's: benchmarks/model_cost.py).
RESIDUAL_STAGES = (24, 48, 96, 192)


def _residual_block(x, filters: int, name: str, norm: str):
    """He et al.'s basic block: two 3x3 conv-norm layers added to the input (projected by a 1x1
    conv-norm when the width changes), then ReLU."""
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project_conv")(x)
        shortcut = _normalization(norm, f"{name}_project")(shortcut)
    x = _conv_norm_relu(x, filters, f"{name}_a", norm)
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_b_conv")(x)
    x = _normalization(norm, f"{name}_b")(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def build_residual_cnn(
    image_size: int,
    channels: int,
    num_classes: int,
    norm: str = "batch",
    augmentation: str = GEOMETRY_AND_GAMMA,
    standardization: str = "image",
) -> keras.Model:
    """Residual CNN (~0.7M parameters) trained from scratch: the compact CNN's input, stem, pooling and
    head around four residual blocks (:data:`RESIDUAL_STAGES` channels) instead of single convolutions."""
    args = (image_size, channels, num_classes, norm, augmentation, standardization)
    return _from_scratch("rescnn", _residual_block, RESIDUAL_STAGES, *args)


# The models trained from scratch on grayscale scans, by ``model`` setting (VGG-16 is the transfer model).
FROM_SCRATCH = {"cnn": build_cnn, "rescnn": build_residual_cnn}


def _vgg_weights_argument(weights: str) -> str | None:
    if weights in ("", "none"):
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BrainFLError(f"setting 'vgg-weights': weights file not found: {path}")
    return str(path)


def build_vgg16_extractor(image_size: int, weights: str = "none") -> keras.Model:
    """Frozen VGG-16 convolutional base with global average pooling (512 features)."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = VGGPreprocess(name="vgg_preprocess")(inputs)
    try:
        base = keras.applications.VGG16(
            include_top=False, weights=_vgg_weights_argument(weights), input_shape=(image_size, image_size, 3)
        )
    except BrainFLError:
        raise
    except Exception as error:  # keras raises several types for download/file problems
        raise BrainFLError(
            f"setting 'vgg-weights'={weights!r}: cannot load VGG-16 weights ({error.__class__.__name__}); "
            "without internet put vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 in ~/.keras/models, "
            "pass its path, or use none"
        ) from None
    base.trainable = False
    x = base(x, training=False)
    outputs = keras.layers.GlobalAveragePooling2D(name="vgg_pool")(x)
    return keras.Model(inputs, outputs, name="vgg16_extractor")


def build_vgg16_head(num_features: int, num_classes: int) -> keras.Model:
    """Small classifier trained on cached VGG-16 features."""
    inputs = keras.Input((num_features,), name="features")
    x = keras.layers.Dense(256, activation="relu", name="head_dense")(inputs)
    x = keras.layers.Dropout(0.3, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="vgg16_head")


def build_model(
    name: str,
    image_size: int,
    num_classes: int,
    vgg_weights: str = "none",
    class_names: tuple[str, ...] = (),
    norm: str = "batch",
    augmentation: str = GEOMETRY_AND_GAMMA,
    standardization: str = "image",
) -> ModelBundle:
    """Build the named model (``cnn``, ``rescnn`` or ``vgg16``) for ``num_classes`` classes;
    ``augmentation`` names the CNNs' training transforms and ``standardization`` their intensity
    standardization (the VGG-16 head trains on cached features, without augmentation, after VGG-16's
    own preprocessing)."""
    if name in FROM_SCRATCH:
        cnn = FROM_SCRATCH[name](image_size, 1, num_classes, norm, augmentation, standardization)
        return ModelBundle(name, cnn, None, class_names)
    if name == "vgg16":
        extractor = build_vgg16_extractor(image_size, vgg_weights)
        head = build_vgg16_head(extractor.output_shape[-1], num_classes)
        return ModelBundle(name, head, extractor, class_names)
    raise BrainFLError(f"setting 'model': unknown model '{name}' (choose one of: {', '.join(MODEL_NAMES)})")
