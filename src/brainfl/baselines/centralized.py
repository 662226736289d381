"""Centralized training: the upper bound federated runs are compared with.

``brainfl centralized`` trains the same model with the same recipe (AdamW,
label smoothing, cosine learning rate over epochs, augmentation) on the
whole training set, pooled as if the sites shared their scans, and evaluates
it on the server's test set after every epoch with the server's own
evaluator, through the same site update (:func:`brainfl.federation.site_training.local_update`)
and the same recorder as a federated run, so its outputs have the federated
run's format: one ``federated_learning_results.csv`` row per epoch (``round``
= epoch; the pooled set is site 0), ``checkpoint.keras``,
``final_model.keras``, ``run_config.json``, ``logs/server.log`` and the
report, and benchmarks compare them directly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from brainfl.core.logs import LOG, log_to_file
from brainfl.data.sites import load_run_dataset
from brainfl.evaluation.test_set import CentralEvaluator
from brainfl.federation.bookkeeping import CLASS_COUNT_PREFIX, SiteReport
from brainfl.federation.recorder import RunRecorder
from brainfl.federation.site_training import class_counts, local_update
from brainfl.model.files import FINAL_MODEL, ModelWriter, run_model_metadata
from brainfl.model.process_cache import initial_weights, model_inputs
from brainfl.model.training import scheduled_learning_rate
from brainfl.report.page import make_report
from brainfl.report.results import resolve_output_dir, write_run_config
from brainfl.settings.run_config import add_settings_arguments, settings_from_args
from brainfl.settings.run_settings import RunSettings

POOLED_SITE = 0  # the one "site" of a centralized run: every training image


def run_centralized(settings: RunSettings, output_dir: Path) -> None:
    """Train for ``num-server-rounds`` epochs on the pooled training set; evaluate after each."""
    dataset = load_run_dataset(settings)
    class_names = dataset.train.class_names
    evaluator = CentralEvaluator.for_dataset(settings, dataset)
    bundle = evaluator.bundle
    writer = ModelWriter(
        bundle,
        run_model_metadata(settings, class_names),
    )
    recorder = RunRecorder(
        output_dir,
        evaluator.test_set,
        evaluator.test_set.class_names,
        writer,
        total_rounds=settings.federation.num_server_rounds,
    )
    write_run_config(
        output_dir, {**settings.to_config(), "class-names": list(class_names), "centralized": True}
    )
    weights = initial_weights(settings, class_names)
    recorder.round_done(0, weights, evaluator(weights))
    inputs, labels = model_inputs(settings.model, bundle, dataset.train), dataset.train.labels
    counts = {f"{CLASS_COUNT_PREFIX}{i}": n for i, n in enumerate(class_counts(labels, len(class_names)))}
    for epoch in range(1, settings.federation.num_server_rounds + 1):
        bundle.trainable.set_weights(weights)
        learning_rate = scheduled_learning_rate(settings, epoch)
        metrics = local_update(
            settings, bundle, inputs, labels, learning_rate=learning_rate, server_round=epoch
        )
        weights = bundle.trainable.get_weights()
        site = {**metrics, **counts, "num_train": float(len(labels)), "num_val": 0.0}
        recorder.site_report(epoch, SiteReport("train", {POOLED_SITE: site}, metrics, 1, 0))
        recorder.round_done(epoch, weights, evaluator(weights))
    writer.write(output_dir / FINAL_MODEL, weights)
    make_report(output_dir)


def run(args: argparse.Namespace) -> None:
    """The ``brainfl centralized`` command."""
    settings = settings_from_args(args.app_dir, args.run_config, args.output_dir)
    output_dir = resolve_output_dir(settings)
    with log_to_file(output_dir / "logs" / "server.log"):
        run_centralized(settings, output_dir)
        LOG.info("outputs written to %s", output_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``centralized`` sub-command's description, options and handler."""
    parser.description = (
        "Train on the pooled training set with the run config's recipe: num-server-rounds "
        "epochs-of-local-epochs, evaluated on the server's test set after each."
    )
    add_settings_arguments(parser)
    parser.set_defaults(handler=run)
