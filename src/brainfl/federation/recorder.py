"""The run's recorder: the one writer of every per-round output.

Data reaches it one way: the strategy hands it each stage's
:class:`~brainfl.federation.bookkeeping.SiteReport`, the server hands it each round's
:class:`~brainfl.evaluation.test_set.Evaluation` with the global weights. It then
appends the round's row to ``federated_learning_results.csv`` (the
evaluation's metrics with their bootstrap intervals, the privacy spent when a
ledger is given), the sites' rows to ``site_metrics.csv`` (with each site's
held-out balanced accuracy and per-class sensitivity; with ``ditto`` its personal model's
held-out scores too), new sites to ``partition.csv``, rewrites
``test_predictions.csv`` and ``checkpoint.keras``, and logs TensorBoard
scalars. :func:`resume_point` reads a run's checkpoint back for ``resume``.

With ``deployment_clock`` the results get ``parallel_elapsed_s``: the run's time
as a deployment would spend it, sites training in parallel. Each round adds
its critical path (:func:`round_critical_path_s`): the slowest site's time
from message to reply as the site measured it, plus the server's aggregation
and central evaluation; a resumed run continues the sum from its last row.
With an ``audit`` log each round also gets its line in ``audit.jsonl``: the
sites aggregated and dropped (with the reason) and the SHA-256 of the global
model after the round (:mod:`brainfl.federation.audit`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from brainfl.core.logs import LOG
from brainfl.evaluation.test_set import CentralTestSet, Evaluation
from brainfl.federation.audit import AuditLog, arrays_sha256
from brainfl.federation.bookkeeping import CLASS_COUNT_PREFIX, SiteReport
from brainfl.federation.privacy import PrivacyLedger
from brainfl.model.files import CHECKPOINT, ModelWriter
from brainfl.report.results import (
    PARTITION_CSV,
    PREDICTIONS_CSV,
    RESULTS_CSV,
    SITE_CSV,
    CsvAppender,
    partition_header,
    read_rows,
    results_header,
    site_header,
    truncate_rows_after,
    write_predictions,
)


def resume_point(output_dir: Path, writer: ModelWriter) -> tuple[int, list[np.ndarray], float] | None:
    """(last round, its weights, its elapsed seconds) from ``checkpoint.keras``, or None.

    Rows after the checkpoint's round are dropped from both per-round CSVs, so
    the resumed run adds each later round exactly once.
    """
    checkpoint = output_dir / CHECKPOINT
    if not checkpoint.exists():
        return None
    last_round, weights = writer.read_checkpoint(checkpoint)
    elapsed = truncate_rows_after(output_dir / RESULTS_CSV, last_round)
    truncate_rows_after(output_dir / SITE_CSV, last_round)
    return last_round, weights, elapsed


def round_critical_path_s(train: SiteReport | None, evaluation: Evaluation | None) -> float:
    """A round's seconds with the sites in parallel: the slowest site's time from message to reply, the
    server's aggregation and its central evaluation (round 0: the evaluation alone)."""
    sites = (train.slowest_site_s or 0.0) + train.aggregation_s if train else 0.0
    return sites + (evaluation.seconds if evaluation else 0.0)


def _last_clock(rows: list[dict[str, str]], column: str) -> float:
    """The last row's ``column`` (0 without rows or where it is empty or absent: an older run's file)."""
    return float(rows[-1].get(column) or 0.0) if rows else 0.0


def _pick(report: SiteReport | None, keys: tuple[str, ...]) -> dict[str, float | str]:
    """The aggregated metrics ``keys`` of a stage's report (empty cells when absent)."""
    return {key: report.aggregate.get(key, "") if report else "" for key in keys}


class RunRecorder:
    """Writes each round's outputs as the round ends, so a crash loses at most the round in flight."""

    def __init__(
        self,
        output_dir: Path,
        test_set: CentralTestSet | None,
        class_names: tuple[str, ...],
        writer: ModelWriter,
        *,
        total_rounds: int,
        ledger: PrivacyLedger | None = None,
        tensorboard: bool = False,
        first_round: int = 0,
        elapsed_before: float = 0.0,
        deployment_clock: bool = False,
        audit: AuditLog | None = None,
        ditto: bool = False,
    ) -> None:
        self.output_dir = output_dir
        self.test_set = test_set
        self.writer = writer
        self.total_rounds = total_rounds
        self.ledger = ledger
        self.first_round = first_round
        self.elapsed_before = elapsed_before
        self.started = time.monotonic()
        self.class_names = tuple(class_names)
        self.results = CsvAppender(output_dir / RESULTS_CSV, results_header(class_names))
        self.sites = CsvAppender(output_dir / SITE_CSV, site_header(class_names, ditto))
        self.partition = CsvAppender(output_dir / PARTITION_CSV, partition_header(class_names))
        self.partitioned = {row["site"] for row in read_rows(output_dir / PARTITION_CSV)}
        self.pending: dict[int, dict[str, SiteReport]] = {}
        self.tensorboard = self._tensorboard_writer() if tensorboard else None
        self.audit = audit
        rows = read_rows(output_dir / RESULTS_CSV)  # a resumed run's rows up to its checkpoint
        self.parallel_elapsed = _last_clock(rows, "parallel_elapsed_s") if deployment_clock else None
        if ledger is not None:  # the releases before an interruption count too
            for row in rows:
                ledger.release(int(row["sites_trained"] or 0))

    def class_counts(self) -> list[int]:
        """The federation's training images per class: ``partition.csv``'s rows summed (every site that
        sent its counts with a training reply, before an interruption too)."""
        rows = read_rows(self.output_dir / PARTITION_CSV)
        return [sum(int(row.get(name) or 0) for row in rows) for name in self.class_names]

    def _tensorboard_writer(self):
        import tensorflow as tf  # only with tensorboard=true: the recorder itself never needs TensorFlow

        return tf.summary.create_file_writer(str(self.output_dir / "tensorboard"))

    def site_report(self, server_round: int, report: SiteReport) -> None:
        """Keep a stage's site report until the round's evaluation arrives (the strategy's sink)."""
        self.pending.setdefault(server_round, {})[report.stage] = report
        if report.stage == "train":
            self._add_partition_rows(report)

    def _add_partition_rows(self, report: SiteReport) -> None:
        names = self.class_names
        for site, metrics in sorted(report.sites.items()):
            if str(site) in self.partitioned or f"{CLASS_COUNT_PREFIX}0" not in metrics:
                continue
            counts = {name: int(metrics.get(f"{CLASS_COUNT_PREFIX}{i}", 0)) for i, name in enumerate(names)}
            self.partition.append(
                {
                    "site": site,
                    "num_train": int(metrics.get("num_train", 0)),
                    "num_val": int(metrics.get("num_val", 0)),
                    **counts,
                }
            )
            self.partitioned.add(str(site))

    def round_done(self, server_round: int, weights: list[np.ndarray], evaluation: Evaluation | None) -> None:
        """Write everything about ``server_round``: CSV rows, predictions, checkpoint, TensorBoard.

        ``evaluation`` is None in a run without central evaluation: its metric cells stay empty.
        """
        reports = self.pending.pop(server_round, {})
        train, evaluate = reports.get("train"), reports.get("evaluate")
        sites_trained = train.sites_replied if train else 0
        if self.ledger is not None and server_round > 0:
            self.ledger.release(sites_trained)
        elapsed = self.elapsed_before + time.monotonic() - self.started
        if self.parallel_elapsed is not None:
            self.parallel_elapsed += round_critical_path_s(train, evaluation)
        metrics = evaluation.metrics if evaluation else {}
        row = {
            "round": server_round,
            **metrics,
            **_pick(train, ("train_loss", "train_accuracy")),
            # the sites' held-out score: of this round's model (evaluate phase, fraction-evaluate > 0),
            # else of the model they received (the previous round's), measured in the train message
            **_pick(evaluate or train, ("val_loss", "val_accuracy")),
            "sites_trained": sites_trained if server_round else "",
            "sites_failed": (train.sites_failed if train else 0) if server_round else "",
            "epsilon": "" if self.ledger is None or self.ledger.epsilon is None else self.ledger.epsilon,
            "elapsed_s": round(elapsed, 1),
            "parallel_elapsed_s": "" if self.parallel_elapsed is None else round(self.parallel_elapsed, 1),
        }
        self.results.append(row)
        self._append_site_rows(server_round, train, evaluate)
        test = self.test_set
        if evaluation is not None and test is not None:
            write_predictions(
                self.output_dir / PREDICTIONS_CSV,
                test.files,
                test.labels,
                test.leak_free,
                evaluation.probabilities,
                test.class_names,
            )
        self.writer.write(self.output_dir / CHECKPOINT, weights, round=server_round)
        self._audit_round(server_round, train, weights)
        self._log_tensorboard(server_round, row)
        self._log_summary(server_round, sites_trained, metrics, elapsed)

    def _audit_round(self, server_round: int, train: SiteReport | None, weights: list[np.ndarray]) -> None:
        """The round's line in ``audit.jsonl``: who was aggregated, who dropped and why, the model after."""
        if self.audit is None:
            return
        participants = train.participants if train else ()
        self.audit.append(
            {
                "event": "round",
                "round": server_round,
                "model_sha256": arrays_sha256(weights),
                "aggregated": [p.entry() for p in participants if not p.dropped],
                "dropped": [p.entry() for p in participants if p.dropped],
            }
        )

    def _append_site_rows(self, server_round: int, *reports: SiteReport | None) -> None:
        per_site: dict[int, dict[str, float]] = {}
        for report in reports:
            for site, metrics in (report.sites if report else {}).items():
                per_site.setdefault(site, {}).update(metrics)
        for site, metrics in sorted(per_site.items()):
            self.sites.append({"round": server_round, "site": site, **metrics})

    def _log_tensorboard(self, server_round: int, row: dict) -> None:
        if self.tensorboard is None:
            return
        import tensorflow as tf

        with self.tensorboard.as_default(step=server_round):
            for name, value in row.items():
                if name != "round" and isinstance(value, int | float):
                    tf.summary.scalar(name, value)
        self.tensorboard.flush()

    def _log_summary(self, server_round: int, sites: int, metrics: dict[str, float], elapsed: float) -> None:
        done = server_round - self.first_round
        left = ""
        if done > 0:
            seconds = (time.monotonic() - self.started) / done * (self.total_rounds - server_round)
            left = f" | ~{seconds:.0f}s left"
        scores = f" | test accuracy {metrics['accuracy']:.4f} | loss {metrics['loss']:.4f}" if metrics else ""
        LOG.info(
            "round %d/%d | sites %d%s | elapsed %.0fs%s",
            server_round,
            self.total_rounds,
            sites,
            scores,
            elapsed,
            left,
        )
