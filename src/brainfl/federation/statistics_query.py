"""The global model's BatchNorm statistics, pooled from the sites after each round's server step.

BatchNorm trains on each batch's own statistics; its moving mean and variance
are used only at inference. By default (``bn-statistics = "averaged"``) the
global model's are the example-weighted average of the statistics each site
measured on its own model after training (precise BN,
:func:`brainfl.model.batch_norm.recalibrate_batchnorm`): they describe the sites'
models, not the aggregate. After FedAvg the two are close; after a server step
that moves the weights further than the sites went (FedAvgM with a server
learning rate above 1, FedAdam, FedYogi) the averaged statistics no longer match
what the new weights compute, and the global model's scores swing from round
to round.

With ``bn-statistics = "pooled"`` the coordinator, once a round's weights are
aggregated, sends the new global model to the sites whose updates it
aggregated, in one query message (``config["query"] = "bn-statistics"``,
:data:`STATISTICS`). Each site runs it over up to
:data:`brainfl.model.batch_norm.PRECISE_BN_IMAGES` of its training images
(no augmentation, BatchNorm on batch statistics, as precise BN does) and answers
with numbers only (:func:`site_answer`): each BatchNorm layer's input mean and
variance and how many images they come from. The coordinator averages them,
weighted by images (the statistics of the sites' images pooled), and puts them
in the global model before it is scored, checkpointed and sent on
(:class:`StatisticsQuery`). A site's answer of the wrong shapes, not finite or
with a negative variance is dropped with a warning; without any usable answer
the round keeps the averaged statistics, with a warning. The query costs the
sites a forward pass (a ClientApp process per site on the deployment engine);
its seconds count in the round's server time on the deployment clock.

The answers travel in the clear, as the calibration curves do: the settings
refuse ``pooled`` with ``secagg``, with ``fedbn`` (each site keeps its own
statistics) and with the Byzantine-robust strategies, whose aggregation a
plain average of the statistics would undo (:mod:`brainfl.settings.run_settings`,
:mod:`brainfl.federation.strategy`).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from brainfl.core.errors import BrainFLError
from brainfl.core.logs import LOG
from brainfl.federation.bookkeeping import NUM_EXAMPLES, site_of
from brainfl.federation.setup import QUERY, query_sites
from brainfl.model.batch_norm import (
    BatchStatistics,
    batch_statistics,
    moving_statistics,
    pooled_statistics,
    set_statistics,
)

STATISTICS = "bn-statistics"  # the query config's QUERY value of this query
STATISTICS_ARRAYS = "statistics"  # a site's answer: each BN layer's mean and variance, in layer order


def statistics_query(weights: list[np.ndarray], class_names: Sequence[str], server_round: int) -> RecordDict:
    """What every site gets: the round's global weights, the class names and the round (for the audit)."""
    config = {QUERY: STATISTICS, "class-names": ",".join(class_names), "global-round": server_round}
    config = ConfigRecord(config)
    return RecordDict({"arrays": ArrayRecord(weights), "config": config})


def site_answer(site_id: int, statistics: BatchStatistics) -> RecordDict:
    """A site's answer: its BatchNorm statistics of the received model and their image count."""
    metrics = MetricRecord({NUM_EXAMPLES: statistics.images, "site-id": site_id})
    arrays = [np.asarray(array, dtype=np.float32) for array in statistics.arrays()]
    return RecordDict({STATISTICS_ARRAYS: ArrayRecord(arrays), "metrics": metrics})


def site_statistics(
    model: keras.Model, weights: list[np.ndarray], inputs: np.ndarray, batch_size: int, site_id: int
) -> RecordDict:
    """A site's answer for ``weights``: their BatchNorm statistics over the site's ``inputs``."""
    model.set_weights(weights)
    statistics = batch_statistics(model, inputs, batch_size)
    if statistics is None:
        raise BrainFLError("the model has no BatchNorm statistics to measure")
    LOG.info("site %d: BatchNorm statistics of the model from %d images", site_id, statistics.images)
    return site_answer(site_id, statistics)


def answer_problem(arrays: Sequence[np.ndarray], expected: BatchStatistics, images: int) -> str | None:
    """Why a site's answer cannot be pooled (None: it can)."""
    shapes = [array.shape for array in expected.arrays()]
    if [np.shape(array) for array in arrays] != shapes:
        return f"{len(arrays)} arrays of other shapes than the model's {len(shapes)} BatchNorm statistics"
    if images < 1:
        return "no images"
    if not all(np.isfinite(array).all() for array in arrays):
        return "statistics that are not finite"
    if any((array < 0).any() for array in arrays[1::2]):
        return "a negative variance"
    return None


def usable_answers(
    replies: Sequence[Message], expected: BatchStatistics, server_round: int
) -> list[BatchStatistics]:
    """The sites' statistics that can be pooled; the others are dropped with a warning."""
    usable = []
    for reply in replies:
        if STATISTICS_ARRAYS not in reply.content.array_records:
            arrays, images, problem = [], 0, "no statistics in it"
        else:
            arrays = reply.content[STATISTICS_ARRAYS].to_numpy_ndarrays()
            images = int(reply.content["metrics"].get(NUM_EXAMPLES, 0))
            problem = answer_problem(arrays, expected, images)
        if problem is None:
            usable.append(BatchStatistics.from_arrays(arrays, images))
        else:
            LOG.warning(
                "round %d bn-statistics: dropped site %d's answer: %s", server_round, site_of(reply), problem
            )
    return usable


def pool_answers(
    model: keras.Model, server_round: int, weights: list[np.ndarray], replies: Sequence[Message]
) -> list[np.ndarray]:
    """``weights`` with the usable answers' statistics pooled into them (``model``: one of the run's
    architecture, to place the statistics among the weights); unchanged without any usable answer."""
    model.set_weights(weights)
    answers = usable_answers(replies, moving_statistics(model), server_round)
    if not answers:
        LOG.warning(
            "round %d bn-statistics: no site answered usably; the global model keeps the averaged statistics",
            server_round,
        )
        return weights
    pooled = pooled_statistics(answers)
    set_statistics(model, pooled)
    LOG.info(
        "round %d bn-statistics: pooled from %d images of %d sites", server_round, pooled.images, len(answers)
    )
    return [np.asarray(array) for array in model.get_weights()]


class StatisticsQuery:
    """The server's side: ask the sites over the grid, pool their answers into the global weights."""

    def __init__(self, grid: Grid, model: keras.Model, class_names: Sequence[str], timeout: float) -> None:
        self.grid = grid
        self.model = model
        self.class_names = list(class_names)
        self.timeout = timeout

    def __call__(
        self, server_round: int, weights: list[np.ndarray], nodes: Sequence[int]
    ) -> list[np.ndarray]:
        content = statistics_query(weights, self.class_names, server_round)
        replies = query_sites(self.grid, content, nodes, self.timeout, f"round {server_round} bn-statistics")
        return pool_answers(self.model, server_round, weights, replies)
