"""Ditto (Li et al. 2021): every site's personal model, trained beside the global one and never sent.

With ``ditto-lambda`` > 0 the global model trains as it would without it (the
``strategy`` setting's rule, FedAvg by default); in addition every site keeps a
personal model ``v_i`` in Flower's ``Context.state`` (:data:`SITE_PERSONAL`: a
SuperNode starts a fresh process for every message, so only that and the disk
survive between rounds). In each round a site trains (:func:`personal_update`):

1. ``v_i`` starts where the site kept it (the received global model the first time
   the site trains, as every ``v_i`` starts from the initial model in the paper);
2. it takes the round's local epochs on the site's training images at the round's
   learning rate, with the proximal term ``lambda / 2 * ||v_i - w||^2`` toward the
   received global model ``w`` (:class:`brainfl.model.training.AnchoredModel` anchored
   at ``w``; :func:`brainfl.federation.site_training.local_update`, so precise BN from
   the site's own images follows);
3. the site keeps it and scores it on its held-out split.

The train reply carries only the global update and numbers: besides the usual
ones ``ditto_val_loss``, ``ditto_val_accuracy`` and ``ditto_val_balanced_accuracy``
of ``v_i`` after this round's steps (NaN without a held-out split), which the
recorder writes to ``site_metrics.csv``. After the last round the personalization
query (:mod:`brainfl.federation.personalization`) has every site score its kept
``v_i`` once more (stage ``ditto`` of ``personalization.csv``, with every class's
sensitivity) and save it at the site as :data:`DITTO_MODEL`. ``lambda`` sets how
far ``v_i`` may go: near 0 it is the site's own model trained alone from the
global start; large, it stays at the global model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from brainfl.core.logs import LOG
from brainfl.data.sites import SiteData
from brainfl.federation.site_training import local_update, validate
from brainfl.model.architectures import ModelBundle
from brainfl.report.results import DITTO_SITE_FIELDS
from brainfl.settings.run_settings import RunSettings

SITE_PERSONAL = "ditto-personal-model"  # the key of a site's personal model in its Context.state
DITTO_MODEL = "ditto_model.keras"  # where a site saves it, beside its personalized model's place
SCORE_PREFIX = "ditto_"  # a personal model's held-out score: ditto_val_<name>


def enabled(settings: RunSettings) -> bool:
    """Whether the sites train Ditto's personal models (``ditto-lambda`` > 0)."""
    return settings.federation.ditto_lambda > 0


class PersonalModel:
    """A site's personal model in its ``Context.state`` (every array of the model, statistics too)."""

    def __init__(self, state: RecordDict, site_id: int) -> None:
        self.state = state
        self.site_id = site_id

    def kept(self, like: Sequence[np.ndarray]) -> list[np.ndarray] | None:
        """The kept personal model (None: nothing kept yet, or not shaped as ``like``, the model)."""
        record = self.state.get(SITE_PERSONAL)
        if not isinstance(record, ArrayRecord):
            return None
        kept = record.to_numpy_ndarrays()
        if [array.shape for array in kept] != [array.shape for array in like]:
            LOG.warning("site %d: its kept Ditto model does not fit this model; not used", self.site_id)
            return None
        return kept

    def start(self, received: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Where this round's personal steps start: the kept model, else the received global one."""
        kept = self.kept(received)
        if kept is None:
            LOG.info("site %d: Ditto: no personal model yet, starts from the received one", self.site_id)
            return [np.array(array) for array in received]
        return kept

    def keep(self, weights: Sequence[np.ndarray]) -> None:
        """Keep ``weights`` as the site's personal model."""
        self.state[SITE_PERSONAL] = ArrayRecord([np.array(array) for array in weights])


def round_scores(settings: RunSettings, bundle: ModelBundle, site: SiteData) -> dict[str, float]:
    """The personal model's (the bundle's) ``ditto_val_*`` scores of :data:`DITTO_SITE_FIELDS` on the
    site's held-out split; NaN without one (its training images would flatter it)."""
    if not len(site.val):
        return dict.fromkeys(DITTO_SITE_FIELDS, math.nan)
    scores = validate(settings.model, bundle, site)
    return {field: float(scores[field.removeprefix(SCORE_PREFIX)]) for field in DITTO_SITE_FIELDS}


def personal_update(
    settings: RunSettings,
    bundle: ModelBundle,
    site: SiteData,
    inputs: np.ndarray,
    state: RecordDict,
    received: Sequence[np.ndarray],
    *,
    ditto_lambda: float,
    learning_rate: float,
    server_round: int,
    epochs: int | None = None,
) -> dict[str, float]:
    """One round of the site's personal model (see the module docstring): train it from where it was
    kept toward ``received`` (the global model as the site received it), keep it in ``state`` and
    return its held-out scores. The bundle is left holding the personal model."""
    personal = PersonalModel(state, site.site_id)
    model = bundle.trainable
    anchor = [
        np.asarray(array)
        for array, variable in zip(received, model.weights, strict=True)
        if variable.trainable
    ]
    model.set_weights(personal.start(received))
    local_update(
        settings,
        bundle,
        inputs,
        site.train.labels,
        learning_rate=learning_rate,
        server_round=server_round,
        site_id=site.site_id,
        epochs=epochs,
        proximal_mu=ditto_lambda,
        anchor=anchor,
    )
    personal.keep(model.get_weights())
    scores = round_scores(settings, bundle, site)
    LOG.info(
        "site %d round %d: Ditto personal model (lambda %g): held-out accuracy %.4f, balanced accuracy %.4f",
        site.site_id,
        server_round,
        ditto_lambda,
        scores["ditto_val_accuracy"],
        scores["ditto_val_balanced_accuracy"],
    )
    return scores
