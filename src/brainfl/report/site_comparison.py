"""Joining vs going alone, per site: each approach's scores on every site's own held-out split.

A site's question is answered by models scored on the same images, its
held-out (validation) split, and each run of the question writes those scores:

- ``brainfl local``'s ``local_baseline.csv``: the site's model trained alone
  (approach ``alone``);
- ``brainfl pooled``'s ``pooled_baseline.csv``: one model on every site's
  training split pooled (``pooled``);
- a federated run's ``personalization.csv`` (with ``fine-tune-epochs`` or
  ``fedbn``): the final global model as the site received it (``federated``, or
  ``FedBN`` for a FedBN run, whose global model carries averaged BatchNorm, or the
  ``strategy`` setting's name for another strategy, e.g. ``scaffold``, and the
  ``optimizer`` setting's in brackets when not AdamW: ``scaffold (sgd)``), with
  the site's own BatchNorm (``FedBN, own BN``) and fine-tuned at the site
  (``... + fine-tune``; ``... + fine-tune (3 epochs)`` for other than 1 epoch), with
  ``site-prior`` that model with the site's own class mix
  (``... + site prior``; a run with ``balanced-softmax`` is named ``FedAvg, balanced softmax``, one
  with ``bn-statistics='pooled'`` e.g. ``fedavgm, pooled BN``),
  and with ``ditto-lambda`` the site's Ditto personal model (``Ditto``); without that file, the
  held-out scores its sites sent with the last round's training replies (``site_metrics.csv``), of
  the model they received in that round (``federated, round <R> model``: the model before the
  last round's update, a little behind the final one).

:func:`approaches` reads whichever of these a folder holds;
:func:`comparison` puts them side by side, one row per site, with the gain of
the federated model over training alone and the mean, worst and spread over
the sites. The report shows it (``brainfl report RUN --baselines DIR``) and
``benchmarks/site_grid.py`` summarizes a grid of runs with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from brainfl.core.errors import BrainFLError
from brainfl.report.results import PERSONALIZATION_CSV, SITE_CSV
from brainfl.report.sites import last_scored_round, site_order, with_summary

LOCAL_CSV = "local_baseline.csv"  # written by brainfl.baselines.local_pooled
POOLED_CSV = "pooled_baseline.csv"
ALONE, POOLED, FEDERATED = "alone", "pooled", "federated"
GAIN = "federated - alone"
ORDER = (
    ALONE,
    FEDERATED,
    "FedAvg + fine-tune",
    "FedBN",
    "FedBN, own BN",
    "FedBN, own BN + fine-tune",
    "Ditto",
    POOLED,
)
COMPARISON_CSV = "site_comparison.csv"  # the report's table, beside report.html
SCORES = ("accuracy", "balanced_accuracy")


def _read(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype={"site": str})
    except (OSError, ValueError) as error:
        raise BrainFLError(f"cannot read {path}: {error.__class__.__name__}") from None
    if "site" not in table:
        raise BrainFLError(f"{path} has no 'site' column")
    return table.set_index("site")


def _scores(table: pd.DataFrame, prefix: str, path: Path) -> pd.DataFrame:
    columns = {f"{prefix}{score}": score for score in SCORES}
    missing = [column for column in columns if column not in table]
    if missing:
        raise BrainFLError(f"{path} has no '{missing[0]}' column")
    return table[list(columns)].rename(columns=columns).astype(float)


def personalization_labels(folder: Path, table: pd.DataFrame) -> dict[str, str]:
    """Approach names of ``personalization.csv``'s stages: whether the run used FedBN or a strategy
    other than FedAvg, and a local optimizer other than AdamW, e.g. ``scaffold (sgd)`` (its
    ``run_config.json``), and fine-tuned (the CSV's ``fine_tune_epochs``, named when not 1:
    ``FedAvg + fine-tune (3 epochs)``);
    ``adapted``: the copy with BatchNorm statistics re-estimated on the site's images (``adapt-sites``);
    ``site_prior``: the last of those with the site's class mix folded in (``site-prior``);
    ``ditto``: the site's Ditto personal model (``ditto-lambda``)."""
    config_path = folder / "run_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    fedbn, strategy = bool(config.get("fedbn")), str(config.get("strategy", "fedavg"))
    optimizer = str(config.get("optimizer", "adamw"))
    lengths = pd.to_numeric(table.get("fine_tune_epochs", pd.Series(dtype=float)), errors="coerce")
    epochs = 0 if lengths.isna().all() else int(lengths.max())
    base = "FedBN" if fedbn else "FedAvg" if strategy == "fedavg" else strategy
    base += "" if optimizer == "adamw" else f" ({optimizer})"
    base += ", balanced softmax" if config.get("balanced-softmax") else ""
    base += ", pooled BN" if config.get("bn-statistics") == "pooled" else ""
    own = f"{base}, own BN" if fedbn else base
    fine_tune = "fine-tune" if epochs == 1 else f"fine-tune ({epochs} epochs)"
    personalized = f"{own} + {fine_tune}" if epochs > 0 else own
    return {
        "global": FEDERATED if base == "FedAvg" else base,
        "site_bn": own,
        "adapted": f"{own} + adapted BN",
        "personalized": personalized,
        "site_prior": f"{personalized} + site prior",
        "ditto": "Ditto",
    }


def last_round_scores(path: Path) -> tuple[str, pd.DataFrame] | None:
    """(label, scores) of ``site_metrics.csv``'s last round with held-out scores: each site's score of
    the model it received in that round; None without any."""
    found = last_scored_round(pd.read_csv(path, dtype={"site": str}))
    if found is None:
        return None
    last, rows = found
    return f"{FEDERATED}, round {last - 1} model", _scores(rows, "val_", path)


def approaches(folder: Path) -> dict[str, pd.DataFrame]:
    """Per approach found in ``folder``, its scores (:data:`SCORES`) on each site's held-out split
    (index: site). A site without a held-out split has NaN scores."""
    found: dict[str, pd.DataFrame] = {}
    for name, approach in ((LOCAL_CSV, ALONE), (POOLED_CSV, POOLED)):
        if (folder / name).is_file():
            found[approach] = _scores(_read(folder / name), "val_", folder / name)
    path = folder / PERSONALIZATION_CSV
    if path.is_file():
        table = _read(path)
        for stage, label in personalization_labels(folder, table).items():
            if f"{stage}_accuracy" in table:
                found[label] = _scores(table, f"{stage}_", path)
    elif (folder / SITE_CSV).is_file() and (last := last_round_scores(folder / SITE_CSV)):
        found[last[0]] = last[1]
    return found


def gathered(folders: Iterable[Path]) -> dict[str, pd.DataFrame]:
    """:func:`approaches` of several folders (a later folder's approach of the same name wins)."""
    found: dict[str, pd.DataFrame] = {}
    for folder in folders:
        found.update(approaches(folder))
    return found


def rank(approach: str) -> float:
    """An approach's place in :data:`ORDER` (``federated, round <R> model`` as ``federated``; others,
    such as another strategy's, just before ``pooled``)."""
    base = FEDERATED if approach.startswith(f"{FEDERATED}, ") else approach
    return ORDER.index(base) if base in ORDER else ORDER.index(POOLED) - 0.5


def comparison(found: Mapping[str, pd.DataFrame], score: str = "accuracy") -> pd.DataFrame:
    """One row per site, one column per approach in :data:`ORDER` (``score`` on the site's held-out
    split), the federated model's gain over training alone where both are there; then the mean, the
    worst and the spread (max - min) over the sites."""
    table = pd.DataFrame({approach: found[approach][score] for approach in sorted(found, key=rank)})
    federated = next((a for a in table if rank(a) == ORDER.index(FEDERATED) or a == "FedBN"), None)
    if ALONE in table and federated:
        table[GAIN] = table[federated] - table[ALONE]
    table = table.loc[site_order(table.index)]
    return with_summary(table)


def report_table(run_dir: Path, baselines: Sequence[Path]) -> pd.DataFrame | None:
    """The run's report table: its own per-site scores (``personalization.csv``) beside those of the
    ``baselines`` folders; None when no baseline is given. A folder with none of the files is a
    mistake named in one line."""
    if not baselines:
        return None
    found: dict[str, pd.DataFrame] = {}
    for folder in baselines:
        if not folder.is_dir():
            raise BrainFLError(f"--baselines: folder not found: {folder}")
        scores = approaches(folder)
        if not scores:
            files = ", ".join((LOCAL_CSV, POOLED_CSV, PERSONALIZATION_CSV))
            raise BrainFLError(f"--baselines: {folder} holds none of {files}")
        found.update(scores)
    return comparison({**found, **approaches(run_dir)})
