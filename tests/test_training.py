"""Local training: FedProx's proximal term, balanced softmax, precise BatchNorm statistics, LR schedule."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from brainfl.model import training
from brainfl.model.batch_norm import _batch_moments_function, recalibrate_batchnorm
from brainfl.model.training import (
    EAGER_MAX_BATCHES,
    OPTIMIZERS,
    OptimizerRecipe,
    PriorAdjustedCrossEntropy,
    predict_proba,
    round_learning_rate,
    scheduled_learning_rate,
    site_class_prior,
    train,
)
from brainfl.settings import run_settings
from brainfl.settings.run_settings import settings_from_config


def _distance_after_training(mu: float) -> float:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="softmax")])
    start = [w.copy() for w in model.get_weights()]
    rng = np.random.default_rng(0)
    inputs, labels = rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 4, 64)
    train(model, inputs, labels, epochs=3, batch_size=16, learning_rate=0.05, proximal_mu=mu)
    return float(np.sqrt(sum(np.sum((w - s) ** 2) for w, s in zip(model.get_weights(), start, strict=True))))


def test_proximal_term_keeps_local_weights_near_the_global_model():
    free, held = _distance_after_training(0.0), _distance_after_training(50.0)
    assert held < 0.5 * free, (free, held)


def test_each_call_trains_with_a_fresh_optimizer_on_the_step_traced_once():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="softmax")])
    start = [w.copy() for w in model.get_weights()]
    rng = np.random.default_rng(0)
    inputs, labels = rng.normal(size=(40, 8)).astype("float32"), rng.integers(0, 4, 40)
    train(model, inputs, labels, epochs=2, batch_size=16, learning_rate=0.05, seed=3)
    first, traced_step = model.get_weights(), model.train_function
    model.set_weights(start)  # the next round starts from the same global weights
    train(model, inputs, labels, epochs=2, batch_size=16, learning_rate=0.05, seed=3)
    assert model.train_function is traced_step  # not compiled nor traced again
    assert int(model.optimizer.iterations) == 6  # this call's 2 x 3 steps only: state was zeroed
    for again, once in zip(model.get_weights(), first, strict=True):  # the same moments: a fresh AdamW
        np.testing.assert_allclose(again, once, rtol=1e-5, atol=1e-6)
    before = model.get_weights()
    train(model, inputs, labels, epochs=1, batch_size=16, learning_rate=0.0, seed=3)
    for after, was in zip(model.get_weights(), before, strict=True):  # the new learning rate is used
        np.testing.assert_array_equal(after, was)


def test_the_optimizer_setting_names_the_local_optimizer():
    assert tuple(OPTIMIZERS) == run_settings.OPTIMIZERS
    recipe = OptimizerRecipe.of(run_settings.settings_with(optimizer="sgd", sgd_momentum=0.5).training)
    built = recipe.build(0.1)
    assert isinstance(built, keras.optimizers.SGD) and built.momentum == 0.5
    assert isinstance(
        OptimizerRecipe.of(run_settings.settings_with().training).build(0.1), keras.optimizers.AdamW
    )
    with pytest.raises(run_settings.BrainFLError, match=r"'optimizer': unknown 'adam'.*adamw, sgd"):
        run_settings.settings_with(optimizer="adam")


def test_an_sgd_step_moves_the_weights_by_minus_the_learning_rate_times_the_gradient():
    """One full batch of plain SGD (no momentum, no decay): ``w - lr * g``, exactly what SCAFFOLD's
    correction assumes; AdamW's first step is ``lr * sign(g)`` instead, so the same call with the
    default optimizer lands elsewhere."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="softmax")])
    rng = np.random.default_rng(0)
    inputs, labels = rng.normal(size=(32, 8)).astype("float32"), rng.integers(0, 4, 32)
    start = [w.copy() for w in model.get_weights()]
    with tf.GradientTape() as tape:
        targets = np.eye(4, dtype="float32")[labels]
        loss = keras.ops.mean(keras.losses.categorical_crossentropy(targets, model(inputs, training=True)))
    gradient = [g.numpy() for g in tape.gradient(loss, model.trainable_weights)]
    sgd = OptimizerRecipe("sgd", weight_decay=0.0, momentum=0.0)
    train(
        model, inputs, labels, epochs=1, batch_size=32, learning_rate=0.5, label_smoothing=0.0, optimizer=sgd
    )
    for after, before, g in zip(model.get_weights(), start, gradient, strict=True):
        np.testing.assert_allclose(after, before - 0.5 * g, rtol=1e-4, atol=1e-6)
    model.set_weights(start)
    train(model, inputs, labels, epochs=1, batch_size=32, learning_rate=0.5, label_smoothing=0.0)
    assert isinstance(model.optimizer, keras.optimizers.AdamW)  # compiled again for the other recipe
    moved = model.get_weights()[0] - start[0]
    assert not np.allclose(moved, -0.5 * gradient[0], atol=1e-3)


def test_prior_adjusted_loss_is_cross_entropy_of_logits_shifted_by_the_log_prior():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(4), 6).astype("float32")
    targets = np.eye(4, dtype="float32")[rng.integers(0, 4, 6)]
    loss = PriorAdjustedCrossEntropy(4, label_smoothing=0.1)
    plain = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    assert float(loss(targets, probabilities)) == pytest.approx(
        float(plain(targets, probabilities)), rel=1e-5
    )
    prior = np.array([0.7, 0.2, 0.05, 0.05], dtype="float32")
    loss.use_prior(prior)
    shifted = keras.ops.softmax(np.log(probabilities) + np.log(prior))
    assert float(loss(targets, probabilities)) == pytest.approx(float(plain(targets, shifted)), rel=1e-4)


def test_site_class_prior_is_smoothed_frequencies():
    np.testing.assert_allclose(site_class_prior(np.array([0, 0, 0, 1]), 3), [4 / 7, 2 / 7, 1 / 7])


def _absent_class_probability(balanced: bool) -> float:
    """Mean probability a model gives classes 2 and 3 after training at a site that holds only 0 and 1."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="softmax")])
    rng = np.random.default_rng(0)
    inputs, labels = rng.normal(size=(128, 8)).astype("float32"), rng.integers(0, 2, 128)
    prior = site_class_prior(labels, 4) if balanced else None
    train(model, inputs, labels, epochs=5, batch_size=16, learning_rate=0.05, class_prior=prior)
    return float(model.predict(inputs, verbose=0)[:, 2:].sum(axis=1).mean())


def test_balanced_softmax_does_not_teach_a_model_to_rule_out_classes_a_site_lacks():
    plain, balanced = _absent_class_probability(False), _absent_class_probability(True)
    assert plain < 0.2 < balanced, (plain, balanced)  # 0.5 before training


def _reported_train_accuracy(prior: list[float] | None) -> float:
    """Training accuracy reported for a model that outputs [0.1, 0.6, 0.15, 0.15] on class-0 images."""
    bias = keras.initializers.Constant(np.log([0.1, 0.6, 0.15, 0.15]))
    output = keras.layers.Dense(4, "softmax", kernel_initializer="zeros", bias_initializer=bias)
    model = keras.Sequential([keras.Input((3,)), output])
    inputs, labels = np.ones((16, 3), dtype="float32"), np.zeros(16, dtype="int64")
    metrics = train(model, inputs, labels, epochs=1, batch_size=8, learning_rate=1e-9, class_prior=prior)
    return metrics["train_accuracy"]


def test_train_accuracy_is_that_of_the_prediction_adjusted_to_the_site_prior():
    assert _reported_train_accuracy(None) == 0.0  # the raw output says class 1
    assert _reported_train_accuracy([0.97, 0.01, 0.01, 0.01]) == 1.0  # p * prior says class 0


def test_a_call_without_prior_trains_with_plain_cross_entropy_again():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="softmax")])
    inputs, labels = np.ones((8, 3), dtype="float32"), np.array([0] * 8)
    train(model, inputs, labels, epochs=1, batch_size=8, learning_rate=0.01, class_prior=[0.7, 0.1, 0.1, 0.1])
    train(model, inputs, labels, epochs=1, batch_size=8, learning_rate=0.01)
    np.testing.assert_allclose(model.loss.prior.numpy(), [0.25] * 4)


def test_learning_rate_decays_from_base_to_floor_over_rounds():
    assert round_learning_rate(0.01, 1, 10) == pytest.approx(0.01)
    assert round_learning_rate(0.01, 10, 10) == pytest.approx(0.0002)
    assert round_learning_rate(0.01, 5, 10) < round_learning_rate(0.01, 4, 10)


def test_warm_up_rounds_ramp_to_the_base_rate_then_the_decay_starts_from_it():
    rates = [round_learning_rate(0.01, r, 10, warmup_rounds=3) for r in range(1, 11)]
    assert rates[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])  # r / 4, then the base
    assert rates[-1] == pytest.approx(0.0002) and all(a > b for a, b in itertools.pairwise(rates[3:]))
    settings = settings_from_config({"learning-rate": 0.01, "num-server-rounds": 10, "warmup-rounds": 3})
    assert [scheduled_learning_rate(settings, r) for r in range(1, 11)] == rates


def _augmented_bn_model() -> keras.Model:
    inputs = keras.Input((6,))
    x = keras.layers.GaussianNoise(0.9, name="aug_noise")(inputs)  # on only in training, like augmentation
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def test_precise_batchnorm_sets_moving_statistics_from_unaugmented_batches():
    model = _augmented_bn_model()
    rng = np.random.default_rng(1)
    inputs = rng.normal(loc=3.0, scale=0.5, size=(80, 6)).astype("float32")
    train(model, inputs, rng.integers(0, 3, 80), epochs=1, batch_size=32, learning_rate=0.01)
    assert recalibrate_batchnorm(model, inputs, batch_size=32, seed=7) == 1
    shuffled = inputs[np.random.default_rng(7).permutation(80)]  # the seeded sample, in its order
    batches, sizes = np.split(shuffled, [32, 64]), [32, 32, 16]  # the last, partial batch weighs half
    bn = model.get_layer("bn")
    means = [batch.mean(axis=0) for batch in batches]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.average(means, axis=0, weights=sizes), rtol=1e-5)
    # The training noise (std 0.9) inflated the moving variance; precise BN measures the clean inputs.
    variances = [batch.var(axis=0) for batch in batches]
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), np.average(variances, axis=0, weights=sizes), rtol=1e-4
    )


def test_precise_batchnorm_describes_the_class_mix_of_class_sorted_inputs():
    # Stored datasets are sorted by class: two classes with means 0 and 10, 200 images each.
    rng = np.random.default_rng(3)
    classes = [rng.normal(mean, 1.0, (200, 6)) for mean in (0.0, 10.0)]
    inputs = np.concatenate(classes).astype("float32")
    model = _augmented_bn_model()
    recalibrate_batchnorm(model, inputs, batch_size=20, max_images=100)
    bn = model.get_layer("bn")
    # The mix's statistics (mean 5, variance 1 + 25), not the first class's (0, 1) nor
    # one-class batches' (variance 1).
    np.testing.assert_allclose(bn.moving_mean.numpy(), 5.0, atol=1.5)
    assert np.all(bn.moving_variance.numpy() > 15.0)


def test_precise_batchnorm_traces_its_forward_pass_once_per_model():
    model = _augmented_bn_model()
    inputs = np.random.default_rng(2).normal(size=(200, 6)).astype("float32")
    for batch_size in (32, 16, 8):  # full and partial batches of several sizes
        recalibrate_batchnorm(model, inputs, batch_size)
    assert _batch_moments_function(model).experimental_get_tracing_count() == 1


def test_a_precise_batchnorm_pass_of_a_few_batches_runs_eagerly_with_the_same_statistics(monkeypatch):
    inputs = np.random.default_rng(4).normal(loc=2.0, size=(96, 6)).astype("float32")
    eager, traced = _augmented_bn_model(), _augmented_bn_model()
    traced.set_weights(eager.get_weights())
    recalibrate_batchnorm(eager, inputs, batch_size=32)  # 3 batches
    assert _batch_moments_function(eager).experimental_get_tracing_count() == 0
    monkeypatch.setattr(training, "EAGER_MAX_BATCHES", 0)
    recalibrate_batchnorm(traced, inputs, batch_size=32)
    assert _batch_moments_function(traced).experimental_get_tracing_count() == 1
    for a, b in zip(eager.get_weights(), traced.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _residual_bn_model() -> keras.Model:
    """Two BatchNorm layers, the second after a shortcut joins the first's normalized output."""
    inputs = keras.Input((6,))
    x = keras.layers.BatchNormalization(name="bn1")(keras.layers.Dense(4, name="d1")(inputs))
    x = keras.layers.Add()([x, keras.layers.Dense(4, name="shortcut")(inputs)])
    x = keras.layers.BatchNormalization(name="bn2")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def test_precise_batchnorm_walks_every_branch_of_a_residual_graph():
    model = _residual_bn_model()
    inputs = np.random.default_rng(5).normal(loc=2.0, size=(40, 6)).astype("float32")
    assert recalibrate_batchnorm(model, inputs, batch_size=40) == 2  # one batch: its own statistics

    def dense(name: str) -> np.ndarray:
        kernel, bias = model.get_layer(name).get_weights()
        return inputs @ kernel + bias

    first = dense("d1")
    bn1, bn2 = model.get_layer("bn1"), model.get_layer("bn2")
    np.testing.assert_allclose(bn1.moving_mean.numpy(), first.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn1.moving_variance.numpy(), first.var(axis=0), rtol=1e-4, atol=1e-5)
    # bn2 sees bn1's output normalized by the batch's own statistics plus the shortcut
    normalized = (first - first.mean(axis=0)) / np.sqrt(first.var(axis=0) + bn1.epsilon)
    second = normalized + dense("shortcut")
    np.testing.assert_allclose(bn2.moving_mean.numpy(), second.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn2.moving_variance.numpy(), second.var(axis=0), rtol=1e-4)


def test_precise_batchnorm_leaves_models_without_batchnorm_alone():
    no_norm = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    before = [w.copy() for w in no_norm.get_weights()]
    assert recalibrate_batchnorm(no_norm, np.ones((8, 4), dtype="float32"), 4) == 0
    assert all(np.array_equal(a, b) for a, b in zip(before, no_norm.get_weights(), strict=True))


def test_train_is_reproducible_for_a_seed_whatever_ran_before() -> None:
    """Same weights, data and seed give the same update, even after other training in the process."""
    import numpy as np

    from brainfl.model.architectures import build_model
    from brainfl.model.training import train

    model = build_model("cnn", 32, 2).trainable
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (32, 32, 32, 1), dtype=np.uint8), np.arange(32) % 2
    start = model.get_weights()
    kwargs = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3}
    train(model, images, labels, seed=7, **kwargs)
    first = model.get_weights()
    model.set_weights(start)
    train(model, images, labels, seed=99, **kwargs)  # advances the random layers' state
    model.set_weights(start)
    train(model, images, labels, seed=7, **kwargs)
    for a, b in zip(first, model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _small_cnn_update(monkeypatch, eager: bool) -> tuple[list[np.ndarray], dict, bool]:
    """One 2-step update of a fresh CNN, op by op or traced; its weights, metrics and mode."""
    from brainfl.model.architectures import build_model

    if not eager:
        monkeypatch.setattr(training, "EAGER_MAX_BATCHES", 0)
    keras.utils.set_random_seed(0)
    model = build_model("cnn", 32, 4).trainable
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (16, 32, 32, 1), dtype=np.uint8), np.arange(16) % 4
    metrics = train(model, images, labels, epochs=1, batch_size=8, learning_rate=1e-3, seed=3)
    return model.get_weights(), metrics, model.run_eagerly


def test_a_fit_of_a_few_batches_runs_eagerly_and_updates_as_a_traced_fit(monkeypatch):
    eager_weights, eager_metrics, eager_mode = _small_cnn_update(monkeypatch, eager=True)
    traced_weights, traced_metrics, traced_mode = _small_cnn_update(monkeypatch, eager=False)
    assert (eager_mode, traced_mode) == (True, False)
    assert eager_metrics == pytest.approx(traced_metrics, rel=1e-5)
    for a, b in zip(eager_weights, traced_weights, strict=True):  # float round-off of fused kernels only
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_a_traced_training_step_outlives_eager_calls():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="softmax")])
    rng = np.random.default_rng(0)
    inputs, labels = rng.normal(size=(80, 8)).astype("float32"), rng.integers(0, 4, 80)
    large, small = (EAGER_MAX_BATCHES + 1) * 8, EAGER_MAX_BATCHES * 8
    train(model, inputs[:large], labels[:large], epochs=1, batch_size=8, learning_rate=0.01)
    traced = model.train_function
    train(model, inputs[:small], labels[:small], epochs=1, batch_size=8, learning_rate=0.01)
    assert model.run_eagerly and model.train_function is not traced
    train(model, inputs[:large], labels[:large], epochs=1, batch_size=8, learning_rate=0.01)
    assert not model.run_eagerly and model.train_function is traced  # not traced again


def test_predicting_a_few_batches_eagerly_gives_the_traced_probabilities():
    from brainfl.model.architectures import build_model

    model = build_model("cnn", 32, 4).trainable
    images = np.random.default_rng(1).integers(0, 255, (40, 32, 32, 1), dtype=np.uint8)
    eager = predict_proba(model, images, batch_size=16)  # 3 batches
    traced = predict_proba(model, images, batch_size=8)  # 5 batches
    assert model.predict_function is not None and eager.dtype == traced.dtype == np.float32
    np.testing.assert_allclose(eager, traced, rtol=1e-4, atol=1e-6)
    assert predict_proba(model, images[:0]).shape == (0, 4)
