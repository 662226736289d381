"""What every strategy does around its aggregation rule: round settings, reply checks, site reports.

:class:`SiteBookkeeping` is a mixin over any Flower message-API strategy:
each round it sends the round's learning rate and the class names with the
model, drops replies that cannot be aggregated (NaN, wrong shape or dtype)
with a logged reason, and hands every site's metrics onward in a
:class:`SiteReport` (to the run's recorder), with who took part (each site
sent the round's train message: aggregated, or dropped for a missing reply,
an error or an unusable update) and the round's critical path (the slowest
site's ``total_s`` and the server's aggregation seconds): it keeps no record
that others read. Strategies that take a server optimizer step (``server_step``) step
only the trained weights: BatchNorm's moving statistics are not gradients,
so they get the plain example-weighted average.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from brainfl.core.logs import LOG
from brainfl.core.timings import TOTAL
from brainfl.evaluation.metrics import site_per_class_prefixes
from brainfl.federation.flower_compat import aggregate_metricrecords, validate_message_reply_consistency

NUM_EXAMPLES = "num-examples"
# bn-statistics='pooled' (brainfl.federation.statistics_query): (round, the aggregated weights, the
# nodes whose updates they hold) -> the weights with the sites' pooled BatchNorm statistics
PoolStatistics = Callable[[int, list[np.ndarray], Sequence[int]], list[np.ndarray]]
SITE_KEYS = ("site-id", "num_train", "num_val")
CLASS_COUNT_PREFIX = "class-count-"  # reply keys of a site's training images per class: never averaged
PER_SITE_PREFIXES = (CLASS_COUNT_PREFIX, *site_per_class_prefixes())  # per-site only (a class may be NaN)
ERROR_NAMES = {
    code: name.lower().replace("_", " ") for name, code in vars(ErrorCode).items() if name.isupper()
}
EXCEPTION_CLASS = re.compile(r"^<class '(?:[\w.]+\.)?(\w+)'>")  # how Flower's error reason starts


def aggregate_site_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted average of the sites' metrics, without per-site bookkeeping keys and
    per-class sensitivities."""
    metrics = aggregate_metricrecords(records, weight_key)
    kept = {
        key: v for key, v in metrics.items() if key not in SITE_KEYS and not key.startswith(PER_SITE_PREFIXES)
    }
    return MetricRecord(kept)


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


def example_weighted_average(replies: list[Message], key: str, uniform: bool = False) -> list[np.ndarray]:
    """The replies' arrays averaged by their example counts (or uniformly), in float64."""
    contents = [message.content for message in replies]
    site_arrays = [content[key].to_numpy_ndarrays() for content in contents]
    weights = [
        1.0 if uniform else float(next(iter(c.metric_records.values()))[NUM_EXAMPLES]) for c in contents
    ]
    return weighted_average(site_arrays, weights)


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


@dataclasses.dataclass(frozen=True)
class Participant:
    """A node sent the round's train message: aggregated (``dropped`` empty), or dropped and why."""

    node: int
    site: int | None = None  # its site id, where one of its replies named it
    dropped: str = ""

    def entry(self) -> dict[str, int | str | None]:
        """The participant in the audit's round line."""
        return {"node": self.node, "site": self.site, **({"reason": self.dropped} if self.dropped else {})}


@dataclasses.dataclass(frozen=True)
class SiteReport:
    """What the sites sent in one stage ("train" or "evaluate") of one round."""

    stage: str
    sites: dict[int, dict[str, float]]
    aggregate: dict[str, float]
    sites_replied: int = 0
    sites_failed: int = 0
    participants: tuple[Participant, ...] = ()
    slowest_site_s: float | None = None  # the longest ``total_s`` of the replies (None: none carried one)
    aggregation_s: float = 0.0  # the server's seconds for the stage's aggregation


def slowest_site_s(site_metrics: Iterable[Mapping[str, object]]) -> float | None:
    """The sites' part of a round's critical path: the longest time one site took from message to reply
    (its ``total_s``), not their sum, as sites train in parallel; None when no reply carries it."""
    seconds = [float(m[TOTAL]) for m in site_metrics if isinstance(m.get(TOTAL), int | float)]
    return max(seconds, default=None)


ReportSink = Callable[[int, SiteReport], None]


def site_id(metrics: Mapping[str, object]) -> int | None:
    """The site id a reply's metrics name (its partition id), if any."""
    site = metrics.get("site-id", -1)
    return int(site) if isinstance(site, int | float) and site >= 0 else None


def site_of(message: Message) -> int:
    """The site's id: its partition id when it has one, else its Flower node id."""
    site = site_id(next(iter(message.content.metric_records.values()), {}))
    return int(message.metadata.src_node_id) if site is None else site


def numeric_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """The numeric entries of a site's metrics, as floats."""
    return {key: float(value) for key, value in metrics.items() if isinstance(value, int | float)}


def error_summary(error: Error) -> str:
    """A site error in words: Flower's error code and the exception's class, never its message (which may
    name a site's files)."""
    found = EXCEPTION_CLASS.match(error.reason or "")
    kind = ERROR_NAMES.get(error.code, f"code {error.code}")
    return f"error: {kind}" + (f" ({found[1]})" if found else "")


def split_replies(replies: Iterable[Message], stage: str) -> tuple[list[Message], list[Message]]:
    """(replies with content, replies carrying an error); each error is logged."""
    valid, failed = [], []
    for message in replies:
        (failed if message.has_error() else valid).append(message)
    for message in failed:
        LOG.warning("%s: site node %s failed: %s", stage, message.metadata.src_node_id, message.error.reason)
    return valid, failed


def server_step_with_plain_statistics(
    stepped: list[np.ndarray], averaged: list[np.ndarray], statistics_mask: Sequence[bool]
) -> list[np.ndarray]:
    """The server-optimizer result for trained weights, the plain average for statistics, each in the
    model's dtype (Flower's FedOpt steps come back in float64; the sites' next replies, in the model's
    float32, would otherwise be dropped as of another dtype)."""
    return [
        plain if is_statistic else np.asarray(step).astype(plain.dtype, copy=False)
        for step, plain, is_statistic in zip(stepped, averaged, statistics_mask, strict=True)
    ]


class SiteBookkeeping:
    """Mixin for a Flower ``FedAvg``-family strategy: round settings, reply checks, site metrics.

    Subclasses list it before the Flower strategy; :meth:`aggregate_arrays`
    is the strategy's own aggregation rule applied to the usable replies.
    """

    arrayrecord_key: str
    weighted_by_key: str
    server_step: bool = False  # True where the strategy applies an optimizer step on the server
    reply_arrays: int = 1  # ArrayRecords in a train reply: the model, and any the strategy adds

    def __init__(
        self,
        *,
        learning_rate_for_round: Callable[[int], float],
        class_names: Sequence[str],
        report: ReportSink | None = None,
        round_offset: int = 0,
        statistics_mask: Sequence[bool] = (),
        pool_statistics: PoolStatistics | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("train_metrics_aggr_fn", aggregate_site_metrics)
        kwargs.setdefault("evaluate_metrics_aggr_fn", aggregate_site_metrics)
        super().__init__(weighted_by_key=NUM_EXAMPLES, **kwargs)
        self.learning_rate_for_round = learning_rate_for_round
        self.class_names = list(class_names)
        self.global_arrays: list[np.ndarray] | None = None
        self.report = report or (lambda _round, _report: None)
        self.round_offset = round_offset
        self.statistics_mask = tuple(statistics_mask)
        self.pool_statistics = pool_statistics  # bn-statistics='pooled': the sites' statistics query
        self.asked: list[int] = []  # the nodes sent this round's train message
        self.site_ids: dict[int, int] = {}  # node -> site id, from the replies so far

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
        messages = list(
            super().configure_train(
                server_round, arrays, self._with_round_settings(server_round, config), grid
            )
        )
        self.asked = [message.metadata.dst_node_id for message in messages]
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask sites to evaluate the global model on their validation splits."""
        return super().configure_evaluate(
            server_round, arrays, self._with_round_settings(server_round, config), grid
        )

    def _site_metrics(self, replies: list[Message]) -> dict[int, dict[str, float]]:
        return {
            site_of(message): numeric_metrics(next(iter(message.content.metric_records.values())))
            for message in replies
        }

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the usable replies with the strategy's rule; report each site's metrics, who took
        part and the round's critical path."""
        started = time.perf_counter()
        replies = list(replies)
        valid, failed = split_replies(replies, f"round {server_round} train")
        valid, rejected = self._drop_unusable(server_round, valid)
        if valid:
            validate_message_reply_consistency(
                [m.content for m in valid], self.weighted_by_key, self.reply_arrays == 1
            )
        sites = self._site_metrics(valid)
        answered = [*valid, *(message for message, _ in rejected)]
        slowest = slowest_site_s(next(iter(m.content.metric_records.values()), {}) for m in answered)
        participants = self._participants(replies, answered, rejected)
        if not valid:
            LOG.warning("round %d: no site returned a model; the global model is unchanged", server_round)
            seconds = time.perf_counter() - started
            empty = SiteReport(
                "train", {}, {}, 0, len(failed) + len(rejected), participants, slowest, seconds
            )
            self.report(server_round + self.round_offset, empty)
            return None, None
        aggregated = self.aggregate_arrays(server_round, valid)
        if self.server_step and self.statistics_mask and aggregated is not None:
            averaged = example_weighted_average(valid, self.arrayrecord_key)
            stepped = aggregated.to_numpy_ndarrays()
            mask = self.statistics_mask
            aggregated = ArrayRecord(server_step_with_plain_statistics(stepped, averaged, mask))
        if self.pool_statistics is not None and aggregated is not None:
            nodes = [int(message.metadata.src_node_id) for message in valid]
            weights = aggregated.to_numpy_ndarrays()
            aggregated = ArrayRecord(self.pool_statistics(server_round + self.round_offset, weights, nodes))
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        counts = (len(valid), len(failed) + len(rejected))
        seconds = time.perf_counter() - started
        report = SiteReport("train", sites, dict(metrics), *counts, participants, slowest, seconds)
        self.report(server_round + self.round_offset, report)
        return aggregated, metrics

    def _participants(
        self, replies: list[Message], answered: list[Message], rejected: list[tuple[Message, str]]
    ) -> tuple[Participant, ...]:
        """Each node asked this round: aggregated, or dropped (an error, an unusable update, no reply)."""
        for message in answered:
            self.site_ids[int(message.metadata.src_node_id)] = site_of(message)
        reasons = {int(m.metadata.src_node_id): f"unusable update: {problem}" for m, problem in rejected}
        reasons |= {int(m.metadata.src_node_id): error_summary(m.error) for m in replies if m.has_error()}
        replied = {int(m.metadata.src_node_id) for m in replies}
        reasons |= {int(node): "missing reply" for node in self.asked if int(node) not in replied}
        nodes = dict.fromkeys([*map(int, self.asked), *replied])
        return tuple(Participant(node, self.site_ids.get(node), reasons.get(node, "")) for node in nodes)

    def aggregate_arrays(self, server_round: int, replies: list[Message]) -> ArrayRecord | None:
        """The aggregation rule of the Flower strategy this mixin sits on."""
        arrays, _ = super().aggregate_train(server_round, replies)
        return arrays

    def _drop_unusable(
        self, server_round: int, replies: list[Message]
    ) -> tuple[list[Message], list[tuple[Message, str]]]:
        """Keep the replies whose weights match the global model and are finite; log the others and
        return them with their problem."""
        if self.global_arrays is None:
            return replies, []
        usable, dropped = [], []
        for message in replies:
            problem = reply_problem(
                message.content[self.arrayrecord_key].to_numpy_ndarrays(), self.global_arrays
            )
            if problem is None:
                usable.append(message)
            else:
                dropped.append((message, problem))
                LOG.warning(
                    "round %d: dropped the reply of site %d: %s", server_round, site_of(message), problem
                )
        return usable, dropped

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Aggregate the sites' validation metrics; report each site's."""
        valid, failed = split_replies(replies, f"round {server_round} evaluate")
        if not valid:
            return None
        metrics = self.evaluate_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        self.report(
            server_round + self.round_offset,
            SiteReport("evaluate", self._site_metrics(valid), dict(metrics), len(valid), len(failed)),
        )
        return metrics
