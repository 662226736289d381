"""Run outputs: per-round CSVs flushed as each round ends, and model files.

``federated_learning_results.csv`` gets one row per round (round 0 is the
model before training); ``site_metrics.csv`` one row per site and round.
Models are written to a temporary file and renamed, so a crash never leaves a
half-written checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras

from brainfl.files import write_atomically
from brainfl.metrics import METRIC_NAMES

RESULTS_CSV = "federated_learning_results.csv"
SITE_CSV = "site_metrics.csv"
CHECKPOINT = "checkpoint.keras"
FINAL_MODEL = "final_model.keras"
RUN_CONFIG = "run_config.json"
MODEL_METADATA = "brainfl.json"
ROUND_FIELDS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "sites_trained", "sites_failed")
SITE_FIELDS = (
    "round",
    "site",
    "num_train",
    "num_val",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
)


def results_header(class_names: Sequence[str]) -> list[str]:
    """Columns of the per-round results CSV, starting ``round,loss,accuracy``."""
    per_class = [f"recall_{name}" for name in class_names]
    return ["round", *METRIC_NAMES, *per_class, "leak_free_accuracy", *ROUND_FIELDS, "epsilon", "elapsed_s"]


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a per-round CSV as dicts (empty when the file does not exist)."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def truncate_rows_after(path: Path, last_round: int) -> float:
    """Drop rows with ``round > last_round`` from a per-round CSV; return the last ``elapsed_s`` kept."""
    if not path.exists():
        return 0.0
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return 0.0
    header, body = rows[0], [row for row in rows[1:] if row and int(row[0]) <= last_round]
    write_atomically(path, lambda f: f.write(_csv_text([header, *body]).encode()))
    if "elapsed_s" in header and body:
        return float(body[-1][header.index("elapsed_s")] or 0.0)
    return 0.0


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


class CsvAppender:
    """Append rows to a CSV with a fixed header, flushing after every row."""

    def __init__(self, path: Path, header: Sequence[str]) -> None:
        self.path = path
        self.header = list(header)
        if not path.exists() or path.stat().st_size == 0:
            with open(path, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow(self.header)

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row (missing columns empty, floats with 6 significant digits)."""
        values = [_format(row.get(column, "")) for column in self.header]
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow(values)
            handle.flush()
            os.fsync(handle.fileno())


def _format(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def save_model_atomically(model: keras.Model, path: Path, metadata: Mapping[str, Any]) -> None:
    """Save a Keras model with brainfl metadata, via a temporary file and an atomic rename.

    ``metadata`` (class names, image size, channels, model name) is stored in
    the ``.keras`` archive itself as ``brainfl.json``, so the model file alone
    says what its outputs mean and how to preprocess an image for it.
    """
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(MODEL_METADATA, json.dumps(dict(metadata), indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_model_metadata(path: Path) -> dict[str, Any]:
    """The brainfl metadata stored in a saved ``.keras`` model."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(MODEL_METADATA))


def write_run_config(output_dir: Path, config: Mapping[str, Any]) -> None:
    """Record the run's settings (and extras such as class names) as JSON."""
    (output_dir / RUN_CONFIG).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
