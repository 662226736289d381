"""Aggregation strategies: the custom FedAvg and Flower's others, with per-site bookkeeping.

:class:`SiteBookkeeping` is a mixin over any Flower message-API strategy:
each round it sends the round's learning rate and the class names with the
model, drops replies that cannot be aggregated (NaN, wrong shape or dtype)
with a logged reason, and keeps every site's training and validation metrics
so the server can write them per round. :class:`BrainFedAvg` is the
project's FedAvg (weights averaged by each site's example count);
:func:`build_strategy` gives the one named by the ``strategy`` setting
(FedProx, FedAdam, FedYogi, FedAvgM, Krum, Multi-Krum, trimmed mean,
median: Flower's implementations with the same bookkeeping).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
)
from flwr.serverapp.strategy.strategy_utils import (
    aggregate_metricrecords,
    validate_message_reply_consistency,
)

from brainfl.config import RunSettings
from brainfl.logs import LOG

NUM_EXAMPLES = "num-examples"
SITE_KEYS = ("site-id", "num_train", "num_val")


def aggregate_site_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted average of the sites' metrics, without per-site bookkeeping keys."""
    metrics = aggregate_metricrecords(records, weight_key)
    return MetricRecord({key: value for key, value in metrics.items() if key not in SITE_KEYS})


def weighted_average(
    site_arrays: Sequence[Sequence[np.ndarray]], weights: Sequence[float]
) -> list[np.ndarray]:
    """Average each layer's arrays over sites, weighted by ``weights`` (example counts).

    Computed in float64 and cast back to each array's dtype.
    """
    if not site_arrays:
        raise ValueError("no site arrays to average")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"example counts must sum to a positive number, got {list(weights)}")
    averaged = []
    for layer in zip(*site_arrays, strict=True):
        acc = np.zeros(layer[0].shape, dtype=np.float64)
        for array, weight in zip(layer, weights, strict=True):
            acc += np.asarray(array, dtype=np.float64) * (weight / total)
        averaged.append(acc.astype(layer[0].dtype))
    return averaged


def reply_problem(arrays: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> str | None:
    """Why a site's returned weights cannot be averaged (None when they can).

    The reply must have the global model's number of arrays, each with the same
    shape and a floating dtype of the same kind, and only finite values.
    """
    if len(arrays) != len(expected):
        return f"{len(arrays)} arrays, expected {len(expected)}"
    for index, (array, reference) in enumerate(zip(arrays, expected, strict=True)):
        if array.shape != reference.shape:
            return f"array {index} has shape {array.shape}, expected {reference.shape}"
        if array.dtype != reference.dtype:
            return f"array {index} has dtype {array.dtype}, expected {reference.dtype}"
        if not np.all(np.isfinite(array)):
            return f"array {index} contains NaN or infinite values"
    return None


def round_settings(
    global_round: int, learning_rate_for_round: Callable[[int], float], class_names: Sequence[str]
) -> dict[str, int | float | str]:
    """What every site gets with the model: the round, its learning rate and the class names."""
    return {
        "global-round": global_round,
        "learning-rate": float(learning_rate_for_round(global_round)),
        "class-names": ",".join(class_names),
    }


@dataclasses.dataclass
class RoundRecord:
    """What the sites reported in one round."""

    sites: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)
    train: dict[str, float] = dataclasses.field(default_factory=dict)
    evaluate: dict[str, float] = dataclasses.field(default_factory=dict)
    sites_trained: int = 0
    sites_failed: int = 0


def site_of(message: Message) -> int:
    """The site's id: its partition id when it has one, else its Flower node id."""
    metrics = next(iter(message.content.metric_records.values()), {})
    site = metrics.get("site-id", -1)
    return int(site) if site is not None and site >= 0 else int(message.metadata.src_node_id)


class RoundBook:
    """Mixin keeping what the sites reported each round (read by the server's evaluator).

    ``round_offset`` counts the rounds finished before this process (a resumed run).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rounds: dict[int, RoundRecord] = {}
        self.round_offset = 0

    def record(self, server_round: int) -> RoundRecord:
        """The bookkeeping of ``server_round`` (created empty on first use)."""
        return self.rounds.setdefault(server_round, RoundRecord())

    def keep_site_metrics(self, server_round: int, site: int, metrics: Mapping[str, object]) -> None:
        """Add a site's numeric metrics to its entry for ``server_round``."""
        self.record(server_round).sites.setdefault(site, {}).update(
            {key: float(value) for key, value in metrics.items() if isinstance(value, int | float)}
        )


class SiteBookkeeping(RoundBook):
    """Mixin for a Flower ``FedAvg``-family strategy: round settings, reply checks, site metrics.

    Subclasses list it before the Flower strategy; :meth:`aggregate_arrays`
    is the strategy's own aggregation rule applied to the usable replies.
    """

    arrayrecord_key: str
    weighted_by_key: str

    def __init__(
        self,
        *,
        learning_rate_for_round: Callable[[int], float],
        class_names: Sequence[str],
        wait_for_sites: int = 0,
        wait_timeout: float = 600.0,
        **kwargs,
    ) -> None:
        kwargs.setdefault("train_metrics_aggr_fn", aggregate_site_metrics)
        kwargs.setdefault("evaluate_metrics_aggr_fn", aggregate_site_metrics)
        super().__init__(weighted_by_key=NUM_EXAMPLES, **kwargs)
        self.learning_rate_for_round = learning_rate_for_round
        self.class_names = list(class_names)
        self.global_arrays: list[np.ndarray] | None = None
        self.wait_for_sites = wait_for_sites
        self.wait_timeout = wait_timeout

    def _with_round_settings(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        return ConfigRecord(
            {
                **config,
                **round_settings(
                    server_round + self.round_offset, self.learning_rate_for_round, self.class_names
                ),
            }
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global model with this round's learning rate and the class names."""
        self.global_arrays = arrays.to_numpy_ndarrays()
        if self.wait_for_sites:
            self._wait_for_sites(grid)
        return super().configure_train(
            server_round, arrays, self._with_round_settings(server_round, config), grid
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask sites to evaluate the global model on their validation splits."""
        return super().configure_evaluate(
            server_round, arrays, self._with_round_settings(server_round, config), grid
        )

    def _wait_for_sites(self, grid: Grid) -> None:
        """Before the first round, wait (up to ``wait_timeout``) for ``wait_for_sites`` sites.

        Later rounds go on with whoever is connected (at least ``min_available_nodes``),
        so a site that drops out does not stop the federation.
        """
        deadline = time.monotonic() + self.wait_timeout
        while (connected := len(list(grid.get_node_ids()))) < self.wait_for_sites:
            if time.monotonic() > deadline:
                LOG.warning(
                    "only %d of %d sites connected; starting without the others",
                    connected,
                    self.wait_for_sites,
                )
                break
            time.sleep(1)
        self.wait_for_sites = 0

    def _keep_site_metrics(self, server_round: int, replies: list[Message]) -> None:
        for message in replies:
            self.keep_site_metrics(
                server_round, site_of(message), next(iter(message.content.metric_records.values()))
            )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the sites' weights by example count; keep each site's metrics."""
        valid, failed = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        valid, rejected = self._drop_unusable(server_round, valid)
        if valid:
            validate_message_reply_consistency([m.content for m in valid], self.weighted_by_key, True)
        record = self.record(server_round)
        record.sites_trained, record.sites_failed = len(valid), len(failed) + rejected
        if not valid:
            LOG.warning("round %d: no site returned a model; the global model is unchanged", server_round)
            return None, None
        self._keep_site_metrics(server_round, valid)
        contents = [message.content for message in valid]
        aggregated = self.aggregate_arrays(server_round, valid)
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        record.train = dict(metrics)
        return aggregated, metrics

    def aggregate_arrays(self, server_round: int, replies: list[Message]) -> ArrayRecord | None:
        """The aggregation rule of the Flower strategy this mixin sits on."""
        arrays, _ = super().aggregate_train(server_round, replies)
        return arrays

    def _drop_unusable(self, server_round: int, replies: list[Message]) -> tuple[list[Message], int]:
        """Keep the replies whose weights match the global model and are finite; log the others."""
        if self.global_arrays is None:
            return replies, 0
        usable = []
        for message in replies:
            problem = reply_problem(
                message.content[self.arrayrecord_key].to_numpy_ndarrays(), self.global_arrays
            )
            if problem is None:
                usable.append(message)
            else:
                LOG.warning(
                    "round %d: dropped the reply of site %d: %s", server_round, site_of(message), problem
                )
        return usable, len(replies) - len(usable)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Aggregate the sites' validation metrics; keep each site's."""
        valid, _ = self._check_and_log_replies(list(replies), is_train=False)
        if not valid:
            return None
        self._keep_site_metrics(server_round, valid)
        metrics = self.evaluate_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        self.record(server_round).evaluate = dict(metrics)
        return metrics


class BrainFedAvg(SiteBookkeeping, FedAvg):
    """The project's FedAvg: sites' weights averaged by their example counts.

    With ``uniform=True`` every site weighs the same, as differential-privacy
    accounting assumes (the noise is calibrated to an average of equals).
    """

    def __init__(self, *, uniform: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.uniform = uniform

    def aggregate_arrays(self, server_round: int, replies: list[Message]) -> ArrayRecord | None:
        """Average by example count (or uniformly), in float64."""
        contents = [message.content for message in replies]
        site_arrays = [content[self.arrayrecord_key].to_numpy_ndarrays() for content in contents]
        weights = [
            1.0 if self.uniform else float(next(iter(c.metric_records.values()))[NUM_EXAMPLES])
            for c in contents
        ]
        return ArrayRecord(weighted_average(site_arrays, weights))


class BrainFedProx(SiteBookkeeping, FedProx):
    """Flower's FedProx (sends ``proximal-mu``; sites add the proximal term to their loss)."""


class BrainFedAdam(SiteBookkeeping, FedAdam):
    """Flower's FedAdam: Adam on the server over the averaged update."""


class BrainFedYogi(SiteBookkeeping, FedYogi):
    """Flower's FedYogi: Yogi on the server over the averaged update."""


class BrainFedAvgM(SiteBookkeeping, FedAvgM):
    """Flower's FedAvgM: server-side momentum."""


class BrainKrum(SiteBookkeeping, Krum):
    """Flower's Krum: keeps the one update closest to its neighbours."""


class BrainMultiKrum(SiteBookkeeping, MultiKrum):
    """Flower's Multi-Krum: averages the updates Krum ranks best."""


class BrainTrimmedMean(SiteBookkeeping, FedTrimmedAvg):
    """Flower's FedTrimmedAvg: per coordinate, the mean without the extremes."""


class BrainMedian(SiteBookkeeping, FedMedian):
    """Flower's FedMedian: per-coordinate median."""


# Default server learning rates where the setting is 0 (FedAdam's own 0.1 is far too large
# for a CNN trained from scratch; 0.01 is FedYogi's default and what adaptive FL papers use).
SERVER_LEARNING_RATES = {"fedadam": 0.01, "fedyogi": 0.01, "fedavgm": 1.0}


def strategy_options(settings: RunSettings, num_sites: int) -> tuple[type[SiteBookkeeping], dict]:
    """The class and the strategy-specific arguments for ``settings.strategy``."""
    server_lr = settings.server_learning_rate or SERVER_LEARNING_RATES.get(settings.strategy, 1.0)
    byzantine = settings.byzantine_sites
    return {
        "fedavg": (BrainFedAvg, {"uniform": settings.dp != "none"}),
        "fedprox": (BrainFedProx, {"proximal_mu": settings.proximal_mu}),
        "fedadam": (BrainFedAdam, {"eta": server_lr}),
        "fedyogi": (BrainFedYogi, {"eta": server_lr}),
        "fedavgm": (
            BrainFedAvgM,
            {"server_learning_rate": server_lr, "server_momentum": settings.server_momentum},
        ),
        "krum": (BrainKrum, {"num_malicious_nodes": byzantine}),
        "multikrum": (
            BrainMultiKrum,
            {"num_malicious_nodes": byzantine, "num_nodes_to_select": max(1, num_sites - byzantine)},
        ),
        "trimmed-mean": (BrainTrimmedMean, {"beta": settings.trim_beta}),
        "median": (BrainMedian, {}),
    }[settings.strategy]


def build_strategy(
    settings: RunSettings,
    class_names: Sequence[str],
    learning_rate_for_round: Callable[[int], float],
) -> SiteBookkeeping:
    """The strategy named by ``settings.strategy``, with the run's sampling and waiting settings."""
    strategy_class, options = strategy_options(settings, settings.num_partitions)
    return strategy_class(
        learning_rate_for_round=learning_rate_for_round,
        class_names=class_names,
        wait_for_sites=settings.wait_for_sites,
        wait_timeout=settings.round_timeout,
        fraction_train=settings.fraction_train,
        fraction_evaluate=settings.fraction_evaluate,
        min_train_nodes=settings.min_sites,
        min_evaluate_nodes=settings.min_sites if settings.fraction_evaluate else 0,
        min_available_nodes=settings.min_sites,
        **options,
    )
