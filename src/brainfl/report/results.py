"""Run outputs: per-round CSVs flushed as each round ends, and the run config.

``federated_learning_results.csv`` gets one row per round (round 0 is the
model before training), with the server's clinical metrics and their
bootstrap intervals (:func:`brainfl.evaluation.metrics.interval_columns`);
``site_metrics.csv`` one row per site and round, with the site's held-out
balanced accuracy and per-class sensitivity and its seconds per phase (and,
with Ditto, its personal model's held-out scores, :data:`DITTO_SITE_FIELDS`);
``partition.csv`` one row per site (its image counts per class, as the site
reported them); ``test_predictions.csv`` the latest global model's
probabilities for every test image (rewritten each round);
``personalization.csv`` (:mod:`brainfl.federation.personalization`) one row per site,
after the last round. The report is made from these files alone.
Model files are :mod:`brainfl.model.files`' job.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from brainfl.core.errors import BrainFLError
from brainfl.core.files import write_atomically
from brainfl.core.logs import LOG
from brainfl.core.timings import PHASES, TOTAL
from brainfl.evaluation.metrics import held_out_keys, result_columns
from brainfl.model.files import RUN_CONFIG
from brainfl.settings.run_settings import RunSettings

RESULTS_CSV = "federated_learning_results.csv"
SITE_CSV = "site_metrics.csv"
PARTITION_CSV = "partition.csv"
PREDICTIONS_CSV = "test_predictions.csv"
PERSONALIZATION_CSV = "personalization.csv"  # written by brainfl.federation.personalization
AUDIT_JSONL = "audit.jsonl"  # written by brainfl.federation.audit, read by brainfl.report.audit
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
    *(f"{phase}_s" for phase in PHASES),
    TOTAL,
)
# A Ditto site's personal model, scored on its held-out split after the round's steps
# (brainfl.federation.ditto): site_metrics.csv's last columns in a Ditto run.
DITTO_SITE_FIELDS = ("ditto_val_loss", "ditto_val_accuracy", "ditto_val_balanced_accuracy")
CLOCKS = ("elapsed_s", "parallel_elapsed_s")  # this machine's clock; the deployment clock (sites in parallel)


def results_header(class_names: Sequence[str]) -> list[str]:
    """Columns of the per-round results CSV, starting ``round,loss,accuracy``."""
    return ["round", *result_columns(class_names), *ROUND_FIELDS, "epsilon", *CLOCKS]


def site_header(class_names: Sequence[str], ditto: bool = False) -> list[str]:
    """Columns of ``site_metrics.csv``: :data:`SITE_FIELDS` with the site's held-out balanced accuracy
    and sensitivity per class after ``val_accuracy`` (and, for a Ditto run, :data:`DITTO_SITE_FIELDS`
    at the end)."""
    held_out = [key for key in held_out_keys(class_names) if key not in SITE_FIELDS]
    at = SITE_FIELDS.index("val_accuracy") + 1
    return [*SITE_FIELDS[:at], *held_out, *SITE_FIELDS[at:], *(DITTO_SITE_FIELDS if ditto else ())]


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


def last_recorded_round(path: Path) -> int | None:
    """The round of a per-round CSV's last row (None: no rows)."""
    rows = read_rows(path) if path.exists() else []
    return int(rows[-1]["round"]) if rows else None


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


class CsvAppender:
    """Append rows to a CSV with a fixed header, each row written atomically.

    An existing file keeps its own header (a resumed run of an older version): the
    rows follow it, and columns it lacks are left out.
    """

    def __init__(self, path: Path, header: Sequence[str]) -> None:
        self.path = path
        self.header = list(header)
        if not path.exists() or path.stat().st_size == 0:
            write_atomically(path, lambda handle: handle.write(_csv_text([self.header]).encode()))
            return
        with open(path, newline="", encoding="utf-8") as handle:
            existing = next(csv.reader(handle), self.header)
        if existing != self.header:
            left_out = [column for column in self.header if column not in existing]
            LOG.warning("%s keeps its columns; left out: %s", path.name, ", ".join(left_out) or "none")
            self.header = existing

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row (missing columns empty, floats with 6 significant digits): the table so far
        and the row go to a temporary file that replaces the table, so an interrupted run leaves
        the table as it was, never a partial row."""
        values = [_format(row.get(column, "")) for column in self.header]
        table = self.path.read_bytes() + _csv_text([values]).encode()
        write_atomically(self.path, lambda handle: handle.write(table))


def _format(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def write_run_config(output_dir: Path, config: Mapping[str, Any]) -> None:
    """Record the run's settings (and extras such as class names) as JSON."""
    text = json.dumps(dict(config), indent=2, sort_keys=True) + "\n"
    write_atomically(output_dir / RUN_CONFIG, lambda handle: handle.write(text.encode()))


def partition_header(class_names: Sequence[str]) -> list[str]:
    """Columns of ``partition.csv``: the site, its image counts, its training images per class."""
    return ["site", "num_train", "num_val", *class_names]


def write_predictions(
    path: Path,
    files: Sequence[str],
    labels: Sequence[int],
    leak_free: Sequence[bool] | None,
    probabilities: Any,
    class_names: Sequence[str],
) -> None:
    """Write ``test_predictions.csv``: file, true label, leak-free flag, one probability per class."""
    rows = [["file", "label", "leak_free", *class_names]]
    for index, (file, label) in enumerate(zip(files, labels, strict=True)):
        flag = "" if leak_free is None else int(bool(leak_free[index]))
        rows.append([file, int(label), flag, *(f"{float(p):.6g}" for p in probabilities[index])])
    write_atomically(path, lambda handle: handle.write(_csv_text(rows).encode()))


def check_new_run_folder(settings: RunSettings) -> None:
    """Refuse an ``output-dir`` that already holds a run's results, unless the run resumes it: a run
    folder is never written twice (rows of two runs would mix in one table)."""
    if settings.federation.resume or not settings.output_dir:
        return
    path = Path(settings.output_dir).expanduser()
    held = [name for name in (RESULTS_CSV, SITE_CSV) if (path / name).exists()]
    if held:
        raise BrainFLError(
            f"output-dir {path} already holds a run ({held[0]}): resume it (run.sh --resume {path}) "
            "or choose another folder"
        )


def resolve_output_dir(settings: RunSettings) -> Path:
    """``output-dir`` or ``outputs/<timestamp>``, created with its ``logs`` folder; refused when it
    already holds a run that is not being resumed (:func:`check_new_run_folder`)."""
    check_new_run_folder(settings)
    path = Path(settings.output_dir or f"outputs/{datetime.now():%Y%m%d-%H%M%S}").expanduser().resolve()
    (path / "logs").mkdir(parents=True, exist_ok=True)
    return path
