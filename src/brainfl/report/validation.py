"""The outputs of an evaluation-only run: ``validation.csv``, ``cross_site.csv``, a heat map and a page.

``validation.csv`` has one row per (model, site) and one ``pooled`` row per
model (every site's counts added up): the scans scored, then every metric of the
registry with its 95% interval (``<stem>``, ``<stem>_low``, ``<stem>_high``, as
:meth:`brainfl.evaluation.intervals.Scores.columns` names them). With more than
one model, ``cross_site.csv`` is the accuracy matrix (a row per model, a column
per site and the pooled column) and ``cross_site.png`` its heat map, as in
cross-site validation: which site's model generalizes, which site is an outlier.
``validation.html`` shows them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainfl.core.files import write_atomically
from brainfl.evaluation.figures import cells, new_figure
from brainfl.evaluation.intervals import Scores
from brainfl.report.figures import data_uri
from brainfl.report.html import render
from brainfl.report.tables import frame_table

VALIDATION_CSV = "validation.csv"
CROSS_SITE_CSV = "cross_site.csv"
CROSS_SITE_FIGURE = "cross_site.png"
VALIDATION_HTML = "validation.html"
TEMPLATE = "validation.html.j2"
POOLED = "pooled"  # the site column of a model's row over every site's scans
MATRIX_METRIC = "accuracy"  # the cross-site matrix's quantity
HEADLINE = ("images", "accuracy", "balanced_accuracy", "ece")  # the page's summary columns


def validation_row(model: str, site: str, scores: Scores) -> dict[str, Any]:
    """One row of ``validation.csv``: what was scored where, then every metric with its interval."""
    return {"model": model, "site": site, "images": scores.images, **scores.columns()}


def write_table(path: Path, frame: pd.DataFrame, index: bool) -> None:
    """A CSV of ``frame`` (6 decimals), written to a temporary name and moved in place."""
    text = frame.round(6).to_csv(index=index)
    write_atomically(path, lambda handle: handle.write(text.encode()))


def cross_site_matrix(rows: pd.DataFrame) -> pd.DataFrame:
    """Accuracy by model (rows, in run order) and site (columns, pooled last)."""
    matrix = rows.pivot(index="model", columns="site", values=MATRIX_METRIC)
    sites = [site for site in dict.fromkeys(rows["site"]) if site != POOLED]
    return matrix.loc[list(dict.fromkeys(rows["model"])), [*sites, POOLED]]


def plot_cross_site(matrix: pd.DataFrame, path: Path) -> Path:
    """The cross-site matrix as a heat map, each cell's accuracy written in it."""
    values = matrix.to_numpy(dtype=float)
    figure = new_figure(1.6 + 1.1 * values.shape[1], 1.2 + 0.5 * values.shape[0])
    axis = figure.subplots()
    image = axis.imshow(values, cmap="RdYlGn", vmin=np.nanmin(values, initial=1.0), vmax=1.0, aspect="auto")
    figure.colorbar(image, ax=axis, shrink=0.8, label=MATRIX_METRIC)
    axis.set_xticks(range(values.shape[1]), [f"site {c}" if c != POOLED else c for c in matrix.columns])
    axis.set_yticks(range(values.shape[0]), list(matrix.index))
    axis.set_xlabel("scored at")
    axis.set_ylabel("model")
    for row, col, value in cells(values):
        axis.text(col, row, "" if np.isnan(value) else f"{value:.3f}", ha="center", va="center", fontsize=9)
    figure.savefig(path, format="png")
    return path


def write_validation(output_dir: Path, rows: Sequence[Mapping[str, Any]]) -> list[Path]:
    """``validation.csv`` and, with several models, ``cross_site.csv`` and its heat map; the paths."""
    frame = pd.DataFrame(list(rows))
    paths = [output_dir / VALIDATION_CSV]
    write_table(paths[0], frame, index=False)
    if frame["model"].nunique() > 1:
        matrix = cross_site_matrix(frame)
        paths.append(output_dir / CROSS_SITE_CSV)
        write_table(paths[-1], matrix, index=True)
        paths.append(plot_cross_site(matrix, output_dir / CROSS_SITE_FIGURE))
    return paths


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The page's table: per model and site, the headline metrics as ``value [low, high]``."""
    shown = frame[["model", "site"]].copy()
    for name in HEADLINE:
        if name == "images":
            shown[name] = frame[name].astype(int)
            continue
        shown[name] = [
            f"{value:.4f} [{low:.4f}, {high:.4f}]"
            for value, low, high in zip(frame[name], frame[f"{name}_low"], frame[f"{name}_high"], strict=True)
        ]
    return shown


def make_validation_report(output_dir: Path) -> Path:
    """``validation.html`` from the folder's ``validation.csv`` (and cross-site matrix)."""
    frame = pd.read_csv(output_dir / VALIDATION_CSV, dtype={"site": str})
    figure = output_dir / CROSS_SITE_FIGURE
    context = {
        "title": f"brainfl validation: {output_dir.name}",
        "output_dir": str(output_dir),
        "notes": [],
        "summary": frame_table(summary_table(frame), index=False),
        "every": frame_table(frame, index=False),
        "cross_site": data_uri(figure) if figure.is_file() else None,
    }
    page = render(context, TEMPLATE)
    path = output_dir / VALIDATION_HTML
    write_atomically(path, lambda handle: handle.write(page.encode("utf-8")))
    return path
