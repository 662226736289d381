"""Decode time per image for JPEG, 16-bit PNG and DICOM, made from the same real scans.

Takes ``--n`` real scans (seeded, spread over the classes) of ``<data-dir>/Training``,
writes each as a 16-bit PNG (values x 257) and as a 12-bit DICOM (Rescale
Slope/Intercept, Window Center/Width; ``benchmarks/scan_files.py``) in a temporary
folder, then times :func:`brainfl.data.loading.decode_image` (the app's one
decoder) over each format, best of ``--repeats`` passes, and prints a table
of milliseconds per image and images per second. ``--keep NAME`` writes it to
``benchmarks/results/NAME/decode_speed.csv`` with ``command.txt`` and ``machine.txt``::

    python3 benchmarks/decode_speed.py --data-dir ../shared/data/brain-tumor-mri --n 200 --keep decode-speed
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from brainfl.data.loading import TRAIN_SPLIT, decode_image, find_classes, list_images  # noqa: E402
from harness import RESULTS, add_keep, keep_timing_table  # noqa: E402
from scan_files import scan_to_dicom, scan_to_png16  # noqa: E402

RESULT_NAME = "decode-speed"  # what the committed tables read; a bare --keep keeps there
RESULT_DIR = RESULTS / RESULT_NAME
RESULT_CSV = "decode_speed.csv"
COLUMNS = ("format", "images", "image_size", "channels", "mean_file_kib", "ms_per_image", "images_per_s")


def pick_scans(data_dir: Path, n: int, seed: int) -> list[Path]:
    """``n`` seeded JPEG scans of ``data_dir/Training``, as even over the classes as they allow."""
    split = data_dir / TRAIN_SPLIT
    items = [path for path, _ in list_images(split, find_classes(split)) if path.suffix.lower() == ".jpg"]
    if len(items) < n:
        raise SystemExit(f"decode_speed: only {len(items)} JPEG scans in {split}, asked for {n}")
    chosen = np.random.default_rng(seed).choice(len(items), size=n, replace=False)
    return [items[i] for i in sorted(chosen)]


def make_formats(scans: list[Path], folder: Path) -> dict[str, list[Path]]:
    """The scans as they are (JPEG), as 16-bit PNGs and as DICOM files under ``folder``."""
    png = [scan_to_png16(path, folder / "png16" / f"{i:05d}.png") for i, path in enumerate(scans)]
    dicom = [scan_to_dicom(path, folder / "dicom" / f"{i:05d}.dcm") for i, path in enumerate(scans)]
    return {"jpeg": list(scans), "png16": png, "dicom": dicom}


def best_seconds(work: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``work`` (least disturbed by other jobs)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(files: dict[str, list[Path]], image_size: int, channels: int, repeats: int) -> list[dict]:
    """One row per format: mean file size, milliseconds per image, images per second."""
    rows = []
    for name, paths in files.items():
        decode_image(paths[0], image_size, channels)  # imports and first-call costs out of the timing
        seconds = best_seconds(lambda p=paths: [decode_image(f, image_size, channels) for f in p], repeats)
        per_image = seconds / len(paths)
        rows.append(
            {
                "format": name,
                "images": len(paths),
                "image_size": image_size,
                "channels": channels,
                "mean_file_kib": round(float(np.mean([p.stat().st_size for p in paths])) / 1024, 1),
                "ms_per_image": round(per_image * 1000, 3),
                "images_per_s": round(1 / per_image, 1),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table."""
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.rjust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(str(r[c]).rjust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines)


def keep(rows: list[dict], folder: Path = RESULT_DIR) -> Path:
    """Write the rows, the command and the machine to ``folder``."""
    return keep_timing_table(rows, COLUMNS, folder, RESULT_CSV)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "brain-tumor-mri")
    parser.add_argument("--n", type=int, default=200, help="scans per format (default 200)")
    parser.add_argument("--image-size", type=int, default=64, help="decoded size (default 64)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per format, best kept")
    parser.add_argument("--seed", type=int, default=0)
    add_keep(parser, bare=RESULT_NAME)
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1:
        parser.error("--n and --repeats must be at least 1")
    folder = Path(tempfile.mkdtemp(prefix="decode-speed-"))
    try:
        files = make_formats(pick_scans(args.data_dir, args.n, args.seed), folder)
        rows = measure(files, args.image_size, args.channels, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(table(rows))
    if args.keep:
        print(f"kept: {keep(rows, RESULTS / args.keep)}")


if __name__ == "__main__":
    main()
