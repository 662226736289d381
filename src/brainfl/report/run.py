"""The run report's data: a run's saved artefacts read into tables, and the numbers shown.

Everything here comes from files the run wrote (``run_config.json``, the
per-round, per-site and partition CSVs, ``test_predictions.csv``); nothing
re-evaluates a model or re-partitions data. Predictions are scored with
:mod:`brainfl.evaluation.metrics`, so a row of non-finite probabilities counts as wrong
(class ``-1``), never as class 0; intervals, specificity, ROC-AUC and ECE are
the last evaluated round's as the server recorded them. A missing optional
artefact becomes a note. The per-site tables are :mod:`brainfl.report.sites`'.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report, confusion_matrix

from brainfl.core.errors import BrainFLError
from brainfl.evaluation import registry
from brainfl.evaluation.metrics import LEAK_FREE
from brainfl.evaluation.registry import BOUNDS
from brainfl.model.files import RUN_CONFIG, class_names_in
from brainfl.model.outputs import predicted_classes
from brainfl.report.results import RESULTS_CSV, SITE_CSV
from brainfl.settings.run_settings import default_run_config

PARTITION_CSV = "partition.csv"
PREDICTIONS_CSV = "test_predictions.csv"


@dataclasses.dataclass
class Predictions:
    """The latest evaluated global model on the server's test set, as saved by the server."""

    files: list[str]
    labels: np.ndarray  # true class ids
    probabilities: np.ndarray  # N x classes, may hold NaN
    leak_free: np.ndarray | None  # bool mask; None when unknown (no official Testing split)

    @property
    def predicted(self) -> np.ndarray:
        """Predicted class ids, ``-1`` for rows with non-finite probabilities."""
        return predicted_classes(self.probabilities)


@dataclasses.dataclass
class Run:
    """A run's output folder, read."""

    output_dir: Path
    config: dict[str, Any]
    class_names: list[str]
    results: pd.DataFrame  # one row per round
    sites: pd.DataFrame  # one row per site and round (may be empty)
    partition: pd.DataFrame  # one row per site, indexed by site (may be empty)
    predictions: Predictions | None
    notes: list[str]


def _read_csv(path: Path, text_columns: Sequence[str] = ("site",)) -> pd.DataFrame:
    """A CSV with numeric columns (empty cells NaN) except ``text_columns``; empty when absent."""
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    try:
        table = pd.read_csv(path, dtype={name: str for name in text_columns}, keep_default_na=True)
    except (OSError, ValueError) as error:
        raise BrainFLError(f"cannot read {path}: {error.__class__.__name__}") from None
    for column in table.columns:
        if column not in text_columns:
            table[column] = pd.to_numeric(table[column], errors="coerce")
    return table


def read_run_config(output_dir: Path) -> dict[str, Any]:
    """The run's ``run_config.json`` (settings and ``class-names``)."""
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


def _read_predictions(path: Path, class_names: list[str], notes: list[str]) -> Predictions | None:
    if not path.is_file():
        notes.append(f"no {PREDICTIONS_CSV}: no confusion matrix, per-class metrics or Grad-CAM examples")
        return None
    table = _read_csv(path, text_columns=("file",))
    missing = [c for c in ("file", "label", "leak_free", *class_names) if c not in table.columns]
    labels = table["label"].to_numpy(dtype=float) if "label" in table else np.array([])
    if missing or table.empty or not np.all(np.isin(labels, range(len(class_names)))):
        problem = f"no column {', '.join(missing)}" if missing else "no rows or a label out of range"
        notes.append(f"{PREDICTIONS_CSV} unusable ({problem}): per-class results are left out")
        return None
    flags = table["leak_free"]
    return Predictions(
        files=[str(f) for f in table["file"]],
        labels=labels.astype(int),
        probabilities=table[class_names].to_numpy(dtype=np.float64),
        leak_free=None if flags.isna().all() else flags.fillna(0).to_numpy() == 1,
    )


def read_run(output_dir: Path) -> Run:
    """Read every artefact of ``output_dir``; missing optional ones become notes."""
    if not output_dir.is_dir():
        raise BrainFLError(f"run output folder not found: {output_dir}")
    config = read_run_config(output_dir)
    if not (output_dir / RESULTS_CSV).is_file():
        raise BrainFLError(f"no {RESULTS_CSV} in {output_dir} (is it a brainfl run's output folder?)")
    results = _read_csv(output_dir / RESULTS_CSV)
    if "round" in results:
        results = results.sort_values("round", kind="stable").reset_index(drop=True)
    notes: list[str] = []
    recalls = [
        c[len("recall_") :] for c in results.columns if c.startswith("recall_") and c != "recall_macro"
    ]
    class_names = class_names_in(config) or recalls
    sites = _read_csv(output_dir / SITE_CSV)
    if not sites.empty and not {"round", "site"} <= set(sites.columns):
        notes.append(f"{SITE_CSV} has no round/site columns: per-site results are left out")
        sites = pd.DataFrame()
    partition = _read_csv(output_dir / PARTITION_CSV)
    partition = partition.set_index("site") if "site" in partition and not partition.empty else pd.DataFrame()
    if partition.empty:
        notes.append(
            f"no {PARTITION_CSV}: the partition figure shows each site's training images from "
            f"{SITE_CSV}, without a per-class split"
            if not sites.empty
            else f"no {PARTITION_CSV} and no per-site results: no partition figure (a centralized run?)"
        )
    predictions = _read_predictions(output_dir / PREDICTIONS_CSV, class_names, notes)
    return Run(output_dir, config, class_names, results, sites, partition, predictions, notes)


def _last(results: pd.DataFrame, column: str) -> tuple[float, int] | None:
    """The last recorded value of ``column`` and its round."""
    if column not in results or "round" not in results:
        return None
    rows = results[results[column].notna()]
    return None if rows.empty else (float(rows[column].iloc[-1]), int(rows["round"].iloc[-1]))


def wall_time(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s`` or ``2 h 03 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


LEAK_FREE_HEADLINE = "leak-free test accuracy"


def headline_columns() -> list[tuple[str, str]]:
    """(column, words) of the headline numbers: the registry's headline metrics, the leak-free
    accuracy after the first two."""
    items = [(metric.name, metric.headline) for metric in registry.METRICS if metric.headline]
    return [*items[:2], (LEAK_FREE, LEAK_FREE_HEADLINE), *items[2:]]


def _row_of(results: pd.DataFrame, server_round: int) -> pd.Series:
    return results[results["round"] == server_round].iloc[-1]


def interval_text(row: pd.Series, column: str) -> str | float:
    """``95% CI low-high`` of ``column`` from its ``_low``/``_high`` cells in ``row``; NaN if unrecorded."""
    low, high = (float(row.get(f"{column}_{bound}", math.nan)) for bound in BOUNDS)
    return math.nan if math.isnan(low) or math.isnan(high) else f"95% CI {low:.4f}-{high:.4f}"


def headline(run: Run) -> list[tuple[str, str]]:
    """(label, value) pairs: final and best accuracy, balanced accuracy, leak-free accuracy, macro F1,
    ECE, rounds, wall time and, where recorded, the deployment clock (``parallel_elapsed_s``: the sites
    in parallel); the final round's 95% interval after a value where it was recorded."""
    results, items = run.results, []
    for column, label in headline_columns():
        last = _last(results, column)
        if last is None:
            continue
        interval = interval_text(_row_of(results, last[1]), column)
        value = f"{last[0]:.4f}" if isinstance(interval, float) else f"{last[0]:.4f} ({interval})"
        items.append((f"{label} (round {last[1]})", value))
        if column == "accuracy":
            best = results.loc[results["accuracy"].idxmax()]
            items.append((f"best test accuracy (round {int(best['round'])})", f"{best['accuracy']:.4f}"))
    if "round" in results and results["round"].notna().any():
        items.append(("rounds", str(int(results["round"].max()))))
    elapsed = _last(results, "elapsed_s")
    if elapsed is not None:
        items.append(("wall time", wall_time(elapsed[0])))
    parallel = _last(results, "parallel_elapsed_s")  # absent in an older run's results
    if parallel is not None:
        items.append(("deployment clock (sites in parallel)", wall_time(parallel[0])))
    return items


def per_class_clinical(results: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Per class, from the last evaluated round's row: the 95% interval of its sensitivity (recall),
    its specificity and one-vs-rest ROC-AUC; only the columns that were recorded."""
    last = _last(results, "accuracy")
    row = _row_of(results, last[1]) if last else pd.Series(dtype=float)
    columns = {}
    for metric in (m for m in registry.METRICS if m.per_class and m.round and m.evaluate):
        if metric.bounds:
            stems = metric.columns(class_names)
            columns[f"{metric.label} 95% CI"] = [interval_text(row, stem) for stem in stems]
        else:
            cells = metric.columns(class_names, metric.round_column)
            columns[metric.label] = [row.get(cell, math.nan) for cell in cells]
    table = pd.DataFrame(columns, index=pd.Index(list(class_names), name="class"))
    return table.dropna(axis=1, how="all")


def per_class_table(predictions: Predictions, class_names: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, then macro and weighted averages."""

    report = classification_report(
        predictions.labels,
        predictions.predicted,
        labels=list(range(len(class_names))),
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )
    rows = [*class_names, "macro avg", "weighted avg"]
    table = pd.DataFrame([report[row] for row in rows], index=rows)
    table = table.rename(columns={"f1-score": "f1"})[["precision", "recall", "f1", "support"]]
    table["support"] = table["support"].astype(int)
    table.index.name = "class"
    return table


def confusion(predictions: Predictions, num_classes: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Counts (rows: true, columns: predicted) and row-normalized; a last column of
    non-finite rows is added when there are any (third value True)."""

    predicted = predictions.predicted
    counts = confusion_matrix(predictions.labels, predicted, labels=list(range(num_classes)))
    broken = predicted < 0
    if broken.any():
        missing = np.bincount(predictions.labels[broken], minlength=num_classes)[:, np.newaxis]
        counts = np.hstack([counts, missing])
    totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    return counts, normalized, bool(broken.any())


def pick_examples(predictions: Predictions, num_classes: int) -> list[tuple[int, str]]:
    """Rows to explain: per true class, the most confident correct and wrong (finite) prediction."""
    predicted = predictions.predicted
    finite = predicted >= 0
    confidence = np.where(finite, np.nan_to_num(predictions.probabilities, nan=0.0).max(axis=1), -1.0)
    picked: list[tuple[int, str]] = []
    for label in range(num_classes):
        own = finite & (predictions.labels == label)
        for kind, mask in (("correct", own & (predicted == label)), ("wrong", own & (predicted != label))):
            candidates = np.flatnonzero(mask)
            if candidates.size:
                picked.append((int(max(candidates, key=lambda i: (confidence[i], -i))), kind))
    return picked


def _same(value: Any, default: Any) -> bool:
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (value, default)):
        return math.isclose(value, default, rel_tol=1e-9)
    return type(value) is type(default) and value == default


def show_value(value: Any) -> str:
    """A setting's value as text: strings bare (``""`` when empty), lists comma-joined, else JSON."""
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list):
        return ", ".join(show_value(v) for v in value)
    return json.dumps(value)


def settings_tables(config: dict[str, Any], notes: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Rows ``[setting, value, default]`` of the settings that differ from the app's defaults
    (``[tool.flwr.app.config]`` of its ``pyproject.toml``), and of all settings."""
    try:
        defaults = default_run_config()
    except BrainFLError as error:
        notes.append(f"default settings unknown ({error}): every setting is listed as differing")
        defaults = {}
    differing, every = [], []
    for key in sorted(config):
        row = [key, show_value(config[key]), show_value(defaults[key]) if key in defaults else ""]
        every.append(row)
        if key not in defaults or not _same(config[key], defaults[key]):
            differing.append(row)
    return differing, every
