"""What the coordinator holds: the class names and, optionally, the central test set.

A federation's coordinator has no training data. It needs the class names
(their order is the model's output order) and, for central evaluation, a
test set:

* ``test-dir`` set: that folder is the coordinator's test set, in any layout
  the loader reads: its ``Testing`` split where it has one, else every scan
  (class folders, nested patients, ``labels.csv``); ``test-dir='none'``: no
  central evaluation (``class-names`` is then required);
* ``test-dir`` empty: ``data-dir``'s ``Testing`` split (no ``Training``
  needed), or, for a folder without one, the stratified hold-out of the
  pooled scans that the simulated sites do not train on.

``class-names`` (comma-separated) fixes the classes and their order; without
it they are the test folder's classes, else ``data-dir``'s.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from brainfl.core.errors import BrainFLError
from brainfl.data.layouts import TEST_SPLIT
from brainfl.data.loading import ImageSet, default_cache_dir, load_images, load_split
from brainfl.data.sites import load_run_dataset
from brainfl.settings.run_settings import DataSettings, RunSettings, resolve_path

NO_TEST_SET = "none"


@dataclasses.dataclass(frozen=True)
class CentralData:
    """The coordinator's classes and test images (``test`` None: no central evaluation)."""

    class_names: tuple[str, ...]
    test: ImageSet | None
    root: Path | None  # the folder ``test.files`` are relative to
    official: bool  # a test folder or split the coordinator keeps, not a hold-out of training scans


def configured_class_names(data: DataSettings) -> tuple[str, ...] | None:
    """The ``class-names`` setting as a tuple (None when empty); at least two distinct names."""
    names = tuple(name.strip() for name in data.class_names.split(",") if name.strip())
    if not names:
        return None
    if len(names) < 2 or len(set(names)) != len(names):
        raise BrainFLError(
            f"setting 'class-names'={data.class_names!r}: needs at least 2 distinct comma-separated names"
        )
    return names


def load_test_folder(settings: RunSettings, root: Path, class_names: tuple[str, ...] | None) -> ImageSet:
    """Every test scan of ``root``: its ``Testing`` split if it has one, else all of its scans."""
    names = list(class_names) if class_names else None
    options = (settings.model.image_size, settings.model.channels)
    cache, crop = default_cache_dir(), settings.model.crop
    if (root / TEST_SPLIT).is_dir():
        return load_split(root, TEST_SPLIT, *options, names, cache, settings.data.skip_unreadable, crop)
    images, _ = load_images(root, *options, names, cache, settings.data.skip_unreadable, crop)
    return images


def central_data(settings: RunSettings) -> CentralData:
    """The coordinator's class names and test set, per the module docstring."""
    configured = configured_class_names(settings.data)
    if settings.data.test_dir == NO_TEST_SET:
        if configured is None:
            raise BrainFLError("setting 'test-dir'='none' (no central evaluation) needs 'class-names'")
        return CentralData(configured, None, None, False)
    folder = resolve_path(
        settings.data.test_dir or settings.data.data_dir, "test-dir" if settings.data.test_dir else "data-dir"
    )
    if settings.data.test_dir or (folder / TEST_SPLIT).is_dir():
        test = load_test_folder(settings, folder, configured)
        official = True
    else:
        dataset = load_run_dataset(settings, class_names=configured)
        test, official = dataset.test, dataset.test_is_official
    if configured is None and len(test.class_names) < 2:
        raise BrainFLError(f"only one class ({', '.join(test.class_names)}) in the test set of {folder}")
    if len(test) == 0:
        raise BrainFLError(f"no test scans in {folder}")
    return CentralData(configured or tuple(test.class_names), test, folder, official)
