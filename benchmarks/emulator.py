"""A one-process FedAvg federation built from the app's own functions, for benchmarks without Flower.

Everything that decides a result is the app's: the settings are read as
``brainfl`` reads ``--run-config`` (:func:`brainfl.cli.settings_from_args`:
the pyproject defaults, then ``K=V`` pairs or conf files), the sites are
the ClientApp's (:func:`brainfl.data.sites.site_data`: the run's partitioning
less each site's validation hold-out), every site runs
:func:`brainfl.federation.site_training.local_update` from the global weights with the
round's learning rate (:func:`brainfl.model.training.round_learning_rate`) and
replies what a ClientApp replies (:func:`brainfl.federation.client_app.site_counts`),
the server averages with :func:`brainfl.federation.strategy.weighted_average` (example
counts; with ``strategy='fedavgm'`` then FedAvgM's server step, :class:`ServerStep`),
scores the global model with the server's evaluator
(:class:`brainfl.evaluation.test_set.CentralEvaluator`: :func:`brainfl.evaluation.metrics.score`
on its test set, leak-free subset included) and writes the round with the
server's recorder (:class:`brainfl.federation.recorder.RunRecorder`). A *pooled*
federation is the centralized baseline: one site holding every training
image. Only Flower's engine (messages, processes) is left out, so a recipe
costs minutes here before a full run is spent on it.

A run's folder therefore holds a run's files (``federated_learning_results.csv``
with round 0 the initial model, ``site_metrics.csv`` with training metrics
only as no site evaluates here, ``run_config.json``, the checkpoint...), which
:func:`harness.keep_result` and ``summarize_run.py`` take like any run's.
Decoded images are cached in ``$BRAINFL_CACHE_DIR`` as by the app.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import MetricRecord, RecordDict

from brainfl.core.errors import BrainFLError
from brainfl.data.sites import SiteData, load_run_dataset, site_data
from brainfl.evaluation.test_set import CentralEvaluator
from brainfl.federation.bookkeeping import (
    NUM_EXAMPLES,
    SiteReport,
    aggregate_site_metrics,
    server_step_with_plain_statistics,
)
from brainfl.federation.client_app import site_counts
from brainfl.federation.recorder import RunRecorder
from brainfl.federation.server_app import statistics_mask
from brainfl.federation.site_training import local_update
from brainfl.federation.strategy import SERVER_LEARNING_RATES, weighted_average
from brainfl.model.files import ModelWriter, model_metadata
from brainfl.model.process_cache import initial_weights, model_inputs
from brainfl.model.training import round_learning_rate
from brainfl.report.results import PARTITION_CSV, RESULTS_CSV, SITE_CSV, write_run_config
from brainfl.settings.run_config import settings_from_args
from brainfl.settings.run_settings import RunSettings

ROOT = Path(__file__).resolve().parents[1]
SiteUpdate = Callable[..., dict[str, float]]  # local_update's signature


def settings_for(*run_configs: str) -> RunSettings:
    """The app's settings from ``--run-config`` values (pairs or conf files), later ones winning.

    Checked as ``brainfl`` checks a run's: syntax, known keys, ranges, and
    overrides that other settings would make ineffective.
    """
    return settings_from_args(ROOT, list(run_configs))


EMULATED_STRATEGIES = ("fedavg", "fedavgm")


@dataclasses.dataclass
class ServerStep:
    """The server's step from the FedAvg of the sites' weights to the next global weights.

    ``fedavg`` takes the average. ``fedavgm`` is Flower's FedAvgM (SGD with
    momentum on ``old - average``, the server learning rate and momentum of
    the settings) for trained weights, and the plain average for statistics
    (:func:`brainfl.federation.bookkeeping.server_step_with_plain_statistics`, as the
    app's strategy does).
    """

    settings: RunSettings
    statistics: list[bool]
    velocity: list[np.ndarray] | None = None

    def __call__(self, old: list[np.ndarray], averaged: list[np.ndarray]) -> list[np.ndarray]:
        if self.settings.strategy == "fedavg":
            return averaged
        pseudo_gradient = [before - after for before, after in zip(old, averaged, strict=True)]
        momentum = self.settings.server_momentum
        if momentum > 0:
            self.velocity = pseudo_gradient if self.velocity is None else [
                momentum * v + g for v, g in zip(self.velocity, pseudo_gradient, strict=True)
            ]  # fmt: skip
            pseudo_gradient = self.velocity
        rate = self.settings.server_learning_rate or SERVER_LEARNING_RATES["fedavgm"]
        stepped = [before - rate * g for before, g in zip(old, pseudo_gradient, strict=True)]
        return server_step_with_plain_statistics(stepped, averaged, self.statistics)


@dataclasses.dataclass(frozen=True)
class Site:
    """One site's images and what the model consumes of them (pixels, or cached features)."""

    data: SiteData
    inputs: np.ndarray


@dataclasses.dataclass(frozen=True)
class Federation:
    """The sites, the model they share in this process, and the server's evaluator."""

    settings: RunSettings
    sites: list[Site]
    evaluator: CentralEvaluator
    pooled: bool = False

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.evaluator.test_set.class_names


def federation(settings: RunSettings, pooled: bool = False) -> Federation:
    """The run's ``num-partitions`` sites, or (``pooled``) one site with every training image."""
    if settings.strategy not in EMULATED_STRATEGIES:
        raise BrainFLError(
            f"the emulator runs {' and '.join(EMULATED_STRATEGIES)} only, not '{settings.strategy}'"
        )
    dataset = load_run_dataset(settings)
    evaluator = CentralEvaluator.for_dataset(settings, dataset)
    if pooled:
        sites = [SiteData(0, dataset.train, dataset.train.subset(np.arange(0)), Path(settings.data_dir))]
    else:
        count, class_names = settings.num_partitions, dataset.train.class_names
        configs = [{"partition-id": site_id, "num-partitions": count} for site_id in range(count)]
        sites = [site_data(settings, config, class_names) for config in configs]
    inputs = [model_inputs(settings, evaluator.bundle, site.train) for site in sites]
    return Federation(settings, [Site(*pair) for pair in zip(sites, inputs, strict=True)], evaluator, pooled)


def fedavg_round(
    fed: Federation, weights: list[np.ndarray], server_round: int, update: SiteUpdate = local_update
) -> tuple[list[np.ndarray], SiteReport]:
    """One round: every site updates ``weights``; return their FedAvg and the sites' training report."""
    settings, model = fed.settings, fed.evaluator.bundle.trainable
    learning_rate = round_learning_rate(settings.learning_rate, server_round, settings.num_server_rounds)
    trained, replies = [], {}
    for site in fed.sites:
        model.set_weights(weights)
        metrics = update(
            settings,
            fed.evaluator.bundle,
            site.inputs,
            site.data.train.labels,
            learning_rate=learning_rate,
            server_round=server_round,
            site_id=site.data.site_id,
        )
        trained.append(model.get_weights())
        replies[site.data.site_id] = {**metrics, **site_counts(site.data)}
    records = [RecordDict({"metrics": MetricRecord(reply)}) for reply in replies.values()]
    report = SiteReport("train", replies, dict(aggregate_site_metrics(records, NUM_EXAMPLES)), len(replies))
    return weighted_average(trained, [len(site.data.train) for site in fed.sites]), report


def run(fed: Federation, output_dir: Path, update: SiteUpdate = local_update) -> list[dict[str, float]]:
    """All ``num-server-rounds`` rounds from the app's initial weights, recorded in ``output_dir``.

    Returns the server's scores of each round; round 0 is the initial model.
    """
    settings = fed.settings
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in (RESULTS_CSV, SITE_CSV, PARTITION_CSV):  # a fresh run, not appended to an older one
        (output_dir / name).unlink(missing_ok=True)
    metadata = model_metadata(settings.model, fed.class_names, settings.image_size, settings.channels)
    writer = ModelWriter(fed.evaluator.bundle, metadata)
    rounds = settings.num_server_rounds
    recorder = RunRecorder(output_dir, fed.evaluator.test_set, fed.class_names, writer, total_rounds=rounds)
    config = {**settings.to_config(), "class-names": list(fed.class_names), "emulator": True}
    write_run_config(output_dir, {**config, "centralized": fed.pooled})
    weights = initial_weights(settings, fed.class_names)
    server_step = ServerStep(settings, statistics_mask(fed.evaluator.bundle.trainable))
    scores = []
    for server_round in range(rounds + 1):
        if server_round:
            averaged, report = fedavg_round(fed, weights, server_round, update)
            weights = server_step(weights, averaged)
            recorder.site_report(server_round, report)
        evaluation = fed.evaluator(weights)
        recorder.round_done(server_round, weights, evaluation)
        scores.append(evaluation.metrics)
    return scores
