"""Read the Kaggle "Brain Tumor MRI Dataset" folder layout into arrays.

Layout: ``<data-dir>/Training/<class>/*`` and ``<data-dir>/Testing/<class>/*``.
Class names and their order come from the Training folders, sorted; hidden
files and folders are skipped; .jpg/.jpeg/.png in any case are read, grayscale
or RGB, any size, and converted to the configured size and channels. Decoded
arrays are cached on disk (:func:`default_cache_dir`), keyed by the file
list, sizes, mtimes and the preprocessing, so a second run does not decode
again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from brainfl.errors import BrainFLError
from brainfl.files import write_atomically
from brainfl.logs import LOG

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
TRAIN_SPLIT = "Training"
TEST_SPLIT = "Testing"
CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """Decoded images (uint8, N x H x W x C), integer labels and their files."""

    images: np.ndarray
    labels: np.ndarray
    files: tuple[str, ...]
    class_names: tuple[str, ...]

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
        )

    def class_counts(self) -> list[int]:
        """Number of images of each class, in class order."""
        return np.bincount(self.labels, minlength=len(self.class_names)).tolist()


def default_cache_dir() -> Path:
    """The cache folder: ``$BRAINFL_CACHE_DIR`` or ``~/.cache/brainfl`` (the only cache setting).

    Decoded images, partitions, image hashes and model features all go there.
    """
    return Path(os.environ.get("BRAINFL_CACHE_DIR") or Path.home() / ".cache" / "brainfl").expanduser()


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def find_classes(split_dir: Path) -> list[str]:
    """Sorted class names: the visible sub-folders of a split folder."""
    if not split_dir.is_dir():
        raise BrainFLError(f"data folder not found: {split_dir}")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not _is_hidden(p))
    if not classes:
        raise BrainFLError(f"no class folders in {split_dir} (expected {split_dir}/<class>/*.jpg)")
    return classes


def list_images(split_dir: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    """All image files of a split with their label, sorted by class then name."""
    items: list[tuple[Path, int]] = []
    for label, name in enumerate(class_names):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        files = sorted(
            p
            for p in class_dir.iterdir()
            if p.is_file() and not _is_hidden(p) and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise BrainFLError(f"class folder has no images: {class_dir}")
        items.extend((path, label) for path in files)
    return items


def decode_image(path: Path | str, image_size: int, channels: int) -> np.ndarray:
    """Decode one image file to uint8 ``(image_size, image_size, channels)``.

    Raises :class:`BrainFLError` naming the file when it cannot be decoded.
    """
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise BrainFLError(f"cannot decode image {path}: {error.__class__.__name__}") from None
    return array.reshape(image_size, image_size, channels)


def _cache_key(items: list[tuple[Path, int]], image_size: int, channels: int, class_names: list[str]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_VERSION, image_size, channels, class_names]).encode())
    for path, label in items:
        stat = path.stat()
        digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _decode_all(
    items: list[tuple[Path, int]], image_size: int, channels: int, skip_unreadable: bool, desc: str
) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    images = np.empty((len(items), image_size, image_size, channels), dtype=np.uint8)
    labels, kept = [], []
    for path, label in tqdm(items, desc=desc, unit="img", disable=None, leave=False):
        try:
            images[len(kept)] = decode_image(path, image_size, channels)
        except BrainFLError as error:
            if not skip_unreadable:
                raise BrainFLError(f"{error} (set skip-unreadable=true to skip such files)") from None
            LOG.warning("skipping unreadable image %s", path)
            continue
        labels.append(label)
        kept.append(path)
    return images[: len(kept)], np.asarray(labels, dtype=np.int64), kept


def load_split(
    data_dir: Path,
    split: str,
    image_size: int,
    channels: int,
    class_names: list[str] | None = None,
    cache_dir: Path | None = None,
    skip_unreadable: bool = False,
) -> ImageSet:
    """Decode (or load from cache) every image of ``data_dir/split``.

    ``class_names`` fixes the label order (the Training classes); a class
    folder in this split that is not among them is an error.
    """
    split_dir = Path(data_dir) / split
    found = find_classes(split_dir)
    if class_names is None:
        class_names = found
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise BrainFLError(
            f"class folder {split_dir / unknown[0]} is not one of the classes "
            f"{', '.join(class_names)} (from Training)"
        )
    items = list_images(split_dir, class_names)
    key = _cache_key(items, image_size, channels, class_names)
    cache_path = (cache_dir or default_cache_dir()) / f"{split.lower()}-{image_size}px-{channels}ch-{key}.npz"
    if cache_path.exists():
        with np.load(cache_path) as cached:
            return ImageSet(
                cached["images"],
                cached["labels"],
                tuple(str(f) for f in cached["files"]),
                tuple(class_names),
            )
    images, labels, kept = _decode_all(items, image_size, channels, skip_unreadable, f"decoding {split}")
    files = [str(path.relative_to(data_dir)) for path in kept]
    write_atomically(cache_path, lambda f: np.savez(f, images=images, labels=labels, files=np.asarray(files)))
    return ImageSet(images, labels, tuple(files), tuple(class_names))


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The training images (split across sites) and the server's test set."""

    train: ImageSet
    test: ImageSet
    test_is_official: bool


def load_dataset(
    data_dir: Path | str,
    image_size: int,
    channels: int,
    cache_dir: Path | None = None,
    skip_unreadable: bool = False,
    test_fraction: float = 0.2,
    seed: int = 42,
    class_names: list[str] | None = None,
) -> Dataset:
    """Load Training and Testing; without a Testing folder, split Training (stratified).

    ``class_names`` (default: the Training folders) fixes the label order, as
    a site must use the server's classes even when it lacks one of them.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise BrainFLError(f"data directory not found: {data_dir}")
    if not (data_dir / TRAIN_SPLIT).is_dir():
        raise BrainFLError(
            f"no {TRAIN_SPLIT} folder in {data_dir} (expected {data_dir}/{TRAIN_SPLIT}/<class>/*.jpg)"
        )
    train = load_split(data_dir, TRAIN_SPLIT, image_size, channels, class_names, cache_dir, skip_unreadable)
    class_names = list(train.class_names)
    if (data_dir / TEST_SPLIT).is_dir():
        test = load_split(data_dir, TEST_SPLIT, image_size, channels, class_names, cache_dir, skip_unreadable)
        official = True
    else:
        train_idx, test_idx = train_test_split(
            np.arange(len(train)), test_size=test_fraction, stratify=train.labels, random_state=seed
        )
        train, test = train.subset(np.sort(train_idx)), train.subset(np.sort(test_idx))
        official = False
    return Dataset(train, test, official)
