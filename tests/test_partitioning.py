"""Tests of site partitions: deterministic, disjoint, complete; Dirichlet skew visible."""

from __future__ import annotations

import numpy as np
import pytest

from brainfl.errors import BrainFLError
from brainfl.partitioning import partition_indices, split_validation

LABELS = np.repeat(np.arange(4), [130, 140, 160, 150])


@pytest.mark.parametrize("partitioning", ["iid", "dirichlet"])
def test_partitions_are_disjoint_complete_and_deterministic(partitioning):
    parts = partition_indices(LABELS, 4, partitioning, alpha=0.5, seed=3)
    joined = np.concatenate(parts)
    assert len(joined) == len(LABELS)
    assert np.array_equal(np.sort(joined), np.arange(len(LABELS)))
    again = partition_indices(LABELS, 4, partitioning, alpha=0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(LABELS, 4, partitioning, alpha=0.5, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


@pytest.mark.parametrize("partitioning", ["iid", "dirichlet"])
def test_partitions_depend_on_the_seed_alone(partitioning):
    np.random.seed(1)
    first = partition_indices(LABELS, 4, partitioning, alpha=0.5, seed=7)
    np.random.seed(2)  # another global random state, as another process would have
    np.random.random(100)
    second = partition_indices(LABELS, 4, partitioning, alpha=0.5, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def _class_share_spread(parts):
    shares = np.array([np.bincount(LABELS[p], minlength=4) / len(p) for p in parts])
    return float(shares.std(axis=0).mean())


def test_iid_sites_are_balanced_and_dirichlet_sites_are_skewed():
    iid = partition_indices(LABELS, 4, "iid", seed=0)
    skewed = partition_indices(LABELS, 4, "dirichlet", alpha=0.3, seed=0)
    assert max(map(len, iid)) - min(map(len, iid)) <= 1
    assert _class_share_spread(iid) < 0.05
    assert _class_share_spread(skewed) > 3 * _class_share_spread(iid)


def test_more_sites_than_images_is_a_clear_error():
    with pytest.raises(BrainFLError, match="'num-partitions': 9 sites but only 8 training images"):
        partition_indices(np.arange(8) % 4, 9)


def test_validation_split_is_stratified_and_disjoint():
    train, val = split_validation(LABELS, 0.1, seed=0)
    assert len(val) == 58 and not set(train) & set(val)
    assert len(train) + len(val) == len(LABELS)
    assert np.bincount(LABELS[val]).min() >= 13
