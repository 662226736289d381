"""The site's class prior folded into the classifier: Bayes' rule for a known label shift, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from brainfl.core.errors import BrainFLError
from brainfl.federation.site_prior import CLASSIFIER, fold_prior, prior_shift, reference_prior
from brainfl.federation.site_training import site_mix
from brainfl.model.process_cache import model_for
from brainfl.model.training import predict_proba
from brainfl.settings.run_settings import settings_with
from conftest import CLASSES


def test_the_reference_is_uniform_under_the_balanced_softmax_else_the_federations_class_mix():
    np.testing.assert_allclose(reference_prior(True, [90, 5, 3, 2], 4), [0.25] * 4)
    np.testing.assert_allclose(reference_prior(False, [89, 4, 2, 1], 4), [0.9, 0.05, 0.03, 0.02])
    np.testing.assert_allclose(reference_prior(False, None, 4), [0.25] * 4)  # counts unknown
    np.testing.assert_allclose(reference_prior(False, [1, 2], 4), [0.25] * 4)  # counts of other classes


def test_the_shift_is_the_log_ratio_of_the_sites_class_mix_to_the_reference():
    np.testing.assert_allclose(np.exp(prior_shift([0.5, 0.25, 0.125, 0.125], [0.25] * 4)), [2, 1, 0.5, 0.5])


def test_the_sites_mix_is_what_its_loss_sees_smoothed_toward_uniform_under_the_balanced_softmax():
    labels = np.array([0] * 7 + [1] * 1)  # 7, 1, 0, 0 -> add-one smoothed 8, 2, 1, 1 of 12
    smoothed = [8 / 12, 2 / 12, 1 / 12, 1 / 12]
    plain = settings_with(balanced_softmax=False, balanced_softmax_smoothing=0.2).training
    np.testing.assert_allclose(site_mix(plain, labels, 4), smoothed)  # the smoothing is the loss's only
    balanced = settings_with(balanced_softmax=True, balanced_softmax_smoothing=0.2).training
    np.testing.assert_allclose(site_mix(balanced, labels, 4), 0.8 * np.array(smoothed) + 0.2 / 4)
    with pytest.raises(BrainFLError, match="balanced-softmax-smoothing"):
        settings_with(balanced_softmax_smoothing=1.0)


def test_folding_the_prior_makes_the_model_predict_bayes_rule_and_changes_only_the_classifiers_bias():
    model = model_for(settings_with(image_size=16), CLASSES).trainable
    images = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 1), dtype=np.uint8)
    before, weights = predict_proba(model, images), model.get_weights()
    shift = np.log([0.7, 0.1, 0.1, 0.1]) - np.log(0.25)
    fold_prior(model, shift)
    expected = before * np.exp(shift)
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(predict_proba(model, images), expected, rtol=1e-4)
    bias = model.get_layer(CLASSIFIER).bias
    changed = [i for i, (old, new) in enumerate(zip(weights, model.get_weights(), strict=True)) if
               not np.array_equal(old, new)]  # fmt: skip
    assert len(changed) == 1 and model.weights[changed[0]] is bias
    fold_prior(model, -shift)  # and back out
    np.testing.assert_allclose(predict_proba(model, images), before, rtol=1e-4, atol=1e-6)
