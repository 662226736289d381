"""Flower ServerApp: runs the federated rounds; the global model flows one way to the report.

Per round: the strategy aggregates the sites' replies and hands their
metrics to the recorder (:class:`~brainfl.aggregation.SiteReport`); the
central evaluator scores the new global model on the server's test set and
the recorder writes the round's outputs (CSVs, predictions, checkpoint). At
the end the final model is saved and the report is made from those saved
files. The strategy is the one the ``strategy`` setting names, wrapped for
``dp``; with ``secagg=true`` the rounds run on Flower's SecAgg+ workflow.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from brainfl.config import RunSettings, settings_from_config
from brainfl.errors import BrainFLError
from brainfl.evaluation import CentralEvaluator
from brainfl.logs import LOG, log_to_file
from brainfl.model_files import FINAL_MODEL, ModelWriter, model_metadata
from brainfl.pipeline import initial_weights, load_run_dataset
from brainfl.privacy import PrivacyLedger, with_privacy
from brainfl.recorder import RunRecorder, resume_point
from brainfl.report import make_report
from brainfl.results import resolve_output_dir, write_run_config
from brainfl.secure_aggregation import run_secure_federation, secure_strategy
from brainfl.strategy import build_strategy
from brainfl.training import round_learning_rate

app = ServerApp()


def statistics_mask(model) -> list[bool]:
    """Which of a model's weight arrays are statistics (BatchNorm moving mean/variance), not trained."""
    return [not variable.trainable for variable in model.weights]


def write_report(output_dir: Path) -> None:
    """The run's report from its saved outputs (a report problem never fails a finished run)."""
    try:
        make_report(output_dir)
    except Exception as error:
        LOG.warning("report not written: %s", error)


def run_federation(grid: Grid, context: Context, settings: RunSettings, output_dir: Path) -> None:
    """Run all rounds with the configured strategy; save the final model and the report."""
    dataset = load_run_dataset(settings)
    class_names = dataset.train.class_names
    evaluator = CentralEvaluator(settings, dataset)
    writer = ModelWriter(
        evaluator.bundle, model_metadata(settings.model, class_names, settings.image_size, settings.channels)
    )
    weights, first_round, elapsed_before = initial_weights(settings, class_names), 0, 0.0
    resumed = resume_point(output_dir, writer) if settings.resume else None
    if resumed:
        first_round, weights, elapsed_before = resumed
        LOG.info("resuming %s after round %d of %d", output_dir, first_round, settings.num_server_rounds)
    if first_round >= settings.num_server_rounds:
        LOG.info("all %d rounds are already done; outputs written to %s", first_round, output_dir)
        return
    write_run_config(output_dir, {**settings.to_config(), "class-names": list(class_names)})
    ledger = PrivacyLedger(settings) if settings.dp != "none" else None
    recorder = RunRecorder(
        output_dir,
        evaluator.test_set,
        writer,
        total_rounds=settings.num_server_rounds,
        ledger=ledger,
        tensorboard=settings.tensorboard,
        first_round=first_round,
        elapsed_before=elapsed_before,
    )

    def learning_rate_for_round(server_round: int) -> float:
        return round_learning_rate(settings.learning_rate, server_round, settings.num_server_rounds)

    def evaluate_round(local_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if first_round and local_round == 0:
            return None  # the resumed model was evaluated before the interruption
        round_weights = arrays.to_numpy_ndarrays()
        evaluation = evaluator(round_weights)
        recorder.round_done(local_round + first_round, round_weights, evaluation)
        return MetricRecord(evaluation.metrics)

    if settings.secagg:
        strategy = secure_strategy(settings, class_names, learning_rate_for_round, weights)
        strategy.report = recorder.site_report
        weights = run_secure_federation(grid, context, settings, strategy, evaluate_round, len(dataset.train))
    else:
        strategy = build_strategy(
            settings,
            class_names,
            learning_rate_for_round,
            report=recorder.site_report,
            round_offset=first_round,
            statistics_mask=statistics_mask(evaluator.bundle.trainable),
        )
        result = with_privacy(strategy, settings).start(
            grid=grid,
            initial_arrays=ArrayRecord(weights),
            num_rounds=settings.num_server_rounds - first_round,
            timeout=settings.round_timeout,
            train_config=ConfigRecord({"local-epochs": settings.local_epochs}),
            evaluate_fn=evaluate_round,
        )
        weights = result.arrays.to_numpy_ndarrays()
        if ledger is not None:
            LOG.info("%s", ledger.summary())
    writer.write(output_dir / FINAL_MODEL, weights)
    write_report(output_dir)
    LOG.info("outputs written to %s", output_dir)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of the ServerApp."""
    try:
        settings = settings_from_config(context.run_config)
    except BrainFLError as error:
        LOG.error("%s", error)
        return
    output_dir = resolve_output_dir(settings)
    with log_to_file(output_dir / "logs" / "server.log"):
        try:
            run_federation(grid, context, settings, output_dir)
        except BrainFLError as error:
            LOG.error("%s", error)
