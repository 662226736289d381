"""The strategies a run can use: the project's FedAvg and Flower's others, by the ``strategy`` setting.

:class:`BrainFedAvg` is the project's FedAvg (weights averaged by each site's
example count); :func:`build_strategy` gives the one named by the
``strategy`` setting (FedProx, FedAdam, FedYogi, FedAvgM, Krum, Multi-Krum,
trimmed mean, median: Flower's implementations; SCAFFOLD:
:mod:`brainfl.federation.scaffold`) with the bookkeeping of
:class:`brainfl.federation.bookkeeping.SiteBookkeeping`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, Message
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

from brainfl.core.errors import BrainFLError
from brainfl.federation.bookkeeping import (
    NUM_EXAMPLES,
    PoolStatistics,
    ReportSink,
    SiteBookkeeping,
    SiteReport,
    example_weighted_average,
    round_settings,
    weighted_average,
)
from brainfl.federation.scaffold import BrainScaffold
from brainfl.settings.run_settings import FederationSettings, RunSettings

__all__ = ["NUM_EXAMPLES", "SiteReport", "build_strategy", "round_settings", "weighted_average"]


class BrainFedAvg(SiteBookkeeping, FedAvg):
    """The project's FedAvg: sites' weights averaged by their example counts.

    With ``uniform=True`` every site weighs the same, as differential-privacy
    accounting assumes (the noise is calibrated to an average of equals).
    """

    def __init__(self, *, uniform: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.uniform = uniform

    def aggregate_arrays(self, server_round: int, replies: list[Message]) -> ArrayRecord | None:
        """Average by example count (or uniformly)."""
        return ArrayRecord(example_weighted_average(replies, self.arrayrecord_key, self.uniform))


class BrainFedProx(SiteBookkeeping, FedProx):
    """Flower's FedProx (sends ``proximal-mu``; sites add the proximal term to their loss)."""


class BrainFedAdam(SiteBookkeeping, FedAdam):
    """Flower's FedAdam: Adam on the server over the averaged update."""

    server_step = True


class BrainFedYogi(SiteBookkeeping, FedYogi):
    """Flower's FedYogi: Yogi on the server over the averaged update."""

    server_step = True


class BrainFedAvgM(SiteBookkeeping, FedAvgM):
    """Flower's FedAvgM: server-side momentum."""

    server_step = True


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


def _server_learning_rate(federation: FederationSettings) -> float:
    return federation.server_learning_rate or SERVER_LEARNING_RATES.get(federation.strategy, 1.0)


def _multikrum(federation: FederationSettings, num_sites: int) -> dict[str, Any]:
    byzantine = federation.byzantine_sites
    return {"num_malicious_nodes": byzantine, "num_nodes_to_select": max(1, num_sites - byzantine)}


@dataclasses.dataclass(frozen=True)
class StrategyEntry:
    """One selectable strategy: its class, its options from the settings, the settings only it reads."""

    strategy_class: type[SiteBookkeeping]
    options: Callable[[RunSettings, int], dict[str, Any]]  # (settings, sites that joined) -> its arguments
    reads: tuple[str, ...] = ()  # run-config keys that act only with this strategy (and others reading them)
    robust: bool = False  # Byzantine-robust: a plain average of what the sites send would undo it


SERVER_RATE, BYZANTINE = ("server-learning-rate",), ("byzantine-sites",)
# Every strategy the ``strategy`` setting can name: the only list of them.
STRATEGIES: dict[str, StrategyEntry] = {
    "fedavg": StrategyEntry(BrainFedAvg, lambda s, n: {"uniform": s.privacy.dp != "none"}),
    "fedprox": StrategyEntry(
        BrainFedProx, lambda s, n: {"proximal_mu": s.federation.proximal_mu}, ("proximal-mu",)
    ),
    "fedadam": StrategyEntry(
        BrainFedAdam, lambda s, n: {"eta": _server_learning_rate(s.federation)}, SERVER_RATE
    ),
    "fedyogi": StrategyEntry(
        BrainFedYogi, lambda s, n: {"eta": _server_learning_rate(s.federation)}, SERVER_RATE
    ),
    "fedavgm": StrategyEntry(
        BrainFedAvgM,
        lambda s, n: {
            "server_learning_rate": _server_learning_rate(s.federation),
            "server_momentum": s.federation.server_momentum,
        },
        (*SERVER_RATE, "server-momentum"),
    ),
    "krum": StrategyEntry(
        BrainKrum, lambda s, n: {"num_malicious_nodes": s.federation.byzantine_sites}, BYZANTINE, robust=True
    ),
    "multikrum": StrategyEntry(
        BrainMultiKrum, lambda s, n: _multikrum(s.federation, n), BYZANTINE, robust=True
    ),
    "trimmed-mean": StrategyEntry(
        BrainTrimmedMean, lambda s, n: {"beta": s.federation.trim_beta}, ("trim-beta",), robust=True
    ),
    "median": StrategyEntry(BrainMedian, lambda s, n: {}, robust=True),
    "scaffold": StrategyEntry(BrainScaffold, lambda s, n: {"num_sites": n}),
}


def check_strategy(settings: RunSettings, defaults: Mapping[str, Any]) -> None:
    """Refuse a ``strategy`` not in :data:`STRATEGIES`, and a strategy's setting changed from its default
    while another strategy is chosen (it would be silently without effect); one line, naming the setting."""
    strategy = settings.federation.strategy
    if strategy not in STRATEGIES:
        raise BrainFLError(
            f"setting 'strategy': unknown '{strategy}' (choose one of: {', '.join(STRATEGIES)})"
        )
    if STRATEGIES[strategy].robust and settings.federation.bn_statistics == "pooled":
        raise BrainFLError(
            f"setting 'bn-statistics': pooled statistics are a plain average of what every site answers, "
            f"which the robust aggregation of strategy={strategy} is there to avoid; use 'averaged'"
        )
    config = settings.to_config()
    chosen = STRATEGIES[strategy].reads
    for key in dict.fromkeys(key for entry in STRATEGIES.values() for key in entry.reads):
        if key not in chosen and config[key] != defaults.get(key):
            readers = [name for name, entry in STRATEGIES.items() if key in entry.reads]
            when = f"strategy={readers[0]}" if len(readers) == 1 else f"strategy is {'/'.join(readers)}"
            raise BrainFLError(f"setting '{key}'={config[key]} has no effect unless {when}")


def strategy_options(settings: RunSettings, num_sites: int) -> tuple[type[SiteBookkeeping], dict]:
    """The class and the strategy-specific arguments for ``settings.federation.strategy``."""
    entry = STRATEGIES[settings.federation.strategy]
    return entry.strategy_class, entry.options(settings, num_sites)


def build_strategy(
    settings: RunSettings,
    class_names: Sequence[str],
    learning_rate_for_round: Callable[[int], float],
    *,
    num_sites: int,
    report: ReportSink | None = None,
    round_offset: int = 0,
    statistics_mask: Sequence[bool] = (),
    pool_statistics: PoolStatistics | None = None,
) -> SiteBookkeeping:
    """The strategy named by ``settings.federation.strategy``, with the run's sampling and waiting settings.

    ``num_sites`` is the number of sites that joined (Multi-Krum keeps all but
    ``byzantine-sites`` of them); ``statistics_mask`` marks the model's arrays that
    are statistics, not trained weights (BatchNorm moving mean and variance);
    ``report`` receives each stage's :class:`SiteReport`; ``pool_statistics`` (``bn-statistics='pooled'``)
    puts the sites' BatchNorm statistics of each round's aggregate in it
    (:mod:`brainfl.federation.statistics_query`).
    """
    strategy_class, options = strategy_options(settings, num_sites)
    return strategy_class(
        learning_rate_for_round=learning_rate_for_round,
        class_names=class_names,
        report=report,
        round_offset=round_offset,
        statistics_mask=statistics_mask,
        pool_statistics=pool_statistics,
        fraction_train=settings.federation.fraction_train,
        fraction_evaluate=settings.federation.fraction_evaluate,
        min_train_nodes=settings.federation.min_sites,
        min_evaluate_nodes=settings.federation.min_sites if settings.federation.fraction_evaluate else 0,
        min_available_nodes=settings.federation.min_sites,
        **options,
    )
