"""Local training and prediction, shared by sites, the server and benchmarks.

One code path trains a model for some epochs on arrays (images or cached
features) with AdamW (or SGD with momentum: SCAFFOLD's correction assumes
plain gradient steps), label smoothing and a tf.data input pipeline; the
optimizer starts fresh at every call, so each federated round does too (its
state is zeroed, the compiled model and its traced training step are kept).
With ``proximal_mu > 0`` the loss gains FedProx's proximal term
``mu / 2 * ||w - w_global||^2`` over the trainable weights (``w_global``: the
starting weights, or a given ``anchor``, as Ditto's personal model is pulled
toward the received global model while it starts from its own). With a
``class_prior`` (a site's own class frequencies) the loss is the balanced
softmax: the model is trained as if its outputs were re-weighted by that
prior, so a site that holds few images of a class does not teach the shared
model to rule that class out.
Random layers (augmentation, dropout) restart from the call's seed, so an
update depends on its seed, not on what the process trained before. Precise
BatchNorm statistics are :mod:`brainfl.model.batch_norm`'s job.

Work of a few batches (:data:`EAGER_MAX_BATCHES`: a tiny site's fit, a
site's validation) runs op by op instead of through a traced ``tf.function``:
on the deployment engine every message is a fresh process, whose first
traced training step costs ~1.3 s of CPU more than an eager one. Eager and
traced steps compute the same thing; they differ by float round-off only
(the traced graph fuses convolution, BatchNorm and ReLU kernels).
"""

from __future__ import annotations

import dataclasses
import math
import weakref

import keras
import numpy as np
import tensorflow as tf

from brainfl.settings.run_settings import RunSettings, TrainingSettings

# Tracing costs ~1.3 s of CPU for the training step (~0.2 s for predict and precise BN); an
# eager step ~0.15 s more than a traced one (CNN, 32-64 px): up to 4 batches, eager is cheaper.
EAGER_MAX_BATCHES = 4
# Training and inference batches run per call into the traced step: Keras' per-step overhead
# (Python, callbacks, metrics) is paid once per this many batches instead of once per batch.
STEPS_PER_EXECUTION = 32


def runs_eagerly(num_batches: int) -> bool:
    """Whether work of ``num_batches`` batches runs op by op (cheaper than tracing it)."""
    return num_batches <= EAGER_MAX_BATCHES


def make_dataset(
    inputs: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int, seed: int, shuffle: bool = True
) -> tf.data.Dataset:
    """Batched (input, one-hot label) pairs, shuffled per epoch with ``seed``."""
    data = tf.data.Dataset.from_tensor_slices((inputs, labels))
    if shuffle:
        data = data.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size)
    data = data.map(
        lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return data.prefetch(tf.data.AUTOTUNE)


class AnchoredModel(keras.Model):
    """Wraps a model so training adds terms around the weights it started from to the loss.

    FedProx's ``mu / 2 * ||w - w_anchor||^2`` (``mu`` > 0; the anchors are ``anchor``,
    one array per trainable weight, else copies of the trainable weights when the
    wrapper is made: the global model the site received), and SCAFFOLD's drift
    correction ``sum(w * (c - c_i))`` (``correction``, one array per trainable
    weight): its gradient ``c - c_i`` is added to every step's gradient, so the
    optimizer sees ``g - c_i + c``.
    """

    def __init__(
        self,
        inner: keras.Model,
        mu: float,
        correction: list[np.ndarray] | None = None,
        anchor: list[np.ndarray] | None = None,
    ) -> None:
        super().__init__(name=f"{inner.name}_anchored")
        self.inner = inner
        self.mu = mu
        starts = [weight.numpy() for weight in inner.trainable_weights] if anchor is None else anchor
        if len(starts) != len(inner.trainable_weights):
            count = len(inner.trainable_weights)
            raise ValueError(f"{len(starts)} anchor arrays for {count} trainable weights")
        self.anchors = [
            keras.Variable(np.asarray(array, dtype="float32"), trainable=False, name=f"anchor_{index}")
            for index, array in enumerate(starts)
        ]
        self.correction = [
            keras.Variable(np.asarray(array, dtype="float32"), trainable=False, name=f"correction_{index}")
            for index, array in enumerate(correction or [])
        ]

    @property
    def output_shape(self) -> tuple:
        """The wrapped model's output shape (a subclassed model has none of its own)."""
        return self.inner.output_shape

    def call(self, inputs, training: bool = False):
        if training and self.mu > 0:
            distance = sum(
                keras.ops.sum(keras.ops.square(weight - anchor))
                for weight, anchor in zip(self.inner.trainable_weights, self.anchors, strict=True)
            )
            self.add_loss(0.5 * self.mu * distance)
        if training and self.correction:
            drift = sum(
                keras.ops.sum(weight * correction)
                for weight, correction in zip(self.inner.trainable_weights, self.correction, strict=True)
            )
            self.add_loss(drift)
        return self.inner(inputs, training=training)


@keras.saving.register_keras_serializable(package="brainfl")
class PriorAdjustedCrossEntropy(keras.losses.Loss):
    """Label-smoothed cross-entropy of ``p * prior / sum(p * prior)`` (balanced softmax, Ren et al. 2020).

    With softmax outputs ``p = softmax(z)`` this is the cross-entropy of
    ``softmax(z + log prior)``: training fits ``z`` to the class-balanced
    posterior while the site's own label mix is explained by the prior.
    Against label skew across sites this is the logit adjustment of FedLC
    (Zhang et al. 2022). ``prior`` is a variable, set before each training
    call without re-tracing; a uniform prior (the default) is plain
    cross-entropy.
    """

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, name: str = "prior_adjusted_ce"):
        super().__init__(name=name)
        self.label_smoothing = label_smoothing
        self.prior = keras.Variable(np.zeros(num_classes), trainable=False, dtype="float32", name="prior")
        self.use_prior(None)

    def use_prior(self, prior: np.ndarray | None) -> None:
        """Train with ``prior`` from now on (None: uniform, plain cross-entropy)."""
        num_classes = int(self.prior.shape[0])
        values = np.full(num_classes, 1.0 / num_classes) if prior is None else np.asarray(prior)
        self.prior.assign(values.astype("float32"))

    def get_config(self) -> dict:
        return {
            "num_classes": int(self.prior.shape[0]),
            "label_smoothing": self.label_smoothing,
            "name": self.name,
        }

    def call(self, y_true, y_pred):
        adjusted = adjust_to_prior(y_pred, self.prior)
        return keras.losses.categorical_crossentropy(y_true, adjusted, label_smoothing=self.label_smoothing)


def adjust_to_prior(probabilities, prior):
    """``p * prior / sum(p * prior)``: class probabilities re-weighted by a class prior."""
    weighted = probabilities * keras.ops.cast(prior, probabilities.dtype)
    return weighted / keras.ops.sum(weighted, axis=-1, keepdims=True)


@keras.saving.register_keras_serializable(package="brainfl")
class PriorAdjustedAccuracy(keras.metrics.MeanMetricWrapper):
    """Training accuracy of the prediction the loss trains: the outputs adjusted to ``prior``.

    Under the balanced softmax a skewed site fits ``p * prior``, not ``p``;
    the accuracy of ``p`` alone on its own (skewed) images says little, and
    can be near zero while the shared model improves. ``prior`` is the loss's
    variable; without one (a loaded model) this is plain accuracy.
    """

    def __init__(self, prior: keras.Variable | None = None, name: str = "accuracy", dtype=None):
        super().__init__(fn=self._adjusted_accuracy, name=name, dtype=dtype)
        self.prior = prior

    def _adjusted_accuracy(self, y_true, y_pred):
        adjusted = y_pred if self.prior is None else adjust_to_prior(y_pred, self.prior)
        return keras.metrics.categorical_accuracy(y_true, adjusted)

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype}


def site_class_prior(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
    """A site's class frequencies, add-one smoothed (a class it lacks keeps a small prior), mixed with
    the uniform mix by the share ``smoothing``."""
    counts = np.bincount(labels, minlength=num_classes) + 1.0
    return (1.0 - smoothing) * counts / counts.sum() + smoothing / num_classes


@dataclasses.dataclass(frozen=True)
class OptimizerRecipe:
    """How local training steps: the ``optimizer`` setting's name, weight decay (decoupled, both
    optimizers) and SGD's momentum."""

    name: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9

    @classmethod
    def of(cls, training: TrainingSettings) -> OptimizerRecipe:
        """The recipe the run's training settings name."""
        return cls(training.optimizer, training.weight_decay, training.sgd_momentum)

    def build(self, learning_rate: float) -> keras.optimizers.Optimizer:
        """A fresh optimizer at ``learning_rate``."""
        return OPTIMIZERS[self.name](self, learning_rate)


# The ``optimizer`` setting's values (brainfl.settings.run_settings.OPTIMIZERS).
OPTIMIZERS = {
    "adamw": lambda recipe, rate: keras.optimizers.AdamW(
        learning_rate=rate, weight_decay=recipe.weight_decay
    ),
    "sgd": lambda recipe, rate: keras.optimizers.SGD(
        learning_rate=rate, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    ),
}


def compile_model(
    model: keras.Model, learning_rate: float, recipe: OptimizerRecipe, label_smoothing: float
) -> None:
    """Compile with a fresh optimizer (``recipe``) and label-smoothed (prior-adjusted) cross-entropy.

    The optimizer's variables (zeros) are made here, not on the first
    training step: a ``tf.function`` that creates variables is traced twice,
    and the training step's trace is most of a short fit's cost.
    """
    loss = PriorAdjustedCrossEntropy(model.output_shape[-1], label_smoothing=label_smoothing)
    optimizer = recipe.build(learning_rate)
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=[PriorAdjustedAccuracy(loss.prior)],
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    optimizer.build(model.trainable_variables)
    model._traced_train_function = None  # (one traced for the previous optimizer is stale)


def _use_eager_steps(model: keras.Model, eager: bool) -> None:
    """Run ``model``'s training steps op by op or traced; a traced step is kept while steps run eagerly.

    A process that trains small and large sites in turn (simulation) traces once.
    """
    if bool(model.run_eagerly) == eager:
        return
    if eager:
        model._traced_train_function, model.train_function = model.train_function, None
    else:
        model.train_function = getattr(model, "_traced_train_function", None)
        model._traced_train_function = None
    model.run_eagerly = eager


_COMPILED_RECIPE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _ready_to_fit(
    model: keras.Model,
    learning_rate: float,
    optimizer: OptimizerRecipe,
    label_smoothing: float,
    proximal_mu: float,
    correction: list[np.ndarray] | None = None,
    anchor: list[np.ndarray] | None = None,
) -> keras.Model:
    """``model`` compiled with a fresh optimizer at ``learning_rate`` (or its FedProx/SCAFFOLD wrapper).

    A plain model is compiled once per recipe (optimizer, label
    smoothing); later calls zero the optimizer's state and set the learning
    rate instead of compiling again, so the traced training step is reused:
    a site trains every round, and tracing cost ~1 s per call. FedProx and
    SCAFFOLD wrappers are made and compiled per call (their anchors and
    correction are that call's).
    """
    if proximal_mu > 0 or correction is not None:
        fitted = AnchoredModel(model, proximal_mu, correction, anchor if proximal_mu > 0 else None)
        compile_model(fitted, learning_rate, optimizer, label_smoothing)
        return fitted
    recipe = (optimizer, label_smoothing)
    cached = _COMPILED_RECIPE.get(model)  # (an uncompiled model has no optimizer attribute)
    if cached is None or cached != (recipe, model.optimizer):  # never compiled here, or since elsewhere
        compile_model(model, learning_rate, optimizer, label_smoothing)
        _COMPILED_RECIPE[model] = (recipe, model.optimizer)
        return model
    for variable in model.optimizer.variables:  # step counter, moments: a fresh optimizer
        variable.assign(keras.ops.zeros_like(variable))
    model.optimizer.learning_rate = learning_rate
    return model


def reseed_random_layers(model: keras.Model, seed: int) -> None:
    """Restart the random state of augmentation and dropout layers from ``seed``.

    Keras keeps each random layer's state in the model and advances it with
    every call, so without this a site's update would depend on what the
    same process trained before, not on the seed alone.
    """
    states = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    for index, state in enumerate(states):
        state.assign(np.array([seed + index, 0], dtype=state.dtype))


def train(
    model: keras.Model,
    inputs: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    optimizer: OptimizerRecipe = OptimizerRecipe(),
    label_smoothing: float = 0.1,
    seed: int = 0,
    proximal_mu: float = 0.0,
    class_prior: np.ndarray | None = None,
    correction: list[np.ndarray] | None = None,
    anchor: list[np.ndarray] | None = None,
) -> dict[str, float]:
    """Train in place for ``epochs`` with a fresh ``optimizer``; return the last epoch's loss and accuracy.

    ``proximal_mu > 0`` adds FedProx's proximal term around ``anchor`` (one array
    per trainable weight; None: the starting weights); ``class_prior`` turns the
    loss into the balanced softmax for that prior (None: plain cross-entropy);
    ``correction`` (one array per trainable weight) is SCAFFOLD's drift
    correction added to every gradient.
    """
    keras.utils.set_random_seed(seed)
    reseed_random_layers(model, seed)
    num_classes = model.output_shape[-1]
    fitted = _ready_to_fit(model, learning_rate, optimizer, label_smoothing, proximal_mu, correction, anchor)
    fitted.loss.use_prior(class_prior)
    _use_eager_steps(fitted, runs_eagerly(epochs * math.ceil(len(labels) / batch_size)))
    history = fitted.fit(
        make_dataset(inputs, labels, num_classes, batch_size, seed), epochs=epochs, shuffle=False, verbose=0
    ).history  # (the dataset shuffles itself each epoch)
    return {"train_loss": float(history["loss"][-1]), "train_accuracy": float(history["accuracy"][-1])}


def predict_proba(model: keras.Model, inputs: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Class probabilities for ``inputs`` (no augmentation, inference mode); a few batches run eagerly."""
    starts = range(0, len(inputs), batch_size)
    if runs_eagerly(len(starts)):
        outputs = [model(tf.cast(inputs[i : i + batch_size], tf.float32), training=False) for i in starts]
        if not outputs:
            return np.zeros((0, model.output_shape[-1]), dtype="float32")
        return np.concatenate([keras.ops.convert_to_numpy(output) for output in outputs])
    if not model.compiled:  # (a model that never trained: inference batches run per call as in training)
        model.compile(steps_per_execution=STEPS_PER_EXECUTION)
    data = tf.data.Dataset.from_tensor_slices(inputs).batch(batch_size).map(lambda x: tf.cast(x, tf.float32))
    return model.predict(data, verbose=0)


def round_learning_rate(
    base: float, server_round: int, num_rounds: int, warmup_rounds: int = 0, floor: float = 0.02
) -> float:
    """Linear warm-up, then cosine decay over rounds: ``base * r / (warmup_rounds + 1)`` in round
    ``r <= warmup_rounds``, then ``base`` in the first round after them down to ``base * floor`` in the
    last."""
    if server_round <= warmup_rounds:
        return base * server_round / (warmup_rounds + 1)
    decaying = num_rounds - warmup_rounds
    if decaying <= 1:
        return base
    progress = (server_round - 1 - warmup_rounds) / (decaying - 1)
    return base * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * progress)))


def scheduled_learning_rate(settings: RunSettings, server_round: int) -> float:
    """The learning rate of a round (a centralized epoch) under the run's settings."""
    training = settings.training
    return round_learning_rate(
        training.learning_rate, server_round, settings.federation.num_server_rounds, training.warmup_rounds
    )
