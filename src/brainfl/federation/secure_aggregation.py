"""SecAgg+ secure aggregation on Flower's legacy workflow path (``secagg=true``).

Flower implements SecAgg+ only as a workflow of its legacy server API, so
this module runs the same model, data, round settings and central evaluator
as the Message-API path through ``DefaultWorkflow(SecAggPlusWorkflow)``. The
sites (``client_app``) train with the same function and Flower's
``secaggplus_mod`` masks and quantizes their updates; the server only ever
unmasks the sum. :class:`SecAggFedAvg` checks and logs that what reaches
the strategy is that sum alone: every result carries the same arrays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

from brainfl.core.logs import LOG
from brainfl.federation.bookkeeping import (
    Participant,
    ReportSink,
    SiteReport,
    numeric_metrics,
    round_settings,
    site_id,
    slowest_site_s,
)
from brainfl.settings.run_settings import RunSettings

Evaluator = Callable[[int, ArrayRecord], object]
QUANTIZATION_RANGE = 2**22  # Flower's default: steps of 2 * clipping-range / 2**22


def same_arrays(results: Sequence[FitRes]) -> bool:
    """Whether every result carries identical arrays (SecAgg+ hands the unmasked sum to each)."""
    first = parameters_to_ndarrays(results[0].parameters)
    return all(
        all(np.array_equal(a, b) for a, b in zip(first, parameters_to_ndarrays(r.parameters), strict=True))
        for r in results[1:]
    )


class SecAggFedAvg(LegacyFedAvg):
    """Flower's legacy FedAvg with the project's round settings, reporting the sites' metrics."""

    def __init__(
        self,
        *,
        learning_rate_for_round: Callable[[int], float],
        class_names: Sequence[str],
        local_epochs: int,
        report: ReportSink,
        **kwargs,
    ) -> None:
        self.report = report
        super().__init__(
            on_fit_config_fn=lambda r: {
                **round_settings(r, learning_rate_for_round, class_names),
                "local-epochs": local_epochs,
            },
            **kwargs,
        )

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Keep the sites' metrics; the arrays are already the unmasked weighted average."""
        started = time.perf_counter()
        if results:
            only_sum = same_arrays([fit_res for _, fit_res in results])
            LOG.info(
                "secagg round %d: the strategy received %s from %d sites",
                server_round,
                "only the unmasked aggregate (identical arrays)" if only_sum else "DISTINCT per-site arrays",
                len(results),
            )
        sites = {int(res.metrics.get("site-id", -1)): numeric_metrics(res.metrics) for _, res in results}
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        joined = tuple(Participant(int(proxy.node_id), site_id(res.metrics)) for proxy, res in results)
        slowest = slowest_site_s(res.metrics for _, res in results)
        counts = (len(results), len(failures))
        seconds = time.perf_counter() - started
        report = SiteReport("train", sites, numeric_metrics(metrics), *counts, joined, slowest, seconds)
        self.report(server_round, report)
        return parameters, metrics


def run_secure_federation(
    grid: Grid,
    context: Context,
    settings: RunSettings,
    strategy: SecAggFedAvg,
    evaluator: Evaluator,
    max_site_examples: int,
) -> list[np.ndarray]:
    """All rounds through ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow)``.

    ``max_site_examples`` bounds a site's example count (SecAgg+ quantizes each
    site's weight ``n / max_weight``, which must stay at most 1). Returns the
    final global weights.
    """
    latest: list[list[np.ndarray]] = []

    def evaluate(server_round: int, weights: list[np.ndarray], _config: dict) -> tuple[float, dict] | None:
        latest[:] = [weights]
        metrics = evaluator(server_round, ArrayRecord(weights))
        return (float(metrics["loss"]), dict(metrics)) if metrics else None

    strategy.evaluate_fn = evaluate
    legacy_context = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=settings.federation.num_server_rounds),
        strategy=strategy,
    )
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=1.0,  # every sampled site shares its key with every other
            reconstruction_threshold=0.67,
            clipping_range=settings.privacy.secagg_clipping_range,
            quantization_range=QUANTIZATION_RANGE,
            max_weight=float(max_site_examples),
            timeout=settings.federation.round_timeout,
        )
    )
    workflow(grid, legacy_context)
    return latest[0]


def secure_strategy(
    settings: RunSettings,
    class_names: Sequence[str],
    learning_rate_for_round: Callable[[int], float],
    weights: list[np.ndarray],
    report: ReportSink,
) -> SecAggFedAvg:
    """The legacy FedAvg for a SecAgg+ run, starting from ``weights``, reporting to ``report``;
    central evaluation only."""
    sites = max(settings.federation.min_sites, settings.federation.wait_for_sites, 2)
    return SecAggFedAvg(
        learning_rate_for_round=learning_rate_for_round,
        class_names=class_names,
        local_epochs=settings.training.local_epochs,
        report=report,
        fraction_fit=settings.federation.fraction_train,
        fraction_evaluate=0.0,
        min_fit_clients=sites,
        min_evaluate_clients=0,
        min_available_clients=sites,
        initial_parameters=ndarrays_to_parameters(weights),
    )
