"""Precise BatchNorm statistics: moving mean and variance set from a site's own un-augmented images.

After local training, Keras' moving statistics mix augmented batches and the
drift of the weights during the epoch; :func:`recalibrate_batchnorm` runs one
forward pass over up to ``PRECISE_BN_IMAGES`` of the site's images with
BatchNorm normalizing by batch statistics, as in training, and sets each
layer's moving mean and variance to their size-weighted batch averages.
:func:`batch_statistics` measures those statistics without setting them, and
:func:`pooled_statistics` combines several sites' as if their images were pooled
(the federation's ``bn-statistics='pooled'``, :mod:`brainfl.federation.statistics_query`).
:func:`minimize_entropy` goes one step further on unlabelled scans (TENT): it
trains only the BatchNorm layers' scale and offset to make the model's
predictions on them confident. Each pass walks the model's functional graph
(a chain of layers or a residual network alike); models that are not a Keras
functional graph, or have no BatchNorm, are left alone.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras.src.models.functional import Functional  # the graph walk Keras' own call uses

from brainfl.model.training import runs_eagerly

PRECISE_BN_IMAGES = 1024
ENTROPY_LEARNING_RATE = 1e-3  # TENT's Adam rate for BatchNorm's scale and offset


def _graph(model: keras.Model) -> Functional | None:
    """The functional graph the passes below walk: the model's own, or a Sequential model's."""
    graph = model if isinstance(model, Functional) else getattr(model, "_functional", None)
    return graph if isinstance(graph, Functional) else None


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The BatchNorm layers whose statistics :func:`recalibrate_batchnorm` sets, in the model's layer
    order (none when the model is not a functional graph)."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    return norms if norms and _graph(model) is not None else []


def _test_time_forward(
    model: keras.Model, x: tf.Tensor, batchnorm_inputs: dict[int, tf.Tensor] | None = None
) -> tf.Tensor:
    """The model's output with BatchNorm normalizing by the batch's statistics, augmentation and dropout
    off (the forward pass of precise BN and of test-time adaptation), through every branch of its
    graph; each BatchNorm layer's input goes into ``batchnorm_inputs`` by ``id`` of the layer."""

    def operation_fn(operation):
        norm = isinstance(operation, keras.layers.BatchNormalization)

        def call(*args, **kwargs):
            if "training" in getattr(operation, "_call_context_args", ()):
                kwargs["training"] = norm
            if norm and batchnorm_inputs is not None:
                batchnorm_inputs[id(operation)] = args[0]
            return operation(*args, **kwargs)

        return call

    return _graph(model)._run_through_graph(x, operation_fn=operation_fn)


@dataclasses.dataclass(frozen=True)
class BatchStatistics:
    """Each BatchNorm layer's input mean and variance (the averages over batches, as precise BN takes
    them) and how many images they come from."""

    means: list[np.ndarray]
    variances: list[np.ndarray]
    images: int

    def arrays(self) -> list[np.ndarray]:
        """The statistics as one list, layer by layer: mean, variance, mean, variance..."""
        return [array for pair in zip(self.means, self.variances, strict=True) for array in pair]

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], images: int) -> BatchStatistics:
        """The statistics from :meth:`arrays`' list."""
        return cls(list(arrays[0::2]), list(arrays[1::2]), images)


def batch_statistics(
    model: keras.Model,
    inputs: np.ndarray,
    batch_size: int,
    max_images: int = PRECISE_BN_IMAGES,
    seed: int = 0,
) -> BatchStatistics | None:
    """Every BN layer's input statistics over at most ``max_images`` of ``inputs`` under the model's
    current weights (see :func:`recalibrate_batchnorm`); None for a model without BN layers this
    module can reach."""
    norms = batchnorm_layers(model)
    if not norms:
        return None
    batch_moments = _batch_moments_function(model)
    order = np.random.default_rng(seed).permutation(len(inputs))[:max_images]
    used = inputs[order]
    batches = [used[start : start + batch_size] for start in range(0, len(used), batch_size)]
    if runs_eagerly(len(batches)):  # the same pass op by op: cheaper than tracing it
        batch_moments = batch_moments.python_function
    per_batch = []
    for batch in batches:
        moments = batch_moments(tf.cast(batch, tf.float32))  # (mean, variance) per BN layer
        per_batch.append(BatchStatistics([m for m, _ in moments], [v for _, v in moments], len(batch)))
    return pooled_statistics(per_batch)  # the batches' averages, weighted by their sizes


def moving_statistics(model: keras.Model) -> BatchStatistics | None:
    """Every BN layer's moving mean and variance as the model holds them (None without BN layers)."""
    norms = batchnorm_layers(model)
    if not norms:
        return None
    return BatchStatistics(
        [layer.moving_mean.numpy() for layer in norms], [layer.moving_variance.numpy() for layer in norms], 0
    )


def set_statistics(model: keras.Model, statistics: BatchStatistics) -> None:
    """Make ``statistics`` every BN layer's moving mean and variance."""
    for layer, mean, variance in zip(
        batchnorm_layers(model), statistics.means, statistics.variances, strict=True
    ):
        layer.moving_mean.assign(np.asarray(mean, dtype=layer.moving_mean.dtype))
        layer.moving_variance.assign(np.asarray(variance, dtype=layer.moving_variance.dtype))


def pooled_statistics(parts: Sequence[BatchStatistics]) -> BatchStatistics:
    """The statistics of several image sets as if their images were pooled: image-weighted averages."""
    images = [part.images for part in parts]
    layers = range(len(parts[0].means))
    return BatchStatistics(
        [np.average([part.means[i] for part in parts], axis=0, weights=images) for i in layers],
        [np.average([part.variances[i] for part in parts], axis=0, weights=images) for i in layers],
        sum(images),
    )


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
    are not a functional graph, or have no BN layer, are left as they are.
    A pass of a few batches runs eagerly (:func:`brainfl.model.training.runs_eagerly`).
    """
    statistics = batch_statistics(model, inputs, batch_size, max_images, seed)
    if statistics is None:
        return 0
    set_statistics(model, statistics)
    return len(statistics.means)


_BATCH_MOMENTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _batch_moments_function(model: keras.Model):
    """A ``tf.function`` (traced once per model, any batch size) returning each BN layer's input moments."""
    if model not in _BATCH_MOMENTS:
        model_ref = weakref.ref(model)  # the cache must not keep the model alive

        @tf.function(input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)])
        def batch_moments(x):
            traced = model_ref()
            inputs: dict[int, tf.Tensor] = {}
            _test_time_forward(traced, x, inputs)
            moments = []
            for layer in batchnorm_layers(traced):
                batch = inputs[id(layer)]
                moments.append(tf.nn.moments(batch, axes=list(range(batch.shape.rank - 1))))
            return moments

        _BATCH_MOMENTS[model] = batch_moments
    return _BATCH_MOMENTS[model]


def minimize_entropy(
    model: keras.Model,
    inputs: np.ndarray,
    epochs: int,
    batch_size: int,
    learning_rate: float = ENTROPY_LEARNING_RATE,
    seed: int = 0,
) -> list[float]:
    """TENT (Wang et al. 2021): train every BatchNorm layer's scale and offset, and nothing else, to
    lower the mean entropy of the model's predicted class probabilities on unlabelled ``inputs``.

    Each step normalizes with the batch's statistics (as AdaBN's estimate does) on a shuffled batch
    (``seed``) of ``inputs``, without augmentation or dropout; Adam at ``learning_rate`` moves the
    scales and offsets for ``epochs`` passes over ``inputs`` (an incomplete last batch is left out).
    The moving statistics are then re-estimated on ``inputs``
    (:func:`recalibrate_batchnorm`): a layer's new scale and offset change what every later layer
    sees. Returns the mean entropy (nats) of each epoch's batches; an empty list, and nothing changed,
    for a model without BatchNorm layers this module can reach.
    """
    norms = batchnorm_layers(model)
    if not norms or epochs < 1:
        return []
    variables = [variable for layer in norms for variable in (layer.gamma, layer.beta)]
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function(input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)])
    def step(x):
        with tf.GradientTape() as tape:
            probabilities = _test_time_forward(model, x)
            per_scan = -tf.reduce_sum(probabilities * tf.math.log(probabilities + 1e-7), axis=1)
            entropy = tf.reduce_mean(per_scan)
        gradients = tape.gradient(entropy, [variable.value for variable in variables])
        optimizer.apply_gradients(zip(gradients, [variable.value for variable in variables], strict=True))
        return entropy

    rng = np.random.default_rng(seed)
    full_batches = max(1, len(inputs) // batch_size)
    per_epoch = []
    for _ in range(epochs):
        order = rng.permutation(len(inputs))
        batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(full_batches)]
        per_epoch.append(float(np.mean([float(step(tf.constant(inputs[b], tf.float32))) for b in batches])))
    recalibrate_batchnorm(model, inputs, batch_size, max_images=len(inputs), seed=seed)
    return per_epoch
