"""Figures of scored predictions (matplotlib, no display needed): confusion matrix and reliability diagram.

``brainfl evaluate`` and the run report draw them with the same functions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from brainfl.core.files import write_atomically

FIGURE_DPI = 110


def new_figure(width: float, height: float):

    return Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")


def save_figure(figure: Figure, path: Path) -> Path:
    """Save ``figure`` as a PNG at ``path``, atomically."""
    write_atomically(path, lambda handle: figure.savefig(handle, format="png"))
    return path


def cells(matrix: np.ndarray) -> Iterator[tuple[int, int, float]]:
    for row in range(matrix.shape[0]):
        for col in range(matrix.shape[1]):
            yield row, col, matrix[row, col]


def plot_confusion(
    counts: np.ndarray, normalized: np.ndarray, class_names: Sequence[str], path: Path, no_prediction: bool
) -> Path:
    """Confusion matrix, counts and row-normalized side by side (an extra column of
    non-finite rows when ``no_prediction``)."""
    columns = [*class_names, "no prediction"] if no_prediction else list(class_names)
    figure = new_figure(11.5 if no_prediction else 11, 4.8)
    for axis, matrix, title, fmt in zip(
        figure.subplots(1, 2),
        (counts, normalized),
        ("Counts", "Row-normalized (recall on the diagonal)"),
        ("{:.0f}", "{:.2f}"),
        strict=True,
    ):
        scale = matrix.max() if matrix.max() > 0 else 1
        image = axis.imshow(matrix, cmap="Blues", vmin=0, vmax=scale)
        figure.colorbar(image, ax=axis, shrink=0.8)
        axis.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
        axis.set_yticks(range(len(class_names)), class_names)
        axis.set_xlabel("predicted class")
        axis.set_ylabel("true class")
        axis.set_title(title)
        for row, col, value in cells(matrix):
            color = "white" if value > scale * 0.6 else "black"
            axis.text(col, row, fmt.format(value), ha="center", va="center", color=color, fontsize=9)
    return save_figure(figure, path)


def plot_confusion_counts(counts: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Confusion matrix (rows: true class; columns: predicted class, then scans with non-finite outputs),
    counts and row-normalized; the last column only when there are such scans."""
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
    return save_figure(figure, path)
