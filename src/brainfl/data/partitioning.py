"""Split the training set into per-site partitions, local validation splits and a hold-out test set.

Uses flwr-datasets' ``IidPartitioner`` and ``DirichletPartitioner`` over an
index column, so a partition is a set of row indices: deterministic for a
seed, disjoint, and together covering every training image.

Where scans are grouped by patient (``groups``: a patient id per image), every
split keeps a patient's scans together: the partitioners and the stratified
splits work on the list of patients, each labelled with the majority label
of its scans, and the result is expanded back to the patients' images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from brainfl.core.errors import BrainFLError


def _min_partition_size(num_units: int, num_partitions: int) -> int:
    """Smallest site Flower's Dirichlet partitioner may produce (re-draws below it)."""
    return max(1, min(10, num_units // (4 * num_partitions)))


def patient_units(labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patient index of each image, majority label of each patient); patients in sorted id order.

    A tie between labels goes to the lowest label.
    """
    labels = np.asarray(labels, dtype=np.int64)
    _, unit_of_image = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    counts = np.zeros((unit_of_image.max(initial=-1) + 1, labels.max(initial=0) + 1), dtype=np.int64)
    np.add.at(counts, (unit_of_image, labels), 1)
    return unit_of_image, counts.argmax(axis=1)


def _expand(unit_of_image: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Sorted image positions of the given patients."""
    return np.flatnonzero(np.isin(unit_of_image, units))


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    partitioning: str = "iid",
    alpha: float = 1.0,
    seed: int = 42,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Row indices of each site, sorted, for ``iid`` or ``dirichlet`` label skew.

    With ``groups`` the patients are partitioned (by their majority label), so
    no patient's scans are spread over two sites.
    """
    if groups is None:
        return _partition_units(
            np.asarray(labels), num_partitions, partitioning, alpha, seed, "training images"
        )
    unit_of_image, unit_labels = patient_units(labels, groups)
    parts = _partition_units(unit_labels, num_partitions, partitioning, alpha, seed, "patients")
    return [_expand(unit_of_image, part) for part in parts]


def _partition_units(
    labels: np.ndarray, num_partitions: int, partitioning: str, alpha: float, seed: int, what: str
) -> list[np.ndarray]:
    # datasets (pyarrow) takes about a second to import: only where partitions are made, so that
    # loading and checking a folder start quickly
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    num_units = len(labels)
    if num_units < num_partitions:
        raise BrainFLError(f"setting 'num-partitions': {num_partitions} sites but only {num_units} {what}")
    order = np.random.default_rng(seed).permutation(num_units)
    table = Dataset.from_dict({"index": order, "label": labels[order]})
    if partitioning == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
    elif partitioning == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=_min_partition_size(num_units, num_partitions),
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
    else:
        raise BrainFLError(f"setting 'partitioning': unknown '{partitioning}' (choose iid or dirichlet)")
    partitioner.dataset = table
    try:
        parts = [
            np.sort(np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64))
            for i in range(num_partitions)
        ]
    except ValueError as error:
        raise BrainFLError(
            f"setting 'dirichlet-alpha'={alpha}: cannot split {num_units} {what} into "
            f"{num_partitions} sites ({error})"
        ) from None
    return parts


def _can_stratify(labels: np.ndarray, num_held: int) -> bool:
    counts = np.bincount(labels)
    present = np.count_nonzero(counts)
    return counts[counts > 0].min() >= 2 and present <= num_held <= len(labels) - present


def split_validation(
    labels: np.ndarray, val_fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(labels)-1`` into (train, validation), stratified when possible.

    With ``groups``, ``val_fraction`` of the patients go to validation whole
    (stratified by their majority label when possible, else at random).
    """
    labels = np.asarray(labels, dtype=np.int64)
    positions = np.arange(len(labels))
    if groups is None:
        num_val = round(len(labels) * val_fraction)
        if num_val == 0 or len(labels) - num_val < 1:
            return positions, positions[:0]
        counts = np.bincount(labels)
        stratify = labels if counts[counts > 0].min() >= 2 and num_val >= np.count_nonzero(counts) else None
        train, val = train_test_split(positions, test_size=num_val, stratify=stratify, random_state=seed)
        return np.sort(train), np.sort(val)
    unit_of_image, unit_labels = patient_units(labels, groups)
    num_val = round(len(unit_labels) * val_fraction)
    if num_val == 0 or len(unit_labels) - num_val < 1:
        return positions, positions[:0]
    if _can_stratify(unit_labels, num_val):
        _, val_units = train_test_split(
            np.arange(len(unit_labels)), test_size=num_val, stratify=unit_labels, random_state=seed
        )
        val = _expand(unit_of_image, val_units)
    else:
        splitter = GroupShuffleSplit(n_splits=1, test_size=num_val, random_state=seed)
        _, val = next(splitter.split(positions, groups=unit_of_image))
    return np.setdiff1d(positions, val), np.sort(val)


def holdout_split(
    labels: np.ndarray,
    fraction: float,
    seed: int,
    groups: np.ndarray | None = None,
    class_names: Sequence[str] = (),
    source: Path | str = "the training scans",
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, test) positions with ``fraction`` of the images, or of the patients, held out.

    Too few images (patients) per class to stratify -- every class needs 2,
    and each side one of every class -- is an error naming ``test-fraction``
    and ``source`` (the Training folder, labels.csv or the data folder).
    """
    labels = np.asarray(labels, dtype=np.int64)
    positions = np.arange(len(labels))
    unit, unit_labels = "images", labels
    if groups is not None:
        unit_of_image, unit_labels = patient_units(labels, groups)
        unit = "patients"
    try:
        _, test = train_test_split(
            np.arange(len(unit_labels)), test_size=fraction, stratify=unit_labels, random_state=seed
        )
    except ValueError:
        counts = np.bincount(unit_labels, minlength=max(len(class_names), 1))
        fewest = int(np.where(counts > 0, counts, counts.max() + 1).argmin())  # of the classes present
        name = class_names[fewest] if fewest < len(class_names) else fewest
        raise BrainFLError(
            f"setting 'test-fraction'={fraction}: too few {unit} in {source} for a stratified hold-out "
            f"test set ({len(unit_labels)} {unit}, class '{name}' has {counts[fewest]}); each class "
            f"needs at least 2, and {fraction} of them at least one per class"
        ) from None
    test = np.sort(test) if groups is None else _expand(unit_of_image, test)
    return np.setdiff1d(positions, test), test
