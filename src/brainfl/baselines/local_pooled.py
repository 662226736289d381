"""The baselines of a federated run: each site alone (local-only) and all sites' images pooled.

``brainfl local`` answers a site's question "will the shared model be better
on my patients than the one I could train alone?". With the run's settings it
trains, at each site of the run in turn, a model from the run's seeded initial
weights on that site's training images only: ``num-server-rounds`` "rounds" of
:func:`brainfl.federation.site_training.local_update` (``local-epochs`` epochs each, the
round's learning rate :func:`brainfl.model.training.scheduled_learning_rate`, the site's
seeds), exactly as the site trains in the federation, with no averaging in
between (and no FedProx term: there is no shared model to stay near). The sites
are the federation's (:func:`brainfl.data.sites.site_data`): the run's
``num-partitions`` partitions of ``data-dir``, or each site's own folder
(``--site-data-dir``, as ``run.sh --site-data-dir`` gives them), less the same
validation split.

Each site's final model is scored on the site's held-out split with the sites'
own scorer (:func:`brainfl.federation.site_training.validate`) and on the coordinator's test
set (:mod:`brainfl.data.central`) with the server's evaluator, whose leak-free
subset is the federated run's: the test images no site holds a copy of. Written:
``local_baseline.csv`` (one row per site), ``run_config.json`` and, per site, a
run folder ``local_site_<i>/`` of the recorder's files (its round curves, read
by ``brainfl report``) with its ``final_model.keras``.

``brainfl pooled`` answers "how close does the federation come to sharing the
scans?" per site: one model, trained the same way on the training splits of all
the run's sites pooled (:func:`brainfl.baselines.setup.pool`; a feature-shifted
site's images as its scanner made them), then scored on each site's held-out
split, which it never trained on, and on the central test set. Written:
``pooled_baseline.csv`` (a row per site, as ``local_baseline.csv``),
``run_config.json`` and the model's run folder ``pooled/``. ``brainfl
centralized`` trains on the whole training set instead, the sites' held-out
splits included, so only the pooled baseline is scored at the sites.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainfl.baselines.setup import Baseline, pool, prepare
from brainfl.core.logs import LOG, log_to_file
from brainfl.data.sites import SiteData
from brainfl.evaluation.metrics import LEAK_FREE, held_out_keys
from brainfl.evaluation.test_set import CentralEvaluator, Evaluation
from brainfl.federation.bookkeeping import SiteReport
from brainfl.federation.client_app import site_counts, validate
from brainfl.federation.recorder import RunRecorder
from brainfl.federation.site_training import local_update
from brainfl.model.architectures import ModelBundle
from brainfl.model.files import FINAL_MODEL, ModelWriter
from brainfl.model.process_cache import initial_weights, model_inputs
from brainfl.model.training import scheduled_learning_rate
from brainfl.report.results import (
    PARTITION_CSV,
    RESULTS_CSV,
    SITE_CSV,
    CsvAppender,
    resolve_output_dir,
    write_run_config,
)
from brainfl.report.site_comparison import LOCAL_CSV, POOLED_CSV
from brainfl.settings.run_config import add_settings_arguments, settings_from_args
from brainfl.settings.run_settings import ModelSettings, RunSettings

POOLED_FOLDER = "pooled"  # the pooled model's run folder in a pooled baseline's output folder
CENTRAL_SCORES = (
    "loss",
    "accuracy",
    "accuracy_low",
    "accuracy_high",
    "balanced_accuracy",
    "balanced_accuracy_low",
    "balanced_accuracy_high",
    "f1_macro",
    LEAK_FREE,
)
TEST = "test_"  # prefix of the central test set's scores in local_baseline.csv


def site_folder(output_dir: Path, site_id: int) -> Path:
    """The run folder of site ``site_id``'s model trained alone."""
    return output_dir / f"local_site_{site_id}"


def csv_header(class_names: Sequence[str]) -> list[str]:
    """Columns of ``local_baseline.csv``: the site, its held-out scores, its central test scores."""
    held_out = held_out_keys(class_names)
    central = [*CENTRAL_SCORES, *(f"recall_{name}" for name in class_names)]
    return ["site", "data", "num_train", "num_val", *held_out, *(TEST + key for key in central), "train_s"]


def train_alone(
    settings: RunSettings,
    site: SiteData,
    evaluator: CentralEvaluator | None,
    writer: ModelWriter,
    folder: Path,
) -> tuple[list[np.ndarray], Evaluation | None]:
    """Train site ``site``'s model alone for the run's rounds, recorded in ``folder`` as a run is;
    save it as ``folder/final_model.keras``; return its weights and central evaluation (None: no
    test set)."""
    bundle, rounds, class_names = writer.bundle, settings.federation.num_server_rounds, site.train.class_names
    test_set = None if evaluator is None else evaluator.test_set
    recorder = RunRecorder(folder, test_set, class_names, writer, total_rounds=rounds)
    weights = initial_weights(settings, class_names)
    evaluation = evaluator(weights) if evaluator else None
    recorder.round_done(0, weights, evaluation)
    inputs, labels = model_inputs(settings.model, bundle, site.train), site.train.labels
    for server_round in range(1, rounds + 1):
        bundle.trainable.set_weights(weights)
        received = validate(settings.model, bundle, site)  # as a site scores the model it receives
        metrics = local_update(
            settings,
            bundle,
            inputs,
            labels,
            learning_rate=scheduled_learning_rate(settings, server_round),
            server_round=server_round,
            site_id=site.site_id,
        )
        weights = bundle.trainable.get_weights()
        reply = {**metrics, **received, **site_counts(site)}
        recorder.site_report(server_round, SiteReport("train", {site.site_id: reply}, reply, 1))
        evaluation = evaluator(weights) if evaluator else None
        recorder.round_done(server_round, weights, evaluation)
    writer.write(folder / FINAL_MODEL, weights)
    return weights, evaluation


def site_row(
    model: ModelSettings,
    site: SiteData,
    source: str,
    bundle: ModelBundle,
    trained: tuple[list[np.ndarray], Evaluation | None],
) -> dict[str, Any]:
    """The site's row of ``local_baseline.csv``: its model's (``trained``: weights and central
    evaluation) held-out and central test scores."""
    weights, evaluation = trained
    row: dict[str, Any] = {"site": site.site_id, "data": source, **site_counts(site)}
    if len(site.val):
        bundle.trainable.set_weights(weights)
        row.update(validate(model, bundle, site))
    else:
        LOG.warning("site %d has no validation split (val-fraction): no held-out scores", site.site_id)
    if evaluation is not None:
        row.update({TEST + key: value for key, value in evaluation.metrics.items()})
    return row


def fresh_run_folder(folder: Path, config: dict[str, Any]) -> None:
    """Make ``folder`` a new run folder: no round files of an earlier run left to append to."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (RESULTS_CSV, SITE_CSV, PARTITION_CSV):
        (folder / name).unlink(missing_ok=True)
    write_run_config(folder, config)


def new_table(output_dir: Path, name: str, baseline: Baseline) -> CsvAppender:
    """``output_dir/name``, emptied, with the baselines' columns; the run config beside it."""
    write_run_config(output_dir, baseline.config)
    (output_dir / name).unlink(missing_ok=True)
    return CsvAppender(output_dir / name, csv_header(baseline.sites[0].train.class_names))


def run_local(settings: RunSettings, output_dir: Path, site_dirs: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Train and score every site's model alone (see the module docstring); return the CSV's rows."""
    baseline = prepare(settings, site_dirs, "local")
    table = new_table(output_dir, LOCAL_CSV, baseline)
    rows = []
    for index, site in enumerate(baseline.sites):
        folder = site_folder(output_dir, site.site_id)
        fresh_run_folder(folder, {**baseline.config, "local-site": site.site_id})
        LOG.info("site %d alone: %d training images", site.site_id, len(site.train))
        started = time.monotonic()
        trained = train_alone(settings, site, baseline.evaluator, baseline.writer, folder)
        row = site_row(
            settings.model, site, baseline.source(settings.data, index), baseline.writer.bundle, trained
        )
        rows.append({**row, "train_s": round(time.monotonic() - started, 1)})
        table.append(rows[-1])
    return rows


def run_pooled(
    settings: RunSettings, output_dir: Path, site_dirs: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Train one model on the sites' training splits pooled (the same budget, recipe and seeds as a
    run), save it in ``output_dir/pooled/`` and score it on each site's held-out split and the central
    test set (``pooled_baseline.csv``, a row per site); return the rows."""
    baseline = prepare(settings, site_dirs, "pooled")
    table = new_table(output_dir, POOLED_CSV, baseline)
    pooled = pool(baseline.sites)
    folder = output_dir / POOLED_FOLDER
    fresh_run_folder(folder, baseline.config)
    LOG.info("pooled: %d training images of %d sites", len(pooled.train), len(baseline.sites))
    started = time.monotonic()
    trained = train_alone(settings, pooled, baseline.evaluator, baseline.writer, folder)
    seconds = round(time.monotonic() - started, 1)
    rows = []
    for index, site in enumerate(baseline.sites):
        row = site_row(
            settings.model, site, baseline.source(settings.data, index), baseline.writer.bundle, trained
        )
        rows.append({**row, "train_s": seconds})
        table.append(rows[-1])
    return rows


def summary(rows: Sequence[dict[str, Any]]) -> str:
    """The printed table: per site, its images and its model's held-out and central test accuracy."""
    columns = {
        "held-out acc": "val_accuracy",
        "held-out bal acc": "val_balanced_accuracy",
        "test acc": TEST + "accuracy",
        "leak-free acc": TEST + LEAK_FREE,
    }
    lines = [["site", "train/val", *columns]]
    for row in rows:
        scores = [row.get(key) for key in columns.values()]
        counts = f"{row['num_train']}/{row['num_val']}"
        lines.append([str(row["site"]), counts, *("-" if v is None else f"{v:.4f}" for v in scores)])
    widths = [max(map(len, column)) for column in zip(*lines, strict=True)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


COMMANDS = {  # command: (what it runs, its CSV, its description)
    "local": (
        run_local,
        LOCAL_CSV,
        "Train, at each site of the run in turn, the run's model on that site's training images "
        "alone (num-server-rounds rounds of local-epochs, no averaging); score it on the site's "
        "held-out split and on the central test set; write local_baseline.csv.",
    ),
    "pooled": (
        run_pooled,
        POOLED_CSV,
        "Train the run's model on the training splits of all the run's sites pooled, with the run's "
        "budget (num-server-rounds rounds of local-epochs); score it on each site's held-out split "
        "and on the central test set; write pooled_baseline.csv.",
    ),
}


def run(args: argparse.Namespace) -> None:
    """The ``brainfl local`` and ``brainfl pooled`` commands."""
    train, csv_name, _ = COMMANDS[args.baseline]
    settings = settings_from_args(args.app_dir, args.run_config, args.output_dir)
    output_dir = resolve_output_dir(settings)
    with log_to_file(output_dir / "logs" / f"{args.baseline}.log"):
        rows = train(settings, output_dir, args.site_data_dir)
        LOG.info("outputs written to %s", output_dir)
    print(summary(rows))
    print(f"written: {output_dir / csv_name}")


def add_arguments(parser: argparse.ArgumentParser, baseline: str) -> None:
    """The description, options and handler of the ``local`` or ``pooled`` sub-command."""
    parser.description = COMMANDS[baseline][2]
    add_settings_arguments(parser)
    parser.add_argument(
        "--site-data-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a site's own data folder (once per site, in site order) instead of a partition of data-dir",
    )
    parser.set_defaults(handler=run, baseline=baseline)


def add_local_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``local`` sub-command's description, options and handler."""
    add_arguments(parser, "local")


def add_pooled_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``pooled`` sub-command's description, options and handler."""
    add_arguments(parser, "pooled")
