"""``brainfl report``: figures and one self-contained ``report.html`` from a run's saved artefacts.

:func:`make_report` reads only what the run wrote into its output folder
(:mod:`brainfl.report.run`): the run config, the per-round, per-site and
partition CSVs and the server's saved test predictions. It never evaluates the
test set or partitions data again; ``final_model.keras`` is loaded only to draw
Grad-CAM overlays of a few picked test images. It writes:

- ``accuracy_loss.png``, ``confusion_matrix.png``, ``partition.png``
  (:mod:`brainfl.report.figures`);
- ``gradcam_examples/``: per true class, the most confident correct and wrong prediction;
- ``report.html`` (``templates/report.html.j2``): headline numbers first (with the
  final round's 95% intervals, balanced accuracy and ECE, and, with a
  ``calibration.json``, the temperature and the ECE after scaling), then the figures and
  tables (per class: specificity, ROC-AUC and the sensitivity's interval; per site:
  the final round's held-out scores with mean, worst and spread; with a
  ``personalization.csv``, each site's global against personalized model; with
  ``--baselines``, each site's accuracy alone, pooled, federated and personalized,
  :mod:`brainfl.report.site_comparison`, also as ``site_comparison.csv``), the
  settings that differ from the defaults, all settings folded; with an ``audit.jsonl``
  (:mod:`brainfl.report.audit`), who took part in which round: each site aggregated or dropped,
  with the reason.

A missing optional artefact leaves its section out with a note on the page.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from brainfl.core.errors import BrainFLError
from brainfl.core.files import write_atomically
from brainfl.core.logs import LOG
from brainfl.evaluation.calibration import headline_items, read_calibration, report_view
from brainfl.evaluation.figures import plot_confusion
from brainfl.evaluation.metrics import LEAK_FREE, score
from brainfl.inference.gradcam import write_gradcams
from brainfl.model.files import FINAL_MODEL, load_model
from brainfl.report import figures, site_comparison, validation
from brainfl.report import run as data
from brainfl.report import sites as report_sites
from brainfl.report.audit import participation
from brainfl.report.figures import data_uri
from brainfl.report.html import render
from brainfl.report.results import RESULTS_CSV
from brainfl.report.run import pick_examples
from brainfl.report.tables import Table, frame_table

if TYPE_CHECKING:  # pandas, scikit-learn and matplotlib load only when a report is made
    from brainfl.report.run import Run

FIGURE_CURVES = "accuracy_loss.png"
FIGURE_CONFUSION = "confusion_matrix.png"
FIGURE_PARTITION = "partition.png"
FIGURE_RELIABILITY = ("reliability.png", "reliability_scaled.png")
GRADCAM_DIR = "gradcam_examples"
REPORT_HTML = "report.html"
TEMPLATE = "report.html.j2"


def _test_description(run: Run) -> str:

    predictions = run.predictions
    scores = score(predictions.labels, predictions.probabilities, run.class_names, predictions.leak_free)
    parts = [
        f"Latest evaluated global model on the server's test set: {len(predictions.labels)} images, "
        f"accuracy {scores['accuracy']:.4f}, macro F1 {scores['f1_macro']:.4f}."
    ]
    broken = int((predictions.predicted < 0).sum())
    if broken:
        parts.append(
            f"{broken} of {len(predictions.labels)} images have non-finite probabilities (a broken model): "
            "counted as wrong, in the 'no prediction' column."
        )
    if LEAK_FREE in scores:
        parts.append(
            f"Leak-free accuracy {scores[LEAK_FREE]:.4f} on the {int(predictions.leak_free.sum())} "
            "test images without a near-duplicate in Training."
        )
    elif predictions.leak_free is None:
        parts.append("Leak-free flags unknown (no official Testing split).")
    return " ".join(parts)


def calibration_section(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """``calibration.json`` for the page (:func:`brainfl.evaluation.calibration.report_view`);
    None: no calibration."""
    if record is None:
        return None
    view = report_view(record)
    return {**view, **{key: frame_table(view[key]) for key in ("effect", "sites") if view[key] is not None}}


def _resolve_image(name: str, run: Run) -> Path | None:
    """A test image named in the predictions: absolute, or relative to the current folder,
    the output folder or the run's data-dir."""
    path = Path(name).expanduser()
    data_dir = Path(str(run.config.get("data-dir") or ".")).expanduser()
    bases = [Path(), run.output_dir, data_dir] if not path.is_absolute() else [Path()]
    return next((base / path for base in bases if (base / path).is_file()), None)


def gradcam_examples(run: Run, out_dir: Path) -> list[dict[str, str]]:
    """Grad-CAM overlays of the picked test images (final model), as ``uri, caption, kind``."""

    predictions, names = run.predictions, run.class_names
    if predictions is None:
        return []
    if not (run.output_dir / FINAL_MODEL).is_file():
        run.notes.append(f"no {FINAL_MODEL}: no Grad-CAM examples")
        return []
    picked = [
        (i, kind, _resolve_image(predictions.files[i], run))
        for i, kind in pick_examples(predictions, len(names))
    ]
    missing = [predictions.files[i] for i, _, path in picked if path is None]
    if missing:
        run.notes.append(
            f"{len(missing)} of {len(picked)} Grad-CAM example images not found (e.g. {missing[0]}): skipped"
        )
    picked = [(i, kind, path) for i, kind, path in picked if path is not None]
    if not picked:
        return []
    try:
        loaded = load_model(run.output_dir / FINAL_MODEL)
        if list(loaded.class_names) != names:
            raise BrainFLError(f"its classes ({', '.join(loaded.class_names)}) are not the run's")
        inputs = np.stack([loaded.preprocess(path) for _, _, path in picked])
        indices = np.asarray([i for i, _, _ in picked])
        predicted = predictions.predicted[indices]
        files = [path for _, _, path in picked]
        png_names = [f"{names[predictions.labels[i]]}_{kind}_{path.stem}.png" for i, kind, path in picked]
        if out_dir.is_dir():  # examples of an earlier report of this run
            for stale in [*out_dir.glob("*_correct_*.png"), *out_dir.glob("*_wrong_*.png")]:
                stale.unlink()
        written = write_gradcams(loaded, files, inputs, predicted, out_dir, png_names)
    except BrainFLError as error:
        run.notes.append(f"no Grad-CAM examples from {FINAL_MODEL}: {error}")
        return []
    examples = []
    for (index, kind, path), png, guess in zip(picked, written, predicted, strict=True):
        probability = predictions.probabilities[index, guess]
        caption = (
            f"{kind}: true {names[predictions.labels[index]]}, predicted {names[guess]} "
            f"(p={probability:.2f}), {path.name}"
        )
        examples.append({"uri": data_uri(png), "caption": caption, "kind": kind})
    return examples


def _figure(produced: Path | None, path: Path) -> str | None:
    """The figure's data URI; a figure of an earlier report that was not drawn again is removed."""
    if produced is None:
        path.unlink(missing_ok=True)
        return None
    return data_uri(produced)


def make_report(output_dir: Path | str, baselines: Sequence[Path] = ()) -> Path:
    """Write the figures and ``report.html`` of the run in ``output_dir``; return the page's path.

    ``baselines``: folders of ``brainfl local``/``brainfl pooled`` (or other runs) whose per-site
    held-out scores join the run's in the joining-vs-alone table (:mod:`brainfl.report.site_comparison`),
    also written as ``site_comparison.csv``."""
    output_dir = Path(output_dir).expanduser().resolve()
    run = data.read_run(output_dir)
    names = run.class_names
    calibration = read_calibration(output_dir)

    curves = figures.plot_curves(run.results, run.sites, output_dir / FIGURE_CURVES)
    confusion, per_class, description, reliability = None, None, "", []
    if run.predictions is not None:
        temperature = float(calibration["temperature"]) if calibration else None
        paths = (output_dir / FIGURE_RELIABILITY[0], output_dir / FIGURE_RELIABILITY[1])
        predictions = run.predictions
        reliability = figures.plot_reliability_pair(
            predictions.labels, predictions.probabilities, names, temperature, paths
        )
        counts, normalized, no_prediction = data.confusion(run.predictions, len(names))
        confusion = plot_confusion(counts, normalized, names, output_dir / FIGURE_CONFUSION, no_prediction)
        clinical = data.per_class_clinical(run.results, names)
        per_class = frame_table(data.per_class_table(run.predictions, names).join(clinical))
        description = _test_description(run)
    counts_per_site, stacks = report_sites.partition_counts(run)
    partition = None
    if not counts_per_site.empty:
        partition = figures.plot_partition(counts_per_site, stacks, output_dir / FIGURE_PARTITION)
    sites = report_sites.site_table(run)
    final_sites = report_sites.final_round_sites(run)
    personalized = report_sites.personalization_table(run)
    compared = site_comparison.report_table(output_dir, baselines)
    if compared is not None:
        write_atomically(
            output_dir / site_comparison.COMPARISON_CSV,
            lambda handle: compared.round(6).to_csv(handle, index_label="site"),
        )
    differing, every = data.settings_tables(run.config, run.notes)
    taken = participation(output_dir)
    results = run.results
    if LEAK_FREE in results and results[LEAK_FREE].isna().all():
        results = results.drop(columns=LEAK_FREE)
    context = {
        "title": f"brainfl run report: {output_dir.name}",
        "output_dir": str(output_dir),
        "headline": [*data.headline(run), *(headline_items(calibration) if calibration else [])],
        "calibration": calibration_section(calibration),
        "reliability": [figures.data_uri(path) for path in reliability],
        "curves": figures.data_uri(curves),
        "rounds": frame_table(results, index=False) if not results.empty else None,
        "confusion": _figure(confusion, output_dir / FIGURE_CONFUSION),
        "test_description": description,
        "per_class": per_class,
        "sites": frame_table(sites) if not sites.empty else None,
        "site_scores": None if final_sites is None else frame_table(final_sites[1]),
        "site_scores_round": None if final_sites is None else final_sites[0],
        "personalization": None if personalized is None else frame_table(personalized),
        "comparison": None if compared is None else frame_table(compared),
        "partition": _figure(partition, output_dir / FIGURE_PARTITION),
        "participation": None if taken is None else frame_table(taken),
        "examples": gradcam_examples(run, output_dir / GRADCAM_DIR),
        "differing": Table(["setting", "value", "default"], differing, text=True),
        "settings": Table(["setting", "value", "default"], every, text=True),
    }
    page = render({**context, "notes": run.notes}, TEMPLATE)  # notes last: Grad-CAM may add some
    path = output_dir / REPORT_HTML
    write_atomically(path, lambda handle: handle.write(page.encode("utf-8")))
    for note in run.notes:
        LOG.warning("report: %s", note)
    LOG.info("report written to %s", path)
    return path


def run(args: argparse.Namespace) -> None:
    """Handler of ``brainfl report``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    folder = Path(args.output_dir).expanduser()
    if (folder / validation.VALIDATION_CSV).is_file() and not (folder / RESULTS_CSV).is_file():
        path = validation.make_validation_report(folder)  # an evaluation-only run
    else:
        path = make_report(folder, args.baselines)
    print(f"report written to {path}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``report`` sub-command's description, options and handler."""
    parser.description = "Write the figures and a self-contained report.html into a run's output folder."
    parser.add_argument("output_dir", type=Path, help="the run's output folder")
    parser.add_argument(
        "--baselines",
        type=Path,
        nargs="+",
        default=[],
        metavar="DIR",
        help="output folders of 'brainfl local' and 'brainfl pooled' (or of other runs with a "
        "personalization.csv) to compare with the run, per site",
    )
    parser.set_defaults(handler=run)
