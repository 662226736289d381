"""After the last round: the final model's ``notumor`` threshold, fitted on the sites' validation images.

With ``notumor-threshold = "fit"`` the coordinator sends every connected
SuperNode one query message (``config["query"] = "notumor-threshold"``,
:data:`THRESHOLD`; after the calibration query, whose temperature it carries)
with the final weights, the class names, the temperature and the grid of
thresholds (:data:`brainfl.evaluation.notumor_threshold.THRESHOLDS`). Each site
predicts its validation split, scales the probabilities by the temperature (as
``brainfl predict`` will) and answers with numbers only (:func:`site_answer`):
its tumor and ``notumor`` scan counts and, per threshold, its missed tumors and
false alarms. A site without a validation split answers zeros. The coordinator
adds the counts, picks the lowest-cost threshold whose pooled missed-tumor rate
is at most ``missed-tumor-target``
(:func:`brainfl.evaluation.notumor_threshold.choose_threshold`), shows its effect on its
test set, writes ``notumor_threshold.json`` and logs one line; the server stores
the threshold in the final model's metadata (``notumor_threshold``), which
``brainfl predict``, ``brainfl evaluate`` and Grad-CAM apply.

A number as ``notumor-threshold`` is stored as it is, with no query; ``none``
(the default) stores nothing (plain argmax). The fit is skipped, with a log
line, with ``dp`` (the counts are outside the DP accounting), without a
``notumor`` class, when no site has validation scans of both kinds or when no
site answers; a problem here never fails a finished run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from brainfl.core.logs import LOG
from brainfl.evaluation.notumor_threshold import (
    NOTUMOR_THRESHOLD_JSON,
    THRESHOLDS,
    ThresholdCounts,
    ThresholdFit,
    choose_threshold,
    effect_on_test,
    threshold_counts,
    threshold_record,
    write_threshold,
)
from brainfl.federation.bookkeeping import NUM_EXAMPLES, site_of
from brainfl.federation.calibration_query import changes_text
from brainfl.federation.setup import QUERY, query_sites
from brainfl.model.outputs import NOTUMOR, notumor_rule, scale_probabilities
from brainfl.settings.run_settings import RunSettings

THRESHOLD = "notumor-threshold"  # the query config's QUERY value of this query
GRID = "thresholds"
TEMPERATURE = "temperature"
MISSED, FALSE_ALARMS, TUMOR, NOTUMOR_SCANS = "missed", "false-alarms", "tumor-scans", "notumor-scans"


def skip_reason(settings: RunSettings, class_names: Sequence[str]) -> str | None:
    """Why the run's settings rule the fit out (None: they do not)."""
    if settings.evaluation.notumor_threshold != "fit":
        return f"notumor-threshold='{settings.evaluation.notumor_threshold}'"
    if notumor_rule(class_names) is None:
        return f"no class named '{NOTUMOR}' among {', '.join(class_names)}"
    if settings.privacy.dp != "none":
        return (
            f"dp='{settings.privacy.dp}': the sites' counts would reach the server outside the DP accounting"
        )
    return None


def threshold_query(weights: list[np.ndarray], class_names: Sequence[str], temperature: float) -> RecordDict:
    """What every site gets: the final weights, the class names, the temperature and the thresholds."""
    config = {
        QUERY: THRESHOLD,
        "class-names": ",".join(class_names),
        TEMPERATURE: float(temperature),
        GRID: THRESHOLDS.tolist(),
    }
    return RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord(config)})


def site_answer(
    site_id: int,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    config: Mapping[str, Any],
) -> MetricRecord:
    """A site's answer from its validation labels and the final model's raw probabilities: counts only."""
    grid = [float(t) for t in config[GRID]]
    scaled = scale_probabilities(probabilities, float(config[TEMPERATURE]))
    counts = threshold_counts(labels, scaled, class_names, grid)
    if counts is None:  # (the coordinator asks only when a class is notumor: the same classes here)
        none = np.zeros(len(grid), np.int64)
        counts = ThresholdCounts(0, 0, none, none)
    LOG.info(
        "site %d notumor threshold: %d tumor and %d notumor validation scans counted at %d thresholds",
        site_id,
        counts.tumor,
        counts.notumor,
        len(grid),
    )
    return MetricRecord(
        {
            NUM_EXAMPLES: counts.tumor + counts.notumor,
            "site-id": site_id,
            TUMOR: counts.tumor,
            NOTUMOR_SCANS: counts.notumor,
            MISSED: counts.missed.tolist(),
            FALSE_ALARMS: counts.false_alarms.tolist(),
        }
    )


def site_counts(replies: Sequence[Message]) -> dict[int, ThresholdCounts]:
    """The sites' counts by site; an answer of the wrong shape is dropped with a warning."""
    counts = {}
    for reply in replies:
        metrics = reply.content["metrics"]
        missed = np.asarray(metrics.get(MISSED, []), dtype=np.int64)
        alarms = np.asarray(metrics.get(FALSE_ALARMS, []), dtype=np.int64)
        if missed.shape != THRESHOLDS.shape or alarms.shape != THRESHOLDS.shape:
            LOG.warning(
                "notumor threshold: dropped site %d's answer (not %d counts)", site_of(reply), len(THRESHOLDS)
            )
            continue
        counts[site_of(reply)] = ThresholdCounts(
            int(metrics.get(TUMOR, 0)), int(metrics.get(NOTUMOR_SCANS, 0)), missed, alarms
        )
    return counts


def pooled_counts(grid: Grid, settings: RunSettings, content: RecordDict) -> dict[int, ThresholdCounts]:
    """Send every connected site the query ``content``; the counts of the sites that have validation
    scans with and without a tumor (an empty answer: none has)."""
    nodes, timeout = grid.get_node_ids(), settings.federation.round_timeout
    counts = site_counts(query_sites(grid, content, nodes, timeout, "notumor threshold"))
    if not counts:
        LOG.info("notumor threshold not fitted: no site answered the notumor-threshold query")
    return {site: c for site, c in counts.items() if c.tumor and c.notumor}


def final_threshold(
    grid: Grid,
    settings: RunSettings,
    weights: list[np.ndarray],
    class_names: Sequence[str],
    temperature: float,
    test: tuple[np.ndarray, np.ndarray] | None,
    output_dir: Path,
) -> dict[str, float]:
    """The final model's ``notumor_threshold`` metadata: the setting's number, the threshold fitted on
    the sites' counts (see the module docstring; ``test``: the test set's labels and the final model's
    raw probabilities), or nothing (plain argmax); a problem is logged, never fails a finished run."""
    (output_dir / NOTUMOR_THRESHOLD_JSON).unlink(missing_ok=True)  # an earlier run's, in a reused folder
    fixed = settings.evaluation.fixed_notumor_threshold
    if fixed is not None:
        return {"notumor_threshold": fixed}
    reason = skip_reason(settings, class_names)
    if reason is not None:
        LOG.info("notumor threshold not fitted: %s", reason)
        return {}
    try:
        used = pooled_counts(grid, settings, threshold_query(weights, class_names, temperature))
        if not used:
            LOG.info("notumor threshold not fitted: no site has validation scans with and without a tumor")
            return {}
        none = np.zeros(len(THRESHOLDS), np.int64)
        pooled = sum(used.values(), start=ThresholdCounts(0, 0, none, none))
        fit = choose_threshold(pooled, THRESHOLDS, settings.evaluation.missed_tumor_target)
        effect = None
        if test is not None:
            scaled = scale_probabilities(test[1], temperature)
            effect = effect_on_test(test[0], scaled, class_names, fit.threshold)
        write_threshold(output_dir, threshold_record(fit, pooled, THRESHOLDS, sorted(used), effect))
    except Exception as error:
        LOG.warning("notumor threshold fit failed, the final model predicts by argmax: %r", error)
        return {}
    LOG.info("%s", summary(fit, len(used), effect))
    return {"notumor_threshold": fit.threshold}


def summary(fit: ThresholdFit, sites: int, effect: dict[str, Any] | None) -> str:
    """The log line of a fit: the threshold, whether it meets the target, the rates, the test set's change."""
    text = (
        f"notumor threshold {fit.threshold:.3f} from {fit.tumor} tumor and {fit.notumor} notumor validation "
        f"scans of {sites} sites: missed tumors {fit.missed_rate:.4f} (target {fit.target:.4f}"
        f"{'' if fit.met else ', NOT met: the fewest missed tumors any threshold gives'}), "
        f"false alarms {fit.false_alarm_rate:.4f}"
    )
    if effect is None:
        return text + "; no test set to show its effect"
    names = ("missed_tumor_rate", "false_alarm_rate")
    return f"{text}; test set {changes_text(effect['argmax'], effect['threshold'], names)}"
