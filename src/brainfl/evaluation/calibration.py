"""Temperature scaling: one number T that softens (T > 1) or sharpens (T < 1) a model's probabilities.

The models output softmax probabilities, so scaling works on their logarithms:
``softmax(log p / T)`` per image (:func:`scale_probabilities`). Dividing every
log-probability by the same positive T keeps their order, so the predicted
class, and with it accuracy and every count metric, never changes; only the
confidence does, and with it the calibration error (ECE) and the
negative log-likelihood (NLL).

T is fitted federatedly (:mod:`brainfl.federation.calibration_query`): each site
evaluates the summed NLL of its validation images at every temperature of one
fixed log-spaced grid (:func:`nll_curve`, :data:`TEMPERATURES`) and sends only
that curve and its image count; the coordinator adds the curves, which weighs
every site by its images exactly as fitting on the pooled images would, and
takes the minimising T (:func:`best_temperature`: the grid's minimum refined by
the vertex of the parabola, in log T, through it and its two neighbours).
``calibration.json`` (:func:`write_calibration`, :func:`read_calibration`)
records the fit and its effect on the coordinator's test set;
:func:`report_view` and :func:`headline_items` show it in the run report.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import log_softmax

from brainfl.core.files import write_json
from brainfl.evaluation.intervals import json_number, score_with_intervals
from brainfl.evaluation.metrics import classification_metrics
from brainfl.model.outputs import finite_rows, log_probabilities, scale_probabilities

CALIBRATION_JSON = "calibration.json"
TEMPERATURES = np.geomspace(0.25, 4.0, 101)  # the grid every site evaluates: steps of 2.8% in T
METRICS = ("ece", "nll", "accuracy")  # scored on the test set before and after scaling


def nll_curve(
    labels: np.ndarray, probabilities: np.ndarray, temperatures: np.ndarray = TEMPERATURES
) -> tuple[np.ndarray, int]:
    """The summed negative log-likelihood of ``labels`` at each temperature, over the finite rows, and
    how many rows that is (a sum, not a mean: the sites' curves add up to the pooled images' curve)."""
    finite = finite_rows(probabilities)
    log_p = log_probabilities(np.asarray(probabilities)[finite])
    rows, truth = np.arange(len(log_p)), np.asarray(labels, dtype=np.int64)[finite]
    curve = [-log_softmax(log_p / t, axis=1)[rows, truth].sum() for t in np.asarray(temperatures)]
    return np.asarray(curve, dtype=np.float64), int(finite.sum())


def best_temperature(temperatures: np.ndarray, curve: np.ndarray) -> float:
    """The temperature minimising ``curve``: the grid's minimum refined by the vertex of the parabola in
    log T through it and its neighbours (the grid's end when the minimum lies there)."""
    temperatures, curve = np.asarray(temperatures, dtype=np.float64), np.asarray(curve, dtype=np.float64)
    i = int(np.argmin(curve))
    if i in (0, len(curve) - 1):
        return float(temperatures[i])
    x = np.log(temperatures[i - 1 : i + 2])
    a, b, _ = np.polyfit(x, curve[i - 1 : i + 2], 2)
    return float(np.exp(np.clip(-b / (2 * a), x[0], x[2]))) if a > 0 else float(temperatures[i])


@dataclasses.dataclass(frozen=True)
class SiteCurve:
    """One site's answer: its summed NLL per grid temperature over its ``examples`` validation images."""

    site: int
    examples: int
    curve: np.ndarray


@dataclasses.dataclass(frozen=True)
class Fit:
    """The federation's temperature from the sites' curves, and each site's own."""

    temperature: float
    examples: int
    sites: dict[int, tuple[int, float]]  # site -> (validation images, its own best temperature)
    at_bound: bool  # the minimum lies at an end of the grid: the best T may lie beyond it


def combine(curves: Sequence[SiteCurve], temperatures: np.ndarray = TEMPERATURES) -> Fit:
    """The minimiser of the summed curves (weighted by images, as on the pooled images), and each site's."""
    used = [c for c in curves if c.examples > 0]
    if not used:
        raise ValueError("no site curve with images to combine")
    total = np.sum([c.curve for c in used], axis=0)
    temperature = best_temperature(temperatures, total)
    return Fit(
        temperature=temperature,
        examples=sum(c.examples for c in used),
        sites={c.site: (c.examples, best_temperature(temperatures, c.curve)) for c in used},
        at_bound=temperature in (float(temperatures[0]), float(temperatures[-1])),
    )


def scores(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict[str, float | None]:
    """ECE (15 bins), NLL (mean cross-entropy, the results' ``loss``) and accuracy of ``probabilities``."""
    metrics = classification_metrics(labels, probabilities, class_names)
    ece = score_with_intervals(labels, probabilities, class_names, resamples=0).overall["ece"].value
    values = dict(zip(METRICS, (ece, metrics["loss"], metrics["accuracy"]), strict=True))
    return {name: json_number(value) for name, value in values.items()}  # None: undefined (NaN, inf)


def effect_on_test(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], temperature: float
) -> dict[str, Any]:
    """:func:`scores` of the test probabilities before and after scaling them by ``temperature``."""
    return {
        "images": len(labels),
        "before": scores(labels, probabilities, class_names),
        "after": scores(labels, scale_probabilities(probabilities, temperature), class_names),
    }


def calibration_record(fit: Fit, test: dict[str, Any] | None, temperatures: np.ndarray) -> dict[str, Any]:
    """What ``calibration.json`` holds: T, the grid, each site's images and T, the test set's effect."""
    return {
        "temperature": fit.temperature,
        "at_grid_bound": fit.at_bound,
        "grid": {"low": float(temperatures[0]), "high": float(temperatures[-1]), "points": len(temperatures)},
        "examples": fit.examples,
        "sites": [
            {"site": site, "examples": examples, "temperature": own}
            for site, (examples, own) in sorted(fit.sites.items())
        ],
        "test": test,
    }


def write_calibration(output_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``calibration.json`` (atomically) into ``output_dir``; its path."""
    return write_json(output_dir / CALIBRATION_JSON, record)


def read_calibration(output_dir: Path) -> dict[str, Any] | None:
    """The run's ``calibration.json``, or None when there is none (or it cannot be read)."""
    try:
        record = json.loads((output_dir / CALIBRATION_JSON).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "temperature" in record else None


def report_view(record: dict[str, Any]) -> dict[str, Any]:
    """``calibration.json`` as the report shows it: T (as text), the validation images, a table of the test
    set's ECE, NLL and accuracy before and after scaling (None without a test set) and one of the sites."""

    test = record.get("test") or {}
    effect = pd.DataFrame(
        {when: [(test.get(when) or {}).get(name) for name in METRICS] for when in ("before", "after")},
        index=pd.Index(["ECE", "NLL (mean)", "accuracy"], name="test set"),
        dtype=float,
    )
    sites = pd.DataFrame(record.get("sites") or [], columns=["site", "examples", "temperature"])
    sites["temperature"] = [f"{float(t):.3f}" for t in sites["temperature"]]  # text: 4.000, not 4
    sites = sites.rename(columns={"examples": "validation images", "temperature": "its own T"})
    bound = ", at the end of the grid: the best T may lie beyond" if record.get("at_grid_bound") else ""
    return {
        "temperature": f"{float(record['temperature']):.3f}{bound}",
        "examples": int(record.get("examples") or 0),
        "effect": effect if test else None,
        "sites": sites.set_index("site"),
    }


def headline_items(record: dict[str, Any]) -> list[tuple[str, str]]:
    """The report's headline numbers of ``calibration.json``: T, and the test set's ECE after scaling."""
    items = [("calibrated temperature T", f"{float(record['temperature']):.3f}")]
    test = record.get("test") or {}
    before, after = ((test.get(when) or {}).get("ece") for when in ("before", "after"))
    if before is not None and after is not None:
        items.append(("ECE after temperature scaling", f"{after:.4f} (before {before:.4f})"))
    return items
