"""Preparation families: the Testing split as other groups prepare scans, each family one way, scored.

A model that holds up at a hospital it never saw must survive how that
hospital prepares its scans. Each family below redraws every Testing scan
(8-bit grayscale PNG) with one deterministic preparation; none of them is a
transform of the training augmentation (flip, gamma, rotation, zoom,
translation: :func:`brainfl.model.architectures.build_cnn`), except ``shifted``,
the shifted copy of ``shifted_copy.py`` (tight crop, rotation, gamma,
darkening, resolution), kept as the family the augmentation has seen:

- ``histeq``: global histogram equalization (Pillow);
- ``clahe``: contrast-limited adaptive histogram equalization (scikit-image, clip 0.02);
- ``stretch``: contrast stretched from the 2nd-98th percentile to the full range, brighter;
- ``noisy``: Gaussian noise (sigma 12 of 255) over the whole image, the black background included;
- ``lowres``: down to 64 px, back up, then a Gaussian blur (sigma 1 px);
- ``bias``: a smooth multiplicative bias field (0.6-1.4 across the image, direction per scan);
- ``jpeg``: re-encoded as JPEG at quality 10;
- ``shifted``: the shifted copy.

A scan's random draws (noise, bias direction, shift) come from ``(seed, sha256 of its path)``.
Two commands::

    python3 benchmarks/preparation_families.py make --data-dir ../shared/data/brain-tumor-mri \\
        --output-dir benchmarks/runs/families
    python3 benchmarks/preparation_families.py score --model MODEL --families benchmarks/runs/families \\
        --output-dir benchmarks/runs/families-MODEL [--keep NAME]

``score`` runs ``brainfl evaluate`` on every family and writes ``families.csv``: per family its
scans, accuracy, balanced accuracy, calibration error and the tumor sensitivity (tumor scans not
called notumor), each with its 95% interval, then the ``mean`` and the ``worst`` family, then
(``testing``) the central test set's scores of the run that saved the model, when its folder holds
them; ``--keep NAME`` keeps it with every family's ``evaluation.csv`` in ``benchmarks/results/NAME/``.

When the training augmentation covers how preparations differ
(:mod:`brainfl.model.augmentation`), a family must be scored on a model whose augmentation
leaves that family's transform out (:data:`TRAINED_WITHOUT`): ``leave-out`` trains one
centralized model per left-out transform (``brainfl centralized``, ``--epochs`` epochs, the
app's defaults otherwise) and one with every transform of :data:`LEAVE_OUT_TRANSFORMS`, and
scores each family on its own::

    python3 benchmarks/preparation_families.py leave-out --data-dir ../shared/data/brain-tumor-mri \\
        --families benchmarks/runs/families --epochs 30 --output-dir benchmarks/runs/leave-out \\
        [--adapt] [--runs DIR]

It writes ``families_left_out.csv``, with a ``trained_without`` column; the in-distribution row
(``testing``, the central test set) is the model trained with all of them. A folder already
holding a finished model trained with the same settings is scored, not trained again; ``--runs``
(default ``<output-dir>/runs``) lets a second scoring, e.g. with ``--adapt``, use its models.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter, ImageOps
from skimage import exposure
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from brainfl.data.decoding import open_scan
from brainfl.data.layouts import TEST_SPLIT
from brainfl.evaluation import external as evaluate
from brainfl.report.results import RESULTS_CSV
from brainfl.settings.run_config import toml_value
from brainfl.settings.run_settings import CROPS
from harness import RESULTS, add_keep, add_output_dir, this_command
from preparation_shift import draw_shift, shift_image
from result_folders import FAMILIES_FILES, LEFT_OUT_FILES
from shifted_copy import testing_scans

NOTUMOR = "notumor"
SHOWN = ("accuracy", "balanced_accuracy", "ece")  # the overall metrics of families.csv


def _gray(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def histeq(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.equalize(image)


def clahe(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _gray(exposure.equalize_adapthist(np.asarray(image), clip_limit=0.02) * 255)


def stretch(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(values, (2, 98))
    return _gray(exposure.rescale_intensity(values, in_range=(low, max(high, low + 1)), out_range=(0, 255)))


def noisy(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    return _gray(values + rng.normal(0, 12, values.shape))


def lowres(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    small = image.resize((64, 64), Image.Resampling.BILINEAR)
    return small.resize(image.size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(1))


def bias(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    rows, cols = np.mgrid[-1 : 1 : values.shape[0] * 1j, -1 : 1 : values.shape[1] * 1j]
    ramp = (np.cos(angle) * cols + np.sin(angle) * rows) / np.sqrt(2)  # -1..1 across the image
    return _gray(values * (1 + 0.4 * ramp))


def jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=10)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("L")


FAMILIES: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "histeq": histeq,
    "clahe": clahe,
    "stretch": stretch,
    "noisy": noisy,
    "lowres": lowres,
    "bias": bias,
    "jpeg": jpeg,
}
SHIFTED = "shifted"
FAMILY_NAMES = (*FAMILIES, SHIFTED)
# The augmentation transform each family's model trains without (None: none left out; JPEG is a
# transform no augmentation makes, the shifted copy is the geometry and gamma the training has seen).
TRAINED_WITHOUT: dict[str, str | None] = {
    "histeq": "curve",
    "clahe": "curve",
    "stretch": "curve",
    "noisy": "noise",
    "lowres": "blur",
    "bias": "bias",
    "jpeg": None,
    SHIFTED: None,
}
# The transforms the leave-out models are trained with (each but the left-out one): every transform
# a family above is held out from, with the default recipe's geometry and gamma. ``texture`` (a random
# convolutional network) is not among them: it is measured as a model of its own.
LEAVE_OUT_TRANSFORMS = ("flip", "gamma", "curve", "bias", "rotate", "zoom", "shift", "blur", "noise")
IN_DISTRIBUTION = "testing"


def prepared(image: Image.Image, family: str, source: str, seed: int) -> Image.Image:
    """``image`` (8-bit grayscale) as ``family`` prepares it; draws from ``(seed, source)``."""
    if family == SHIFTED:
        return shift_image(image, draw_shift(seed, source))
    digest = int.from_bytes(hashlib.sha256(source.encode()).digest()[:16], "little")
    return FAMILIES[family](image, np.random.default_rng([seed, digest]))


def make_families(data_dir: Path, out: Path, seed: int = 0, families: Sequence[str] = FAMILY_NAMES) -> None:
    """Write ``out/<family>/<class>/<stem>.png`` for every Testing scan of ``data_dir``."""
    files, classes, _ = testing_scans(data_dir)
    for path, name in tqdm(
        list(zip(files, classes, strict=True)), desc="preparing", unit="scan", disable=None
    ):
        source = path.relative_to(data_dir).as_posix()
        image = open_scan(path, "L")
        stem = path.relative_to(data_dir / TEST_SPLIT / name).with_suffix(".png")
        for family in families:
            target = out / family / name / stem
            target.parent.mkdir(parents=True, exist_ok=True)
            prepared(image, family, source, seed).save(target, format="PNG")


def family_row(family: str, scores: dict) -> dict:
    """A family's row: scans, the shown metrics and the tumor sensitivity, each with its interval."""
    metrics = {(m["metric"], m["class"]): m for m in scores["metrics"]}
    row: dict = {"family": family, "images": scores["images"]}
    for name in SHOWN:
        row |= {
            f"{name}{suffix}": metrics[(name, None)][key]
            for key, suffix in (("value", ""), ("low", "_low"), ("high", "_high"))
        }
    confusion = np.asarray(scores["confusion_matrix"]["counts"])
    names = scores["confusion_matrix"]["rows"]
    tumor = [index for index, name in enumerate(names) if name != NOTUMOR]
    if NOTUMOR in names:
        missed = confusion[tumor, names.index(NOTUMOR)].sum()
        row["missed_tumor_rate"] = float(missed / max(confusion[tumor].sum(), 1))
    return row


def score_families(
    model: Path,
    families_dir: Path,
    out: Path,
    extra: Sequence[str] = (),
    families: Sequence[str] = FAMILY_NAMES,
) -> pd.DataFrame:
    """``brainfl evaluate`` on each of ``families``' folders: one row per family."""
    rows = []
    for family in families:
        if not (families_dir / family).is_dir():
            continue
        target = out / family
        command = [
            "brainfl",
            "evaluate",
            "--model",
            str(model),
            str(families_dir / family),
            "--output-dir",
            str(target),
            *extra,
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        rows.append(family_row(family, json.loads((target / evaluate.JSON_NAME).read_text())))
    return pd.DataFrame(rows)


def with_mean_and_worst(table: pd.DataFrame) -> pd.DataFrame:
    """``table``'s family rows, then their ``mean`` and the ``worst (<family>)`` row."""
    numbers = table.drop(columns=[c for c in ("family", "trained_without") if c in table])
    worst = table.loc[table["accuracy"].idxmin()].to_dict()
    mean = {"family": "mean", **numbers.mean().to_dict()}  # (no interval: the mean of bounds is none)
    mean |= {column: float("nan") for column in numbers if column.endswith(("_low", "_high"))}
    return pd.concat(
        [table, pd.DataFrame([mean, {**worst, "family": f"worst ({worst['family']})"}])], ignore_index=True
    )


def augmentation_without(left_out: str | None) -> str:
    """:data:`LEAVE_OUT_TRANSFORMS` with ``left_out`` removed (all of them when None)."""
    return ",".join(name for name in LEAVE_OUT_TRANSFORMS if name != left_out)


def trained_model(
    runs: Path, left_out: str | None, data_dir: Path, epochs: int, crop: str | None = None
) -> Path:
    """The centralized model trained without ``left_out`` in ``runs/<all|without-T>/`` (framed by
    ``crop``, else the app's default), trained here unless that folder already holds one trained with
    these settings (anything else there is refused)."""
    folder = runs / ("all" if left_out is None else f"without-{left_out}")
    wanted = {
        "augmentation": augmentation_without(left_out),
        "num-server-rounds": epochs,
        "local-epochs": 1,
        "data-dir": str(data_dir),
        **({"crop": crop} if crop else {}),
    }
    if (folder / "final_model.keras").is_file():
        config = json.loads((folder / "run_config.json").read_text())
        if any(config.get(key) != value for key, value in wanted.items()):
            raise SystemExit(f"{folder} holds a model trained with other settings than {wanted}")
        return folder / "final_model.keras"
    run_config = " ".join(f"{key}={toml_value(value)}" for key, value in wanted.items())
    run_config += f" output-dir={toml_value(str(folder))}"
    subprocess.run(["brainfl", "centralized", "--run-config", run_config], check=True)
    return folder / "final_model.keras"


def in_distribution_row(model: Path) -> dict:
    """The central test set's last-round scores of the run that wrote ``model``."""
    last = pd.read_csv(model.parent / RESULTS_CSV).iloc[-1]
    return {
        "family": IN_DISTRIBUTION,
        "trained_without": "",
        "accuracy": float(last["accuracy"]),
        "leak_free_accuracy": float(last["leak_free_accuracy"]),
        "balanced_accuracy": float(last["balanced_accuracy"]),
        "ece": float(last["ece"]),
    }


def leave_out(
    data_dir: Path,
    families_dir: Path,
    out: Path,
    runs: Path,
    epochs: int,
    extra: Sequence[str] = (),
    crop: str | None = None,
) -> pd.DataFrame:
    """Every family scored on the model trained without its transform, then mean and worst, then the
    in-distribution row of the model trained with all of :data:`LEAVE_OUT_TRANSFORMS`."""
    tables = []
    for left_out in dict.fromkeys(TRAINED_WITHOUT.values()):
        model = trained_model(runs, left_out, data_dir, epochs, crop)
        families = [family for family, transform in TRAINED_WITHOUT.items() if transform == left_out]
        scored = score_families(model, families_dir, out / (left_out or "all"), extra, families)
        tables.append(scored.assign(trained_without=left_out or ""))
    table = pd.concat(tables, ignore_index=True).set_index("family").loc[list(FAMILY_NAMES)].reset_index()
    every = trained_model(runs, None, data_dir, epochs, crop)
    return pd.concat(
        [with_mean_and_worst(table), pd.DataFrame([in_distribution_row(every)])], ignore_index=True
    )


def keep_families(table: pd.DataFrame, output_dir: Path, csv_name: str, name: str) -> Path:
    """Copy the table ``csv_name``, every family's ``evaluation.csv`` and the command to
    ``benchmarks/results/<name>``."""
    target = RESULTS / name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(output_dir / csv_name, target / csv_name)
    for evaluation in sorted(output_dir.glob(f"**/{evaluate.CSV_NAME}")):
        if evaluation.parent.name in table["family"].values:
            (target / evaluation.parent.name).mkdir(exist_ok=True)
            shutil.copyfile(evaluation, target / evaluation.parent.name / evaluate.CSV_NAME)
    (target / "command.txt").write_text(this_command() + "\n")
    return target


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make", help="write the family folders")
    make.add_argument("--data-dir", type=Path, required=True)
    make.add_argument("--seed", type=int, default=0)
    add_output_dir(make, None, old=(), help_text="where the family folders go")
    score = commands.add_parser("score", help="score a model on every family")
    score.add_argument("--model", type=Path, required=True)
    held_out = commands.add_parser("leave-out", help="train without each family's transform and score it")
    held_out.add_argument("--data-dir", type=Path, required=True)
    held_out.add_argument("--epochs", type=int, default=30, help="centralized epochs of every model")
    held_out.add_argument("--adapt", action="store_true", help="score after brainfl evaluate --adapt")
    held_out.add_argument("--crop", choices=CROPS, help="every model's framing (default: the app's)")
    held_out.add_argument(
        "--runs", type=Path, default=None, help="where the models are trained (default: <output-dir>/runs)"
    )
    for scoring in (score, held_out):
        scoring.add_argument("--families", type=Path, required=True, help="the folder 'make' wrote")
        add_output_dir(scoring, None, old=(), help_text="where each family's evaluation goes")
        add_keep(scoring)
    score.add_argument("--evaluate-args", default="", help="more options for brainfl evaluate, e.g. --adapt")
    args = parser.parse_args(argv)
    if args.output_dir is None:
        parser.error("--output-dir is required")
    if args.command == "make":
        make_families(args.data_dir.resolve(), args.output_dir, args.seed)
        return
    csv_name = FAMILIES_FILES[0] if args.command == "score" else LEFT_OUT_FILES[0]
    if args.command == "score":
        table = with_mean_and_worst(
            score_families(args.model, args.families, args.output_dir, args.evaluate_args.split())
        )
        if (args.model.parent / RESULTS_CSV).is_file():
            table = pd.concat([table, pd.DataFrame([in_distribution_row(args.model)])], ignore_index=True)
    else:
        extra = ["--adapt"] if args.adapt else []
        runs = args.runs or args.output_dir / "runs"
        table = leave_out(args.data_dir, args.families, args.output_dir, runs, args.epochs, extra, args.crop)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    table.round(6).to_csv(args.output_dir / csv_name, index=False)
    print(table.round(4).to_string(index=False))
    if args.keep:
        print(f"kept in {keep_families(table, args.output_dir, csv_name, args.keep)}")


if __name__ == "__main__":
    main()
