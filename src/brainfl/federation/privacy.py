"""Differential privacy: Flower's DP strategy wrappers and the privacy they spend.

``dp`` picks one of Flower's wrappers around the aggregation strategy:
``server-fixed`` / ``server-adaptive`` clip every site's update on the server,
``client-fixed`` / ``client-adaptive`` have the sites clip (Flower's clipping
mods in the ClientApp); all add Gaussian noise to the aggregate (central DP,
site-level). :class:`PrivacyLedger` composes each released aggregate in
Flower's RDP accountant (Google's ``dp-accounting``) and reports epsilon at
``dp-delta``; where the accountant's assumptions do not hold it says why
instead of printing a number.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from brainfl.core.logs import LOG
from brainfl.settings.run_settings import FederationSettings, RunSettings

# Strategies whose aggregate is the uniform mean of the clipped updates, which the
# Gaussian-mechanism accounting assumes (BrainFedAvg averages uniformly when dp is on).
ACCOUNTED_STRATEGIES = ("fedavg",)


def sampled_sites(federation: FederationSettings, num_sites: int) -> int:
    """Sites asked to train each round, as Flower's FedAvg samples them from the ``num_sites`` that joined."""
    return max(int(num_sites * federation.fraction_train), federation.min_sites, 1)


def with_privacy(strategy: Strategy, settings: RunSettings, num_sites: int) -> Strategy:
    """``strategy`` wrapped in the DP wrapper named by ``settings.privacy.dp`` (itself when ``none``).

    numpy's global generator, which the wrappers draw their noise from, is
    seeded with ``settings.seed``: a seed gives one noise sequence.
    """
    if settings.privacy.dp == "none":
        return strategy
    np.random.seed(settings.seed)
    noise, norm = settings.privacy.dp_noise_multiplier, settings.privacy.dp_clipping_norm
    sites = sampled_sites(settings.federation, num_sites)
    if settings.privacy.dp == "server-fixed":
        return DifferentialPrivacyServerSideFixedClipping(strategy, noise, norm, sites)
    if settings.privacy.dp == "client-fixed":
        return DifferentialPrivacyClientSideFixedClipping(strategy, noise, norm, sites)
    # Adaptive clipping also noises the count of clipped updates (std sigma_b); Flower's default
    # sigma_b = sites / 20 is too small for a few sites. With sigma_b = max(sites / 20, z) the
    # update noise becomes (z^-2 - (2 sigma_b)^-2)^-1/2 and the total privacy stays that of z
    # (Andrew et al., 2021), which is what the ledger accounts.
    adaptive = {"initial_clipping_norm": norm, "clipped_count_stddev": max(sites / 20, noise)}
    if settings.privacy.dp == "server-adaptive":
        return DifferentialPrivacyServerSideAdaptiveClipping(strategy, noise, sites, **adaptive)
    return DifferentialPrivacyClientSideAdaptiveClipping(strategy, noise, sites, **adaptive)


def accounting_problem(settings: RunSettings) -> str | None:
    """Why epsilon cannot be computed for these settings (None when it can)."""
    if settings.privacy.dp == "none":
        return "no differential privacy (dp=none)"
    if settings.federation.strategy not in ACCOUNTED_STRATEGIES:
        return (
            f"strategy '{settings.federation.strategy}' does not release the uniform mean of the clipped "
            "updates that the Gaussian-mechanism accountant assumes"
        )
    return None


class PrivacyLedger:
    """Epsilon spent so far by a run's released aggregates (site-level, add/remove one site).

    Each round that releases a noised aggregate of ``k`` of the ``m`` sampled
    sites' updates is one Gaussian mechanism with noise multiplier ``z * k / m``
    (the noise was calibrated to ``m``). No amplification by sampling is
    claimed, so the figure is an upper bound when fewer than all sites train.
    """

    def __init__(self, settings: RunSettings, num_sites: int) -> None:
        self.settings = settings
        self.sampled = sampled_sites(settings.federation, num_sites)
        self.problem = accounting_problem(settings)
        self.accountant = None
        if self.problem is None:
            self.accountant = RdpAccountant(
                PrivacyConfig(
                    target_delta=settings.privacy.dp_delta,
                    population_size=max(num_sites, self.sampled),
                    neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                    sampling_method=SamplingMethod.NO_AMPLIFICATION,
                )
            )
        elif settings.privacy.dp != "none":
            LOG.warning("privacy: epsilon is not reported: %s", self.problem)

    def release(self, sites_aggregated: int) -> None:
        """Compose one released aggregate of ``sites_aggregated`` clipped updates."""
        if self.accountant is None or sites_aggregated <= 0:
            return
        sampled = self.sampled
        effective = self.settings.privacy.dp_noise_multiplier * min(sites_aggregated, sampled) / sampled
        self.accountant.compose(
            GaussianPrivacyEvent(
                noise_multiplier=effective,
                sample_size=min(sites_aggregated, self.accountant.config.population_size),
                population_size=self.accountant.config.population_size,
            )
        )

    @property
    def epsilon(self) -> float | None:
        """Epsilon at ``dp-delta`` so far (0 before any release; None when not accounted)."""
        if self.accountant is None:
            return None
        if self.accountant.num_releases == 0:
            return 0.0
        epsilon = self.accountant.get_privacy_spent().epsilon
        return epsilon if math.isfinite(epsilon) else float("inf")

    def summary(self) -> str:
        """One line for the log and the report."""
        if self.accountant is None:
            return f"privacy: epsilon not reported: {self.problem}"
        privacy = self.settings.privacy
        return (
            f"privacy: epsilon {self.epsilon:.4g} at delta {privacy.dp_delta:g} after "
            f"{self.accountant.num_releases} released aggregates ({privacy.dp}, noise multiplier "
            f"{privacy.dp_noise_multiplier:g}, RDP accountant, no sampling amplification)"
        )
