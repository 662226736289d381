"""Intensity standardization: each scan's pixel values put on one scale inside the model, before the CNN.

Hospitals export scans with their own intensity scale: windowing, contrast
stretches, histogram equalization, brighter or darker. The CNN's first layer
standardizes every image on its own, so the scale a hospital chose matters
less. It is a layer of the saved model, after the training augmentation, so
training, the server's test set, ``predict``, ``evaluate``, Grad-CAM and
adaptation all see the same standardized picture, and a model file keeps the
standardization it was trained with (files written before the choice existed
hold the ``image`` layer and decode as they did).

:data:`STANDARDIZATION_LAYERS` is the registry; the ``standardization`` setting picks one
(:data:`brainfl.settings.run_settings.STANDARDIZATIONS` holds the names, known without Keras):

- ``image``: the whole image (background included) to zero mean and unit
  variance, ``(x - mean) / (std + 1)``;
- ``foreground``: nnU-Net's MRI z-score, with the mean and standard deviation
  of the head only (:func:`head_pixels`), applied to every pixel;
- ``percentile``: MONAI's ``ScaleIntensityRangePercentiles`` over the head:
  its 1st to 99th percentile to ``[0, 1]``, clipped;
- ``equalize``: histogram equalization over the head: each head pixel becomes
  the share of head pixels at or below it (in ``(0, 1]``), the background 0.
  Every monotonic change of intensity (gamma, stretch) that keeps the head's
  pixels the head leaves it unchanged;
- ``equalize-otsu``: the same over the head found by Otsu's threshold.

The head is every pixel above :data:`FOREGROUND_FRACTION` of the image's 99th
percentile (the framing crops scans to the head; the rest is background), or,
for ``equalize-otsu``, above Otsu's threshold over :data:`OTSU_BINS` bins of
the image's range: a preparation that lifts the dark background (histogram
equalization, CLAHE, noise) lifts it above a tenth of the 99th percentile, and
the head then takes in the background; Otsu's threshold moves with it.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

FOREGROUND_FRACTION = 0.1  # of the image's 99th percentile: the head's darkest tissue is well above it
PERCENTILES = (0.01, 0.99)  # of the head: the window ``percentile`` scales to [0, 1]
OTSU_BINS = 256  # of each image's range, for Otsu's threshold


def _flat(inputs):
    """``(batch, pixels)``: every channel's pixels of each image in one row."""
    return tf.reshape(inputs, (tf.shape(inputs)[0], -1))


def _at_fraction(sorted_values, fraction: float, start=0, count=None):
    """The value at ``fraction`` of each row's sorted values, among ``count`` values from ``start``."""
    count = tf.shape(sorted_values)[1] if count is None else count
    index = start + tf.cast(tf.round(fraction * tf.cast(count - 1, tf.float32)), tf.int32)
    index = tf.broadcast_to(tf.reshape(index, (-1, 1)), (tf.shape(sorted_values)[0], 1))
    return tf.gather(sorted_values, index, batch_dims=1)


def above_fraction_of_99th_percentile(flat, sorted_values):
    """``(batch, pixels)``: each pixel above :data:`FOREGROUND_FRACTION` of its image's 99th percentile."""
    return flat > FOREGROUND_FRACTION * _at_fraction(sorted_values, 0.99)


def above_otsu_threshold(flat, sorted_values):
    """``(batch, pixels)``: each pixel above its image's Otsu threshold, the bin of
    :data:`OTSU_BINS` bins over the image's range that best separates two classes of
    intensity (the largest between-class variance). A flat image has no head."""
    low, high = sorted_values[:, :1], sorted_values[:, -1:]
    scale = (OTSU_BINS - 1) / tf.maximum(high - low, 1e-6)
    bins = tf.clip_by_value(tf.cast(tf.floor((flat - low) * scale), tf.int32), 0, OTSU_BINS - 1)
    counts = tf.math.bincount(bins, minlength=OTSU_BINS, maxlength=OTSU_BINS, axis=-1, dtype=flat.dtype)
    share = counts / tf.reduce_sum(counts, axis=-1, keepdims=True)
    below = tf.cumsum(share, axis=-1)  # the share of pixels in the dark class, by threshold bin
    dark_sum = tf.cumsum(share * tf.range(OTSU_BINS, dtype=flat.dtype), axis=-1)
    mean = dark_sum[:, -1:]
    spread = below * (1.0 - below)
    between = tf.where(spread > 0, tf.square(mean * below - dark_sum) / tf.maximum(spread, 1e-12), 0.0)
    threshold = tf.argmax(between, axis=-1, output_type=tf.int32)[:, tf.newaxis]
    return (bins > threshold) & (high > low)


def head_pixels(inputs, head_mask=above_fraction_of_99th_percentile):
    """Each image's head, the pixels ``head_mask`` picks (by default above :data:`FOREGROUND_FRACTION`
    of the 99th percentile): ``(flat, head, sorted_values, background)``, the pixels of each image in
    one row, the head mask (both ``(batch, pixels)``), each row sorted (its background first: a head
    mask keeps every pixel above a threshold) and each row's background count (``(batch, 1)``)."""
    flat = _flat(inputs)
    sorted_values = tf.sort(flat, axis=-1)
    head = head_mask(flat, sorted_values)
    background = tf.reduce_sum(tf.cast(~head, tf.int32), axis=-1, keepdims=True)
    return flat, head, sorted_values, background


@keras.saving.register_keras_serializable(package="brainfl")
class PerImageStandardization(keras.layers.Layer):
    """Each whole image to zero mean and unit variance, ``(x - mean) / (std + 1)`` (robust to scanner
    contrast; the ``+ 1`` keeps a flat image finite)."""

    def call(self, inputs):
        mean = keras.ops.mean(inputs, axis=(1, 2, 3), keepdims=True)
        std = keras.ops.std(inputs, axis=(1, 2, 3), keepdims=True)
        return (inputs - mean) / (std + 1.0)


@keras.saving.register_keras_serializable(package="brainfl")
class ForegroundStandardization(keras.layers.Layer):
    """Each image to zero mean and unit variance over its head (nnU-Net's z-score for MRI)."""

    def call(self, inputs):
        flat, head, _, _ = head_pixels(inputs)
        weight = tf.cast(head, flat.dtype)
        count = tf.maximum(tf.reduce_sum(weight, axis=-1, keepdims=True), 1.0)
        mean = tf.reduce_sum(flat * weight, axis=-1, keepdims=True) / count
        variance = tf.reduce_sum(tf.square(flat - mean) * weight, axis=-1, keepdims=True) / count
        return tf.reshape((flat - mean) / (tf.sqrt(variance) + 1.0), tf.shape(inputs))


@keras.saving.register_keras_serializable(package="brainfl")
class PercentileStandardization(keras.layers.Layer):
    """Each image's head from its 1st to its 99th percentile onto ``[0, 1]``, clipped."""

    def call(self, inputs):
        flat, _, sorted_values, background = head_pixels(inputs)
        count = tf.maximum(tf.shape(flat)[1] - background, 1)
        low, high = (_at_fraction(sorted_values, p, background, count) for p in PERCENTILES)
        scaled = (flat - low) / tf.maximum(high - low, 1.0)
        return tf.reshape(tf.clip_by_value(scaled, 0.0, 1.0), tf.shape(inputs))


@keras.saving.register_keras_serializable(package="brainfl")
class HistogramEqualization(keras.layers.Layer):
    """Each head pixel to the share of the head's pixels at or below it; the background to 0."""

    head_mask = staticmethod(above_fraction_of_99th_percentile)

    def call(self, inputs):
        flat, head, sorted_values, background = head_pixels(inputs, self.head_mask)
        count = tf.maximum(tf.shape(flat)[1] - background, 1)
        at_or_below = tf.searchsorted(sorted_values, flat, side="right") - background
        share = tf.cast(at_or_below, flat.dtype) / tf.cast(count, flat.dtype)
        return tf.reshape(tf.where(head, share, 0.0), tf.shape(inputs))


@keras.saving.register_keras_serializable(package="brainfl")
class OtsuHistogramEqualization(HistogramEqualization):
    """:class:`HistogramEqualization` over the head above Otsu's threshold."""

    head_mask = staticmethod(above_otsu_threshold)


STANDARDIZATION_LAYERS: dict[str, Callable[[], keras.layers.Layer]] = {
    "image": PerImageStandardization,
    "foreground": ForegroundStandardization,
    "percentile": PercentileStandardization,
    "equalize": HistogramEqualization,
    "equalize-otsu": OtsuHistogramEqualization,
}


def standardization_layer(name: str) -> keras.layers.Layer:
    """The named standardization as the model's ``standardize`` layer."""
    return STANDARDIZATION_LAYERS[name](name="standardize")


def standardization_of(model: keras.Model) -> str:
    """The name of the standardization a built or loaded CNN applies (``image`` for models without one)."""
    kinds = {layer_class: name for name, layer_class in STANDARDIZATION_LAYERS.items()}
    for layer in model._flatten_layers():
        if type(layer) in kinds:
            return kinds[type(layer)]
    return "image"
