"""Split the training set into per-site partitions and local validation splits.

Uses flwr-datasets' ``IidPartitioner`` and ``DirichletPartitioner`` over an
index column, so a partition is a set of row indices: deterministic for a
seed, disjoint, and together covering every training image.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from brainfl.errors import BrainFLError


def _min_partition_size(num_images: int, num_partitions: int) -> int:
    """Smallest site Flower's Dirichlet partitioner may produce (re-draws below it)."""
    return max(1, min(10, num_images // (4 * num_partitions)))


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    partitioning: str = "iid",
    alpha: float = 1.0,
    seed: int = 42,
) -> list[np.ndarray]:
    """Row indices of each site, sorted, for ``iid`` or ``dirichlet`` label skew."""
    from datasets import Dataset  # heavy import, only where partitions are made
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    num_images = len(labels)
    if num_images < num_partitions:
        raise BrainFLError(
            f"setting 'num-partitions': {num_partitions} sites but only {num_images} training images"
        )
    order = np.random.default_rng(seed).permutation(num_images)
    table = Dataset.from_dict({"index": order, "label": np.asarray(labels)[order]})
    if partitioning == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
    elif partitioning == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=_min_partition_size(num_images, num_partitions),
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
            f"setting 'dirichlet-alpha'={alpha}: cannot split {num_images} images into "
            f"{num_partitions} sites ({error})"
        ) from None
    return parts


def split_validation(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(labels)-1`` into (train, validation), stratified when possible."""
    positions = np.arange(len(labels))
    num_val = round(len(labels) * val_fraction)
    if num_val == 0 or len(labels) - num_val < 1:
        return positions, positions[:0]
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 and num_val >= np.count_nonzero(counts) else None
    train, val = train_test_split(positions, test_size=num_val, stratify=stratify, random_state=seed)
    return np.sort(train), np.sort(val)
