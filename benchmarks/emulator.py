"""A one-process FedAvg federation built from the app's own functions, for benchmarks without Flower's engine.

Everything that decides a result is the app's: the settings are read as
``brainfl`` reads ``--run-config`` (:func:`brainfl.settings.run_config.settings_from_args`:
the pyproject defaults, then ``K=V`` pairs or conf files), the sites are
the ClientApp's (:func:`brainfl.data.sites.site_data`: the run's partitioning
less each site's validation hold-out), every site runs the ClientApp's
round (:func:`brainfl.federation.site_round.round_update`: the local update
:func:`brainfl.federation.site_training.local_update` from the global weights with the
round's learning rate, :func:`brainfl.model.training.scheduled_learning_rate`; under SCAFFOLD
first its control variate's gradient pass and the correction, its ``c_i`` kept in a
``Context.state`` of its own across the run's rounds, as a SuperNode keeps it) and
replies what a ClientApp replies (:func:`brainfl.federation.site_round.reply_content`:
its weights, the metrics of :func:`brainfl.federation.client_app.site_counts` and
SCAFFOLD's control update, in a Flower ``Message``; with ``ditto-lambda`` > 0 each
site also trains its Ditto personal model in its ``Context.state`` and replies its
held-out scores, and after the last round answers the personalization query with
:func:`brainfl.federation.personalization.personalize_site`, written as the ServerApp
writes ``personalization.csv``), the server's step is the
ServerApp's strategy (:func:`brainfl.federation.strategy.build_strategy`: FedAvg by
example counts, FedAvgM with the settings' server learning rate and momentum and
BatchNorm statistics plainly averaged, or SCAFFOLD, whose control variate the sites
get with the model) aggregating those replies (:class:`ServerStep`; with ``bn-statistics='pooled'``
the sites then answer the statistics query in this process, :func:`statistics_pool`), the server's
evaluator scores the global model (:class:`brainfl.evaluation.test_set.CentralEvaluator`:
:func:`brainfl.evaluation.metrics.score` on its test set, leak-free subset included)
and the server's recorder writes the round (:class:`brainfl.federation.recorder.RunRecorder`, the strategy's
report sink). A *pooled* federation is the centralized baseline: one site
holding every training image. Only Flower's engine (grid, processes,
transport) is left out, so a recipe costs minutes here before a full run is
spent on it.

A run's folder therefore holds a run's files (``federated_learning_results.csv``
with round 0 the initial model, ``site_metrics.csv`` with training metrics
only as no site evaluates here, ``run_config.json``, the checkpoint...), which
:func:`harness.keep_result` and ``summarize_run.py`` take like any run's.
Decoded images are cached in ``$BRAINFL_CACHE_DIR`` as by the app.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message import make_message
from flwr.common import DEFAULT_TTL
from flwr.serverapp.strategy import FedAvgM
from flwr.serverapp.strategy.fedopt import FedOpt

from brainfl.core.errors import BrainFLError
from brainfl.data.sites import SiteData, load_run_dataset, site_data
from brainfl.evaluation.test_set import CentralEvaluator
from brainfl.federation import ditto, personalization
from brainfl.federation.bookkeeping import PoolStatistics, ReportSink, SiteBookkeeping, SiteReport
from brainfl.federation.client_app import site_counts
from brainfl.federation.recorder import RunRecorder
from brainfl.federation.scaffold import BrainScaffold
from brainfl.federation.server_app import statistics_mask
from brainfl.federation.site_round import LocalUpdate, reply_content, round_update
from brainfl.federation.site_training import local_update
from brainfl.federation.statistics_query import STATISTICS, pool_answers, site_statistics
from brainfl.federation.strategy import build_strategy
from brainfl.model.files import ModelWriter, run_model_metadata
from brainfl.model.process_cache import initial_weights, model_inputs
from brainfl.model.training import scheduled_learning_rate
from brainfl.report.results import PARTITION_CSV, PERSONALIZATION_CSV, RESULTS_CSV, SITE_CSV, write_run_config
from brainfl.settings.run_config import settings_from_args
from brainfl.settings.run_settings import RunSettings

ROOT = Path(__file__).resolve().parents[1]
SiteUpdate = LocalUpdate  # local_update's signature


def settings_for(*run_configs: str) -> RunSettings:
    """The app's settings from ``--run-config`` values (pairs or conf files), later ones winning.

    Checked as ``brainfl`` checks a run's: syntax, known keys, ranges, and
    overrides that other settings would make ineffective.
    """
    return settings_from_args(ROOT, list(run_configs))


EMULATED_STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi", "scaffold")


def site_message(
    site_id: int, group: str, content: RecordDict, message_type: str = MessageType.TRAIN
) -> Message:
    """A site's reply with ``content`` as the ServerApp receives it (``group``: the round, or the query)."""
    metadata = Metadata(
        run_id=0,
        message_id=f"{message_type}-{group}-{site_id}",
        src_node_id=site_id,
        dst_node_id=0,
        reply_to_message_id=f"configure-{message_type}-{group}-{site_id}",
        group_id=group,
        created_at=time.time(),
        ttl=DEFAULT_TTL,
        message_type=message_type,
    )
    return make_message(metadata=metadata, content=content)


def site_reply(
    site_id: int,
    server_round: int,
    weights: Sequence[np.ndarray],
    metrics: dict[str, float | int],
    control_update: list[np.ndarray] | None = None,
) -> Message:
    """A site's train reply as the ServerApp receives it: the ClientApp's records
    (:func:`brainfl.federation.site_round.reply_content`).

    ``metrics`` holds the example count the strategy weighs by (``num-examples``,
    from :func:`brainfl.federation.client_app.site_counts`) and the site's id;
    ``control_update`` is SCAFFOLD's.
    """
    content = reply_content(list(weights), metrics, control_update)
    return site_message(site_id, str(server_round), content)


class ServerStep:
    """The server's step from the sites' train replies to the next global weights: the app's strategy's.

    The strategy is the ServerApp's (:func:`brainfl.federation.strategy.build_strategy`
    with the run's settings, cosine learning-rate schedule and the model's
    ``statistics`` mask): ``fedavg`` averages the replies by example count,
    ``fedavgm`` is Flower's FedAvgM (SGD with momentum on ``old - average``,
    the server learning rate and momentum of the settings) and ``fedadam`` /
    ``fedyogi`` Flower's FedOpt steps (at the server learning rate) for trained
    weights, and the plain average for statistics. Each call hands the strategy the
    round's global weights as its ``configure_train`` keeps them (the model
    replies are checked against, and FedAvgM's starting point in its first
    round; no site is sampled here, every site trains), then returns what its
    ``aggregate_train`` makes of the replies: the global weights unchanged when
    no reply is usable, as in a Flower run. The strategy's :class:`SiteReport`
    of each round goes to ``report`` and is kept in ``last_report``.
    """

    def __init__(
        self,
        settings: RunSettings,
        statistics: Sequence[bool],
        *,
        num_sites: int = 1,
        class_names: Sequence[str] = (),
        report: ReportSink | None = None,
        pool_statistics: PoolStatistics | None = None,
    ) -> None:
        def learning_rate_for_round(server_round: int) -> float:
            return scheduled_learning_rate(settings, server_round)

        self.sink = report
        self.last_report: SiteReport | None = None
        self.strategy: SiteBookkeeping = build_strategy(
            settings,
            class_names,
            learning_rate_for_round,
            num_sites=num_sites,
            report=self._report,
            statistics_mask=statistics,
            pool_statistics=pool_statistics,
        )

    def _report(self, server_round: int, report: SiteReport) -> None:
        self.last_report = report
        if self.sink is not None:
            self.sink(server_round, report)

    def learning_rate(self, server_round: int) -> float:
        """The learning rate the strategy sends the sites in ``server_round``."""
        return float(self.strategy.learning_rate_for_round(server_round))

    def control(self, weights: Sequence[np.ndarray]) -> list[np.ndarray] | None:
        """SCAFFOLD's control variate the strategy sends with ``weights`` (None: another strategy)."""
        if isinstance(self.strategy, BrainScaffold):
            return self.strategy.server_control(weights)
        return None

    def __call__(
        self, server_round: int, weights: Sequence[np.ndarray], replies: Sequence[Message]
    ) -> list[np.ndarray]:
        self.strategy.global_arrays = list(weights)
        if isinstance(self.strategy, FedAvgM) and self.strategy.current_arrays is None:
            self.strategy.current_arrays = ArrayRecord(list(weights))
        if isinstance(self.strategy, FedOpt):  # its configure_train keeps each round's global arrays
            self.strategy.current_arrays = {
                key: array.numpy() for key, array in ArrayRecord(list(weights)).items()
            }
        aggregated, _ = self.strategy.aggregate_train(server_round, replies)
        return list(weights) if aggregated is None else aggregated.to_numpy_ndarrays()


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
    strategy = settings.federation.strategy
    if strategy not in EMULATED_STRATEGIES:
        raise BrainFLError(f"the emulator runs {', '.join(EMULATED_STRATEGIES)} only, not '{strategy}'")
    dataset = load_run_dataset(settings)
    evaluator = CentralEvaluator.for_dataset(settings, dataset)
    if pooled:
        sites = [SiteData(0, dataset.train, dataset.train.subset(np.arange(0)), Path(settings.data.data_dir))]
    else:
        count, class_names = settings.data.num_partitions, dataset.train.class_names
        configs = [{"partition-id": site_id, "num-partitions": count} for site_id in range(count)]
        sites = [site_data(settings, config, class_names) for config in configs]
    inputs = [model_inputs(settings.model, evaluator.bundle, site.train) for site in sites]
    return Federation(settings, [Site(*pair) for pair in zip(sites, inputs, strict=True)], evaluator, pooled)


def site_contexts(fed: Federation, settings: RunSettings | None = None) -> list[Context]:
    """A fresh Flower ``Context`` per site, as a SuperNode gives its ClientApp: the node config of
    its partition and an empty ``state``, which keeps what the site keeps between rounds."""
    config = (settings or fed.settings).to_config()
    count = len(fed.sites)
    return [
        Context(
            run_id=0,
            node_id=site.data.site_id,
            node_config={"partition-id": site.data.site_id, "num-partitions": count},
            state=RecordDict(),
            run_config=config,
        )
        for site in fed.sites
    ]


def fedavg_round(
    fed: Federation,
    weights: list[np.ndarray],
    server_round: int,
    update: SiteUpdate = local_update,
    step: ServerStep | None = None,
    contexts: Sequence[Context] | None = None,
) -> tuple[list[np.ndarray], SiteReport]:
    """One round: every site runs the ClientApp's round on ``weights`` and replies; ``step`` (by
    default the run's strategy, fresh) aggregates the replies. ``contexts``: the sites' own, kept
    across a run's rounds (by default fresh ones). Return the next global weights and the sites'
    training report."""
    settings, bundle = fed.settings, fed.evaluator.bundle
    if step is None:
        step = server_step(fed)
    if contexts is None:
        contexts = site_contexts(fed)
    learning_rate, control = step.learning_rate(server_round), step.control(weights)
    replies = []
    for site, context in zip(fed.sites, contexts, strict=True):
        bundle.trainable.set_weights(weights)
        result = round_update(
            settings,
            bundle,
            site.data,
            site.inputs,
            context.state,
            learning_rate=learning_rate,
            server_round=server_round,
            control=control,
            update=update,
        )
        reply = {**result.metrics, **site_counts(site.data)}
        replies.append(
            site_reply(site.data.site_id, server_round, result.weights, reply, result.control_update)
        )
    aggregated = step(server_round, weights, replies)
    return aggregated, step.last_report


def server_step(fed: Federation, report: ReportSink | None = None) -> ServerStep:
    """The run's strategy for the federation's sites and model, reporting each round to ``report``."""
    return ServerStep(
        fed.settings,
        statistics_mask(fed.evaluator.bundle.trainable),
        num_sites=len(fed.sites),
        class_names=fed.class_names,
        report=report,
        pool_statistics=statistics_pool(fed),
    )


def statistics_pool(fed: Federation) -> PoolStatistics | None:
    """With ``bn-statistics='pooled'``: the ServerApp's statistics query, each site answering in this
    process as its ClientApp does (:func:`brainfl.federation.statistics_query.site_statistics`)."""
    if fed.settings.federation.bn_statistics != "pooled":
        return None
    model, batch_size = fed.evaluator.bundle.trainable, fed.settings.training.batch_size

    def pool(server_round: int, weights: list[np.ndarray], nodes: Sequence[int]) -> list[np.ndarray]:
        replies = [
            site_message(
                site.data.site_id,
                f"{STATISTICS}-{server_round}",
                site_statistics(model, weights, site.inputs, batch_size, site.data.site_id),
                MessageType.QUERY,
            )
            for site in fed.sites
            if site.data.site_id in nodes
        ]
        return pool_answers(model, server_round, weights, replies)

    return pool


def run(fed: Federation, output_dir: Path, update: SiteUpdate = local_update) -> list[dict[str, float]]:
    """All ``num-server-rounds`` rounds from the app's initial weights, recorded in ``output_dir``.

    Returns the server's scores of each round; round 0 is the initial model.
    """
    settings = fed.settings
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in (RESULTS_CSV, SITE_CSV, PARTITION_CSV, PERSONALIZATION_CSV):  # a fresh run, not appended
        (output_dir / name).unlink(missing_ok=True)
    metadata = run_model_metadata(settings, fed.class_names)
    writer = ModelWriter(fed.evaluator.bundle, metadata)
    rounds = settings.federation.num_server_rounds
    recorder = RunRecorder(
        output_dir,
        fed.evaluator.test_set,
        fed.class_names,
        writer,
        total_rounds=rounds,
        ditto=ditto.enabled(settings),
    )
    config = {**settings.to_config(), "class-names": list(fed.class_names), "emulator": True}
    write_run_config(output_dir, {**config, "centralized": fed.pooled})
    weights = initial_weights(settings, fed.class_names)
    step = server_step(fed, recorder.site_report)
    contexts = site_contexts(fed, settings.replace(output_dir=str(output_dir)))
    scores = []
    for server_round in range(rounds + 1):
        if server_round:
            weights, _ = fedavg_round(fed, weights, server_round, update, step, contexts)
        evaluation = fed.evaluator(weights)
        recorder.round_done(server_round, weights, evaluation)
        scores.append(evaluation.metrics)
    if ditto.enabled(settings):
        personalize(fed, weights, contexts, output_dir)
    return scores


def personalize(
    fed: Federation, weights: list[np.ndarray], contexts: Sequence[Context], output_dir: Path
) -> list[dict[str, object]]:
    """The ServerApp's personalization query after the last round, answered by every site's ClientApp
    function (:func:`brainfl.federation.personalization.personalize_site`: with Ditto, its kept personal
    model scored and saved under ``output_dir/sites/``) and written as ``personalization.csv``."""
    settings = fed.settings.replace(output_dir=str(output_dir))
    query = personalization.personalization_query(weights, fed.class_names, settings)
    replies = []
    for site, context in zip(fed.sites, contexts, strict=True):
        answer = personalization.personalize_site(settings, site.data, weights, query["config"], context)
        content = RecordDict({"metrics": answer})
        group = personalization.PERSONALIZE
        replies.append(site_message(site.data.site_id, group, content, MessageType.QUERY))
    return personalization.record_answers(replies, settings, fed.class_names, output_dir)
