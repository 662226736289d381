"""``brainfl evaluate --model MODEL DATA``: external validation of a saved model on labelled scans.

DATA holds one folder of scans per class (``DATA/<class>/*.jpg``), or a
``DATA/Testing/<class>/`` split, which is then used; the folders must be among
the model's classes (a class the model does not know is an error naming its
folder; a model class without a folder is reported and scored as absent).
Every scan is decoded by the model's own preprocessing
(:meth:`brainfl.model.files.LoadedModel.preprocess`, as in training) and
scored by :mod:`brainfl.evaluation.intervals`: each metric with its bootstrap 95%
interval. The probabilities are scaled by the model's calibrated temperature
(:meth:`~brainfl.model.files.LoadedModel.probabilities`, as ``brainfl predict``),
and the classes follow the model's ``notumor`` threshold (as ``brainfl predict`` calls them); the
output names both. With ``--adapt`` the model is first adapted to DATA: its BatchNorm statistics
are re-estimated on the scans it is scored on, labels not used
(:mod:`brainfl.inference.adaptation`), and the output says so.
The command prints them and writes into ``--output-dir``:

- ``evaluation.csv``: ``metric, class, value, low, high, adapted`` (``class`` empty when overall;
  ``adapted`` true on every row when the scores are of the adapted model);
- ``evaluation.json``: the same, with the confusion matrix, the reliability
  table, the images per class, skipped files, the temperature, the ``notumor`` threshold,
  what the model was adapted on (``adapted``, null without ``--adapt``) and the bootstrap settings;
- ``confusion_matrix.png`` and ``reliability.png``.

An unreadable scan stops the command, naming the file, unless
``--skip-unreadable``, which leaves it out and lists it. ``--leak-free-only``
keeps the ``DATA/Testing`` scans with no exact or near copy in ``DATA/Training``
(:mod:`brainfl.data.duplicates`), for a model trained on that Training split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from brainfl.core.arguments import add_model, add_output_dir
from brainfl.core.errors import BrainFLError
from brainfl.core.files import write_atomically
from brainfl.data import layouts
from brainfl.data.duplicates import leak_free_test_mask
from brainfl.data.loading import TEST_SPLIT, TRAIN_SPLIT
from brainfl.evaluation import intervals as uncertainty
from brainfl.evaluation.figures import plot_confusion_counts, plot_reliability
from brainfl.inference.adaptation import adapt_loaded, add_entropy_epochs
from brainfl.inference.predict import predict_scans, temperature_note, threshold_note
from brainfl.model.files import load_model

if TYPE_CHECKING:
    import numpy as np

    from brainfl.evaluation.intervals import Scores

CSV_NAME = "evaluation.csv"
JSON_NAME = "evaluation.json"
FIGURE_CONFUSION = "confusion_matrix.png"
FIGURE_RELIABILITY = "reliability.png"


@dataclasses.dataclass(frozen=True)
class FolderEvaluation:
    """A model scored on a labelled folder: what was scored, the probabilities and the scores."""

    model: Path
    model_name: str
    data: Path
    files: list[Path]
    labels: np.ndarray
    probabilities: np.ndarray
    skipped: list[Path]
    leak_free_only: bool
    scores: Scores
    temperature: float = 1.0  # the model's, applied to its probabilities (1: not calibrated)
    notumor_threshold: float = 0.0  # the model's, applied to its predictions (0: argmax)
    adapted: dict[str, Any] | None = None  # what the model was adapted on before scoring (None: as saved)


def labelled_scans(data_dir: Path | str, class_names: Sequence[str]) -> tuple[list[Path], np.ndarray]:
    """The scans of a labelled folder and their labels (indices into ``class_names``).

    The one place that reads DATA's layout, through :mod:`brainfl.data.layouts`: a
    ``labels.csv``; the ``Testing`` split of a Kaggle-style folder (its
    ``Training`` split when there is no ``Testing``); or class folders, with
    scans at any depth. A class the model does not know is an error.
    """

    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise BrainFLError(f"data folder not found: {root}")
    layout = layouts.detect_layout(root)
    if layout == layouts.LABELS_CSV:
        entries, names = layouts.read_labels_csv(root)
        unknown = [name for name in names if name not in class_names]
        if unknown:
            raise BrainFLError(
                f"label '{unknown[0]}' in {root / layouts.LABELS_FILE} is not one of the model's "
                f"classes ({', '.join(class_names)})"
            )
        labels = [list(class_names).index(names[entry.label]) for entry in entries]
        return [entry.path for entry in entries], np.asarray(labels, dtype=np.int64)
    split_dir = root
    if layout == layouts.KAGGLE_SPLIT:
        split_dir = (
            root / layouts.TEST_SPLIT if (root / layouts.TEST_SPLIT).is_dir() else root / layouts.TRAIN_SPLIT
        )
    unknown = [name for name in layouts.find_classes(split_dir) if name not in class_names]
    if unknown:
        raise BrainFLError(
            f"class folder {split_dir / unknown[0]} is not one of the model's classes "
            f"({', '.join(class_names)})"
        )
    entries = layouts.list_class_folders(split_dir, list(class_names), root=root)
    return [entry.path for entry in entries], np.asarray([entry.label for entry in entries], dtype=np.int64)


def leak_free(data_dir: Path, files: Sequence[Path]) -> np.ndarray:
    """Mask of the ``DATA/Testing`` scans with no exact or near copy in ``DATA/Training``."""
    root = Path(data_dir).expanduser()
    if not (root / TRAIN_SPLIT).is_dir() or not (root / TEST_SPLIT).is_dir():
        raise BrainFLError(f"--leak-free-only needs {root}/{TRAIN_SPLIT} and {root}/{TEST_SPLIT}")
    return leak_free_test_mask(root, [str(path.relative_to(root)) for path in files])


def evaluate_model(
    model_path: Path | str,
    data_dir: Path | str,
    skip_unreadable: bool = False,
    leak_free_only: bool = False,
    resamples: int | None = None,
    seed: int | None = None,
    adapt: bool = False,
    entropy_epochs: int = 0,
) -> FolderEvaluation:
    """Score the model at ``model_path`` on the labelled scans of ``data_dir``, with intervals; with
    ``adapt``, after re-estimating its BatchNorm statistics on those scans (labels not used) and
    ``entropy_epochs`` passes of entropy minimization (:mod:`brainfl.inference.adaptation`)."""
    if entropy_epochs and not adapt:
        raise BrainFLError("--entropy-epochs adapts the model: give it with --adapt")
    loaded = load_model(model_path)
    data = Path(data_dir).expanduser()
    files, labels = labelled_scans(data, loaded.class_names)
    if leak_free_only:
        mask = leak_free(data, files)
        if not mask.any():
            raise BrainFLError(f"--leak-free-only: every scan of {data} has a copy in its Training folder")
        files, labels = [f for f, keep in zip(files, mask, strict=True) if keep], labels[mask]

    adaptation = adapt_loaded(loaded, files, data, skip_unreadable, entropy_epochs) if adapt else None
    probabilities, unreadable = predict_scans(loaded, files, skip_unreadable)
    if len(unreadable) == len(files):
        raise BrainFLError(f"no readable scans in {data}")
    kept = np.setdiff1d(np.arange(len(files)), unreadable)
    scores = uncertainty.score_with_intervals(
        labels[kept],
        probabilities,
        loaded.class_names,
        resamples=uncertainty.RESAMPLES if resamples is None else resamples,
        seed=uncertainty.SEED if seed is None else seed,
        notumor_threshold=loaded.notumor_threshold,
    )
    return FolderEvaluation(
        loaded.path,
        loaded.model_name,
        data,
        [files[i] for i in kept],
        labels[kept],
        probabilities,
        [files[i] for i in unreadable],
        leak_free_only,
        scores,
        loaded.temperature,
        loaded.notumor_threshold,
        None if adaptation is None else adaptation.metadata(),
    )


def summary(evaluation: FolderEvaluation) -> dict[str, Any]:
    """Everything ``evaluation.json`` holds: what was scored, then the scores."""
    return {
        "model": str(evaluation.model),
        "model_name": evaluation.model_name,
        "data": str(evaluation.data),
        "skipped_unreadable": [str(path) for path in evaluation.skipped],
        "leak_free_only": evaluation.leak_free_only,
        "temperature": evaluation.temperature,
        "notumor_threshold": evaluation.notumor_threshold,
        "adapted": evaluation.adapted,
        **evaluation.scores.to_dict(),
    }


def write_outputs(evaluation: FolderEvaluation, output_dir: Path) -> list[Path]:
    """Write the CSV, the JSON and both figures into ``output_dir``; the paths written."""
    scores = evaluation.scores
    text = json.dumps(summary(evaluation), indent=2, allow_nan=False) + "\n"
    paths = [output_dir / name for name in (CSV_NAME, JSON_NAME, FIGURE_CONFUSION, FIGURE_RELIABILITY)]
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        table = scores.table().assign(adapted=evaluation.adapted is not None)
        write_atomically(paths[0], lambda handle: table.to_csv(handle, index=False))
        write_atomically(paths[1], lambda handle: handle.write(text.encode()))
        plot_confusion_counts(scores.confusion, scores.class_names, paths[2])
        plot_reliability(scores.reliability, scores.overall["ece"], paths[3])
    except OSError as error:
        raise BrainFLError(f"--output-dir: cannot write {output_dir}: {error.strerror or error}") from None
    return paths


def _cell(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def adapted_note(adapted: dict[str, Any]) -> str:
    """The line saying the scores are of the model adapted to the scored scans."""
    entropy = adapted.get("entropy_epochs", 0)
    tent = f", then {entropy} passes of entropy minimization" if entropy else ""
    return (
        f"scores of the model ADAPTED to these scans: BatchNorm statistics re-estimated on "
        f"{adapted['scans_used']} of them{tent} (labels not used); without --adapt, of the model as saved"
    )


def print_scores(evaluation: FolderEvaluation) -> None:
    """The metrics and their intervals as a table on the terminal, with what was scored."""

    scores = evaluation.scores
    per_class = scores.confusion.sum(axis=1)
    counts = ", ".join(f"{n} {c}" for c, n in zip(scores.class_names, per_class, strict=True))

    print(f"{evaluation.model} on {scores.images} scans of {evaluation.data} ({counts})")
    print(temperature_note(evaluation.temperature))
    print(threshold_note(evaluation.notumor_threshold))
    if evaluation.adapted is not None:
        print(adapted_note(evaluation.adapted))
    view = Table()
    for column in ("metric", "class", "value", "95% interval"):
        view.add_column(column, justify="right" if column in ("value", "95% interval") else "left")
    for row in scores.table().itertuples(index=False):
        cells = (row.metric, row[1], _cell(row.value), f"[{_cell(row.low)}, {_cell(row.high)}]")
        view.add_row(*map(Text, cells))  # Text: brackets are not rich markup
    console = Console()
    if not console.is_terminal:  # piped or captured: keep rows whole
        console = Console(width=200)
    console.print(view)
    absent = [c for c, n in zip(scores.class_names, per_class, strict=True) if n == 0]
    if absent:
        print(f"no scans of {', '.join(absent)}: their sensitivity and ROC-AUC are n/a")
    if scores.non_finite:
        print(
            f"{scores.non_finite} of {scores.images} scans: the model's outputs are not finite (NaN or inf); "
            "counted wrong, left out of ROC-AUC and ECE"
        )
    print(
        f"intervals: {scores.confidence:.0%} percentile bootstrap over scans, "
        f"{scores.resamples} resamples, seed {scores.seed}"
    )


def default_output(model: Path | str, data: Path | str) -> Path:
    """``./evaluation-<model file stem>-<data folder name>``."""
    return Path(f"evaluation-{Path(model).stem}-{Path(data).expanduser().resolve().name}")


def model_and_data(args: argparse.Namespace) -> tuple[Path, Path]:
    """``--model FILE DATA``; the earlier ``MODEL DATA`` (positional model) with a warning."""
    if args.model is not None and len(args.data) == 1:
        return args.model, args.data[0]
    if args.model is None and len(args.data) == 2:
        print("brainfl evaluate: warning: MODEL DATA is deprecated, use --model MODEL DATA", file=sys.stderr)
        return args.data[0], args.data[1]
    raise BrainFLError(
        "evaluate: give the model with --model FILE and one data folder (brainfl evaluate --help)"
    )


def run(args: argparse.Namespace) -> None:
    """Handler of ``brainfl evaluate``."""
    model, data = model_and_data(args)
    evaluation = evaluate_model(
        model,
        data,
        args.skip_unreadable,
        args.leak_free_only,
        args.resamples,
        args.seed,
        args.adapt,
        args.entropy_epochs,
    )
    if evaluation.skipped:
        print(f"skipped {len(evaluation.skipped)} unreadable files:")
        for path in evaluation.skipped:
            print(f"  {path}")
    print_scores(evaluation)
    output_dir = Path(args.output_dir).expanduser() if args.output_dir else default_output(model, data)
    write_outputs(evaluation, output_dir)
    print(f"written to {output_dir}: {CSV_NAME}, {JSON_NAME}, {FIGURE_CONFUSION}, {FIGURE_RELIABILITY}")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``evaluate`` sub-command's description, options and handler."""
    parser.description = (
        "External validation: every metric of a saved model on DATA with its bootstrap "
        "95%% interval, printed and written as CSV, JSON and figures."
    )
    add_model(parser, required=False)  # required once the positional MODEL of earlier releases is gone
    parser.add_argument(
        "data", type=Path, nargs="+", help="labelled scans: DATA/<class>/*.jpg or DATA/Testing/<class>/"
    )
    add_output_dir(parser, "where to write (default: ./evaluation-MODEL-DATA)", old=["--output"])
    parser.add_argument(
        "--skip-unreadable", action="store_true", help="leave out files that cannot be decoded, and list them"
    )
    parser.add_argument(
        "--leak-free-only",
        action="store_true",
        help="score only DATA/Testing scans with no exact or near copy in DATA/Training",
    )
    parser.add_argument(
        "--resamples", type=_positive, default=None, help="bootstrap resamples (default: 1000)"
    )
    parser.add_argument("--seed", type=int, default=None, help="bootstrap seed (default: 0)")
    parser.add_argument(
        "--adapt",
        action="store_true",
        help="first re-estimate the model's BatchNorm statistics on the scored scans (labels not used)",
    )
    add_entropy_epochs(parser)
    parser.set_defaults(handler=run)
