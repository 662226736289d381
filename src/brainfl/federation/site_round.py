"""One site's part of a training round: SCAFFOLD's control, the global model's local update, Ditto.

:func:`round_update` is what a site does with the global model it received in a
train message, after scoring it: with the server's SCAFFOLD control variate it
trains with the correction and then sets its new ``c_i`` from the steps it took
(:mod:`brainfl.federation.scaffold`); it trains the global model with the local update
(:func:`brainfl.federation.site_training.local_update`); with ``ditto-lambda`` > 0 it
then trains its personal model (:mod:`brainfl.federation.ditto`). What a site keeps
between rounds (``c_i``, the personal model) is in the ``state`` it is given, its
Flower ``Context.state``. :func:`reply_content` is what its reply carries: the
global update, numbers and SCAFFOLD's control update, never the personal model.
The ClientApp and the benchmarks' one-process federation (``benchmarks/emulator.py``)
both call these, so a site's round is one piece of code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from brainfl.data.sites import SiteData
from brainfl.federation import ditto
from brainfl.federation.scaffold import CONTROL_UPDATE, SiteControl
from brainfl.federation.site_training import local_update
from brainfl.model.architectures import ModelBundle
from brainfl.settings.run_settings import RunSettings

LocalUpdate = Callable[..., dict[str, float]]  # local_update's signature


@dataclasses.dataclass(frozen=True)
class RoundUpdate:
    """A site's result of one round: the trained global model, the training metrics (with Ditto's
    personal scores) and, under SCAFFOLD, the control update ``c_i+ - c_i``."""

    weights: list[np.ndarray]
    metrics: dict[str, float]
    control_update: list[np.ndarray] | None = None


def scaffold_step_scale(
    settings: RunSettings, images: int, learning_rate: float, epochs: int | None
) -> float:
    """How far a site's local steps move its weights per unit of (constant) gradient: ``K * lr / (1 - m)``
    for ``K`` SGD steps at ``lr`` with momentum ``m``."""
    training = settings.training
    steps = (training.local_epochs if epochs is None else epochs) * math.ceil(images / training.batch_size)
    return steps * learning_rate / (1 - training.sgd_momentum)


def round_update(
    settings: RunSettings,
    bundle: ModelBundle,
    site: SiteData,
    inputs: np.ndarray,
    state: RecordDict,
    *,
    learning_rate: float,
    server_round: int,
    epochs: int | None = None,
    proximal_mu: float = 0.0,
    control: list[np.ndarray] | None = None,
    update: LocalUpdate | None = None,
) -> RoundUpdate:
    """Train the bundle's model (the received global one) on the site's training split for one round.

    ``control``: the server's SCAFFOLD control variate, when it sent one. ``update`` is the local
    update of the global model (None: :func:`brainfl.federation.site_training.local_update`; a
    benchmark may compare another); its keyword arguments beyond the
    round's learning rate, round and site are given only when used (``epochs``, ``proximal_mu``,
    SCAFFOLD's ``correction``). The bundle is left holding the trained global model.
    """
    model = bundle.trainable
    received = model.get_weights()
    options: dict[str, Any] = {} if epochs is None else {"epochs": epochs}
    if proximal_mu:
        options["proximal_mu"] = proximal_mu
    scaffold = None
    if control is not None:
        scaffold = SiteControl(state, [variable.trainable for variable in model.weights], received)
        options["correction"] = scaffold.correction(control)
    metrics = (update or local_update)(
        settings,
        bundle,
        inputs,
        site.train.labels,
        learning_rate=learning_rate,
        server_round=server_round,
        site_id=site.site_id,
        **options,
    )
    trained = model.get_weights()
    control_update = None
    if scaffold is not None:
        scale = scaffold_step_scale(settings, len(site.train.labels), learning_rate, epochs)
        control_update = scaffold.renew(received, trained, control, scale)
    if ditto.enabled(settings):
        personal = ditto.personal_update(
            settings,
            bundle,
            site,
            inputs,
            state,
            received,
            ditto_lambda=settings.federation.ditto_lambda,
            learning_rate=learning_rate,
            server_round=server_round,
            epochs=epochs,
        )
        metrics = {**metrics, **personal}
        model.set_weights(trained)
    return RoundUpdate(trained, dict(metrics), control_update)


def reply_content(
    weights: list[np.ndarray], metrics: Mapping[str, float | int], control_update: list[np.ndarray] | None
) -> RecordDict:
    """A train reply's content: the trained global model (``arrays``), the numbers (``metrics``) and,
    under SCAFFOLD, the control update; nothing else leaves the site."""
    content = RecordDict({"arrays": ArrayRecord(weights), "metrics": MetricRecord(dict(metrics))})
    if control_update is not None:
        content[CONTROL_UPDATE] = ArrayRecord(control_update)
    return content
