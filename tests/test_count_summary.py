"""Tests of the counts a site shares instead of its scans' predictions."""

from __future__ import annotations

import numpy as np
import pytest

from brainfl.evaluation.count_summary import CountSummary, labelled_set, summarize
from brainfl.evaluation.intervals import ECE_BINS, score_with_intervals, scores_of
from brainfl.evaluation.registry import LabelledSet
from brainfl.model.outputs import notumor_rule

NAMES = ("glioma", "meningioma", "notumor", "pituitary")


def scored_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of a model that is right more often than chance, one row not finite."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(NAMES), n)
    probabilities = rng.dirichlet(np.ones(len(NAMES)), n)
    probabilities[np.arange(n), labels] += rng.uniform(0, 1, n)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    probabilities[3] = np.nan
    return labels, probabilities


def summary_of(labels: np.ndarray, probabilities: np.ndarray) -> CountSummary:
    return summarize(LabelledSet(labels, probabilities, len(NAMES), ECE_BINS, notumor_rule(NAMES)))


def test_every_counted_metric_is_the_same_on_the_counts_as_on_the_scans():
    labels, probabilities = scored_set(200, 0)
    direct = score_with_intervals(labels, probabilities, NAMES, resamples=0)
    counted = scores_of(
        labelled_set(summary_of(labels, probabilities), notumor_rule(NAMES)), NAMES, resamples=0
    )
    for name, interval in direct.overall.items():
        assert counted.overall[name].value == pytest.approx(interval.value, abs=1e-12)
    for name in ("sensitivity", "specificity", "precision"):
        assert [i.value for i in counted.per_class[name]] == pytest.approx(
            [i.value for i in direct.per_class[name]]
        )
    assert np.isnan([i.value for i in counted.per_class["roc_auc"]]).all()  # needs each scan's scores
    assert (counted.confusion == direct.confusion).all() and counted.non_finite == direct.non_finite == 1
    assert np.allclose(counted.reliability["confidence"], direct.reliability["confidence"], equal_nan=True)


def test_the_sites_counts_add_up_to_the_counts_of_their_union():
    labels, probabilities = scored_set(150, 1)
    parts = summary_of(labels[:40], probabilities[:40]) + summary_of(labels[40:], probabilities[40:])
    union = summary_of(labels, probabilities)
    assert (parts.counts == union.counts).all() and np.allclose(parts.confidence, union.confidence)


def test_the_counts_do_not_grow_with_the_scans_and_travel_as_two_arrays():
    small, large = summary_of(*scored_set(10, 2)), summary_of(*scored_set(500, 3))
    assert small.counts.shape == large.counts.shape == (len(NAMES), len(NAMES) + 1, ECE_BINS)
    assert (small.images, large.images) == (10, 500)
    back = CountSummary.from_arrays(large.to_arrays())
    assert (back.counts == large.counts).all()
    with pytest.raises(ValueError, match="integers"):
        CountSummary.from_arrays([large.confidence, large.confidence])
    with pytest.raises(ValueError, match="k \\+ 1"):
        CountSummary(large.counts[:, :-1], large.confidence[:, :-1])
