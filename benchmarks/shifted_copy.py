"""A shifted copy of the Testing split: the same scans as another hospital might prepare them.

Accuracy on the Kaggle Testing split says how a model does on scans exported
the way its Training scans were. This benchmark redraws every Testing scan as
another site's export might look -- cropped tight to the head, rotated,
re-contrasted, darker and stored at another resolution -- and scores a model
on it with ``brainfl evaluate``'s own code, to see how much of the accuracy
survives. Two commands::

    python3 benchmarks/shifted_copy.py make --data-dir ../shared/data/brain-tumor-mri \\
        --output-dir benchmarks/runs/shifted-copy [--seed 0]
    python3 benchmarks/shifted_copy.py score --model benchmarks/runs/iid4-r40/final_model.keras \\
        --copy benchmarks/runs/shifted-copy --output-dir benchmarks/runs/iid4-r40-shifted \\
        [--keep iid4-r40] [--resamples N]

``make`` writes into its ``--output-dir``:

- ``all/<class>/<stem>.png``: every scan of ``DATA/Testing``, listed as
  ``brainfl evaluate`` lists them (:func:`brainfl.evaluation.external.labelled_scans`,
  class names from ``DATA/Training``), shifted by :func:`preparation_shift.shift_image`;
- ``leak-free/<class>/<stem>.png``: the same PNGs of the Testing scans with no
  exact or near copy in ``DATA/Training``, chosen exactly as
  ``brainfl evaluate --leak-free-only`` chooses them (:func:`brainfl.evaluation.external.leak_free`);
- ``manifest.csv``: one row per scan: ``source`` (relative to DATA), ``output``
  (relative to ``--output-dir``, under ``all/``), ``class``, ``leak_free`` and every
  drawn parameter (:class:`preparation_shift.Shift`);
- ``copy.txt``: the command that made the copy, its seed and data folder.

Each scan's parameters come from a numpy Generator seeded with ``(seed, sha256
of the scan's path relative to DATA)``: the copy is the same byte for byte on
every run, and a scan's copy does not depend on which other scans are listed.

``score`` runs :func:`brainfl.evaluation.external.evaluate_model` and
:func:`brainfl.evaluation.external.write_outputs` on ``COPY/all`` into ``OUTPUT/shifted/``
and on ``COPY/leak-free`` into ``OUTPUT/shifted-leak-free/`` (OUTPUT: its
``--output-dir``; CSV, JSON and figures as ``brainfl evaluate`` writes them) and prints both accuracies with
their bootstrap 95% intervals. ``--keep NAME`` copies the two small files of
each (``evaluation.csv``, ``evaluation.json``) with a ``command.txt`` (this
command) and the copy's ``copy.txt`` into ``benchmarks/results/NAME/shifted/``
and ``.../shifted-leak-free/``: NAME is an existing run result folder (e.g.
``iid4-r40``); its own files are left alone, and no figure is kept.

Bad input (no Testing or Training split, a missing model, a copy folder
without ``all/``, an unknown ``--keep`` folder) is one line on stderr and exit
code 2, as the ``brainfl`` CLI reports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from brainfl.core.errors import EXIT_USER_ERROR, BrainFLError
from brainfl.core.files import write_atomically
from brainfl.data.layouts import TEST_SPLIT, TRAIN_SPLIT, class_folders, find_classes
from brainfl.evaluation import external as evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import COMMAND_FILE, RESULTS, add_keep, add_output_dir, this_command
from preparation_shift import draw_shift, shift_file

SCRIPT = "benchmarks/shifted_copy.py"
ALL = "all"
LEAK_FREE = "leak-free"
MANIFEST = "manifest.csv"
COPY_FILE = "copy.txt"
SHIFTED = "shifted"
SHIFTED_LEAK_FREE = "shifted-leak-free"
KEPT_FILES = (evaluate.CSV_NAME, evaluate.JSON_NAME)
MANIFEST_COLUMNS = [
    "source", "output", "class", "leak_free", "margin_left", "margin_top", "margin_right",
    "margin_bottom", "angle", "gamma", "scale", "resolution",
]  # fmt: skip


def testing_scans(data_dir: Path) -> tuple[list[Path], list[str], np.ndarray]:
    """The Testing scans as ``brainfl evaluate`` lists them, their class names and the leak-free mask."""
    for split in (TEST_SPLIT, TRAIN_SPLIT):
        if not (data_dir / split).is_dir():
            raise BrainFLError(
                f"no {split} split in {data_dir} (expected {data_dir / split}/<class>/*.jpg; "
                f"the copy needs {TEST_SPLIT} and, for its leak-free part, {TRAIN_SPLIT})"
            )
    class_names = find_classes(data_dir / TRAIN_SPLIT)  # the app's class names: Training's folders
    class_folders(data_dir / TEST_SPLIT, class_names)  # a Testing class unknown to Training: error
    files, labels = evaluate.labelled_scans(data_dir, class_names)
    mask = evaluate.leak_free(data_dir, files)
    return files, [class_names[label] for label in labels], mask


def _clear(out: Path) -> None:
    """Make room in ``out`` for a copy: only an earlier copy (with its manifest) is replaced."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BrainFLError(f"--output-dir {out} is a file, not a folder")
    if any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise BrainFLError(
            f"--output-dir {out} is not empty and holds no shifted copy ({MANIFEST}): not replacing it"
        )
    for name in (ALL, LEAK_FREE):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (MANIFEST, COPY_FILE):
        (out / name).unlink(missing_ok=True)


def make_copy(
    data_dir: Path | str, out: Path | str, seed: int = 0, command: str | None = None
) -> pd.DataFrame:
    """Write the shifted copy of ``data_dir``'s Testing split into ``out``; return its manifest."""
    root, out = Path(data_dir).expanduser(), Path(out).expanduser()
    if not root.is_dir():
        raise BrainFLError(f"data folder not found: {root}")
    if seed < 0:
        raise BrainFLError(f"--seed must be 0 or more, got {seed}")
    files, classes, mask = testing_scans(root)
    _clear(out)
    rows, written = [], {}
    for path, name, clean in tqdm(
        list(zip(files, classes, mask, strict=True)), desc="shifting scans", unit="scan", disable=None
    ):
        source = path.relative_to(root).as_posix()
        output = (Path(ALL) / name / path.relative_to(root / TEST_SPLIT / name)).with_suffix(".png")
        if output in written:
            raise BrainFLError(f"{source} and {written[output]} would both be written to {out / output}")
        written[output] = source
        shift = draw_shift(seed, source)
        shift_file(path, out / output, shift)
        if clean:
            leak_free_copy = out / LEAK_FREE / output.relative_to(ALL)
            leak_free_copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / output, leak_free_copy)
        rows.append((source, output.as_posix(), name, bool(clean), *dataclasses.astuple(shift)))
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    write_atomically(out / MANIFEST, lambda handle: manifest.to_csv(handle, index=False))
    made_by = command if command is not None else this_command()
    (out / COPY_FILE).write_text(f"command: {made_by}\nseed: {seed}\ndata: {root.resolve()}\n")
    return manifest


def _accuracy_line(name: str, evaluation: evaluate.FolderEvaluation) -> str:
    value, low, high = evaluation.scores.overall["accuracy"]
    return (
        f"{name}: accuracy {value:.4f} (95% interval {low:.4f}-{high:.4f}) "
        f"on {evaluation.scores.images} scans of {evaluation.data}"
    )


def _keep_target(name: str, results_root: Path) -> Path:
    target = Path(results_root) / name
    if not target.is_dir():
        raise BrainFLError(f"--keep {name}: no result folder {target} (name an existing run result)")
    return target


def keep_scores(
    output: Path, copy_dir: Path, name: str, command: str, results_root: Path | str = RESULTS
) -> list[Path]:
    """Copy each scored folder's CSV and JSON, ``command.txt`` and ``copy.txt`` into ``results_root/name``.

    They go to ``shifted/`` and ``shifted-leak-free/`` inside the run's result
    folder, which must exist; the run's own files are not touched. Returns the
    folders written.
    """
    target = _keep_target(name, Path(results_root))
    copy_text = copy_dir / COPY_FILE
    made_by = (
        copy_text.read_text() if copy_text.is_file() else f"copy: {copy_dir.resolve()} (no {COPY_FILE})\n"
    )
    kept = []
    for folder in (SHIFTED, SHIFTED_LEAK_FREE):
        if not (output / folder / evaluate.CSV_NAME).is_file():
            continue
        destination = target / folder
        destination.mkdir(parents=True, exist_ok=True)
        for file_name in KEPT_FILES:
            shutil.copyfile(output / folder / file_name, destination / file_name)
        (destination / COMMAND_FILE).write_text(command.replace("\n", " ") + "\n")
        (destination / COPY_FILE).write_text(made_by)
        kept.append(destination)
    return kept


def score_copy(
    model: Path | str,
    copy_dir: Path | str,
    output: Path | str,
    keep: str | None = None,
    results_root: Path | str = RESULTS,
    resamples: int | None = None,
    command: str | None = None,
) -> dict[str, evaluate.FolderEvaluation]:
    """Score ``model`` on ``copy_dir/all`` and ``copy_dir/leak-free``; write, print and maybe keep."""
    model, copy_dir, output = Path(model).expanduser(), Path(copy_dir).expanduser(), Path(output).expanduser()
    if not model.is_file():
        raise BrainFLError(f"model file not found: {model}")
    if not (copy_dir / ALL).is_dir():
        raise BrainFLError(f"no {ALL}/ folder in {copy_dir}: not a shifted copy (make it with {SCRIPT} make)")
    if keep is not None:
        _keep_target(keep, Path(results_root))  # before the slow part
    evaluations = {}
    for name, folder in ((SHIFTED, copy_dir / ALL), (SHIFTED_LEAK_FREE, copy_dir / LEAK_FREE)):
        if not folder.is_dir():
            print(f"{name}: no {folder}: no Testing scan of this copy is leak-free")
            continue
        evaluation = evaluate.evaluate_model(model, folder, resamples=resamples)
        evaluate.write_outputs(evaluation, output / name)
        print(_accuracy_line(name, evaluation))
        evaluations[name] = evaluation
    print(f"written to {output}: {', '.join(evaluations)}")
    if keep is not None:
        line = command if command is not None else this_command()
        for folder in keep_scores(output, copy_dir, keep, line, results_root):
            print(f"kept {folder}")
    return evaluations


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=SCRIPT, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make", help="write a shifted copy of DATA/Testing")
    make.add_argument("--data-dir", type=Path, required=True, help="DATA with Training/ and Testing/")
    add_output_dir(make, None, help_text="where the copy goes (created or replaced; required)")
    make.add_argument("--seed", type=int, default=0, help="seed of the drawn shifts (default: 0)")
    score = commands.add_parser("score", help="score a model on a shifted copy with brainfl evaluate")
    score.add_argument("--model", type=Path, required=True, help="a brainfl model, e.g. final_model.keras")
    score.add_argument("--copy", type=Path, required=True, help="a folder written by make")
    add_output_dir(score, None, ("--output",), "where shifted/ and shifted-leak-free/ go (required)")
    add_keep(score, where="NAME/shifted/ and NAME/shifted-leak-free/ (NAME: a kept run)")
    score.add_argument(
        "--resamples", type=_positive, default=None, help="bootstrap resamples (default: 1000)"
    )
    return parser


def main(argv: Sequence[str] | None = None, results_root: Path | str = RESULTS) -> int:
    """Run ``make`` or ``score``; bad input is one line on stderr and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.output_dir is None:  # required; checked here, as an earlier spelling may give it
        parser.error(f"{args.command}: the following arguments are required: --output-dir")
    command = this_command() if argv is None else shlex.join(["python3", SCRIPT, *argv])
    try:
        if args.command == "make":
            manifest = make_copy(args.data_dir, args.output_dir, args.seed, command)
            counts = manifest.groupby("class")["leak_free"].agg(["size", "sum"])
            for name, row in counts.iterrows():
                print(f"{name}: {row['size']} scans, {row['sum']} leak-free")
            print(f"written to {args.output_dir}: {ALL}/, {LEAK_FREE}/, {MANIFEST}, {COPY_FILE}")
        else:
            score_copy(
                args.model, args.copy, args.output_dir, args.keep, results_root, args.resamples, command
            )
    except BrainFLError as error:
        print(f"shifted_copy: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
