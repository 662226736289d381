"""``brainfl check-data``: report duplicate images and train/test leakage of a dataset.

``brainfl check-data <data-dir>`` hashes every image of Training and Testing,
pairs exact and near duplicates (see :mod:`brainfl.data.duplicates` for how, and
for the threshold), and

* prints a summary table: duplicate pairs within and across splits, label
  conflicts (duplicate pairs whose two files sit in different classes), and
  the Testing images with a copy in Training versus the leak-free rest;
* writes ``duplicates.csv`` (every pair), ``summary.csv`` and
  ``leak_free_test_files.txt`` to the output folder;
* where both splits group their scans in patient folders
  (``<split>/<class>/<patient>/...``), reports the patients present in both
  Training and Testing (``patients_in_both_splits.txt``): their Testing scans
  are not independent of Training even when no image is copied.

The hashing and pairing names (:func:`hash_images`, :func:`find_duplicates`,
:func:`leak_free_test_mask`, ...) live in :mod:`brainfl.data.duplicates` and stay
importable from here.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from brainfl.core.arguments import add_output_dir
from brainfl.core.errors import BrainFLError
from brainfl.core.files import check_can_create, write_atomically
from brainfl.data.duplicates import (
    HASH_BITS,
    MAX_THRESHOLD,
    NEAR_DUPLICATE_THRESHOLD,
    PAIR_COLUMNS,
    TABLE_COLUMNS,
    across_splits,
    check_threshold,
    copied_test_files,
    exact_pairs,
    find_duplicates,
    hamming,
    hash_image,
    hash_images,
    leak_free_files,
    leak_free_test_files,
    leak_free_test_mask,
    near_pairs,
)
from brainfl.data.layouts import detect_layout, split_patient
from brainfl.data.loading import TEST_SPLIT, TRAIN_SPLIT

__all__ = [
    "DEFAULT_OUTPUT",
    "MAX_THRESHOLD",
    "NEAR_DUPLICATE_THRESHOLD",
    "PAIR_COLUMNS",
    "SUMMARY_COLUMNS",
    "TABLE_COLUMNS",
    "add_arguments",
    "check_data",
    "exact_pairs",
    "find_duplicates",
    "hamming",
    "hash_image",
    "hash_images",
    "leak_free_files",
    "leak_free_test_files",
    "leak_free_test_mask",
    "near_pairs",
    "run_check_data",
    "shared_patients",
    "summarize",
]

SUMMARY_COLUMNS = ["exact", "near", "any"]
DEFAULT_OUTPUT = Path("data_check")


def summarize(pairs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Counts by category (rows) and kind (columns ``exact``, ``near``, ``any``).

    Pair rows count pairs (``any`` = exact + near); label conflicts are pairs
    whose two labels differ. The image rows count Testing images with a copy
    in Training of that kind (an image may have both, so ``any`` is their
    union) and the rest, the leak-free subset (``any``: no copy of either kind).
    """
    splits = {
        "within Training": (pairs["split_a"] == TRAIN_SPLIT) & (pairs["split_b"] == TRAIN_SPLIT),
        "within Testing": (pairs["split_a"] == TEST_SPLIT) & (pairs["split_b"] == TEST_SPLIT),
        "across Training/Testing": across_splits(pairs),
    }
    conflict = pairs["label_a"] != pairs["label_b"]
    rows: dict[str, list[int]] = {}
    for name, mask in splits.items():
        rows[f"duplicate pairs {name}"] = _count_by_kind(pairs[mask])
    for name, mask in splits.items():
        rows[f"label conflicts {name}"] = _count_by_kind(pairs[mask & conflict])
    n_test = int((table["split"] == TEST_SPLIT).sum())
    with_copy = [len(copied_test_files(pairs, kind)) for kind in ("exact", "near", None)]
    rows["Testing images with a copy in Training"] = with_copy
    rows["leak-free Testing images"] = [n_test - count for count in with_copy]
    summary = pd.DataFrame.from_dict(rows, orient="index", columns=SUMMARY_COLUMNS)
    summary.index.name = "category"
    return summary


def _count_by_kind(pairs: pd.DataFrame) -> list[int]:
    exact = int((pairs["kind"] == "exact").sum())
    near = int((pairs["kind"] == "near").sum())
    return [exact, near, exact + near]


def shared_patients(table: pd.DataFrame) -> list[str] | None:
    """Patients with scans in both Training and Testing, sorted; None unless both splits are grouped.

    A split is grouped when its scans sit in patient folders under the class
    folders (the data loader's patients: the first folder under the class).
    """
    patients = table["file"].map(split_patient)
    found = {
        split: set(patients[(table["split"] == split) & patients.notna()])
        for split in (TRAIN_SPLIT, TEST_SPLIT)
    }
    if not found[TRAIN_SPLIT] or not found[TEST_SPLIT]:
        return None
    return sorted(found[TRAIN_SPLIT] & found[TEST_SPLIT])


def patients_in_two_classes(table: pd.DataFrame) -> list[str]:
    """Patient folders found under more than one class folder, sorted: the loader counts them as one
    patient per class (the same name in two classes is taken for two patients), which a dataset
    that reuses a patient's folder name across classes should know."""
    patients = table["file"].map(split_patient).dropna()
    folders = patients.str.split("/", n=1, expand=True) if len(patients) else pd.DataFrame(columns=[0, 1])
    classes_per_folder = folders.groupby(1)[0].nunique()
    return sorted(classes_per_folder[classes_per_folder > 1].index)


def _write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write one output file; a path that cannot be written is a one-line error naming it."""
    try:
        write_atomically(path, write)
    except OSError as error:
        raise BrainFLError(f"--output-dir: cannot write {path} ({error.strerror or error})") from None


def check_data(
    data_dir: Path, output: Path | None = None, threshold: int = NEAR_DUPLICATE_THRESHOLD
) -> pd.DataFrame:
    """Hash, pair and summarize ``data_dir``; print the summary and write the lists.

    Writes ``duplicates.csv`` (every pair), ``leak_free_test_files.txt`` (one
    relative path a line, sorted) and ``summary.csv`` to ``output`` (default
    ``./data_check``) and returns the summary table.
    """
    check_threshold(threshold)
    data_dir = Path(data_dir)
    output = Path(output) if output is not None else Path.cwd() / DEFAULT_OUTPUT
    if output.exists() and not output.is_dir():
        raise BrainFLError(f"output is not a folder: {output}")
    check_can_create(output, "--output-dir", folder=True)
    detect_layout(data_dir)  # (refuses a labels.csv beside the split, as training would)
    started = time.perf_counter()
    table = hash_images(data_dir)
    pairs = find_duplicates(table, threshold)
    summary = summarize(pairs, table)
    leak_free = sorted(leak_free_files(table, pairs))
    patients = shared_patients(table)
    _write(output / "duplicates.csv", lambda handle: pairs.to_csv(handle, index=False))
    _write(output / "summary.csv", lambda handle: summary.to_csv(handle))
    _write(
        output / "leak_free_test_files.txt",
        lambda handle: handle.write("".join(f"{name}\n" for name in leak_free).encode()),
    )
    if patients is not None:
        _write(
            output / "patients_in_both_splits.txt",
            lambda handle: handle.write("".join(f"{name}\n" for name in patients).encode()),
        )
    counts = table["split"].value_counts()
    print(
        f"{len(table)} images ({counts.get(TRAIN_SPLIT, 0)} {TRAIN_SPLIT}, {counts.get(TEST_SPLIT, 0)} "
        f"{TEST_SPLIT}) in {data_dir}; near duplicate: pHash distance <= {threshold} of "
        f"{HASH_BITS} bits; {time.perf_counter() - started:.1f} s"
    )
    print(summary.to_string())
    if patients is not None:
        listed = ", ".join(patients[:5]) + (", ..." if len(patients) > 5 else "")
        print(
            f"patients in both {TRAIN_SPLIT} and {TEST_SPLIT}: {len(patients)}"
            + (f" ({listed}; {output / 'patients_in_both_splits.txt'})" if patients else "")
        )
    in_two = patients_in_two_classes(table)
    if in_two:
        listed = ", ".join(in_two[:5]) + (", ..." if len(in_two) > 5 else "")
        print(f"patient folders under more than one class (one patient per class): {len(in_two)} ({listed})")
    print(
        f"pairs: {output / 'duplicates.csv'}; leak-free Testing files: {output / 'leak_free_test_files.txt'}"
    )
    return summary


def run_check_data(args: argparse.Namespace) -> None:
    """Handler of ``brainfl check-data``."""
    check_data(args.data_dir, args.output_dir, args.threshold)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options and handler of ``check-data <data-dir> [--output-dir DIR] [--threshold N]``."""
    parser.add_argument("data_dir", type=Path, help="dataset folder with Training/ and Testing/")
    add_output_dir(
        parser,
        f"folder for duplicates.csv and leak_free_test_files.txt (default: ./{DEFAULT_OUTPUT})",
        old=["--output"],
    )
    parser.add_argument(
        "--threshold",
        type=int,
        default=NEAR_DUPLICATE_THRESHOLD,
        help=f"largest pHash Hamming distance of a near duplicate, 0-{MAX_THRESHOLD} "
        f"(default: {NEAR_DUPLICATE_THRESHOLD})",
    )
    parser.set_defaults(handler=run_check_data)
