"""Tests of site partitions, validation and hold-out splits: deterministic, disjoint, complete,
Dirichlet skew visible, and patients kept whole where scans are grouped."""

from __future__ import annotations

import numpy as np
import pytest

from brainfl.core.errors import BrainFLError
from brainfl.data.partitioning import holdout_split, partition_indices, split_validation

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


# Patients: 2 to 6 scans each, every patient's scans of one class (as a patient has one diagnosis).
_SCANS_PER_PATIENT = np.random.default_rng(0).integers(2, 7, size=160)
GROUPS = np.repeat([f"patient-{i:03d}" for i in range(160)], _SCANS_PER_PATIENT)
GROUP_LABELS = np.repeat(np.arange(160) % 4, _SCANS_PER_PATIENT)


def _patients(positions: np.ndarray) -> set[str]:
    return set(GROUPS[positions].tolist())


@pytest.mark.parametrize("partitioning", ["iid", "dirichlet"])
def test_partitions_of_grouped_scans_hold_whole_patients(partitioning):
    parts = partition_indices(GROUP_LABELS, 4, partitioning, alpha=0.5, seed=3, groups=GROUPS)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(GROUPS)))
    patient_sets = [_patients(part) for part in parts]
    assert sum(map(len, patient_sets)) == 160  # every patient at exactly one site
    again = partition_indices(GROUP_LABELS, 4, partitioning, alpha=0.5, seed=3, groups=GROUPS)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_iid_partitions_of_patients_are_balanced_in_patients():
    parts = partition_indices(GROUP_LABELS, 4, "iid", seed=0, groups=GROUPS)
    assert [len(_patients(part)) for part in parts] == [40, 40, 40, 40]


def test_more_sites_than_patients_is_a_clear_error():
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    with pytest.raises(BrainFLError, match="'num-partitions': 4 sites but only 3 patients"):
        partition_indices(np.array([0, 0, 1, 1, 0, 0]), 4, groups=groups)


def test_validation_split_of_grouped_scans_keeps_patients_whole_and_stratified():
    train, val = split_validation(GROUP_LABELS, 0.1, seed=0, groups=GROUPS)
    assert len(train) + len(val) == len(GROUPS) and not _patients(train) & _patients(val)
    assert len(_patients(val)) == 16
    assert np.bincount(GROUP_LABELS[val], minlength=4).min() > 0


def test_validation_split_of_few_patients_falls_back_to_a_group_shuffle():
    groups = np.array(["a", "a", "b", "c", "c", "d", "e", "e"])
    labels = np.array([0, 0, 1, 2, 2, 3, 0, 0])  # 1 patient of classes 1-3: no stratification
    train, val = split_validation(labels, 0.4, seed=1, groups=groups)
    assert len(set(groups[val])) == 2 and not set(groups[train]) & set(groups[val])
    assert split_validation(labels, 0.05, seed=1, groups=groups)[1].size == 0


def test_hold_out_is_stratified_by_patient_and_fails_naming_the_setting():
    train, test = holdout_split(GROUP_LABELS, 0.25, seed=0, groups=GROUPS)
    assert not _patients(train) & _patients(test) and len(_patients(test)) == 40
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(GROUPS)))
    with pytest.raises(BrainFLError, match=r"'test-fraction'=0\.1: too few images in Training/ .*'b' has 1"):
        holdout_split(np.array([0, 0, 0, 1]), 0.1, seed=0, class_names=("a", "b"), source="Training/")
