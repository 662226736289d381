"""Per-process data and model plumbing shared by the ServerApp and ClientApp.

Loads (cached) images, computes a site's partition and validation split,
builds models once per process and, for models with a frozen extractor
(VGG-16), computes features once and caches them on disk. Simulation keeps
its worker processes alive between rounds, so these caches make a round cost
one pass of training, not a re-decode or a re-build. Every on-disk cache goes
to :func:`brainfl.data.loading.default_cache_dir` (``$BRAINFL_CACHE_DIR``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from brainfl.core.errors import BrainFLError
from brainfl.data.layouts import KAGGLE_SPLIT, LABELS_CSV, TEST_SPLIT
from brainfl.data.loading import Dataset, ImageSet, default_cache_dir, load_dataset, load_images, write_cache
from brainfl.data.partitioning import partition_indices, split_validation
from brainfl.data.scanner_shift import log_profile, scanner_profile, shift_images
from brainfl.settings.run_settings import RunSettings, resolve_path


@functools.lru_cache(maxsize=4)
def _load_dataset_cached(
    data_dir: Path,
    image_size: int,
    channels: int,
    cache: Path,
    skip: bool,
    test_fraction: float,
    seed: int,
    class_names: tuple[str, ...] | None,
    crop: str,
) -> Dataset:
    return load_dataset(
        data_dir,
        image_size,
        channels,
        cache,
        skip,
        test_fraction,
        seed,
        list(class_names) if class_names else None,
        crop,
    )


def load_run_dataset(
    settings: RunSettings, data_dir: str | None = None, class_names: tuple[str, ...] | None = None
) -> Dataset:
    """The dataset of ``data_dir`` (default: the run's) decoded as the model needs it. With ``test-dir``
    set (a test folder, or ``none``) the coordinator tests elsewhere, so no scan is held out of it."""
    return _load_dataset_cached(
        resolve_path(data_dir or settings.data.data_dir, "data-dir"),
        settings.model.image_size,
        settings.model.channels,
        default_cache_dir(),
        settings.data.skip_unreadable,
        0.0 if settings.data.test_dir else settings.data.test_fraction,
        settings.seed,
        class_names,
        settings.model.crop,
    )


def cached_partition(settings: RunSettings, train: ImageSet, num_partitions: int) -> list[np.ndarray]:
    """Every site's row indices, computed once and kept in the cache folder.

    A SuperNode starts a fresh process for each message, so caching spares
    each round the partitioner (and its heavy imports). Where the scans are
    grouped by patient, whole patients are partitioned.
    """
    digest = hashlib.blake2b(train.labels.tobytes(), digest_size=12)
    if train.groups is not None:
        digest.update("\0".join(["patients", *train.groups.tolist()]).encode())
    digest.update(
        repr(
            (num_partitions, settings.data.partitioning, settings.data.dirichlet_alpha, settings.seed)
        ).encode()
    )
    path = default_cache_dir() / f"partitions-{digest.hexdigest()}.npz"
    if path.exists():
        with np.load(path) as cached:
            return [cached[str(i)] for i in range(num_partitions)]
    parts = partition_indices(
        train.labels,
        num_partitions,
        settings.data.partitioning,
        settings.data.dirichlet_alpha,
        settings.seed,
        train.groups,
    )
    write_cache(path, lambda handle: np.savez(handle, **{str(i): p for i, p in enumerate(parts)}))
    return parts


def scanner_shifted(settings: RunSettings, images: ImageSet, site_id: int) -> ImageSet:
    """``images`` of emulated site ``site_id`` through its synthetic scanner profile (``feature-shift``).

    Unchanged at ``feature-shift`` = 0; otherwise the profile is logged once
    per process and the pixels are a new array (the cached dataset is untouched).
    """
    if not settings.data.feature_shift:
        return images
    profile = scanner_profile(settings.seed, site_id, settings.data.feature_shift)
    log_profile(profile, settings.model.image_size)
    return dataclasses.replace(images, images=shift_images(images.images, profile))


@dataclasses.dataclass(frozen=True)
class SiteData:
    """One site's local training and validation images."""

    site_id: int
    train: ImageSet
    val: ImageSet
    folder: Path  # the site's data folder: its images' ``files`` are relative to it

    def split(self, name: str) -> ImageSet:
        """The site's ``train`` or ``val`` split, or ``all`` of its labelled images."""
        if name == "all":
            return ImageSet.joined([self.train, self.val])
        return {"train": self.train, "val": self.val}[name]


def site_folders(settings: RunSettings) -> list[str]:
    """The ``site-data-dirs`` setting's folders, in site order (none when it is empty)."""
    return [folder for folder in settings.data.site_data_dirs.split(os.pathsep) if folder.strip()]


def site_data(
    settings: RunSettings, node_config: Mapping[str, Any], class_names: tuple[str, ...]
) -> SiteData:
    """The images of the site described by a SuperNode's ``node_config``.

    With ``num-partitions`` (as when several sites are emulated from one
    dataset) the site takes partition ``partition-id`` of the run's training
    set, or of ``data-dir``'s. Without it, ``data-dir`` is the site's own
    folder (any layout of :mod:`brainfl.data.layouts`) and all of its training
    scans are used: ``Training`` of a Kaggle split, else every scan. Labels
    always follow the server's ``class_names``; the validation split keeps a
    patient's scans together. With ``feature-shift`` > 0 an emulated site's
    images, training and validation alike, go through its synthetic scanner
    (:func:`scanner_shifted`); a site with its own folder refuses the setting. On the
    simulation engine, ``site-data-dirs`` gives each virtual site (``partition-id``) its own
    folder instead of a partition.
    """
    site_id = int(node_config.get("partition-id", -1))
    site_dir = str(node_config.get("data-dir", "")) or None
    own_folders = site_folders(settings)
    if site_dir is None and own_folders and "num-partitions" in node_config:
        if not 0 <= site_id < len(own_folders):
            raise BrainFLError(
                f"setting 'site-data-dirs' names {len(own_folders)} folders; site {site_id} has none"
            )
        site_dir, node_config = own_folders[site_id], {"partition-id": site_id}
    folder = resolve_path(site_dir or settings.data.data_dir, "data-dir")
    if "num-partitions" in node_config:
        train = load_run_dataset(settings, str(folder), class_names).train
        num_partitions = int(node_config["num-partitions"])
        if not 0 <= site_id < num_partitions:
            raise BrainFLError(f"node config 'partition-id'={site_id} is outside 0..{num_partitions - 1}")
        train = train.subset(cached_partition(settings, train, num_partitions)[site_id])
        train = scanner_shifted(settings, train, site_id)
    elif shift := settings.data.feature_shift:
        raise BrainFLError(
            f"setting 'feature-shift'={shift}: the synthetic scanner shift is for sites "
            f"split from one dataset (node config 'num-partitions'); site {site_id} has its own data folder"
        )
    else:
        train, _ = load_images(
            folder,
            settings.model.image_size,
            settings.model.channels,
            list(class_names),
            default_cache_dir(),
            settings.data.skip_unreadable,
            settings.model.crop,
        )
    if len(train) == 0:
        raise BrainFLError(f"site {site_id} has no training images")
    train_pos, val_pos = split_validation(
        train.labels, settings.data.val_fraction, settings.seed + max(site_id, 0), train.groups
    )
    return SiteData(site_id, train.subset(train_pos), train.subset(val_pos), folder)


def describe_layout(dataset: Dataset, test_fraction: float) -> str:
    """One line on how the data folder was read: its layout, the test set and the patients."""
    parts = [f"layout: {dataset.layout}"]
    if not dataset.test_is_official and len(dataset.test) == 0:
        parts.append("no scan held out: the coordinator's test set is test-dir's")
    elif dataset.layout == KAGGLE_SPLIT and not dataset.test_is_official:
        parts.append(f"no {TEST_SPLIT} folder: the test set is a stratified hold-out ({test_fraction})")
    elif dataset.layout == LABELS_CSV:
        parts.append(f"the test set is a stratified hold-out ({test_fraction})")
    patients = dataset.train.num_patients()
    if patients is not None and dataset.test_is_official:
        parts.append(
            f"{patients} training patients, each kept whole at one site (check-data finds those in Testing)"
        )
    elif patients is not None:
        parts.append(f"{patients} training patients, each kept whole in one split and at one site")
    return "; ".join(parts)
