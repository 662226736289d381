"""After the last round: the final model's temperature, fitted on the sites' validation images in place.

The coordinator sends every connected SuperNode (not only the sites sampled
in the last round) one query message (``config["query"] = "calibration"``,
:data:`CALIBRATION`; the setup query before round 1 is ``"setup"``) with the
final weights, the class names and the grid of temperatures
(:data:`brainfl.evaluation.calibration.TEMPERATURES`). Each site predicts its validation
split and answers with numbers only (:func:`site_answer`): its image count and
its summed negative log-likelihood at each temperature. A site without a
validation split answers with 0 images: its training images would give the
temperature of a model on the images it fitted, too confident to calibrate
anything. The coordinator adds the curves (example-weighted, as if fitted on
the pooled validation images, :func:`brainfl.evaluation.calibration.combine`), applies the
temperature to its test set's probabilities (ECE, NLL and accuracy before and
after), writes ``calibration.json`` and logs one line; the server stores T in
the final model's metadata (``temperature``), which ``brainfl predict`` and
``brainfl evaluate`` apply.

It is skipped, with a log line, when ``calibrate=false``, with ``dp`` (the
curves are not covered by the DP accounting of the model updates), when no
site has a validation split or when no site answers. With ``secagg`` it runs:
SecAgg+ hides each site's model update, and the sites' validation losses
already reach the server in the clear with every training reply, as these
curves (validation losses at other temperatures) do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from brainfl.core.logs import LOG
from brainfl.evaluation.calibration import (
    CALIBRATION_JSON,
    TEMPERATURES,
    SiteCurve,
    best_temperature,
    calibration_record,
    combine,
    effect_on_test,
    nll_curve,
    write_calibration,
)
from brainfl.federation.bookkeeping import NUM_EXAMPLES, site_of
from brainfl.federation.setup import QUERY, query_sites
from brainfl.settings.run_settings import RunSettings

CALIBRATION = "calibration"  # the query config's QUERY value of this query
GRID = "temperatures"  # the calibration query's temperatures
NLL = "nll"  # a site's answer: summed NLL of its validation images per temperature


def skip_reason(settings: RunSettings) -> str | None:
    """Why the run's settings rule calibration out (None: they do not)."""
    if not settings.evaluation.calibrate:
        return "calibrate=false"
    dp = settings.privacy.dp
    if dp != "none":
        return (
            f"dp='{dp}': the sites' validation NLL curves would reach the server outside the "
            "DP accounting, which covers the model updates only"
        )
    return None


def calibration_query(weights: list[np.ndarray], class_names: Sequence[str]) -> RecordDict:
    """What every site gets: the final weights, the class names and the grid of temperatures."""
    config = {QUERY: CALIBRATION, "class-names": ",".join(class_names), GRID: TEMPERATURES.tolist()}
    return RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord(config)})


def site_answer(
    site_id: int, labels: np.ndarray, probabilities: np.ndarray, temperatures: Sequence[float]
) -> MetricRecord:
    """A site's answer from its validation labels and the final model's probabilities: numbers only."""
    grid = np.asarray(temperatures, dtype=np.float64)
    curve, examples = nll_curve(labels, probabilities, grid)
    if examples:
        best = best_temperature(grid, curve)
        LOG.info("site %d calibration: %d validation images, lowest NLL at T=%.3f", site_id, examples, best)
    else:
        LOG.info("site %d calibration: no validation images (with finite outputs), nothing to fit", site_id)
    return MetricRecord({NUM_EXAMPLES: examples, "site-id": site_id, NLL: curve.tolist()})


def site_curves(replies: Sequence[Message]) -> list[SiteCurve]:
    """The sites' curves; an answer of the wrong length or not finite is dropped with a warning."""
    curves = []
    for reply in replies:
        metrics = reply.content["metrics"]
        curve = np.asarray(metrics.get(NLL, []), dtype=np.float64)
        if curve.shape != TEMPERATURES.shape or not np.isfinite(curve).all():
            LOG.warning(
                "calibration: dropped site %d's answer (not %d finite numbers)",
                site_of(reply),
                len(TEMPERATURES),
            )
            continue
        curves.append(SiteCurve(site_of(reply), int(metrics[NUM_EXAMPLES]), curve))
    return curves


def calibrate(
    grid: Grid,
    settings: RunSettings,
    weights: list[np.ndarray],
    class_names: Sequence[str],
    test: tuple[np.ndarray, np.ndarray] | None,
    output_dir: Path,
) -> float | None:
    """Fit the final model's temperature on the sites' validation images (see the module docstring);
    ``test`` is the test set's (labels, final model's probabilities). Returns T, None when skipped."""
    (output_dir / CALIBRATION_JSON).unlink(missing_ok=True)  # an earlier run's, in a reused folder
    reason = skip_reason(settings)
    if reason is None:
        content = calibration_query(weights, class_names)
        replies = query_sites(
            grid, content, grid.get_node_ids(), settings.federation.round_timeout, "calibration"
        )
        curves = [curve for curve in site_curves(replies) if curve.examples > 0]
        if not replies:
            reason = "no site answered the calibration query"
        elif not curves:
            reason = "no site has a validation split (val-fraction=0, or sites too small to hold one out)"
    if reason is not None:
        LOG.info("calibration skipped: %s; the final model keeps its probabilities (temperature 1)", reason)
        return None
    fit = combine(curves, TEMPERATURES)
    effect = None if test is None else effect_on_test(*test, class_names, fit.temperature)
    write_calibration(output_dir, calibration_record(fit, effect, TEMPERATURES))
    LOG.info("%s", summary(fit.temperature, fit.examples, fit.sites, effect))
    if fit.at_bound:
        LOG.warning("calibration: T=%.3f is at the grid's end; the best T may lie beyond", fit.temperature)
    return fit.temperature


def summary(temperature: float, examples: int, sites: dict[int, tuple[int, float]], effect) -> str:
    """The log line of a calibration: T, the images and sites it came from, the test set's change."""
    own = ", ".join(f"site {site} {t:.3f} ({n})" for site, (n, t) in sorted(sites.items()))
    text = f"calibration: temperature {temperature:.3f} from {examples} validation images"
    text += f" of {len(sites)} sites (each site's own T, images: {own})"
    if effect is None:
        return text + "; no test set to show its effect"
    return f"{text}; test set {changes_text(effect['before'], effect['after'], ('ece', 'nll', 'accuracy'))}"


def changes_text(
    before: dict[str, float | None], after: dict[str, float | None], names: Sequence[str]
) -> str:
    """``name before -> after`` for each of ``names``, as the log lines print a change."""
    return ", ".join(
        f"{name.replace('_', ' ')} {number_text(before[name])} -> {number_text(after[name])}"
        for name in names
    )


def number_text(value: float | None) -> str:
    """A score as the log lines print it (``n/a``: undefined)."""
    return "n/a" if value is None else f"{value:.4f}"
