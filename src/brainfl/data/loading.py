"""Read a dataset folder, in any layout of :mod:`brainfl.data.layouts`, into arrays.

Every scan the decoder reads (:mod:`brainfl.data.decoding`) is converted to the
configured size and channels; each image's patient, where scans are grouped,
is carried in ``ImageSet.groups``. Without a Testing folder the server's test
set is a stratified hold-out (``test-fraction``) that keeps each patient's
scans on one side. Decoded arrays are cached on disk (:func:`default_cache_dir`),
keyed by the file list, labels, sizes, mtimes and every setting that changes
what is decoded or kept, so a second run does not decode again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from brainfl.core.errors import BrainFLError
from brainfl.core.files import write_atomically
from brainfl.core.logs import LOG
from brainfl.data.decoding import SCAN_SUFFIXES, decode_scan
from brainfl.data.layouts import (
    KAGGLE_SPLIT,
    LABELS_CSV,
    LABELS_FILE,
    TEST_SPLIT,
    TRAIN_SPLIT,
    Entry,
    check_class_folders_layout,
    class_folders,
    detect_layout,
    list_class_folders,
    read_labels_csv,
)
from brainfl.data.layouts import find_classes as find_classes  # re-exported: check-data and benchmarks use it
from brainfl.data.partitioning import holdout_split

IMAGE_SUFFIXES = SCAN_SUFFIXES  # .jpg .jpeg .png .bmp .tif .tiff .dcm .dicom (brainfl.data.decoding)
CACHE_VERSION = 3  # 3: scans cropped to the head


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """Decoded images (uint8, N x H x W x C), integer labels, their files and patients.

    ``groups`` holds each image's patient id where the scans are grouped by
    patient (nested folders, a ``patient`` column), else None.
    """

    images: np.ndarray
    labels: np.ndarray
    files: tuple[str, ...]
    class_names: tuple[str, ...]
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ImageSet:
        """Return the images at ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            self.images[indices],
            self.labels[indices],
            tuple(self.files[i] for i in indices),
            self.class_names,
            None if self.groups is None else self.groups[indices],
        )

    @classmethod
    def joined(cls, sets: Sequence[ImageSet]) -> ImageSet:
        """The images of ``sets`` one after the other (patients kept where every set has them)."""
        groups = [part.groups for part in sets]
        return cls(
            np.concatenate([part.images for part in sets]),
            np.concatenate([part.labels for part in sets]),
            tuple(name for part in sets for name in part.files),
            sets[0].class_names,
            None if any(g is None for g in groups) else np.concatenate(groups),
        )

    def class_counts(self) -> list[int]:
        """Number of images of each class, in class order."""
        return np.bincount(self.labels, minlength=len(self.class_names)).tolist()

    def num_patients(self) -> int | None:
        """Number of distinct patients (None: the scans are not grouped)."""
        return None if self.groups is None else len(set(self.groups.tolist()))


def default_cache_dir() -> Path:
    """The cache folder: ``$BRAINFL_CACHE_DIR`` or ``~/.cache/brainfl`` (the only cache setting).

    Decoded images, partitions, image hashes and model features all go there.
    """
    return Path(os.environ.get("BRAINFL_CACHE_DIR") or Path.home() / ".cache" / "brainfl").expanduser()


def write_cache(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a cache file atomically; a folder that cannot be written is a one-line error."""
    try:
        write_atomically(path, write)
    except OSError as error:
        raise BrainFLError(
            f"cannot write to the cache folder {path.parent} ({error.strerror or error}): "
            "set BRAINFL_CACHE_DIR to a writable folder"
        ) from None


def list_images(
    split_dir: Path, class_names: list[str], skip_unsupported: bool = False, root: Path | None = None
) -> list[tuple[Path, int]]:
    """All scans under ``split_dir/<class>/`` (at any depth) with their label, sorted by class then path
    (``root``: the data folder ``split_dir`` is a split of)."""
    entries = list_class_folders(split_dir, class_names, skip_unsupported, root)
    return [(entry.path, entry.label) for entry in entries]


def decode_image(path: Path | str, image_size: int, channels: int, crop: str = "head") -> np.ndarray:
    """Decode one scan file (JPEG, PNG, BMP, TIFF, DICOM; 8 or more bits) to uint8
    ``(image_size, image_size, channels)``, cropped to the head unless ``crop="none"``:
    :func:`brainfl.data.decoding.decode_scan`.

    Raises :class:`BrainFLError` naming the file when it cannot be decoded.
    """
    return decode_scan(path, image_size, channels, crop)


def _cache_key(
    entries: list[Entry],
    image_size: int,
    channels: int,
    class_names: list[str],
    skip_unreadable: bool,
    crop: str,
) -> str:
    digest = hashlib.sha256()
    options = [CACHE_VERSION, image_size, channels, class_names, skip_unreadable, crop]
    digest.update(json.dumps(options).encode())
    for path, label, _ in entries:
        stat = path.stat()
        digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _check_memory(count: int, image_size: int, channels: int) -> None:
    """Refuse an ``image-size`` whose decoded images would not fit in half of the machine's memory."""
    needed = count * image_size * image_size * channels
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if needed > total // 2:
        raise BrainFLError(
            f"setting 'image-size'={image_size}: {count} images of {image_size}x{image_size}x{channels} "
            f"need {needed / 2**30:.1f} GiB decoded, over half of this machine's {total / 2**30:.0f} GiB"
        )


def _decode_all(
    entries: list[Entry], image_size: int, channels: int, skip_unreadable: bool, crop: str, desc: str
) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    _check_memory(len(entries), image_size, channels)
    images = np.empty((len(entries), image_size, image_size, channels), dtype=np.uint8)
    labels, kept = [], []
    for path, label, _ in tqdm(entries, desc=desc, unit="img", disable=None, leave=False):
        try:
            images[len(kept)] = decode_image(path, image_size, channels, crop)
        except BrainFLError as error:
            if not skip_unreadable:
                raise BrainFLError(f"{error} (set skip-unreadable=true to skip such files)") from None
            LOG.warning("skipping unreadable image %s", path)
            continue
        labels.append(label)
        kept.append(path)
    return images[: len(kept)], np.asarray(labels, dtype=np.int64), kept


def _load_entries(
    data_dir: Path,
    entries: list[Entry],
    class_names: list[str],
    name: str,
    settings: tuple[int, int, Path | None, bool, str],
) -> ImageSet:
    """Decode (or load from cache) ``entries``; ``settings`` = (image size, channels, cache, skip, crop)."""
    image_size, channels, cache_dir, skip_unreadable, crop = settings
    key = _cache_key(entries, image_size, channels, class_names, skip_unreadable, crop)
    cache_path = (cache_dir or default_cache_dir()) / f"{name}-{image_size}px-{channels}ch-{key}.npz"
    if cache_path.exists():
        with np.load(cache_path) as cached:
            images, labels, files = cached["images"], cached["labels"], [str(f) for f in cached["files"]]
    else:
        images, labels, kept = _decode_all(
            entries, image_size, channels, skip_unreadable, crop, f"decoding {name}"
        )
        files = [str(path.relative_to(data_dir)) for path in kept]
        write_cache(cache_path, lambda f: np.savez(f, images=images, labels=labels, files=np.asarray(files)))
    groups = None
    if any(entry.group is not None for entry in entries):
        group_of = {str(entry.path.relative_to(data_dir)): entry.group for entry in entries}
        groups = np.asarray([group_of[f] for f in files], dtype=str)
    return ImageSet(images, labels, tuple(files), tuple(class_names), groups)


def load_split(
    data_dir: Path,
    split: str,
    image_size: int,
    channels: int,
    class_names: list[str] | None = None,
    cache_dir: Path | None = None,
    skip_unreadable: bool = False,
    crop: str = "head",
) -> ImageSet:
    """Decode (or load from cache) every scan of ``data_dir/split``, framed by ``crop``.

    ``class_names`` fixes the label order (the Training classes); a class
    folder in this split that is not among them is an error.
    """
    data_dir, split_dir = Path(data_dir), Path(data_dir) / split
    detect_layout(data_dir)  # (refuses a labels.csv beside the split)
    class_names = class_folders(split_dir, class_names)
    entries = list_class_folders(split_dir, class_names, skip_unreadable, data_dir)
    settings = (image_size, channels, cache_dir, skip_unreadable, crop)
    return _load_entries(data_dir, entries, class_names, split.lower(), settings)


def load_images(
    data_dir: Path | str,
    image_size: int,
    channels: int,
    class_names: list[str] | None = None,
    cache_dir: Path | None = None,
    skip_unreadable: bool = False,
    crop: str = "head",
) -> tuple[ImageSet, str]:
    """A folder's training scans (framed by ``crop``) and its layout: ``Training`` of a Kaggle split,
    else every scan.

    This is what a site with its own folder trains on (labels follow
    ``class_names``, the server's), and the base of the hold-out test set.
    """
    data_dir = Path(data_dir)
    layout = detect_layout(data_dir)
    settings = (image_size, channels, cache_dir, skip_unreadable, crop)
    if layout == KAGGLE_SPLIT:
        if not (data_dir / TRAIN_SPLIT).is_dir():
            raise BrainFLError(
                f"no {TRAIN_SPLIT} folder in {data_dir} (expected {data_dir}/{TRAIN_SPLIT}/<class>/*.jpg)"
            )
        split_dir = data_dir / TRAIN_SPLIT
        class_names = class_folders(split_dir, class_names)
        entries = list_class_folders(split_dir, class_names, skip_unreadable, data_dir)
        return _load_entries(data_dir, entries, class_names, "training", settings), layout
    if layout == LABELS_CSV:
        entries, class_names = read_labels_csv(data_dir, class_names, skip_unreadable)
        return _load_entries(data_dir, entries, class_names, "labels", settings), layout
    class_names = check_class_folders_layout(data_dir, class_names)
    entries = list_class_folders(data_dir, class_names, skip_unreadable)
    return _load_entries(data_dir, entries, class_names, "images", settings), layout


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The training images (split across sites), the server's test set and the folder's layout."""

    train: ImageSet
    test: ImageSet
    test_is_official: bool
    layout: str = KAGGLE_SPLIT


def _source(data_dir: Path, layout: str) -> Path:
    """What a message about the training scans names: the Training folder, labels.csv or the folder."""
    return {KAGGLE_SPLIT: data_dir / TRAIN_SPLIT, LABELS_CSV: data_dir / LABELS_FILE}.get(layout, data_dir)


def load_dataset(
    data_dir: Path | str,
    image_size: int,
    channels: int,
    cache_dir: Path | None = None,
    skip_unreadable: bool = False,
    test_fraction: float = 0.2,
    seed: int = 42,
    class_names: list[str] | None = None,
    crop: str = "head",
) -> Dataset:
    """Training and test images (framed by ``crop``); without a Testing folder, a stratified hold-out
    of the training scans (none with ``test_fraction`` 0: every scan is a training scan, the test set
    is empty).

    ``class_names`` (default: the folder's classes) fixes the label order, as
    a site must use the server's classes even when it lacks one of them.
    """
    data_dir = Path(data_dir)
    derived = class_names is None
    train, layout = load_images(data_dir, image_size, channels, class_names, cache_dir, skip_unreadable, crop)
    source = _source(data_dir, layout)
    if derived and len(train.class_names) < 2:
        raise BrainFLError(
            f"only one class ({', '.join(train.class_names)}) in {source}: need at least 2 classes"
        )
    if layout == KAGGLE_SPLIT and (data_dir / TEST_SPLIT).is_dir():
        names = list(train.class_names)
        test = load_split(data_dir, TEST_SPLIT, image_size, channels, names, cache_dir, skip_unreadable, crop)
        return Dataset(train, test, True, layout)
    if test_fraction == 0:
        return Dataset(train, train.subset(np.arange(0)), False, layout)
    train_pos, test_pos = holdout_split(
        train.labels, test_fraction, seed, train.groups, train.class_names, source
    )
    return Dataset(train.subset(train_pos), train.subset(test_pos), False, layout)
