"""Centralized training: the upper bound federated runs are compared with.

``brainfl centralized`` trains the same model with the same recipe (AdamW,
label smoothing, cosine learning rate over epochs, augmentation) on the
whole training set, pooled as if the sites shared their scans, and evaluates
it on the server's test set after every epoch with the server's own
evaluator. Its outputs have the federated run's format: one
``federated_learning_results.csv`` row per epoch (``round`` = epoch),
``checkpoint.keras``, ``final_model.keras``, ``run_config.json``,
``logs/server.log`` and the report, so benchmarks compare them directly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flwr.app import ArrayRecord

from brainfl.config import RunSettings, settings_from_config
from brainfl.logs import LOG, log_to_file
from brainfl.pipeline import initial_weights, load_run_dataset, model_inputs
from brainfl.report import make_report
from brainfl.results import FINAL_MODEL, save_model_atomically, write_run_config
from brainfl.strategy import RoundRecord
from brainfl.training import recalibrate_batchnorm, round_learning_rate, train


class PooledData:
    """The evaluator's view of a centralized run: one 'site' holding every training image."""

    round_offset = 0

    def record(self, server_round: int) -> RoundRecord:
        """Epoch ``server_round`` trained on all images (no site metrics)."""
        return RoundRecord(sites_trained=1 if server_round else 0)


def run_centralized(settings: RunSettings, output_dir: Path) -> None:
    """Train for ``num-server-rounds`` epochs on the pooled training set; evaluate after each."""
    from brainfl.server_app import CentralEvaluator  # the server's evaluator, unchanged

    dataset = load_run_dataset(settings)
    class_names = dataset.train.class_names
    evaluator = CentralEvaluator(settings, output_dir, PooledData())
    model = evaluator.bundle.trainable
    weights = initial_weights(settings, class_names)
    write_run_config(
        output_dir, {**settings.to_config(), "class-names": list(class_names), "centralized": True}
    )
    evaluator(0, ArrayRecord(weights))
    inputs = model_inputs(settings, evaluator.bundle, dataset.train)
    for epoch in range(1, settings.num_server_rounds + 1):
        model.set_weights(weights)
        train(
            model,
            inputs,
            dataset.train.labels,
            epochs=settings.local_epochs,
            batch_size=settings.batch_size,
            learning_rate=round_learning_rate(settings.learning_rate, epoch, settings.num_server_rounds),
            weight_decay=settings.weight_decay,
            label_smoothing=settings.label_smoothing,
            seed=settings.seed + 1000 * epoch,
        )
        if settings.precise_bn:
            recalibrate_batchnorm(model, inputs, settings.batch_size)
        weights = model.get_weights()
        evaluator(epoch, ArrayRecord(weights))
    save_model_atomically(evaluator.model, output_dir / FINAL_MODEL, evaluator.model_metadata)
    make_report(output_dir)


def run(args: argparse.Namespace) -> None:
    """The ``brainfl centralized`` command."""
    from brainfl.cli import run_config_from_args
    from brainfl.server_app import resolve_output_dir

    settings = settings_from_config(run_config_from_args(args.app_dir, args.run_config))
    output_dir = resolve_output_dir(settings)
    with log_to_file(output_dir / "logs" / "server.log"):
        run_centralized(settings, output_dir)
        LOG.info("outputs written to %s", output_dir)


def add_parser(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``centralized`` sub-command to the ``brainfl`` parser."""
    parser = subcommands.add_parser(
        "centralized",
        help="train the same model centrally (the upper bound for federated runs)",
        description=(
            "Train on the pooled training set with the run config's recipe: num-server-rounds "
            "epochs-of-local-epochs, evaluated on the server's test set after each."
        ),
    )
    parser.add_argument("--app-dir", type=Path, default=Path.cwd(), help="folder of pyproject.toml")
    parser.add_argument(
        "--run-config", default="", help='overrides, e.g. "num-server-rounds=10 data-dir=..."'
    )
    parser.set_defaults(handler=run)
    return parser
