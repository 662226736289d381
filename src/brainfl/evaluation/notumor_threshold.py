"""The ``notumor`` threshold: the lowest-cost operating point that keeps missed tumors under a target.

The costly error of a brain-tumor classifier is a tumor scan called
``notumor`` (a missed tumor); calling a scan without a tumor a tumor (a false
alarm) costs a second reading. With a threshold ``t`` the model predicts
``notumor`` only when it is the most probable class with probability at least
``t``, and otherwise its most probable tumor class
(:func:`brainfl.model.outputs.predicted_classes`): raising ``t`` turns
``notumor`` calls into tumor calls, trading false alarms for missed tumors.

For each threshold of :data:`THRESHOLDS` a set of labelled scans gives counts
only (:func:`threshold_counts`: tumor scans, ``notumor`` scans, missed tumors
and false alarms), which add up over sites (the federated fit in
:mod:`brainfl.federation.threshold_query`). :func:`choose_threshold` picks,
among the thresholds whose missed-tumor rate (missed tumors / tumor scans) is
at most the target (``missed-tumor-target``), the one with the lowest cost
(missed tumors + false alarms; ties: the lowest threshold, the closest to
plain argmax). When no threshold meets the target it picks the one with the
fewest missed tumors and says so (``met`` false). The record written as
``notumor_threshold.json`` holds the fit, the pooled counts per threshold and
the test set's rates before and after.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainfl.core.files import write_json
from brainfl.evaluation.intervals import json_number
from brainfl.model.outputs import NotumorRule, notumor_rule, predicted_classes

THRESHOLDS = np.round(np.concatenate([np.arange(0.0, 0.99, 0.01), [0.99, 0.995, 0.999]]), 3)
NOTUMOR_THRESHOLD_JSON = "notumor_threshold.json"


@dataclasses.dataclass(frozen=True)
class ThresholdCounts:
    """Counts of a labelled set at each threshold of a grid: numbers only, summable over sites."""

    tumor: int  # tumor scans
    notumor: int  # notumor scans
    missed: np.ndarray  # per threshold: tumor scans predicted notumor
    false_alarms: np.ndarray  # per threshold: notumor scans predicted a tumor class

    def __add__(self, other: ThresholdCounts) -> ThresholdCounts:
        return ThresholdCounts(
            self.tumor + other.tumor,
            self.notumor + other.notumor,
            self.missed + other.missed,
            self.false_alarms + other.false_alarms,
        )


def threshold_counts(
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    thresholds: Sequence[float] = THRESHOLDS,
) -> ThresholdCounts | None:
    """The counts of ``labels`` against ``probabilities`` at each threshold (None: no ``notumor``
    class). A row that is not finite predicts no class: neither a missed tumor nor a false alarm."""
    rule = notumor_rule(class_names)
    if rule is None:
        return None
    labels = np.asarray(labels, dtype=np.int64)
    is_notumor = labels == rule.index
    missed, false_alarms = [], []
    for threshold in thresholds:
        predicted = predicted_classes(probabilities, NotumorRule(rule.index, float(threshold)))
        called_notumor = predicted == rule.index
        missed.append(int(np.sum(~is_notumor & called_notumor)))
        false_alarms.append(int(np.sum(is_notumor & ~called_notumor & (predicted >= 0))))
    return ThresholdCounts(
        int(np.sum(~is_notumor)), int(np.sum(is_notumor)), np.asarray(missed), np.asarray(false_alarms)
    )


@dataclasses.dataclass(frozen=True)
class ThresholdFit:
    """The chosen threshold, whether it meets the target, and its rates on the counts it came from."""

    threshold: float
    target: float
    met: bool
    missed_rate: float  # missed tumors / tumor scans at the threshold
    false_alarm_rate: float  # false alarms / notumor scans at the threshold
    tumor: int
    notumor: int


def _rate(count: np.ndarray, total: int) -> np.ndarray:
    return np.asarray(count, dtype=np.float64) / total if total else np.full(np.shape(count), np.nan)


def choose_threshold(counts: ThresholdCounts, thresholds: Sequence[float], target: float) -> ThresholdFit:
    """The lowest-cost threshold whose missed-tumor rate is at most ``target`` (see the module
    docstring); without a tumor scan, 0 (plain argmax)."""
    grid = np.asarray(thresholds, dtype=np.float64)
    missed_rate = _rate(counts.missed, counts.tumor)
    cost = counts.missed + counts.false_alarms
    met = counts.tumor > 0 and bool(np.any(missed_rate <= target))
    if counts.tumor == 0:
        index = int(np.argmin(grid))
    elif met:
        index = int(np.argmin(np.where(missed_rate <= target, cost, np.inf)))  # the first of equals
    else:
        index = int(np.lexsort((grid, cost, counts.missed))[0])
    return ThresholdFit(
        threshold=float(grid[index]),
        target=float(target),
        met=met,
        missed_rate=float(missed_rate[index]),
        false_alarm_rate=float(_rate(counts.false_alarms, counts.notumor)[index]),
        tumor=counts.tumor,
        notumor=counts.notumor,
    )


def effect_on_test(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], threshold: float
) -> dict[str, dict[str, float | None]] | None:
    """The test set's missed-tumor and false-alarm rates with plain argmax and with ``threshold``."""
    counts = threshold_counts(labels, probabilities, class_names, [0.0, threshold])
    if counts is None:
        return None
    missed, alarms = _rate(counts.missed, counts.tumor), _rate(counts.false_alarms, counts.notumor)
    return {
        stage: {"missed_tumor_rate": json_number(missed[i]), "false_alarm_rate": json_number(alarms[i])}
        for i, stage in enumerate(("argmax", "threshold"))
    }


def threshold_record(
    fit: ThresholdFit,
    counts: ThresholdCounts,
    thresholds: Sequence[float],
    sites: Sequence[int],
    effect: dict[str, Any] | None,
) -> dict[str, Any]:
    """What ``notumor_threshold.json`` holds."""
    return {
        **{key: json_number(v) if isinstance(v, float) else v for key, v in dataclasses.asdict(fit).items()},
        "sites": list(sites),
        "grid": {
            "thresholds": [float(t) for t in thresholds],
            "missed": counts.missed.tolist(),
            "false_alarms": counts.false_alarms.tolist(),
        },
        "test": effect,
    }


def write_threshold(output_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``notumor_threshold.json`` into ``output_dir``; its path."""
    return write_json(output_dir / NOTUMOR_THRESHOLD_JSON, record)
