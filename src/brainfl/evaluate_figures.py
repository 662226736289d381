"""Figures of ``brainfl evaluate`` (matplotlib, no display needed): confusion matrix and reliability diagram.

The confusion matrix is drawn by :func:`brainfl.report_figures.plot_confusion`,
as in the run report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

FIGURE_DPI = 110


def plot_confusion_counts(counts: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Confusion matrix (rows: true class; columns: predicted class, then scans with non-finite outputs),
    counts and row-normalized; the last column only when there are such scans."""
    from brainfl.report_figures import plot_confusion

    broken = bool(counts[:, -1].any())
    shown = counts if broken else counts[:, :-1]
    totals = shown.sum(axis=1, keepdims=True)
    normalized = np.divide(shown, totals, out=np.zeros(shown.shape, dtype=float), where=totals > 0)
    return plot_confusion(shown, normalized, class_names, path, broken)


def plot_reliability(
    reliability: pd.DataFrame, ece: tuple[float, float, float], path: Path, title: str = "Reliability"
) -> Path:
    """Accuracy against mean confidence per confidence bin, over the diagonal of perfect calibration,
    with the number of images per bin below; ``title`` heads the ECE in the figure's title."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    figure = Figure(figsize=(5.5, 6.2), dpi=FIGURE_DPI, layout="constrained")
    curve_axis, count_axis = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    width = float(reliability["upper"].iloc[0] - reliability["lower"].iloc[0])
    centers = ((reliability["lower"] + reliability["upper"]) / 2).to_numpy()
    accuracy = reliability["accuracy"].to_numpy(dtype=float)
    filled = ~np.isnan(accuracy)
    curve_axis.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    curve_axis.bar(
        centers[filled],
        accuracy[filled],
        width=width * 0.95,
        color="tab:blue",
        alpha=0.75,
        edgecolor="black",
        lw=0.5,
        label="accuracy in bin",
    )
    curve_axis.plot(
        reliability["confidence"][filled],
        accuracy[filled],
        "o",
        color="tab:red",
        ms=4,
        label="(mean confidence, accuracy)",
    )
    value, low, high = ece
    curve_axis.set_title(f"{title} (top label): ECE {value:.3f} [{low:.3f}, {high:.3f}]")
    curve_axis.set_ylabel("accuracy")
    curve_axis.set_xlim(0, 1)
    curve_axis.set_ylim(0, 1.02)
    curve_axis.grid(alpha=0.3)
    curve_axis.legend(fontsize=8, loc="upper left")
    count_axis.bar(centers, reliability["count"], width=width * 0.95, color="grey")
    count_axis.set_xlabel("confidence (highest probability)")
    count_axis.set_ylabel("images")
    count_axis.grid(alpha=0.3)
    figure.savefig(path, format="png")
    return path
