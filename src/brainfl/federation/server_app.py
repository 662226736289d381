"""Flower ServerApp: runs the federated rounds; the global model flows one way to the report.

The coordinator holds no training data: its class names and optional test
set come from :mod:`brainfl.data.central`. Before round 1 every site answers
one setup query (:mod:`brainfl.federation.setup`): its example count and the
test images it holds copies of, which give the federation's leak-free test
subset and the number of sites the strategy and DP are sized for.
Per round: the strategy aggregates the sites' replies (with ``bn-statistics='pooled'`` the
sites then answer a query for the aggregate's BatchNorm statistics,
:mod:`brainfl.federation.statistics_query`) and hands their
metrics to the recorder (:class:`~brainfl.federation.bookkeeping.SiteReport`); the
central evaluator scores the new global model on the test set and the
recorder writes the round's outputs (CSVs, predictions, checkpoint). At the
end every site is asked once more, for the final model's negative log-likelihood
on its validation split at a grid of temperatures
(:mod:`brainfl.federation.calibration_query`, ``calibrate``), then, with
``notumor-threshold = "fit"``, for its missed tumors and false alarms at a grid of
``notumor`` thresholds (:mod:`brainfl.federation.threshold_query`); the final model is saved
with the fitted temperature and threshold; with ``fine-tune-epochs``, ``fedbn``, ``adapt-sites``,
``ditto-lambda`` or ``site-prior`` every site then fine-tunes or adapts and saves its own copy (or,
with Ditto, the personal model it trained through the rounds; with ``site-prior``, its copy with its
own class mix, for which the server sends the federation's, ``partition.csv`` summed) and answers
with its held-out scores before and after (:mod:`brainfl.federation.personalization`,
``personalization.csv``), and the report is made from those saved files.
The strategy is the one the ``strategy`` setting names, wrapped for ``dp``;
with ``secagg=true`` the rounds run on Flower's SecAgg+ workflow. With
``validate-models`` set the run trains nothing: saved models are scored at every
site instead (:mod:`brainfl.federation.validation`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from brainfl.core.errors import BrainFLError
from brainfl.core.logs import LOG, log_to_file, without_metric_dumps
from brainfl.data.central import CentralData, central_data
from brainfl.data.duplicates import hash_files
from brainfl.data.scanner_shift import write_profiles
from brainfl.evaluation.test_set import CentralEvaluator, Evaluation
from brainfl.federation.audit import AuditedGrid, AuditLog
from brainfl.federation.calibration_query import calibrate
from brainfl.federation.ditto import enabled as ditto_enabled
from brainfl.federation.personalization import personalize
from brainfl.federation.privacy import PrivacyLedger, with_privacy
from brainfl.federation.recorder import RunRecorder, resume_point
from brainfl.federation.secure_aggregation import run_secure_federation, secure_strategy
from brainfl.federation.setup import Roster, setup_federation
from brainfl.federation.statistics_query import StatisticsQuery
from brainfl.federation.strategy import build_strategy, check_strategy
from brainfl.federation.threshold_query import final_threshold
from brainfl.federation.validation import run_validation
from brainfl.model.files import FINAL_MODEL, ModelWriter, run_model_metadata
from brainfl.model.process_cache import initial_weights, model_for
from brainfl.model.training import scheduled_learning_rate
from brainfl.report.page import make_report
from brainfl.report.results import RESULTS_CSV, last_recorded_round, resolve_output_dir, write_run_config
from brainfl.settings.run_settings import RunSettings, default_run_config, settings_from_config

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


def final_temperature(
    grid: Grid,
    settings: RunSettings,
    weights: list[np.ndarray],
    class_names: tuple[str, ...],
    test: tuple[np.ndarray, np.ndarray] | None,
    output_dir: Path,
) -> float | None:
    """The final model's federated temperature (None: skipped or failed; a calibration problem never
    fails a finished run, whose model is then saved uncalibrated)."""
    try:
        return calibrate(grid, settings, weights, class_names, test, output_dir)
    except Exception as error:
        LOG.warning("calibration failed, the final model is saved uncalibrated: %r", error)
        return None


def personalize_sites(
    grid: Grid,
    settings: RunSettings,
    weights: list[np.ndarray],
    class_names: tuple[str, ...],
    output_dir: Path,
    decision: dict[str, float] | None = None,
    federation_counts: list[int] | None = None,
) -> None:
    """The sites' personalized and adapted models (:mod:`brainfl.federation.personalization`; a problem
    never fails a finished run, whose outputs then lack ``personalization.csv``)."""
    try:
        personalize(grid, settings, weights, class_names, output_dir, decision, federation_counts)
    except Exception as error:
        LOG.warning("personalization failed: %r", error)


def central_evaluator(settings: RunSettings, central: CentralData, roster: Roster) -> CentralEvaluator | None:
    """The evaluator of the coordinator's test set, leak-free where no site holds a copy."""
    if central.test is None:
        return None
    return CentralEvaluator(
        settings, central.test, central.class_names, official=central.official, leak_free=roster.leak_free()
    )


def statistics_pool(
    grid: Grid, settings: RunSettings, model, class_names: tuple[str, ...]
) -> StatisticsQuery | None:
    """With ``bn-statistics='pooled'``, the query that puts the sites' BatchNorm statistics of each
    round's aggregate in it (:mod:`brainfl.federation.statistics_query`)."""
    if settings.federation.bn_statistics != "pooled":
        return None
    return StatisticsQuery(grid, model, class_names, settings.federation.round_timeout)


def run_federation(grid: Grid, context: Context, settings: RunSettings, output_dir: Path) -> None:
    """Run all rounds with the configured strategy; save the final model and the report."""
    audit = AuditLog(output_dir)
    grid = AuditedGrid(grid, audit)  # every message and reply from here on is in audit.jsonl
    central = central_data(settings)
    class_names = central.class_names
    test_hashes = None if central.test is None else hash_files(central.root, central.test.files)
    roster = setup_federation(grid, settings.federation, class_names, test_hashes)
    if settings.privacy.secagg and roster.num_sites < 2:
        raise BrainFLError(f"setting 'secagg': SecAgg+ needs at least 2 sites, {roster.num_sites} joined")
    evaluator = central_evaluator(settings, central, roster)
    bundle = model_for(settings, class_names)
    writer = ModelWriter(
        bundle,
        run_model_metadata(settings, class_names),
    )
    weights, first_round, elapsed_before = initial_weights(settings, class_names), 0, 0.0
    resumed = resume_point(output_dir, writer) if settings.federation.resume else None
    if resumed:
        first_round, weights, elapsed_before = resumed
        LOG.info(
            "resuming %s after round %d of %d", output_dir, first_round, settings.federation.num_server_rounds
        )
    # A run stopped after a round's row was written but before its checkpoint resumes from the round
    # before, whose row is kept: that model is evaluated only if its row is missing.
    evaluated_before = resumed is not None and last_recorded_round(output_dir / RESULTS_CSV) == first_round
    if first_round >= settings.federation.num_server_rounds:
        LOG.info("all %d rounds are already done; outputs written to %s", first_round, output_dir)
        return
    write_run_config(output_dir, {**settings.to_config(), "class-names": ",".join(class_names)})
    write_profiles(output_dir, settings, roster.examples)
    ledger = PrivacyLedger(settings, roster.num_sites) if settings.privacy.dp != "none" else None
    recorder = RunRecorder(
        output_dir,
        None if evaluator is None else evaluator.test_set,
        class_names,
        writer,
        total_rounds=settings.federation.num_server_rounds,
        ledger=ledger,
        tensorboard=settings.evaluation.tensorboard,
        first_round=first_round,
        elapsed_before=elapsed_before,
        deployment_clock=True,
        audit=audit,
        ditto=ditto_enabled(settings),
    )

    def learning_rate_for_round(server_round: int) -> float:
        return scheduled_learning_rate(settings, server_round)

    latest: list[Evaluation] = []  # the last evaluation: of the final model once the rounds are done

    def evaluate_round(local_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if evaluated_before and local_round == 0:
            return None  # the resumed model was evaluated before the interruption
        round_weights = arrays.to_numpy_ndarrays()
        evaluation = None if evaluator is None else evaluator(round_weights)
        latest[:] = [] if evaluation is None else [evaluation]
        recorder.round_done(local_round + first_round, round_weights, evaluation)
        return None if evaluation is None else MetricRecord(evaluation.metrics)

    if settings.privacy.secagg:
        strategy = secure_strategy(
            settings, class_names, learning_rate_for_round, weights, recorder.site_report
        )
        weights = run_secure_federation(
            grid, context, settings, strategy, evaluate_round, roster.largest_site
        )
    else:
        strategy = build_strategy(
            settings,
            class_names,
            learning_rate_for_round,
            num_sites=roster.num_sites,
            report=recorder.site_report,
            round_offset=first_round,
            statistics_mask=statistics_mask(bundle.trainable),
            pool_statistics=statistics_pool(grid, settings, bundle.trainable, class_names),
        )
        result = with_privacy(strategy, settings, roster.num_sites).start(
            grid=grid,
            initial_arrays=ArrayRecord(weights),
            num_rounds=settings.federation.num_server_rounds - first_round,
            timeout=settings.federation.round_timeout,
            train_config=ConfigRecord({"local-epochs": settings.training.local_epochs}),
            evaluate_fn=evaluate_round,
        )
        weights = result.arrays.to_numpy_ndarrays()
        if ledger is not None:
            LOG.info("%s", ledger.summary())
    test = (evaluator.test_set.labels, latest[0].probabilities) if evaluator and latest else None
    temperature = final_temperature(grid, settings, weights, class_names, test, output_dir)
    calibrated = {} if temperature is None else {"temperature": temperature}
    decision = {
        **calibrated,
        **final_threshold(grid, settings, weights, class_names, temperature or 1.0, test, output_dir),
    }
    writer.write(output_dir / FINAL_MODEL, weights, **decision)
    personalize_sites(grid, settings, weights, class_names, output_dir, decision, recorder.class_counts())
    write_report(output_dir)
    LOG.info("outputs written to %s", output_dir)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of the ServerApp."""
    try:
        settings = settings_from_config(context.run_config)
        check_strategy(settings, default_run_config())
    except BrainFLError as error:
        LOG.error("%s", error)
        return
    output_dir = resolve_output_dir(settings)
    with log_to_file(output_dir / "logs" / "server.log"), without_metric_dumps():
        try:
            run = run_validation if settings.evaluation.validate_models else run_federation
            run(grid, context, settings, output_dir)
        except BrainFLError as error:
            LOG.error("%s", error)
