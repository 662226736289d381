"""A site's own class mix on the shared model: Bayes' rule for a known label shift, in the classifier.

Under label skew each hospital sees the classes in its own proportions, while
the global model's probabilities follow the class mix it was fitted to: the
federation's (its training images per class, summed over the sites' training
replies) or, with ``balanced-softmax``, a uniform one. With the site's own
class mix ``pi_site`` as its training loss sees it
(:func:`brainfl.federation.site_training.site_mix`: its training labels' add-one
smoothed frequencies, under the balanced softmax mixed with the uniform mix by
``balanced-softmax-smoothing``) the probabilities the site should use are

    p_site(y | x) = p(y | x) * pi_site(y) / pi_ref(y), renormalized

(Saerens, Latinne and Decaestecker 2002; the prior correction a balanced-softmax
model is deployed with, Ren et al. 2020). Since every model here ends in a softmax
layer named ``probabilities``, the correction is exact as a shift of that layer's
bias by ``log pi_site - log pi_ref`` (:func:`fold_prior`): a saved model carries
it, so ``brainfl predict``, ``evaluate`` and Grad-CAM need nothing new. The
``site-prior`` setting applies it to each site's final model after the last round
(:mod:`brainfl.federation.personalization`, stage ``site_prior``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CLASSIFIER = "probabilities"  # the softmax layer every architecture ends in


def reference_prior(
    balanced_softmax: bool, federation_counts: Sequence[int] | None, num_classes: int
) -> np.ndarray:
    """The class mix the global model's probabilities follow: uniform with ``balanced-softmax`` (or
    when the federation's counts are unknown), else the federation's training images per class,
    add-one smoothed."""
    if balanced_softmax or not federation_counts or len(federation_counts) != num_classes:
        return np.full(num_classes, 1.0 / num_classes)
    counts = np.asarray(federation_counts, dtype=np.float64) + 1.0
    return counts / counts.sum()


def prior_shift(site: Sequence[float], reference: Sequence[float]) -> np.ndarray:
    """``log pi_site - log pi_ref`` per class: what the site adds to the classifier's bias."""
    return np.log(np.asarray(site, dtype=np.float64)) - np.log(np.asarray(reference, dtype=np.float64))


def fold_prior(model: Any, shift: np.ndarray) -> None:
    """Add ``shift`` to the bias of ``model``'s softmax layer (negative ``shift`` takes it back out)."""
    layer = model.get_layer(CLASSIFIER)
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, (bias + shift).astype(bias.dtype)])
