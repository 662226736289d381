"""``brainfl predict``: classify MRI scans with a saved brainfl model.

The model file carries its class names and its input preprocessing (image
size and channels, see :mod:`brainfl.model.files`). Each image,
of any size, grayscale or RGB, is decoded exactly as in training with
:func:`brainfl.data.loading.decode_image`. Predictions are named by class;
``--gradcam`` also writes a Grad-CAM overlay of the predicted class per image.
The probabilities are scaled by the temperature the model file records
(:meth:`brainfl.model.files.LoadedModel.probabilities`; 1 without one), which
changes confidence, never the class.
Classes are read from the probabilities by :func:`brainfl.model.outputs.predicted_classes`
under the model's ``notumor`` threshold (:meth:`brainfl.model.files.LoadedModel.predicted`;
``notumor`` only when it is the most probable class and reaches the threshold the file records),
so an image whose model outputs are not finite (a broken model) is predicted
as ``invalid``, never as a class, and gets no overlay.
A scan whose predicted class has a probability below ``--uncertain-below``
(default :data:`UNCERTAIN_BELOW`) is marked ``uncertain`` (the column
:data:`UNCERTAIN_COLUMN`; an ``invalid`` scan is uncertain too): a scan to be read by a person
first.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from brainfl.core.arguments import add_model
from brainfl.core.errors import BrainFLError
from brainfl.core.files import check_can_create, write_atomically
from brainfl.data.decoding import SCAN_SUFFIXES, is_scan_file
from brainfl.data.layouts import looks_like_scan, refuse_unsupported
from brainfl.inference.gradcam import gradcam_names, write_gradcams
from brainfl.model.files import LoadedModel, load_model
from brainfl.model.outputs import NOTUMOR

FILE_COLUMN = "file"
PREDICTED_COLUMN = "predicted_class"
GRADCAM_COLUMN = "gradcam"
UNCERTAIN_COLUMN = "uncertain"
UNCERTAIN_BELOW = 0.6  # a predicted class less probable than this marks the scan uncertain
# predicted_class of an image whose model outputs are not finite (NaN or inf): no class
INVALID = "invalid"
BATCH_SIZE = 32
DECODE_CHUNK = 256  # scans decoded at a time (bounded memory for large folders)


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_images(paths: Iterable[Path | str], skip_unreadable: bool = False) -> list[Path]:
    """The files named, and the image files under the folders named (recursively, hidden skipped); a
    scan-like file the decoder does not read (``.gif``, ``.nii.gz``) is refused as ``brainfl prepare``
    refuses it, or skipped with a warning with ``skip_unreadable``."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not _is_hidden(p, path))
            images = [p for p in files if is_scan_file(p)]
            refuse_unsupported([p for p in files if looks_like_scan(p) and p not in images], skip_unreadable)
            if not images:
                suffixes = ", ".join(sorted(SCAN_SUFFIXES))
                raise BrainFLError(f"no image files ({suffixes}, or DICOM) in folder {path}")
            found.extend(images)
        elif path.is_file():
            found.append(path)
        else:
            raise BrainFLError(f"image file or folder not found: {path}")
    if not found:
        raise BrainFLError("no images given")
    return found


def decode_scans(
    loaded: LoadedModel, files: Sequence[Path], indices: Iterable[int], skip_unreadable: bool
) -> tuple[list[np.ndarray], list[int]]:
    """The scans ``files[i]`` for ``i`` in ``indices``, decoded as the model was trained; the indices of
    the unreadable ones (an error naming the file unless ``skip_unreadable``)."""
    inputs, skipped = [], []
    for index in indices:
        try:
            inputs.append(loaded.preprocess(files[index]))
        except BrainFLError as error:
            if not skip_unreadable:
                raise BrainFLError(f"{error} (use --skip-unreadable to leave such files out)") from None
            skipped.append(index)
    return inputs, skipped


def predict_scans(loaded: LoadedModel, files: Sequence[Path], skip_unreadable: bool) -> tuple[Any, list[int]]:
    """Probabilities (N x classes, scaled by the model's temperature) of the readable scans; indices of
    the unreadable ones (if skipped)."""

    parts, skipped = [], []
    for start in tqdm(range(0, len(files), DECODE_CHUNK), desc="predicting", disable=None, leave=False):
        inputs, unreadable = decode_scans(
            loaded, files, range(start, min(start + DECODE_CHUNK, len(files))), skip_unreadable
        )
        skipped.extend(unreadable)
        if inputs:
            parts.append(loaded.probabilities(np.stack(inputs), batch_size=BATCH_SIZE))
    empty = np.empty((0, len(loaded.class_names)), dtype=np.float32)
    return np.concatenate(parts) if parts else empty, skipped


def predict_files(
    model_path: Path | str,
    paths: Iterable[Path | str],
    gradcam_dir: Path | str | None = None,
    skip_unreadable: bool = False,
    uncertain_below: float = UNCERTAIN_BELOW,
):
    """Predict every image of ``paths`` (files or folders) with the model at ``model_path``.

    Returns a pandas DataFrame: ``file``, ``predicted_class``, one
    probability column per class name (rows sum to 1; scaled by the model's temperature,
    ``table.attrs["temperature"]``, which never changes the predicted class; the class follows the
    model's ``notumor`` threshold, ``table.attrs["notumor_threshold"]``) and ``uncertain`` (the
    predicted class's probability below ``uncertain_below``); with ``gradcam_dir``,
    also ``gradcam``, the overlay written for the predicted class. An image
    whose outputs are not finite has ``predicted_class`` ``invalid`` (:data:`INVALID`),
    its probabilities as the model gave them (NaN) and no overlay (``gradcam`` empty).
    An unreadable file fails the call unless ``skip_unreadable``, which leaves it out;
    ``table.attrs["skipped"]`` lists those.
    """

    loaded = load_model(model_path)
    found = find_images(paths, skip_unreadable)
    probabilities, unreadable = predict_scans(loaded, found, skip_unreadable)
    files = [path for index, path in enumerate(found) if index not in set(unreadable)]
    predicted = loaded.predicted(probabilities)
    chosen = np.take_along_axis(probabilities, np.maximum(predicted, 0)[:, None], axis=1)[:, 0]
    table = pd.DataFrame(
        {
            FILE_COLUMN: [str(path) for path in files],
            PREDICTED_COLUMN: [loaded.class_names[i] if i >= 0 else INVALID for i in predicted],
            **{name: probabilities[:, i].astype(float) for i, name in enumerate(loaded.class_names)},
            UNCERTAIN_COLUMN: (predicted < 0) | ~(chosen >= uncertain_below),
        }
    )
    table.attrs["class_names"] = list(loaded.class_names)
    table.attrs["temperature"] = loaded.temperature
    table.attrs["notumor_threshold"] = loaded.notumor_threshold
    table.attrs["skipped"] = [str(found[index]) for index in unreadable]
    if gradcam_dir is not None:
        valid = np.flatnonzero(predicted >= 0)
        names = gradcam_names(files)  # numbered over all files, whichever get an overlay
        written = write_gradcams(
            loaded,
            [files[i] for i in valid],
            np.stack([loaded.preprocess(files[i]) for i in valid]) if len(valid) else np.empty((0,)),
            predicted[valid],
            Path(gradcam_dir),
            [names[i] for i in valid],
        )
        cams = [""] * len(files)
        for i, path in zip(valid, written, strict=True):
            cams[i] = str(path)
        table[GRADCAM_COLUMN] = cams
    return table


def print_table(table, class_names: Sequence[str]) -> None:
    """The predictions as a table on the terminal."""

    view = Table(show_lines=False)
    view.add_column(FILE_COLUMN, overflow="fold")
    view.add_column("class")
    view.add_column(UNCERTAIN_COLUMN)
    for name in class_names:
        view.add_column(name, justify="right")
    for row in table.to_dict("records"):
        view.add_row(
            str(row[FILE_COLUMN]),
            str(row[PREDICTED_COLUMN]),
            "uncertain" if row[UNCERTAIN_COLUMN] else "",
            *(f"{row[name]:.3f}" for name in class_names),
        )
    console = Console()
    if not console.is_terminal:  # piped or captured: no terminal width to fit, keep rows whole
        console = Console(width=10_000)
    console.print(view)


def temperature_note(temperature: float) -> str:
    """The line saying which temperature scaled the probabilities (``predict`` and ``evaluate``)."""
    if temperature == 1.0:
        return "probabilities as the model computes them (temperature 1: the model file records no other)"
    return (
        f"probabilities scaled by the model's calibrated temperature T={temperature:.3f}: softmax(log p / T)"
    )


def threshold_note(threshold: float) -> str:
    """The line saying how ``notumor`` is called (``predict`` and ``evaluate``)."""
    if threshold == 0.0:
        return "classes by highest probability (the model file records no notumor threshold)"
    return (
        f"{NOTUMOR} only when it is the most probable class with probability >= {threshold:.3f} "
        "(the model's notumor threshold); otherwise the most probable tumor class"
    )


def run(args: argparse.Namespace) -> None:
    """Handler of ``brainfl predict``."""
    if args.csv is not None:  # checked before any scan is scored
        check_can_create(Path(args.csv).expanduser(), "--csv")
    if args.gradcam is not None:
        check_can_create(Path(args.gradcam).expanduser(), "--gradcam", folder=True)
    table = predict_files(args.model, args.paths, args.gradcam, args.skip_unreadable, args.uncertain_below)
    for skipped in table.attrs["skipped"]:
        print(f"skipped unreadable file: {skipped}")
    print_table(table, table.attrs["class_names"])
    print(temperature_note(table.attrs["temperature"]))
    print(threshold_note(table.attrs["notumor_threshold"]))
    uncertain = int(table[UNCERTAIN_COLUMN].sum())
    print(
        f"{uncertain} of {len(table)} scans uncertain (probability of the predicted class below "
        f"{args.uncertain_below:g}): have them read first"
    )
    invalid = int((table[PREDICTED_COLUMN] == INVALID).sum())
    if invalid:
        print(
            f"{invalid} of {len(table)} images: the model's outputs are not finite (NaN or inf), "
            f"no class is predicted ('{INVALID}'): the model is broken"
        )
    if args.csv is not None:
        csv_path = Path(args.csv).expanduser()
        try:
            write_atomically(csv_path, lambda handle: table.to_csv(handle, index=False))
        except OSError as error:
            raise BrainFLError(f"--csv: cannot write {csv_path}: {error.strerror}") from None
        print(f"predictions written to {csv_path}")
    if args.gradcam is not None:
        print(f"Grad-CAM overlays written to {Path(args.gradcam).expanduser()}")


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``predict`` sub-command's description, options and handler."""
    parser.description = "Print the class and the probability of each class for every image."
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders (searched recursively)")
    add_model(parser)
    parser.add_argument("--csv", type=Path, default=None, help="also save the predictions to this CSV file")
    parser.add_argument(
        "--gradcam", type=Path, default=None, metavar="DIR", help="write Grad-CAM overlays (PNG) to DIR"
    )
    parser.add_argument(
        "--skip-unreadable", action="store_true", help="leave out files that cannot be decoded; list them"
    )
    parser.add_argument(
        "--uncertain-below",
        type=_probability,
        default=UNCERTAIN_BELOW,
        metavar="P",
        help=f"mark a scan uncertain when its predicted class's probability is below P "
        f"(default {UNCERTAIN_BELOW})",
    )
    parser.set_defaults(handler=run)
