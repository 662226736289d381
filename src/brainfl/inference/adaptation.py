"""``brainfl adapt --model MODEL DATA``: re-estimate a saved model's BatchNorm statistics on new scans.

A model trained by the federation scores lower at a hospital whose scans are
prepared differently (another scanner, another export): the channel statistics
its BatchNorm layers normalize by no longer describe the images. Re-estimating
them on that hospital's own scans, with no labels (AdaBN, Li et al. 2016),
recovers much of the loss. This command reads every scan under DATA, in any
layout ``brainfl predict`` reads (class folders, a ``Training``/``Testing``
split, a ``labels.csv`` folder or a flat folder of images: labels, where there
are any, are not read), decodes a seeded random sample of at most
:data:`ADAPT_SCANS` of them with the model's own preprocessing, and sets each
BatchNorm layer's moving mean and variance from them
(:func:`brainfl.model.batch_norm.recalibrate_batchnorm`). Nothing else
changes: every other weight stays bit-identical. With ``--entropy-epochs N``
the BatchNorm layers' scale and offset are then trained for N passes over the
same sample to make the model's predictions on them confident (TENT, Wang et
al. 2021: :func:`brainfl.model.batch_norm.minimize_entropy`), still without
labels, and the statistics re-estimated once more; every other weight still
stays bit-identical.

The adapted model is written as ``DIR/adapted_model.keras``, a brainfl model
file like its source (class names, preprocessing, temperature and ``notumor``
threshold carried over, not refitted) whose metadata adds ``adapted``: the
DATA folder's name (never the scans' paths), the scans found and used, the
date, and the source model's file name, SHA-256 and round. A model with no
BatchNorm layer (``vgg16``, ``norm=group``), a file that is not a brainfl
model and a folder with no scans are refused with one line.
``brainfl evaluate --adapt`` adapts the same way on the scans it scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainfl.core.arguments import add_model, add_output_dir
from brainfl.core.errors import BrainFLError
from brainfl.inference.predict import decode_scans, find_images
from brainfl.model.files import LoadedModel, load_model, save_model

ADAPTED_MODEL = "adapted_model.keras"
ADAPT_SCANS = 1024  # channel statistics need few scans; the pass costs a forward pass over them
BATCH_SIZE = 32
SEED = 0


@dataclasses.dataclass(frozen=True)
class Adaptation:
    """What a model was adapted on, as its file's ``adapted`` metadata records it."""

    folder: str  # the data folder's name, not its path
    scans_found: int
    scans_used: int
    batchnorm_layers: int
    date: str
    source_model: dict[str, Any]
    entropy_epochs: int = 0  # TENT's passes over the sample after the statistics (0: statistics only)
    mean_entropy: list[float] = dataclasses.field(default_factory=list)  # per TENT pass, in nats

    def metadata(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def now() -> str:
    """The date and time an adaptation is recorded with: UTC, to the second, ISO 8601."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decode_sample(
    loaded: LoadedModel, files: Sequence[Path], skip_unreadable: bool, limit: int = ADAPT_SCANS
) -> np.ndarray:
    """A seeded random sample of at most ``limit`` of ``files``, decoded as the model was trained;
    an unreadable scan is an error naming it, or left out with ``skip_unreadable``."""
    order = np.random.default_rng(SEED).permutation(len(files))[:limit]
    inputs, _ = decode_scans(loaded, files, sorted(order), skip_unreadable)
    if not inputs:
        raise BrainFLError("no readable scans to adapt on")
    return np.stack(inputs)


def adapt_loaded(
    loaded: LoadedModel,
    files: Sequence[Path],
    folder: Path,
    skip_unreadable: bool = False,
    entropy_epochs: int = 0,
) -> Adaptation:
    """Re-estimate ``loaded.model``'s BatchNorm statistics on ``files`` (in place), then, with
    ``entropy_epochs``, train its BatchNorm scales and offsets by entropy minimization; what was done."""
    from brainfl.model.batch_norm import batchnorm_layers, minimize_entropy, recalibrate_batchnorm

    if not batchnorm_layers(loaded.model):
        raise BrainFLError(
            f"model {loaded.path} ({loaded.model_name}) has no BatchNorm layers to adapt "
            "(adapting needs model=cnn or rescnn with norm=batch)"
        )
    if not files:
        raise BrainFLError(f"no scans in {folder} to adapt on")
    inputs = decode_sample(loaded, files, skip_unreadable)
    layers = recalibrate_batchnorm(loaded.model, inputs, BATCH_SIZE, max_images=len(inputs), seed=SEED)
    entropy = minimize_entropy(loaded.model, inputs, entropy_epochs, BATCH_SIZE, seed=SEED)
    source = {
        "file": loaded.path.name,
        "sha256": file_sha256(loaded.path),
        "model": loaded.model_name,
        "round": loaded.metadata.get("round"),
    }
    return Adaptation(
        folder=Path(folder).expanduser().resolve().name,
        scans_found=len(files),
        scans_used=len(inputs),
        batchnorm_layers=layers,
        date=now(),
        source_model=source,
        entropy_epochs=entropy_epochs,
        mean_entropy=[round(value, 6) for value in entropy],
    )


def save_adapted(loaded: LoadedModel, adaptation: Adaptation, path: Path) -> Path:
    """Write the adapted model as a brainfl model file: the source's metadata plus ``adapted``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(loaded.model, path, {**loaded.metadata, "adapted": adaptation.metadata()})
    except OSError as error:
        raise BrainFLError(f"--output-dir: cannot write {path}: {error.strerror or error}") from None
    return path


def adapt_model(
    model_path: Path | str,
    data_dir: Path | str,
    output_dir: Path | str,
    skip_unreadable: bool = False,
    entropy_epochs: int = 0,
) -> tuple[Path, Adaptation]:
    """Adapt the model at ``model_path`` on the scans under ``data_dir``; write it into ``output_dir``."""
    loaded = load_model(model_path)
    data = Path(data_dir).expanduser()
    if not data.is_dir():
        raise BrainFLError(f"data folder not found: {data}")
    files = find_images([data], skip_unreadable)
    adaptation = adapt_loaded(loaded, files, data, skip_unreadable, entropy_epochs)
    return save_adapted(loaded, adaptation, Path(output_dir).expanduser() / ADAPTED_MODEL), adaptation


def default_output(model: Path | str, data: Path | str) -> Path:
    """``./adapted-<model file stem>-<data folder name>``."""
    return Path(f"adapted-{Path(model).stem}-{Path(data).expanduser().resolve().name}")


def run(args: argparse.Namespace) -> None:
    """Handler of ``brainfl adapt``."""
    output_dir = args.output_dir or default_output(args.model, args.data)
    path, adaptation = adapt_model(
        args.model, args.data, output_dir, args.skip_unreadable, args.entropy_epochs
    )
    print(
        f"{adaptation.batchnorm_layers} BatchNorm layers of {args.model} re-estimated on "
        f"{adaptation.scans_used} of the {adaptation.scans_found} scans of {adaptation.folder} "
        "(labels not used); every other weight unchanged"
    )
    if adaptation.entropy_epochs:
        entropy = " -> ".join(f"{value:.3f}" for value in adaptation.mean_entropy)
        print(
            f"their scales and offsets trained for {adaptation.entropy_epochs} entropy-minimization "
            f"passes (mean prediction entropy per pass, nats: {entropy})"
        )
    print(f"adapted model written to {path}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``adapt`` sub-command's description, options and handler."""
    parser.description = (
        "AdaBN: set the BatchNorm moving statistics of a saved model from the scans under "
        "DATA (any layout; labels are not used), optionally TENT's entropy minimization of their "
        "scales and offsets, and write the adapted model file."
    )
    add_model(parser)
    parser.add_argument("data", type=Path, help="a folder of scans (class folders, a split, or flat)")
    add_output_dir(parser, "where to write adapted_model.keras (default: ./adapted-MODEL-DATA)")
    parser.add_argument(
        "--skip-unreadable", action="store_true", help="leave out files that cannot be decoded"
    )
    add_entropy_epochs(parser)
    parser.set_defaults(handler=run)


def _epochs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_entropy_epochs(parser: argparse.ArgumentParser) -> None:
    """``--entropy-epochs N``, shared by ``adapt`` and ``evaluate --adapt``."""
    parser.add_argument(
        "--entropy-epochs",
        type=_epochs,
        default=0,
        help="after the statistics, train BatchNorm's scales and offsets for N passes to make the "
        "predictions on the scans confident (TENT; labels not used; default 0: statistics only)",
    )
