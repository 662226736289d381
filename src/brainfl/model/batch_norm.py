"""Precise BatchNorm statistics: moving mean and variance set from a site's own un-augmented images.

After local training, Keras' moving statistics mix augmented batches and the
drift of the weights during the epoch; :func:`recalibrate_batchnorm` runs one
forward pass over up to ``PRECISE_BN_IMAGES`` of the site's images with
BatchNorm normalizing by batch statistics, as in training, and sets each
layer's moving mean and variance to their size-weighted batch averages.
Models that are not a chain of layers, or have no BatchNorm, are left alone.
"""

from __future__ import annotations

import itertools
import weakref

import keras
import numpy as np
import tensorflow as tf

from brainfl.model.training import runs_eagerly

PRECISE_BN_IMAGES = 1024


def _is_chain(model: keras.Model) -> bool:
    """Whether each layer of a functional model consumes the previous layer's output alone."""
    layers = model.layers
    return all(current.input is previous.output for previous, current in itertools.pairwise(layers))


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The BatchNorm layers whose statistics :func:`recalibrate_batchnorm` sets (none when the model is
    not a plain chain of layers)."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    return norms if norms and _is_chain(model) else []


def recalibrate_batchnorm(
    model: keras.Model,
    inputs: np.ndarray,
    batch_size: int,
    max_images: int = PRECISE_BN_IMAGES,
    seed: int = 0,
) -> int:
    """Precise BatchNorm: set every BN layer's moving statistics from ``inputs``; return the layer count.

    Keras keeps exponential moving averages of the last few dozen training
    batches, taken on augmented images while the weights were still moving;
    after FedAvg they are an average of the sites' stale averages. Here the
    final weights see ``inputs`` without augmentation (as at test time), each
    BN layer normalizes with the batch's statistics (as in training), and its
    moving mean and variance become the averages over all batches ("precise
    BN", Wu & Johnson 2021), from at most ``max_images`` images (channel
    statistics need few; the pass costs a forward pass over them). The images
    are a random sample (``seed``) in random order: datasets are stored sorted
    by class, and the first images, or batches of one class, would describe
    one class instead of the mix the model is trained and tested on. Models that
    are not a plain chain of layers, or have no BN layer, are left as they are.
    A pass of a few batches runs eagerly (:func:`brainfl.model.training.runs_eagerly`).
    """
    norms = batchnorm_layers(model)
    if not norms:
        return 0
    batch_moments = _batch_moments_function(model)
    order = np.random.default_rng(seed).permutation(len(inputs))[:max_images]
    used = inputs[order]
    batches = [used[start : start + batch_size] for start in range(0, len(used), batch_size)]
    if runs_eagerly(len(batches)):  # the same pass op by op: cheaper than tracing it
        batch_moments = batch_moments.python_function
    per_batch = [batch_moments(tf.cast(batch, tf.float32)) for batch in batches]
    sizes = [len(batch) for batch in batches]
    for index, layer in enumerate(norms):
        layer.moving_mean.assign(np.average([m[index][0] for m in per_batch], axis=0, weights=sizes))
        layer.moving_variance.assign(np.average([m[index][1] for m in per_batch], axis=0, weights=sizes))
    return len(norms)


_BATCH_MOMENTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _batch_moments_function(model: keras.Model):
    """A ``tf.function`` (traced once per model, any batch size) returning each BN layer's input moments."""
    if model not in _BATCH_MOMENTS:
        model_ref = weakref.ref(model)  # the cache must not keep the model alive

        @tf.function(input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)])
        def batch_moments(x):
            moments = []
            for layer in model_ref().layers[1:]:
                if isinstance(layer, keras.layers.BatchNormalization):
                    moments.append(tf.nn.moments(x, axes=list(range(len(x.shape) - 1))))
                    x = layer(x, training=True)  # normalize with the batch's statistics, as in training
                else:
                    x = layer(x, training=False)  # augmentation and dropout off, as at test time
            return moments

        _BATCH_MOMENTS[model] = batch_moments
    return _BATCH_MOMENTS[model]
