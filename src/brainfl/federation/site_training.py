"""One site's local update: the training step every engine, baseline and benchmark shares.

:func:`local_update` trains a model's weights on a site's images for the
round's local epochs (the ``optimizer`` setting's, at the round's learning rate, optional proximal
term and balanced-softmax prior) and then sets its BatchNorm statistics from
the site's own un-augmented images (precise BN). The ClientApp, the
centralized baseline (one "site" holding all the data) and the benchmarks'
one-process federations call it, so they train exactly alike. :func:`validate`
is a site's score of a model on its held-out split (the sites' replies, the
personalization query and the local-only baseline).
"""

from __future__ import annotations

import numpy as np

from brainfl.data.sites import SiteData
from brainfl.evaluation.metrics import held_out_metrics
from brainfl.model.architectures import ModelBundle
from brainfl.model.batch_norm import recalibrate_batchnorm
from brainfl.model.process_cache import model_inputs
from brainfl.model.training import OptimizerRecipe, predict_proba, site_class_prior, train
from brainfl.settings.run_settings import ModelSettings, RunSettings, TrainingSettings


def update_seed(settings: RunSettings, server_round: int, site_id: int) -> int:
    """The shuffling/augmentation seed of one site in one round (differs per site and round)."""
    return settings.seed + 1000 * server_round + max(site_id, 0)


def local_update(
    settings: RunSettings,
    bundle: ModelBundle,
    inputs: np.ndarray,
    labels: np.ndarray,
    *,
    learning_rate: float,
    server_round: int,
    site_id: int = 0,
    epochs: int | None = None,
    proximal_mu: float = 0.0,
    correction: list[np.ndarray] | None = None,
    anchor: list[np.ndarray] | None = None,
) -> dict[str, float]:
    """Train ``bundle.trainable`` in place on ``inputs``/``labels``; return the training metrics
    (``correction``: SCAFFOLD's, added to every gradient; ``anchor``: what the proximal term pulls
    toward, one array per trainable weight, by default the starting weights)."""
    num_classes = bundle.trainable.output_shape[-1]
    balanced = settings.training.balanced_softmax
    metrics = train(
        bundle.trainable,
        inputs,
        labels,
        epochs=settings.training.local_epochs if epochs is None else epochs,
        batch_size=settings.training.batch_size,
        learning_rate=learning_rate,
        optimizer=OptimizerRecipe.of(settings.training),
        label_smoothing=settings.training.label_smoothing,
        seed=update_seed(settings, server_round, site_id),
        proximal_mu=proximal_mu,
        correction=correction,
        anchor=anchor,
        class_prior=site_mix(settings.training, labels, num_classes) if balanced else None,
    )
    recalibrate_batchnorm(bundle.trainable, inputs, settings.training.batch_size)
    return metrics


def site_mix(training: TrainingSettings, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The site's class mix as its loss sees it: its add-one smoothed class frequencies, under the
    balanced softmax mixed with the uniform mix by ``balanced-softmax-smoothing`` (so that a class the
    site lacks still costs something when the model predicts it)."""
    smoothing = training.balanced_softmax_smoothing if training.balanced_softmax else 0.0
    return site_class_prior(np.asarray(labels, dtype=np.int64), num_classes, smoothing)


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    """How many images of each class a site holds (its row of the partition table)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes].tolist()


def validate(model: ModelSettings, bundle: ModelBundle, site: SiteData) -> dict[str, float]:
    """The model's ``val_loss``, ``val_accuracy``, ``val_balanced_accuracy`` and
    ``val_sensitivity_<class>`` on the site's held-out split (training images where it has none);
    the classes are the server's, so every site replies with the same keys (NaN: a class the split
    lacks)."""
    held_out = site.val if len(site.val) else site.train
    probabilities = predict_proba(bundle.trainable, model_inputs(model, bundle, held_out))
    return held_out_metrics(held_out.labels, probabilities, held_out.class_names)
