"""Image hashes, duplicate pairs and the leak-free Testing subset of a dataset.

Why: in the Kaggle brain-tumor MRI dataset many Testing images are copies of
Training images, so accuracy on the official Testing split is inflated by
train/test leakage. This module finds, within and across splits and classes,

* exact duplicates: files with the same bytes (md5);
* near duplicates: files with different bytes whose 256-bit perceptual hash
  (``imagehash.phash(..., hash_size=16)`` of the grayscale image) differs in
  at most ``threshold`` bits (default :data:`NEAR_DUPLICATE_THRESHOLD`, chosen
  from measurements written beside it), which finds the same scan re-encoded,
  resized, re-contrasted or converted between RGB and grayscale, but neither
  the neighbouring slice of the same patient nor a cropped copy.

:func:`leak_free_test_files` gives the Testing images with no exact or near
copy in Training and :func:`leak_free_test_mask` marks them in a list of
Testing files: the server reports ``leak_free_accuracy`` on them beside the
official Testing accuracy. The report and CLI on top of this are in
:mod:`brainfl.data.check`.

Hashes are cached under :func:`brainfl.data.loading.default_cache_dir`, keyed by
the file list, sizes and mtimes, so a second check does not decode again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from tqdm import tqdm

from brainfl.core.errors import BrainFLError
from brainfl.core.files import write_atomically
from brainfl.core.logs import LOG
from brainfl.data.decoding import open_scan
from brainfl.data.loading import TEST_SPLIT, TRAIN_SPLIT, default_cache_dir, find_classes, list_images

# Largest pHash Hamming distance (of 256 bits) at which two files with different
# bytes count as the same image. Measured on the shared Kaggle copy (5,708
# Training / 1,311 Testing images, 216 Testing images byte-identical to a
# Training one). Testing images with an exact or near copy in Training, and
# near pairs of tumor images within a split whose file numbers differ by <= 2
# (consecutive slices of one patient in the figshare part: different scans):
#
#   threshold (of 256 bits)   0    2    4    6    8   10   12   14   16   20   24   32   40
#   Testing images with copy 275  388  433  464  473  477  479  482  491  518  567  725  882
#   consecutive-slice pairs    0    0    0    0    0    0    1    4   11   34  127  544 1164
#   near label conflicts       0    0    0    0    0    0    0    0    0    0    0    1   31
#
# The count climbs to 8 (re-encodings, resizes, contrast changes), is flat from
# 8 to 14, and climbs again once adjacent slices merge (from 12). 10 sits on the
# plateau: pairs at 10 looked the same scan by eye; some re-processed notumor
# copies at 12-24 are missed rather than merging neighbouring slices. Copies
# made on purpose of 300 random images of the set land within 10 bits: JPEG
# quality 30/50/75 (max distance 10/8/4), resized to 160 or 512 px (6/4), RGB
# (6), brightness +10% (8); resized to 128 px and saved at quality 60: 299 of
# 300 (max 14). pHash ignores no crop: a 4-pixel crop moves it by 38 (median).
# The default 64-bit pHash (hash_size=8) cannot separate the two: consecutive
# slices already have distance 0, and its counts at 0..10 (odd distances do not
# occur) are 422, 422, 546, 546, 716, 716, 941, 941, 1146, 1146, 1260 Testing
# images, with 43 near label conflicts at 4 -- hence the 16x16 hash.
NEAR_DUPLICATE_THRESHOLD = 10
# Larger thresholds pair unrelated scans and the pair list grows towards n^2/2.
MAX_THRESHOLD = 64
HASH_SIZE = 16  # imagehash.phash(hash_size=16): a 16x16 = 256-bit hash
HASH_BITS = HASH_SIZE * HASH_SIZE
CACHE_VERSION = 2
TABLE_COLUMNS = ["file", "split", "label", "md5", "phash"]
PAIR_COLUMNS = ["file_a", "file_b", "split_a", "split_b", "label_a", "label_b", "kind", "distance"]
BLOCK_ROWS = 256  # rows of the Hamming-distance matrix computed at once


def _split_images(data_dir: Path) -> list[tuple[str, Path, str]]:
    """(split, path, class name) of every image of Training and, if present, Testing."""
    if not data_dir.is_dir():
        raise BrainFLError(f"data directory not found: {data_dir}")
    if not (data_dir / TRAIN_SPLIT).is_dir():
        raise BrainFLError(
            f"no {TRAIN_SPLIT} folder in {data_dir} (expected {data_dir}/{TRAIN_SPLIT}/<class>/*.jpg)"
        )
    items = []
    for split in (TRAIN_SPLIT, TEST_SPLIT):
        split_dir = data_dir / split
        if not split_dir.is_dir():
            LOG.info("no %s folder in %s: checking %s only", split, data_dir, TRAIN_SPLIT)
            continue
        classes = find_classes(split_dir)
        listed = list_images(split_dir, classes, root=data_dir)
        items.extend((split, path, classes[label]) for path, label in listed)
    return items


def _cache_path(data_dir: Path, items: list[tuple[str, Path, str]]) -> Path:
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_VERSION, HASH_SIZE, str(data_dir.resolve())]).encode())
    for split, path, label in items:
        stat = path.stat()
        digest.update(f"{split}\0{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return default_cache_dir() / f"image-hashes-{digest.hexdigest()[:24]}.csv"


def hash_image(path: Path) -> tuple[str, str]:
    """md5 of the file bytes and pHash (hex) of the grayscale image; BrainFLError if undecodable."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BrainFLError(f"cannot read image {path}: {error.strerror}") from None
    phash = imagehash.phash(open_scan(path, "L"), hash_size=HASH_SIZE)  # as the model sees it
    return hashlib.md5(data, usedforsecurity=False).hexdigest(), str(phash)


def hash_images(data_dir: Path) -> pd.DataFrame:
    """One row per image of both splits: ``file, split, label, md5, phash``.

    ``file`` is the path relative to ``data_dir`` as the data loader writes it
    (``Testing/glioma/Te-gl_0001.jpg``); rows are Training first, then Testing,
    each sorted by class then name. The table is cached (see module docstring).
    """
    data_dir = Path(data_dir)
    return _hash_table(data_dir, _split_images(data_dir))


def hash_files(root: Path, files: Iterable[str]) -> np.ndarray:
    """pHashes of ``files`` (paths relative to ``root``) as ``(n, 4)`` uint64 words (cached)."""
    items = [("files", Path(root) / name, "") for name in files]
    return _phash_words(_hash_table(Path(root), items)["phash"])


def _hash_table(data_dir: Path, items: list[tuple[str, Path, str]]) -> pd.DataFrame:
    cache_path = _cache_path(data_dir, items)
    if cache_path.exists():
        return pd.read_csv(cache_path, dtype=str, keep_default_na=False)
    rows = []
    for split, path, label in tqdm(items, desc="hashing images", unit="img", disable=None, leave=False):
        md5, phash = hash_image(path)
        rows.append((str(path.relative_to(data_dir)), split, label, md5, phash))
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    write_atomically(cache_path, lambda handle: table.to_csv(handle, index=False))
    return table


def _phash_words(phashes: Iterable[str]) -> np.ndarray:
    """Hex pHashes as an ``(n, bits / 64)`` uint64 array, for XOR and popcount."""
    hex_digits = list(phashes)
    if any(len(value) != HASH_BITS // 4 for value in hex_digits):
        raise BrainFLError(f"pHash values must be {HASH_BITS // 4} hex digits ({HASH_BITS} bits)")
    raw = bytes.fromhex("".join(hex_digits))
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(hex_digits), HASH_BITS // 64)


def hamming(words_a: np.ndarray, words_b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance of broadcastable ``(..., words)`` uint64 arrays."""
    return np.bitwise_count(words_a ^ words_b).sum(axis=-1, dtype=np.int64)


def has_copy_in(
    queries: np.ndarray, references: np.ndarray, threshold: int = NEAR_DUPLICATE_THRESHOLD
) -> np.ndarray:
    """For each query pHash (``(n, 4)`` words): whether a reference lies within ``threshold`` bits."""
    found = np.zeros(len(queries), dtype=bool)
    if len(references) == 0:
        return found
    for start in range(0, len(queries), BLOCK_ROWS):
        block = queries[start : start + BLOCK_ROWS]
        found[start : start + len(block)] = (hamming(block[:, None, :], references[None]) <= threshold).any(1)
    return found


def near_pairs(phashes: Iterable[str], threshold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs ``i < j`` whose pHash Hamming distance is <= ``threshold``, with the distance.

    Vectorized: XOR a block of rows against all later hashes one 64-bit word at
    a time and add up the set bits, so memory stays at ``BLOCK_ROWS x n``
    however many images there are (~0.3 s for the 7,019 images of the Kaggle set).
    """
    words = _phash_words(phashes)
    columns = [np.ascontiguousarray(words[:, k]) for k in range(words.shape[1])]
    found_a, found_b, found_d = [], [], []
    for start in range(0, len(words), BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, len(words))
        distance = np.zeros((stop - start, len(words) - start), dtype=np.uint16)
        for column in columns:
            distance += np.bitwise_count(column[start:stop, None] ^ column[None, start:])
        # keep j > i only: in block coordinates, column c is image start + c
        distance[np.tril_indices(stop - start, 0, distance.shape[1])] = threshold + 1
        rows, cols = np.nonzero(distance <= threshold)
        found_a.append(rows + start)
        found_b.append(cols + start)
        found_d.append(distance[rows, cols])
    if not found_a:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    return (
        np.concatenate(found_a).astype(np.int64),
        np.concatenate(found_b).astype(np.int64),
        np.concatenate(found_d).astype(np.int64),
    )


def exact_pairs(md5s: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``i < j`` of rows with the same md5 (every pair of each group)."""
    groups: dict[str, list[int]] = {}
    for index, md5 in enumerate(md5s):
        groups.setdefault(md5, []).append(index)
    pairs = [pair for members in groups.values() for pair in itertools.combinations(members, 2)]
    array = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return array[:, 0], array[:, 1]


def check_threshold(threshold: int) -> None:
    """BrainFLError unless ``threshold`` is a usable near-duplicate distance (0..MAX_THRESHOLD bits)."""
    if not 0 <= threshold <= MAX_THRESHOLD:
        raise BrainFLError(
            f"near-duplicate threshold {threshold} is not between 0 and {MAX_THRESHOLD} "
            f"(bits of a {HASH_BITS}-bit pHash; default {NEAR_DUPLICATE_THRESHOLD})"
        )


def find_duplicates(table: pd.DataFrame, threshold: int = NEAR_DUPLICATE_THRESHOLD) -> pd.DataFrame:
    """Duplicate pairs of a :func:`hash_images` table.

    Columns ``file_a, file_b, split_a, split_b, label_a, label_b, kind, distance``:
    kind "exact" (same md5) or "near" (different md5, pHash distance <= ``threshold``);
    ``file_a`` comes before ``file_b`` in the table, so across splits it is the
    Training file. Sorted by kind (exact first), distance, then table order.
    """
    check_threshold(threshold)
    exact_a, exact_b = exact_pairs(table["md5"])
    near_a, near_b, near_d = near_pairs(table["phash"], threshold)
    md5 = table["md5"].to_numpy()
    differ = md5[near_a] != md5[near_b]
    near_a, near_b, near_d = near_a[differ], near_b[differ], near_d[differ]
    words = _phash_words(table["phash"])
    exact_d = hamming(words[exact_a], words[exact_b])
    index_a = np.concatenate([exact_a, near_a])
    index_b = np.concatenate([exact_b, near_b])
    pairs = pd.DataFrame(
        {
            "file_a": table["file"].to_numpy()[index_a],
            "file_b": table["file"].to_numpy()[index_b],
            "split_a": table["split"].to_numpy()[index_a],
            "split_b": table["split"].to_numpy()[index_b],
            "label_a": table["label"].to_numpy()[index_a],
            "label_b": table["label"].to_numpy()[index_b],
            "kind": ["exact"] * len(exact_a) + ["near"] * len(near_a),
            "distance": np.concatenate([exact_d, near_d]),
            "_a": index_a,
            "_b": index_b,
        }
    )
    pairs = pairs.sort_values(["kind", "distance", "_a", "_b"], kind="stable")
    return pairs.drop(columns=["_a", "_b"]).reset_index(drop=True)[PAIR_COLUMNS]


def across_splits(pairs: pd.DataFrame) -> pd.Series:
    """Per pair of :func:`find_duplicates`: whether its two files lie in different splits."""
    return pairs["split_a"] != pairs["split_b"]


def copied_test_files(pairs: pd.DataFrame, kind: str | None = None) -> set[str]:
    """Testing files with a copy (of ``kind``, or any) in Training."""
    across = pairs[across_splits(pairs)]
    if kind is not None:
        across = across[across["kind"] == kind]
    copies = set(across.loc[across["split_a"] == TEST_SPLIT, "file_a"])
    return copies | set(across.loc[across["split_b"] == TEST_SPLIT, "file_b"])


def leak_free_files(table: pd.DataFrame, pairs: pd.DataFrame) -> set[str]:
    """Testing files of ``table`` with no exact or near copy in Training per ``pairs``."""
    test_files = set(table.loc[table["split"] == TEST_SPLIT, "file"])
    return test_files - copied_test_files(pairs)


def leak_free_test_files(data_dir: Path, threshold: int = NEAR_DUPLICATE_THRESHOLD) -> set[str]:
    """Relative paths (as in ``ImageSet.files``) of Testing images with no exact or near copy in Training.

    Empty when ``data_dir`` has no Testing folder.
    """
    table = hash_images(Path(data_dir))
    return leak_free_files(table, find_duplicates(table, threshold))


def leak_free_test_mask(data_dir: Path, test_files: Iterable[str]) -> np.ndarray:
    """For each Testing image (relative path, as in ``ImageSet.files``): whether it is leak-free."""
    clean = leak_free_test_files(data_dir)
    return np.array([name in clean for name in test_files], dtype=bool)
