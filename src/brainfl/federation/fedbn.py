"""FedBN (Li et al., 2021): each site keeps its own BatchNorm layers; the rest of the model is shared.

With ``fedbn=true`` a site, on each train or evaluate message and on the
personalization query, replaces the received model's BatchNorm arrays (every
:class:`keras.layers.BatchNormalization` layer's gamma, beta, moving mean and
moving variance: :func:`batchnorm_mask`) by its own, and after training keeps
the new ones (:class:`SiteBatchNorm`). Until it has trained once it uses the
received ones: in round 1 the initial model's, identical at every site, as in
the paper; a site that first trains later (``fraction-train`` < 1, a late or
restarted SuperNode, a resumed run) starts from the global model's, the
average of the other sites'.

Between messages only Flower's ``Context.state`` and the disk survive (a
SuperNode starts a fresh ClientApp process for every message), so the arrays
are kept in ``context.state`` (an ``ArrayRecord``), which both engines keep
for the run. What travels is unchanged: a reply carries the whole model, its
own BatchNorm arrays included, and the server averages every array; the
global model's BatchNorm arrays are that average, which the server's central
evaluation and ``final_model.keras`` use and every site overwrites with its
own. The server never sends a site anything of another site's BatchNorm that
the site then uses, except the start of a site that first trains after round 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from flwr.app import ArrayRecord, RecordDict

from brainfl.core.logs import LOG

SITE_BATCHNORM = "fedbn-batchnorm"  # the key of a site's own BatchNorm arrays in its Context.state


def batchnorm_mask(model: keras.Model) -> list[bool]:
    """Which of ``model.get_weights()``'s arrays belong to its BatchNormalization layers."""
    own = {
        id(variable)
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for variable in layer.weights
    }
    return [id(variable) in own for variable in model.weights]


class SiteBatchNorm:
    """A site's own BatchNorm arrays, kept in its ``Context.state`` (a no-op unless ``enabled``)."""

    def __init__(self, enabled: bool, model: keras.Model, state: RecordDict, site_id: int) -> None:
        self.mask = batchnorm_mask(model) if enabled else []
        self.state = state
        self.site_id = site_id

    def own(self, weights: Sequence[np.ndarray]) -> list[np.ndarray] | None:
        """The site's kept BatchNorm arrays (None: FedBN off, nothing kept yet, or not this model's)."""
        record = self.state.get(SITE_BATCHNORM) if self.mask else None
        if not isinstance(record, ArrayRecord):
            return None
        kept = record.to_numpy_ndarrays()
        shapes = [array.shape for array, is_bn in zip(weights, self.mask, strict=True) if is_bn]
        if [array.shape for array in kept] != shapes:
            LOG.warning("site %d: its kept BatchNorm arrays do not fit this model; not used", self.site_id)
            return None
        return kept

    def apply(self, weights: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``weights`` with the site's own BatchNorm arrays in place of the received ones, where it has
        kept some; the received ones otherwise."""
        kept = self.own(weights)
        if kept is None:
            if self.mask:
                LOG.info(
                    "site %d: FedBN: no BatchNorm of its own yet, starts from the received", self.site_id
                )
            return list(weights)
        own = iter(kept)
        return [next(own) if is_bn else array for array, is_bn in zip(weights, self.mask, strict=True)]

    def keep(self, weights: Sequence[np.ndarray]) -> None:
        """Keep the BatchNorm arrays of ``weights`` (the site's trained model) as the site's own."""
        if self.mask:
            own = [np.array(array) for array, is_bn in zip(weights, self.mask, strict=True) if is_bn]
            self.state[SITE_BATCHNORM] = ArrayRecord(own)
