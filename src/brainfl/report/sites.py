"""The run report's per-site tables, read from ``partition.csv`` and ``site_metrics.csv`` only.

- :func:`site_table`: each site's images, the rounds it reported and its last
  validation accuracy;
- :func:`final_round_sites`: the sites' held-out scores of the last round they
  reported (accuracy, balanced accuracy, sensitivity per class), then their
  mean, the worst value and the spread (max - min) across sites;
- :func:`personalization_table`: from ``personalization.csv``, each site's
  held-out scores of the global and of its personalized model and the gain,
  with the same summary rows;
- :func:`partition_counts`: the partition figure's training images per site.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd

from brainfl.evaluation.metrics import site_score_labels
from brainfl.report.results import PERSONALIZATION_CSV

if TYPE_CHECKING:
    from brainfl.report.run import Run

SUMMARY_ROWS = ("mean", "worst", "spread (max - min)")


def site_order(index: pd.Index) -> list[str]:
    """Site ids in numeric order (non-numeric ones last, by name)."""
    return sorted(index, key=lambda s: (0, int(s), "") if str(s).lstrip("-").isdigit() else (1, 0, str(s)))


def site_table(run: Run) -> pd.DataFrame:
    """Per site: its images (``partition.csv``, else ``site_metrics.csv``), rounds and last val accuracy."""
    table = run.partition.copy()
    if not run.sites.empty:
        sites = run.sites.sort_values("round", kind="stable").groupby("site")
        reported = pd.DataFrame({"rounds reported": sites["round"].nunique()})
        if "val_accuracy" in run.sites:
            reported["last val accuracy"] = sites["val_accuracy"].apply(
                lambda v: v.dropna().iloc[-1] if v.notna().any() else math.nan
            )
        if table.empty:
            sizes = [c for c in ("num_train", "num_val") if c in run.sites]
            table = sites[sizes].last() if sizes else pd.DataFrame(index=reported.index)
        table = table.join(reported, how="outer")
    if table.empty:
        return table
    table = table.loc[site_order(table.index)]
    table.index.name = "site"
    return table


def last_scored_round(sites: pd.DataFrame) -> tuple[int, pd.DataFrame] | None:
    """(round, rows): ``site_metrics.csv``'s last round with held-out scores and each site's last row
    of it (index: site); None without any held-out score."""
    if sites.empty or "val_accuracy" not in sites or sites["val_accuracy"].isna().all():
        return None
    scored = sites[sites["val_accuracy"].notna()]
    last = int(scored["round"].max())
    return last, scored[scored["round"] == last].drop_duplicates("site", keep="last").set_index("site")


def final_round_sites(run: Run) -> tuple[int, pd.DataFrame] | None:
    """(round, table): each site's held-out scores in the last round with any, then the
    :data:`SUMMARY_ROWS` over the sites (a class a site's split lacks is left out of them); None
    without per-site validation scores."""
    found = last_scored_round(run.sites)
    if found is None:
        return None
    last, rows = found
    names = site_score_labels(run.class_names)
    return last, with_summary(
        rows.loc[site_order(rows.index), [c for c in names if c in rows]].rename(columns=names)
    )


def with_summary(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (a row per site) followed by its :data:`SUMMARY_ROWS` over the sites (NaN left out)."""
    summary = pd.DataFrame([table.mean(), table.min(), table.max() - table.min()], index=list(SUMMARY_ROWS))
    table = pd.concat([table, summary])
    table.index.name = "site"
    return table


STAGE_LABELS = {
    "global": "global",
    "site_bn": "own-BN",
    "adapted": "adapted",
    "personalized": "personalized",
    "site_prior": "site-prior",
    "ditto": "Ditto",
    "gain": "gain",
}


def personalization_table(run: Run) -> pd.DataFrame | None:
    """Per site, from ``personalization.csv``: the held-out accuracy and balanced accuracy of the global
    model, of it with the site's own BatchNorm (FedBN with fine-tuning), of the adapted copy
    (``adapt-sites``), of the personalized model, of that with the site's class mix (``site-prior``)
    and the gain (the last of these - global), and the
    gain in each class's sensitivity; then the :data:`SUMMARY_ROWS`
    (worst: the lowest). None when the run wrote no ``personalization.csv``."""
    path = run.output_dir / PERSONALIZATION_CSV
    if not path.is_file():
        return None
    rows = pd.read_csv(path, dtype={"site": str}).set_index("site")
    names = {
        f"{stage}_{score}": f"{label} {score.replace('_', ' ')}"
        for score in ("accuracy", "balanced_accuracy")
        for stage, label in STAGE_LABELS.items()
    }
    names.update({f"gain_sensitivity_{name}": f"gain sensitivity {name}" for name in run.class_names})
    return with_summary(
        rows.loc[site_order(rows.index), [c for c in names if c in rows]].rename(columns=names)
    )


def partition_counts(run: Run) -> tuple[pd.DataFrame, list[str]]:
    """Training images per site for the partition figure, and the stacked columns (classes or total)."""
    classes = [c for c in run.class_names if c in run.partition]
    if classes:
        return run.partition.loc[site_order(run.partition.index), classes], classes
    table = site_table(run)
    if "num_train" not in table or table["num_train"].isna().all():
        return pd.DataFrame(), []
    return table[["num_train"]].rename(columns={"num_train": "training images"}), ["training images"]
