"""``brainfl predict``: classify MRI scans with a saved brainfl model.

The model file carries its class names and its input preprocessing (image
size and channels, stored as ``brainfl.json`` by ``save_model_atomically``;
for an older file without it, the ``run_config.json`` beside it). Each image,
of any size, grayscale or RGB, is decoded exactly as in training with
:func:`brainfl.data_loader.decode_image`. Predictions are named by class;
``--gradcam`` also writes a Grad-CAM overlay of the predicted class per image.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from brainfl.errors import BrainFLError

FILE_COLUMN = "file"
PREDICTED_COLUMN = "predicted_class"
GRADCAM_COLUMN = "gradcam"
BATCH_SIZE = 32


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A saved model with what it needs to be used: class names and input preprocessing."""

    path: Path
    model: Any  # keras.Model (keras is imported lazily to keep the CLI quick)
    model_name: str
    class_names: tuple[str, ...]
    image_size: int
    channels: int

    def preprocess(self, path: Path | str):
        """One image file as the model's training input (uint8, S x S x C)."""
        from brainfl.data_loader import decode_image

        return decode_image(path, self.image_size, self.channels)


def _metadata_beside(path: Path) -> dict[str, Any] | None:
    """Metadata from the ``run_config.json`` next to a model file, if there is one."""
    from brainfl.config import settings_from_config
    from brainfl.results import RUN_CONFIG

    config_path = path.parent / RUN_CONFIG
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        raise BrainFLError(f"cannot read {config_path} (expected the run's settings as JSON)") from None
    if not isinstance(config, dict) or "class-names" not in config:
        raise BrainFLError(f"{config_path} has no 'class-names': cannot name the classes of {path}")
    settings = settings_from_config(config)
    return {
        "model": settings.model,
        "class_names": config["class-names"],
        "image_size": settings.image_size,
        "channels": settings.channels,
    }


def read_metadata(path: Path) -> dict[str, Any]:
    """The model's brainfl metadata (stored in the file, or the run config beside it), checked."""
    from brainfl.results import MODEL_METADATA, read_model_metadata

    try:
        metadata = read_model_metadata(path)
    except zipfile.BadZipFile:
        raise BrainFLError(f"model {path} is not a Keras .keras file") from None
    except KeyError:
        metadata = _metadata_beside(path)
        if metadata is None:
            raise BrainFLError(
                f"model {path} carries no brainfl metadata ({MODEL_METADATA}) and has no run_config.json "
                "beside it: save models with brainfl (results.save_model_atomically)"
            ) from None
    except (OSError, ValueError) as error:
        raise BrainFLError(f"cannot read brainfl metadata of model {path}: {error}") from None
    names = metadata.get("class_names")
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) for n in names)
        or not isinstance(metadata.get("image_size"), int)
        or metadata.get("channels") not in (1, 3)
    ):
        raise BrainFLError(
            f"model {path}: brainfl metadata needs class_names (list of names), image_size and channels "
            f"(1 or 3), got {metadata}"
        )
    return metadata


def load_model(model_path: Path | str) -> LoadedModel:
    """Load a brainfl ``.keras`` model and check it against its metadata."""
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise BrainFLError(f"model file not found: {path}")
    metadata = read_metadata(path)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import brainfl.models  # noqa: F401  (registers the custom layers the file refers to)

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # keras raises many types for unreadable or foreign files
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise BrainFLError(
            f"cannot load model {path}: {error.__class__.__name__} {message}".strip()
        ) from None
    loaded = LoadedModel(
        path,
        model,
        str(metadata.get("model", model.name)),
        tuple(metadata["class_names"]),
        int(metadata["image_size"]),
        int(metadata["channels"]),
    )
    expected = (loaded.image_size, loaded.image_size, loaded.channels)
    actual = tuple(model.input_shape[1:])
    if actual != expected:
        raise BrainFLError(
            f"model {path}: its input shape {actual} disagrees with its metadata "
            f"(image_size={loaded.image_size}, channels={loaded.channels})"
        )
    if model.output_shape[-1] != len(loaded.class_names):
        raise BrainFLError(
            f"model {path}: it has {model.output_shape[-1]} outputs but its metadata names "
            f"{len(loaded.class_names)} classes ({', '.join(loaded.class_names)})"
        )
    return loaded


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_images(paths: Iterable[Path | str]) -> list[Path]:
    """The files named, and the image files under the folders named (recursively, hidden skipped)."""
    from brainfl.data_loader import IMAGE_SUFFIXES

    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            images = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not _is_hidden(p, path)
            )
            if not images:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                raise BrainFLError(f"no image files ({suffixes}) in folder {path}")
            found.extend(images)
        elif path.is_file():
            found.append(path)
        else:
            raise BrainFLError(f"image file or folder not found: {path}")
    if not found:
        raise BrainFLError("no images given")
    return found


def _gradcam_names(files: Sequence[Path]) -> list[str]:
    """``<stem>_gradcam.png`` per file, numbered where two files share a stem."""
    names: list[str] = []
    used: set[str] = set()
    for path in files:
        name, n = f"{path.stem}_gradcam.png", 1
        while name in used:
            n += 1
            name = f"{path.stem}_{n}_gradcam.png"
        used.add(name)
        names.append(name)
    return names


def predict_files(model_path: Path | str, paths: Iterable[Path | str], gradcam_dir: Path | str | None = None):
    """Predict every image of ``paths`` (files or folders) with the model at ``model_path``.

    Returns a pandas DataFrame: ``file``, ``predicted_class`` and one
    probability column per class name (rows sum to 1); with ``gradcam_dir``,
    also ``gradcam``, the overlay written for the predicted class.
    """
    import numpy as np
    import pandas as pd

    from brainfl.training import predict_proba

    loaded = load_model(model_path)
    files = find_images(paths)
    inputs = np.stack([loaded.preprocess(path) for path in files])
    probabilities = predict_proba(loaded.model, inputs, batch_size=BATCH_SIZE)
    predicted = probabilities.argmax(axis=1)
    table = pd.DataFrame(
        {
            FILE_COLUMN: [str(path) for path in files],
            PREDICTED_COLUMN: [loaded.class_names[i] for i in predicted],
            **{name: probabilities[:, i].astype(float) for i, name in enumerate(loaded.class_names)},
        }
    )
    table.attrs["class_names"] = list(loaded.class_names)
    if gradcam_dir is not None:
        table[GRADCAM_COLUMN] = [
            str(p) for p in write_gradcams(loaded, files, inputs, predicted, Path(gradcam_dir))
        ]
    return table


def write_gradcams(
    loaded: LoadedModel,
    files: Sequence[Path],
    inputs,
    class_indices,
    out_dir: Path,
    names: Sequence[str] | None = None,
) -> list[Path]:
    """Grad-CAM overlays of ``files`` (model ``inputs``) for ``class_indices``, as PNGs in ``out_dir``.

    ``names`` are the PNG file names (default ``<stem>_gradcam.png``).
    """
    from brainfl.gradcam import gradcam_heatmaps, open_original, overlay

    out_dir = Path(out_dir).expanduser()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BrainFLError(f"--gradcam: cannot create folder {out_dir}: {error.strerror}") from None
    written: list[Path] = []
    names = list(names) if names is not None else _gradcam_names(files)
    for start in range(0, len(files), BATCH_SIZE):
        end = start + BATCH_SIZE
        heatmaps = gradcam_heatmaps(loaded.model, inputs[start:end], class_indices[start:end])
        for path, name, heatmap in zip(files[start:end], names[start:end], heatmaps, strict=True):
            target = out_dir / name
            overlay(open_original(path), heatmap).save(target, format="PNG")
            written.append(target)
    return written


def print_table(table, class_names: Sequence[str]) -> None:
    """The predictions as a table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    view = Table(show_lines=False)
    view.add_column(FILE_COLUMN, overflow="fold")
    view.add_column("class")
    for name in class_names:
        view.add_column(name, justify="right")
    for row in table.to_dict("records"):
        view.add_row(
            str(row[FILE_COLUMN]),
            str(row[PREDICTED_COLUMN]),
            *(f"{row[name]:.3f}" for name in class_names),
        )
    console = Console()
    if not console.is_terminal:  # piped or captured: no terminal width to fit, keep rows whole
        console = Console(width=10_000)
    console.print(view)


def run(args: argparse.Namespace) -> None:
    """Handler of ``brainfl predict``."""
    table = predict_files(args.model, args.paths, args.gradcam)
    print_table(table, table.attrs["class_names"])
    if args.csv is not None:
        csv_path = Path(args.csv).expanduser()
        try:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(csv_path, index=False)
        except OSError as error:
            raise BrainFLError(f"--csv: cannot write {csv_path}: {error.strerror}") from None
        print(f"predictions written to {csv_path}")
    if args.gradcam is not None:
        print(f"Grad-CAM overlays written to {Path(args.gradcam).expanduser()}")


def add_parser(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``predict`` sub-command to the ``brainfl`` parser."""
    parser = subcommands.add_parser(
        "predict",
        help="classify MRI images with a saved model",
        description="Print the class and the probability of each class for every image.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders (searched recursively)")
    parser.add_argument("--model", required=True, type=Path, help="a brainfl model, e.g. final_model.keras")
    parser.add_argument("--csv", type=Path, default=None, help="also save the predictions to this CSV file")
    parser.add_argument(
        "--gradcam", type=Path, default=None, metavar="DIR", help="write Grad-CAM overlays (PNG) to DIR"
    )
    parser.set_defaults(handler=run)
    return parser
