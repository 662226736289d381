"""The run report's figures (matplotlib, no display needed), saved as PNG and embeddable as data URIs.

- accuracy and loss per round: the server's test set, the leak-free test
  accuracy when recorded, and each site's validation;
- the confusion matrix of the saved test predictions, counts and row-normalized;
- the partition: training images per class per site, stacked bars.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from brainfl.evaluation.figures import new_figure, plot_reliability, save_figure
from brainfl.evaluation.intervals import score_with_intervals
from brainfl.evaluation.metrics import LEAK_FREE
from brainfl.model.outputs import scale_probabilities


def data_uri(path: Path) -> str:
    """A PNG file as a ``data:`` URI, so the page needs no file beside it."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _finite(values: pd.Series) -> pd.Series:
    """Infinite values (the loss of a broken model) as gaps in the line."""
    return values.replace([np.inf, -np.inf], np.nan)


def plot_curves(results: pd.DataFrame, sites: pd.DataFrame, path: Path) -> Path:
    """Accuracy and loss per round: server test set, leak-free test set, each site's validation."""
    figure = new_figure(11, 4.2)
    acc_axis, loss_axis = figure.subplots(1, 2)
    rounds = results["round"] if "round" in results else pd.Series(dtype=float)
    for axis, metric, site_metric, title in (
        (acc_axis, "accuracy", "val_accuracy", "Accuracy"),
        (loss_axis, "loss", "val_loss", "Loss"),
    ):
        if metric in results and results[metric].notna().any():
            axis.plot(rounds, _finite(results[metric]), "o-", color="black", lw=2.2, label="server test set")
        if metric == "accuracy" and LEAK_FREE in results and results[LEAK_FREE].notna().any():
            axis.plot(rounds, results[LEAK_FREE], "s:", color="tab:red", lw=2, label="leak-free test set")
        if not sites.empty and site_metric in sites:
            for site, rows in sites.sort_values("round").groupby("site"):
                if rows[site_metric].isna().all():  # a site without a validation split
                    continue
                axis.plot(
                    rows["round"],
                    _finite(rows[site_metric]),
                    ".--",
                    lw=1.2,
                    alpha=0.85,
                    label=f"site {site} val",
                )
        elif site_metric in results and results[site_metric].notna().any():
            axis.plot(rounds, _finite(results[site_metric]), ".--", label="sites' validation (mean)")
        axis.set_title(title)
        axis.set_xlabel("round")
        axis.grid(alpha=0.3)
        if metric == "accuracy":
            axis.set_ylim(0, 1.02)

        axis.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))  # whole rounds, readable at 100
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    return save_figure(figure, path)


def plot_partition(table: pd.DataFrame, stacks: Sequence[str], path: Path) -> Path:
    """Training images per site as bars stacked by ``stacks`` (the classes, or one total)."""
    figure = new_figure(max(5.0, 1.2 * len(table) + 3), 4.2)
    axis = figure.subplots()
    positions = np.arange(len(table))
    bottom = np.zeros(len(table))
    for name in stacks:
        values = table[name].fillna(0).to_numpy(dtype=float)
        axis.bar(positions, values, bottom=bottom, label=name)
        bottom += values
    for x, total in zip(positions, bottom, strict=True):
        axis.text(x, total, f"{int(total)}", ha="center", va="bottom", fontsize=9)
    axis.set_xticks(positions, [f"site {s}" for s in table.index])
    axis.set_ylabel("training images")
    axis.set_title("Training images per site" + (" and class" if len(stacks) > 1 else ""))
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axis.margins(y=0.12)
    return save_figure(figure, path)


RELIABILITY_RESAMPLES = 200  # bootstrap resamples of the ECE's interval in the report's reliability figures


def plot_reliability_pair(
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    temperature: float | None,
    paths: tuple[Path, Path],
) -> list[Path]:
    """Reliability diagrams of the saved test predictions as the model computes them (``paths[0]``)
    and, given the run's calibrated ``temperature``, scaled by it (``paths[1]``)."""
    shown = [("Unscaled", probabilities, paths[0])]
    if temperature is not None:
        scaled = scale_probabilities(probabilities, temperature)
        shown.append((f"Scaled by T={temperature:.3f}", scaled, paths[1]))
    drawn = []
    for title, values, path in shown:
        scores = score_with_intervals(labels, values, class_names, resamples=RELIABILITY_RESAMPLES)
        drawn.append(plot_reliability(scores.reliability, scores.overall["ece"], path, title))
    return drawn
