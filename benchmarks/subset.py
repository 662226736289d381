"""A small copy of a dataset for quick runs: a folder of symlinks, N images per class and split.

:func:`make_subset` picks, with a seed, ``per_class`` images of each class
of ``Training`` and of ``Testing`` (where the source has one) and links them
under ``destination`` in the same Kaggle layout, so any command that takes a
``data-dir`` runs on it as on the full dataset; nothing is copied and the
source is only read. The images are listed the app's way
(:func:`brainfl.data.loading.list_images`), so the subset holds only files the
app would load::

    python3 benchmarks/subset.py ../shared/data/brain-tumor-mri /tmp/brain-12 --per-class 12
    ./run.sh --simulation --data-dir /tmp/brain-12 --run-config "image-size=32"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from brainfl.data.loading import TEST_SPLIT, TRAIN_SPLIT, find_classes, list_images


def make_subset(source: Path | str, destination: Path | str, per_class: int, seed: int = 0) -> Path:
    """Link ``per_class`` seeded images of each class and split of ``source`` under ``destination``.

    A class with fewer images is linked whole. Links already there are kept,
    so a second call with the same arguments changes nothing. Returns
    ``destination``.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    source, destination = Path(source).resolve(), Path(destination)
    rng = np.random.default_rng(seed)
    for split in (TRAIN_SPLIT, TEST_SPLIT):
        split_dir = source / split
        if split == TEST_SPLIT and not split_dir.is_dir():
            continue  # the app then holds out part of Training as its test set
        class_names = find_classes(split_dir)
        items = list_images(split_dir, class_names)
        for label, name in enumerate(class_names):
            files = [path for path, item_label in items if item_label == label]
            chosen = np.sort(rng.choice(len(files), size=min(per_class, len(files)), replace=False))
            target = destination / split / name
            target.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                link = target / files[index].name
                if not link.is_symlink():
                    link.symlink_to(files[index])
    return destination


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a dataset folder (Training/<class>/..., Testing/...)")
    parser.add_argument("destination", type=Path, help="where the links go (created)")
    parser.add_argument("--per-class", type=int, required=True, help="images per class and split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_subset(args.source, args.destination, args.per_class, args.seed))


if __name__ == "__main__":
    main()
