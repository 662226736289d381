"""Flower ServerApp: runs the federated rounds and evaluates the global model centrally.

The server holds the central test set (the official ``Testing`` split, or a
stratified hold-out of ``Training`` where there is none). Before round 1 and
after every round it evaluates the global model on it, appends a row to
``federated_learning_results.csv`` (with the privacy spent when DP is on) and
the sites' rows to ``site_metrics.csv``, and overwrites ``checkpoint.keras``;
at the end it saves ``final_model.keras`` and writes the report. The
strategy is the one the ``strategy`` setting names, wrapped for ``dp``; with
``secagg=true`` the rounds run on Flower's SecAgg+ workflow instead.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from brainfl.config import RunSettings, resolve_path, settings_from_config
from brainfl.data_check import leak_free_test_mask
from brainfl.data_loader import Dataset
from brainfl.errors import BrainFLError
from brainfl.logs import LOG, log_to_file
from brainfl.metrics import classification_metrics
from brainfl.pipeline import initial_weights, load_run_dataset, model_for, model_inputs
from brainfl.privacy import PrivacyLedger, with_privacy
from brainfl.report import make_report
from brainfl.results import (
    CHECKPOINT,
    FINAL_MODEL,
    RESULTS_CSV,
    SITE_CSV,
    SITE_FIELDS,
    CsvAppender,
    read_model_metadata,
    read_rows,
    results_header,
    save_model_atomically,
    truncate_rows_after,
    write_run_config,
)
from brainfl.secure_aggregation import run_secure_federation, secure_strategy
from brainfl.strategy import RoundBook, build_strategy
from brainfl.training import predict_proba, round_learning_rate

app = ServerApp()


def resolve_output_dir(settings: RunSettings) -> Path:
    """``output-dir`` or ``outputs/<timestamp>``, created."""
    path = Path(settings.output_dir or f"outputs/{datetime.now():%Y%m%d-%H%M%S}").expanduser().resolve()
    (path / "logs").mkdir(parents=True, exist_ok=True)
    return path


def leak_free_mask(settings: RunSettings, dataset: Dataset) -> np.ndarray | None:
    """Which official Testing images have no exact or near copy in Training (None: no Testing split)."""
    if not dataset.test_is_official:
        return None
    mask = leak_free_test_mask(resolve_path(settings.data_dir, "data-dir"), dataset.test.files)
    LOG.info("leak-free test subset: %d of %d Testing images have no copy in Training", mask.sum(), len(mask))
    return mask if mask.any() else None


class CentralEvaluator:
    """Evaluates each global model on the server's test set and writes the round's outputs."""

    def __init__(
        self,
        settings: RunSettings,
        output_dir: Path,
        strategy: RoundBook,
        ledger: PrivacyLedger | None = None,
    ) -> None:
        dataset = load_run_dataset(settings)
        self.ledger = ledger
        self.settings = settings
        self.class_names = dataset.train.class_names
        self.bundle = model_for(settings, self.class_names)
        self.model = self.bundle.inference_model()
        self.test_inputs = model_inputs(settings, self.bundle, dataset.test)
        self.test_labels = dataset.test.labels
        self.leak_free = leak_free_mask(settings, dataset)
        self.output_dir = output_dir
        self.strategy = strategy
        self.results = CsvAppender(output_dir / RESULTS_CSV, results_header(self.class_names))
        self.sites = CsvAppender(output_dir / SITE_CSV, SITE_FIELDS)
        self.model_metadata = {
            "model": settings.model,
            "class_names": list(self.class_names),
            "image_size": settings.image_size,
            "channels": settings.channels,
        }
        self.started = time.monotonic()
        self.elapsed_before = 0.0  # wall time of rounds finished before a resume
        self.tensorboard = (
            tf.summary.create_file_writer(str(output_dir / "tensorboard")) if settings.tensorboard else None
        )
        LOG.info(
            "central test set: %d images (%s split)",
            len(self.test_labels),
            "official Testing" if dataset.test_is_official else "held-out Training",
        )

    def resume(self) -> tuple[int, list[np.ndarray]] | None:
        """Continue from ``checkpoint.keras``: (its round, its trainable weights), or None.

        Rows after the checkpoint's round are dropped from both CSVs, so the
        resumed run adds each later round exactly once.
        """
        checkpoint = self.output_dir / CHECKPOINT
        if not checkpoint.exists():
            return None
        last_round = int(read_model_metadata(checkpoint).get("round", 0))
        saved = keras.models.load_model(checkpoint)
        if self.bundle.extractor is not None:
            saved = saved.get_layer(self.bundle.trainable.name)
        self.elapsed_before = truncate_rows_after(self.output_dir / RESULTS_CSV, last_round)
        truncate_rows_after(self.output_dir / SITE_CSV, last_round)
        if self.ledger is not None:  # the releases before the interruption count too
            for row in read_rows(self.output_dir / RESULTS_CSV):
                self.ledger.release(int(row["sites_trained"] or 0))
        self.strategy.round_offset = last_round
        return last_round, saved.get_weights()

    def __call__(self, local_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        offset = self.strategy.round_offset
        if offset and local_round == 0:
            return None  # the resumed model was evaluated before the interruption
        server_round = local_round + offset
        self.bundle.trainable.set_weights(arrays.to_numpy_ndarrays())
        probabilities = predict_proba(self.bundle.trainable, self.test_inputs)
        metrics = classification_metrics(self.test_labels, probabilities, self.class_names)
        if self.leak_free is not None:
            finite = np.all(np.isfinite(probabilities), axis=1)  # NaN outputs count as wrong
            predictions = np.where(finite, np.nan_to_num(probabilities).argmax(axis=1), -1)[self.leak_free]
            metrics["leak_free_accuracy"] = float(np.mean(predictions == self.test_labels[self.leak_free]))
        record = self.strategy.record(local_round)
        if self.ledger is not None and local_round > 0:
            self.ledger.release(record.sites_trained)
        epsilon = self.ledger.epsilon if self.ledger is not None else None
        elapsed = self.elapsed_before + time.monotonic() - self.started
        row = {
            "round": server_round,
            **metrics,
            **{k: record.train.get(k, "") for k in ("train_loss", "train_accuracy")},
            **{k: record.evaluate.get(k, "") for k in ("val_loss", "val_accuracy")},
            "sites_trained": record.sites_trained if server_round else "",
            "sites_failed": record.sites_failed if server_round else "",
            "epsilon": "" if epsilon is None else epsilon,
            "elapsed_s": round(elapsed, 1),
        }
        self.results.append(row)
        if self.tensorboard is not None:
            with self.tensorboard.as_default(step=server_round):
                for name, value in row.items():
                    if name != "round" and isinstance(value, int | float):
                        tf.summary.scalar(name, value)
            self.tensorboard.flush()
        for site, site_metrics in sorted(record.sites.items()):
            self.sites.append({"round": server_round, "site": site, **site_metrics})
        save_model_atomically(
            self.model, self.output_dir / CHECKPOINT, {**self.model_metadata, "round": server_round}
        )
        self._log_summary(server_round, record.sites_trained, metrics, elapsed)
        return MetricRecord(metrics)

    def _log_summary(self, server_round: int, sites: int, metrics: dict[str, float], elapsed: float) -> None:
        total = self.settings.num_server_rounds
        done = server_round - self.strategy.round_offset
        left = (time.monotonic() - self.started) / done * (total - server_round) if done > 0 else float("nan")
        LOG.info(
            "round %d/%d | sites %d | test accuracy %.4f | loss %.4f | elapsed %.0fs | ~%.0fs left",
            server_round,
            total,
            sites,
            metrics["accuracy"],
            metrics["loss"],
            elapsed,
            left,
        )


def run_federation(grid: Grid, context: Context, settings: RunSettings, output_dir: Path) -> None:
    """Run all rounds with the configured strategy and save the final model and report."""
    dataset = load_run_dataset(settings)
    class_names = dataset.train.class_names

    def learning_rate_for_round(server_round: int) -> float:
        return round_learning_rate(settings.learning_rate, server_round, settings.num_server_rounds)

    weights = initial_weights(settings, class_names)
    ledger = PrivacyLedger(settings) if settings.dp != "none" else None
    if settings.secagg:
        strategy = secure_strategy(settings, class_names, learning_rate_for_round, weights)
    else:
        strategy = build_strategy(settings, class_names, learning_rate_for_round)
    evaluator = CentralEvaluator(settings, output_dir, strategy, ledger)
    rounds_done = 0
    resumed = evaluator.resume() if settings.resume else None
    if resumed:
        rounds_done, weights = resumed
        LOG.info("resuming %s after round %d of %d", output_dir, rounds_done, settings.num_server_rounds)
    if rounds_done >= settings.num_server_rounds:
        LOG.info("all %d rounds are already done; outputs written to %s", rounds_done, output_dir)
        return
    write_run_config(output_dir, {**settings.to_config(), "class-names": list(class_names)})
    if settings.secagg:
        run_secure_federation(grid, context, settings, strategy, evaluator, len(dataset.train))
    else:
        with_privacy(strategy, settings).start(
            grid=grid,
            initial_arrays=ArrayRecord(weights),
            num_rounds=settings.num_server_rounds - rounds_done,
            timeout=settings.round_timeout,
            train_config=ConfigRecord({"local-epochs": settings.local_epochs}),
            evaluate_fn=evaluator,
        )
        if ledger is not None:
            LOG.info("%s", ledger.summary())
    save_model_atomically(evaluator.model, output_dir / FINAL_MODEL, evaluator.model_metadata)
    try:
        make_report(output_dir)
    except Exception as error:  # a report problem must not fail a finished run
        LOG.warning("report not written: %s", error)
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
