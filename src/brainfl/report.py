"""Figures and a self-contained HTML report for a finished (or past) run.

:func:`make_report` reads a run's output folder (``run_config.json``, the
per-round and per-site CSVs, ``final_model.keras``), rebuilds the server's
test set and the sites' partitions from the recorded settings, and writes:

- ``accuracy_loss.png``: test accuracy and loss per round, and each site's validation;
- ``confusion_matrix.png``: the final model on the test set, counts and row-normalized;
- ``partition.png``: images per class per site, stacked bars;
- ``gradcam_examples/``: Grad-CAM overlays of test images, one correct and one
  wrong prediction per class where they exist;
- ``report.html``: one page with all of it, images embedded, no external files.

``brainfl report <output-dir>`` runs it for any past run.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brainfl.errors import BrainFLError

FIGURE_CURVES = "accuracy_loss.png"
FIGURE_CONFUSION = "confusion_matrix.png"
FIGURE_PARTITION = "partition.png"
GRADCAM_DIR = "gradcam_examples"
REPORT_HTML = "report.html"
LEAK_FREE_COLUMN = "leak_free_accuracy"
FIGURE_DPI = 110


@dataclasses.dataclass
class Evaluation:
    """The final model on the server's test set."""

    labels: Any  # np.ndarray of true class ids
    probabilities: Any  # np.ndarray N x classes
    files: list[Path]  # the original image files
    test_is_official: bool


# ---------------------------------------------------------------- reading the run


def _read_csv(path: Path, required: bool):
    import pandas as pd

    if not path.is_file():
        if required:
            raise BrainFLError(f"no {path.name} in {path.parent} (is it a brainfl run's output folder?)")
        return pd.DataFrame()
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise BrainFLError(f"cannot read {path}: {error.__class__.__name__}") from None
    for column in table.columns:
        if column != "site":
            table[column] = pd.to_numeric(table[column], errors="coerce")
    return table


def _read_run_config(output_dir: Path) -> dict[str, Any]:
    from brainfl.results import RUN_CONFIG

    path = output_dir / RUN_CONFIG
    if not path.is_file():
        raise BrainFLError(f"no {RUN_CONFIG} in {output_dir} (is it a brainfl run's output folder?)")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise BrainFLError(f"cannot read {path}: {error.__class__.__name__}") from None
    if not isinstance(config, dict):
        raise BrainFLError(f"{path} is not a JSON object of settings")
    return config


def _find_data_dir(data_dir: str, output_dir: Path) -> Path | None:
    """The run's data folder: absolute, or relative to the current or the app folder."""
    path = Path(data_dir).expanduser()
    if path.is_absolute():
        return path if path.is_dir() else None
    for base in (Path.cwd(), output_dir.parent.parent, output_dir.parent):
        if (base / path).is_dir():
            return (base / path).resolve()
    return None


# ---------------------------------------------------------------- computing


def evaluate_final_model(model, dataset, data_dir: Path) -> Evaluation:
    """Probabilities of the final model on the test set (decoded as in training)."""
    from brainfl.training import predict_proba

    return Evaluation(
        labels=dataset.test.labels,
        probabilities=predict_proba(model, dataset.test.images),
        files=[data_dir / f for f in dataset.test.files],
        test_is_official=dataset.test_is_official,
    )


def per_class_table(evaluation: Evaluation, class_names: Sequence[str]):
    """Per-class precision, recall, F1 and support, then macro and weighted averages."""
    import pandas as pd
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(class_names)))
    predictions = evaluation.probabilities.argmax(axis=1)
    rows = {}
    precision, recall, f1, support = precision_recall_fscore_support(
        evaluation.labels, predictions, labels=labels, zero_division=0
    )
    for i, name in enumerate(class_names):
        rows[name] = (precision[i], recall[i], f1[i], int(support[i]))
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            evaluation.labels, predictions, labels=labels, average=average, zero_division=0
        )
        rows[f"{average} avg"] = (p, r, f, int(support.sum()))
    return pd.DataFrame.from_dict(rows, orient="index", columns=["precision", "recall", "f1", "support"])


def confusion(evaluation: Evaluation, num_classes: int):
    """Confusion matrix counts (rows: true class, columns: predicted) and its row-normalized form."""
    import numpy as np
    from sklearn.metrics import confusion_matrix

    counts = confusion_matrix(
        evaluation.labels, evaluation.probabilities.argmax(axis=1), labels=list(range(num_classes))
    )
    totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    return counts, normalized


def partition_table(settings, dataset, data_dir: Path | None, class_names: Sequence[str], sites):
    """Images per class per site (plus each site's train/validation sizes).

    Recomputed with the run's partitioning when the run config has
    ``num-partitions`` and the data is at hand; otherwise the sizes the sites
    reported in ``site_metrics.csv`` (no per-class split).
    """
    import pandas as pd

    from brainfl.pipeline import site_data

    if dataset is not None and data_dir is not None and settings is not None and settings.num_partitions:
        rows = {}
        for site in range(settings.num_partitions):
            node = {
                "partition-id": site,
                "num-partitions": settings.num_partitions,
                "data-dir": str(data_dir),
            }
            local = site_data(settings, node, tuple(class_names))
            counts = [
                a + b for a, b in zip(local.train.class_counts(), local.val.class_counts(), strict=True)
            ]
            rows[f"site {site}"] = [*counts, sum(counts), len(local.train), len(local.val)]
        return pd.DataFrame.from_dict(rows, orient="index", columns=[*class_names, "total", "train", "val"])
    if sites.empty or not {"site", "num_train", "num_val"} <= set(sites.columns):
        return pd.DataFrame()
    last = sites.sort_values("round").groupby("site").last()
    table = pd.DataFrame(
        {
            "total": (last["num_train"] + last["num_val"]).astype(int),
            "train": last["num_train"].astype(int),
            "val": last["num_val"].astype(int),
        }
    )
    table.index = [f"site {s}" for s in table.index]
    return table


def pick_examples(evaluation: Evaluation, class_names: Sequence[str]) -> list[tuple[int, str]]:
    """Test images to explain: per true class, the most confident correct and wrong prediction."""
    predictions = evaluation.probabilities.argmax(axis=1)
    confidence = evaluation.probabilities.max(axis=1)
    picked: list[tuple[int, str]] = []
    for label in range(len(class_names)):
        for kind, mask in (
            ("correct", (evaluation.labels == label) & (predictions == label)),
            ("wrong", (evaluation.labels == label) & (predictions != label)),
        ):
            candidates = [int(i) for i in mask.nonzero()[0]]
            if candidates:
                picked.append((max(candidates, key=lambda i: (confidence[i], -i)), kind))
    return picked


# ---------------------------------------------------------------- figures


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")


def plot_curves(results, sites, path: Path) -> Path:
    """Accuracy and loss per round: the server's test set and each site's validation."""
    figure = _new_figure(11, 4.2)
    acc_axis, loss_axis = figure.subplots(1, 2)
    for axis, metric, site_metric, title in (
        (acc_axis, "accuracy", "val_accuracy", "Accuracy"),
        (loss_axis, "loss", "val_loss", "Loss"),
    ):
        if metric in results:
            axis.plot(results["round"], results[metric], "o-", color="black", lw=2.2, label="server test set")
        if metric == "accuracy" and has_leak_free(results):
            axis.plot(
                results["round"],
                results[LEAK_FREE_COLUMN],
                "s:",
                color="tab:red",
                lw=2,
                label="leak-free test",
            )
        if not sites.empty and site_metric in sites:
            for site, rows in sites.sort_values("round").groupby("site"):
                axis.plot(
                    rows["round"], rows[site_metric], ".--", lw=1.2, alpha=0.85, label=f"site {site} val"
                )
        elif site_metric in results and results[site_metric].notna().any():
            axis.plot(results["round"], results[site_metric], ".--", label="sites' validation (mean)")
        axis.set_title(title)
        axis.set_xlabel("round")
        axis.grid(alpha=0.3)
        if metric == "accuracy":
            axis.set_ylim(0, 1.02)
        if "round" in results and len(results):
            axis.set_xticks(sorted({int(r) for r in results["round"].dropna()}))
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.savefig(path, format="png")
    return path


def plot_confusion(counts, normalized, class_names: Sequence[str], path: Path) -> Path:
    """Confusion matrix of the final model: counts and row-normalized, side by side."""
    figure = _new_figure(11, 4.8)
    for axis, matrix, title, fmt in zip(
        figure.subplots(1, 2),
        (counts, normalized),
        ("Counts", "Row-normalized (recall on the diagonal)"),
        ("{:d}", "{:.2f}"),
        strict=True,
    ):
        scale = matrix.max() if matrix.max() > 0 else 1
        image = axis.imshow(matrix, cmap="Blues", vmin=0, vmax=scale)
        figure.colorbar(image, ax=axis, shrink=0.8)
        ticks = range(len(class_names))
        axis.set_xticks(ticks, class_names, rotation=30, ha="right")
        axis.set_yticks(ticks, class_names)
        axis.set_xlabel("predicted class")
        axis.set_ylabel("true class")
        axis.set_title(title)
        for (row, col), value in _cells(matrix):
            color = "white" if value > scale * 0.6 else "black"
            axis.text(col, row, fmt.format(value), ha="center", va="center", color=color, fontsize=9)
    figure.savefig(path, format="png")
    return path


def _cells(matrix):
    for row in range(matrix.shape[0]):
        for col in range(matrix.shape[1]):
            value = matrix[row, col]
            yield (row, col), (int(value) if matrix.dtype.kind in "iu" else float(value))


def plot_partition(table, class_names: Sequence[str], path: Path) -> Path:
    """Images per class per site as stacked bars (one bar of totals without a class split)."""
    import numpy as np

    figure = _new_figure(max(5.0, 1.2 * len(table) + 3), 4.2)
    axis = figure.subplots()
    positions = np.arange(len(table))
    stacks = [name for name in class_names if name in table.columns] or ["total"]
    bottom = np.zeros(len(table))
    for name in stacks:
        values = table[name].to_numpy(dtype=float)
        axis.bar(positions, values, bottom=bottom, label=name if stacks != ["total"] else "images")
        bottom += values
    for x, total in zip(positions, bottom, strict=True):
        axis.text(x, total, f"{int(total)}", ha="center", va="bottom", fontsize=9)
    axis.set_xticks(positions, list(table.index))
    axis.set_ylabel("images")
    axis.set_title("Training images per site" + (" and class" if stacks != ["total"] else ""))
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axis.margins(y=0.12)
    figure.savefig(path, format="png")
    return path


# ---------------------------------------------------------------- html


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.key, th.key { text-align: left; }
.scroll { overflow-x: auto; } .note { color: #8a5300; } .headline { font-size: 1.1em; }
figure { margin: 0.8em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; }
.gallery figure { width: 230px; margin: 0; } .gallery img { width: 230px; }
figcaption { font-size: 0.8em; color: #444; }
.correct { color: #176317; } .wrong { color: #a01818; }
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure_html(path: Path, alt: str, caption: str = "") -> str:
    caption_html = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{_data_uri(path)}" alt="{html.escape(alt)}">{caption_html}</figure>'


def _table_html(table, float_format: str = "{:.4f}", index: bool = True) -> str:
    def fmt(value):
        return float_format.format(value)

    return (
        '<div class="scroll">'
        + table.to_html(index=index, float_format=fmt, na_rep="", border=0, escape=True)
        + "</div>"
    )


def _config_html(config: Mapping[str, Any]) -> str:
    rows = "".join(
        f'<tr><td class="key">{html.escape(str(key))}</td>'
        f'<td class="key">{html.escape(json.dumps(value))}</td></tr>'
        for key, value in sorted(config.items())
    )
    return f'<table><tr><th class="key">setting</th><th class="key">value</th></tr>{rows}</table>'


def has_leak_free(results) -> bool:
    """Whether the run recorded a leak-free accuracy (the column exists and has a value)."""
    return LEAK_FREE_COLUMN in results and bool(results[LEAK_FREE_COLUMN].notna().any())


def _headline(results, per_class) -> str:
    parts = []
    if not results.empty:
        last = results.sort_values("round").iloc[-1]
        parts.append(f"after round {int(last['round'])}")
        for column, label in (("accuracy", "test accuracy"), ("f1_macro", "macro F1"), ("loss", "test loss")):
            if column in results and last[column] == last[column]:
                parts.append(f"{label} <b>{last[column]:.4f}</b>")
        if has_leak_free(results):
            value = results.sort_values("round")[LEAK_FREE_COLUMN].dropna().iloc[-1]
            parts.append(f"leak-free accuracy <b>{value:.4f}</b>")
    if per_class is not None and "macro avg" in per_class.index:
        parts.append(f"final model macro F1 (recomputed) <b>{per_class.loc['macro avg', 'f1']:.4f}</b>")
    return '<p class="headline">' + " &middot; ".join(parts) + "</p>" if parts else ""


def render_html(
    *,
    output_dir: Path,
    config: Mapping[str, Any],
    results,
    partition,
    per_class,
    figures: Sequence[tuple[Path, str]],
    examples: Sequence[tuple[Path, str, str]],
    notes: Sequence[str],
    test_description: str,
) -> str:
    """The report page: every image embedded as a data URI, no external resources."""
    title = f"brainfl run report: {output_dir.name}"
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(str(output_dir))}</p>"]
    body.append(_headline(results, per_class))
    body.extend(f'<p class="note">{html.escape(note)}</p>' for note in notes)
    body.append("<h2>Run configuration</h2>" + _config_html(config))
    body.append("<h2>Partition: images per class per site</h2>")
    body.append(_table_html(partition, "{:.0f}") if not partition.empty else "<p>not available</p>")
    body.append("<h2>Per-round results (server test set)</h2>")
    if has_leak_free(results):
        body.append(
            f"<p>The <code>{LEAK_FREE_COLUMN}</code> column is the accuracy on the leak-free test set.</p>"
        )
    if LEAK_FREE_COLUMN in results and not has_leak_free(results):
        results = results.drop(columns=LEAK_FREE_COLUMN)
    body.append(_table_html(results, index=False) if not results.empty else "<p>no rounds recorded</p>")
    body.append("<h2>Final model: per-class precision, recall and F1</h2>")
    if per_class is not None:
        body.append(f"<p>{html.escape(test_description)}</p>" + _table_html(per_class))
    else:
        body.append("<p>not available</p>")
    body.append("<h2>Figures</h2>")
    body.extend(_figure_html(path, alt, alt) for path, alt in figures)
    body.append("<h2>Grad-CAM examples from the test set</h2>")
    if examples:
        body.append(
            "<p>Regions that raised the predicted class's probability (red: most); "
            "per true class, the most confident correct and wrong prediction.</p>"
        )
        items = []
        for path, caption, kind in examples:
            items.append(
                f'<figure><img src="{_data_uri(path)}" alt="{html.escape(caption)}">'
                f'<figcaption class="{kind}">{html.escape(caption)}</figcaption></figure>'
            )
        body.append('<div class="gallery">' + "".join(items) + "</div>")
    else:
        body.append("<p>not available</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------- the report


def _gradcam_examples(loaded, dataset, evaluation, class_names, out_dir: Path) -> list[tuple[Path, str, str]]:
    import numpy as np

    from brainfl.predict import write_gradcams

    picked = pick_examples(evaluation, class_names)
    if not picked:
        return []
    indices = np.asarray([i for i, _ in picked])
    predictions = evaluation.probabilities.argmax(axis=1)
    files = [evaluation.files[i] for i in indices]
    inputs = dataset.test.images[indices]  # decoded as in training (decode_image), as predicted
    labels = evaluation.labels[indices]
    names = [
        f"{class_names[label]}_{kind}_{path.stem}.png"
        for (_, kind), label, path in zip(picked, labels, files, strict=True)
    ]
    if out_dir.is_dir():  # examples of an earlier report of this run
        for stale in [*out_dir.glob("*_correct_*.png"), *out_dir.glob("*_wrong_*.png")]:
            stale.unlink()
    written = write_gradcams(loaded, files, inputs, predictions[indices], out_dir, names)
    examples = []
    for (index, kind), path in zip(picked, written, strict=True):
        true, predicted = class_names[evaluation.labels[index]], class_names[predictions[index]]
        probability = evaluation.probabilities[index, predictions[index]]
        name = evaluation.files[index].name
        caption = f"{kind}: true {true}, predicted {predicted} (p={probability:.2f}), {name}"
        examples.append((path, caption, kind))
    return examples


def make_report(output_dir: Path | str) -> Path:
    """Write the figures and ``report.html`` of the run in ``output_dir``; return the page's path."""
    from brainfl.config import settings_from_config
    from brainfl.files import write_atomically
    from brainfl.logs import LOG
    from brainfl.results import FINAL_MODEL, RESULTS_CSV, SITE_CSV

    output_dir = Path(output_dir).expanduser().resolve()
    if not output_dir.is_dir():
        raise BrainFLError(f"run output folder not found: {output_dir}")
    config = _read_run_config(output_dir)
    results = _read_csv(output_dir / RESULTS_CSV, required=True)
    sites = _read_csv(output_dir / SITE_CSV, required=False)
    settings = settings_from_config(config)
    notes: list[str] = []

    loaded = None
    model_path = output_dir / FINAL_MODEL
    if model_path.is_file():
        from brainfl.predict import load_model

        loaded = load_model(model_path)
    else:
        notes.append(f"no {FINAL_MODEL}: the confusion matrix, per-class metrics and Grad-CAM are left out")
    class_names = list(config.get("class-names") or (loaded.class_names if loaded else []))
    if loaded is not None and class_names and list(loaded.class_names) != class_names:
        raise BrainFLError(
            f"{model_path} classes ({', '.join(loaded.class_names)}) differ from the run config's "
            f"class-names ({', '.join(class_names)})"
        )

    dataset = None
    data_dir = _find_data_dir(settings.data_dir, output_dir)
    if data_dir is None:
        notes.append(
            f"data-dir {settings.data_dir} not found: the test set and the partitions cannot be rebuilt"
        )
    else:
        from brainfl.pipeline import load_run_dataset

        dataset = load_run_dataset(settings, str(data_dir), tuple(class_names) if class_names else None)
        class_names = list(dataset.train.class_names)

    figures: list[tuple[Path, str]] = []
    figures.append((plot_curves(results, sites, output_dir / FIGURE_CURVES), "Accuracy and loss per round"))

    per_class, examples, test_description = None, [], ""
    if loaded is not None and dataset is not None:
        if (loaded.image_size, loaded.channels) != (settings.image_size, settings.channels):
            raise BrainFLError(
                f"{model_path} expects {loaded.image_size}px x {loaded.channels} channels but the run config "
                f"says image-size {settings.image_size} with model {settings.model}"
            )
        evaluation = evaluate_final_model(loaded.model, dataset, data_dir)
        per_class = per_class_table(evaluation, class_names)
        counts, normalized = confusion(evaluation, len(class_names))
        figures.append(
            (
                plot_confusion(counts, normalized, class_names, output_dir / FIGURE_CONFUSION),
                "Confusion matrix of the final model on the test set",
            )
        )
        split = "official Testing split" if evaluation.test_is_official else "held-out part of Training"
        test_description = f"Final model on the server's test set: {len(evaluation.labels)} images ({split})."
        examples = _gradcam_examples(loaded, dataset, evaluation, class_names, output_dir / GRADCAM_DIR)

    partition = partition_table(
        settings if "num-partitions" in config else None, dataset, data_dir, class_names, sites
    )
    if not partition.empty:
        figures.append(
            (
                plot_partition(partition, class_names, output_dir / FIGURE_PARTITION),
                "Images per class per site",
            )
        )
        if "num-partitions" not in config or dataset is None:
            notes.append("partition sizes from site_metrics.csv (no per-class split available)")

    page = render_html(
        output_dir=output_dir,
        config=config,
        results=results,
        partition=partition,
        per_class=per_class,
        figures=figures,
        examples=examples,
        notes=notes,
        test_description=test_description,
    )
    path = output_dir / REPORT_HTML
    write_atomically(path, lambda handle: handle.write(page.encode("utf-8")))
    for note in notes:
        LOG.warning("report: %s", note)
    LOG.info("report written to %s", path)
    return path


def run(args: argparse.Namespace) -> None:
    """Handler of ``brainfl report``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    path = make_report(args.output_dir)
    print(f"report written to {path}")


def add_parser(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``report`` sub-command to the ``brainfl`` parser."""
    parser = subcommands.add_parser(
        "report",
        help="write figures and report.html for a run",
        description="Write the figures and a self-contained report.html into a run's output folder.",
    )
    parser.add_argument("output_dir", type=Path, help="the run's output folder")
    parser.set_defaults(handler=run)
    return parser
