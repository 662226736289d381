"""Rows of the tables made from a result folder's other artefacts: evaluations, calibration, timings.

``make_tables.py`` renders them: the external-validation and shifted-copy
tables (``brainfl evaluate``'s ``evaluation.csv``), the calibration table (a
run's ``calibration.json``), the decode-time and throughput tables
(``decode_speed.csv``, ``throughput.csv``) and the model-cost table (``model_cost.csv``).
"""

from __future__ import annotations

import math

import pandas as pd

from result_folders import SHIFTED, Kept, Row, Run, a_family, in_a_run, overall, ratio

OVERALL = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "f1_macro": "macro F1",
           "ece": "ECE (top label)"}  # fmt: skip
FIRST = ("images", *OVERALL.values(), "mean top-label confidence")  # then per-class sensitivity


def interval(value: float, low: float, high: float) -> str:
    """``0.982 [0.975, 0.989]``: a metric and its 95% interval; ``n/a`` when it is undefined."""
    bounds = "" if pd.isna(low) or pd.isna(high) else f" [{low:.3f}, {high:.3f}]"
    return "n/a" if pd.isna(value) else f"{value:.3f}{bounds}"


def evaluation_rows(kept: list[Kept]) -> list[Row]:
    """A row per metric (overall, then per-class sensitivity), a column per ``brainfl evaluate`` folder."""
    rows: dict[str, Row] = {}
    # a run's shifted copy has the shifted table, a preparation family the families tables
    for one in (one for one in kept if not in_a_run(one) and not a_family(one)):
        t = one.table[one.table["metric"].isin([*OVERALL, "sensitivity"])]
        labels = t["metric"].map(OVERALL).fillna("sensitivity, " + t["class"].astype(str))
        cells = dict(zip(labels, map(interval, t["value"], t["low"], t["high"]), strict=True))
        bins = [(b["count"], b["confidence"]) for b in one.info.get("reliability", []) if b.get("count")]
        mean = sum(n * c for n, c in bins) / sum(n for n, _ in bins) if bins else math.nan
        cells |= {"images": one.info.get("images", ""), FIRST[-1]: "" if math.isnan(mean) else f"{mean:.3f}"}
        for label, cell in cells.items():
            rows.setdefault(label, {"metric": label})[one.name] = cell
    return sorted(rows.values(), key=lambda row: FIRST.index(row["metric"]) if row["metric"] in FIRST else 99)


def shifted_rows(runs: list[Run]) -> list[Row]:
    """Runs scored on a shifted copy of Testing: accuracy there with its interval, per-class sensitivity."""
    rows = []
    for run in (run for run in runs if run.shifted):
        row: Row = {"run": run.name}
        row |= {
            column: run.cells[column] for column in ("setting", "official accuracy", "leak-free accuracy")
        }
        for sub, label in SHIFTED.items():
            scored = run.shifted.get(sub)
            row[f"{label} [95% interval]"] = interval(*overall(scored.table)) if scored else "-"
        if "shifted" in run.shifted:  # the whole shifted copy, class by class
            t = run.shifted["shifted"].table
            t = t[(t["metric"] == "sensitivity") & t["class"].notna()]
            for name, value, low, high in zip(t["class"], t["value"], t["low"], t["high"], strict=True):
                row[f"shifted sensitivity, {name}"] = interval(value, low, high)
        rows.append(row)
    columns = dict.fromkeys(column for row in rows for column in row)
    return [{column: row.get(column, "-") for column in columns} for row in rows]  # "-": no such score


def shifted_commands(run: Run) -> list[Kept]:
    """A run's shifted-copy evaluations, the first of each command (one ``score`` command writes both)."""
    parts = list(run.shifted.values())
    return [one for at, one in enumerate(parts) if one.command not in [p.command for p in parts[:at]]]


def decode_rows(kept: list[Kept]) -> list[Row]:
    """A row per folder and format of ``decode_speed.csv``, with its time over the folder's JPEG time."""
    rows = []
    for one in kept:
        jpeg = one.table.loc[one.table["format"] == "jpeg", "ms_per_image"].min()
        rows += [{"run": one.name, "format": r.format, "images": r.images, "image px": r.image_size,
                  "channels": r.channels, "mean file": f"{r.mean_file_kib:.1f} KiB",
                  "ms per image": f"{r.ms_per_image:.2f}", "images per s": f"{r.images_per_s:.0f}",
                  "time / JPEG time": ratio(r.ms_per_image, None if pd.isna(jpeg) else jpeg)}
                 for r in one.table.itertuples()]  # fmt: skip
    return rows


def calibration_rows(runs: list[Run]) -> list[Row]:
    """Runs with federated temperature scaling: T, the test set's ECE, NLL and accuracy before and after."""
    rows = []
    for run in (run for run in runs if run.calibration.get("test")):
        fitted, test = run.calibration, run.calibration["test"]
        before, after = test["before"], test["after"]
        pairs = {f"{name} before / after": f"{before[key]:.4f} / {after[key]:.4f}"
                 for name, key in (("ECE", "ece"), ("NLL", "nll"), ("accuracy", "accuracy"))}  # fmt: skip
        rows.append({"run": run.name, "setting": run.cells["setting"],
                     "sites' held-out images": fitted["examples"],
                     "temperature": f"{fitted['temperature']:.3f}", **pairs})  # fmt: skip
    return rows


def throughput_rows(kept: list[Kept]) -> list[Row]:
    """A row per folder and step of ``throughput.csv``: the app's images per second and the tight loop's."""
    return [{"run": one.name, "step": r.step, "images": r.images, "batch size": r.batch_size,
             "app, images per s": f"{r.app_images_per_s:.0f}",
             "tight loop, images per s": f"{r.tight_images_per_s:.0f}",
             "app / tight loop": f"{r.app_share:.2f}"}
            for one in kept for r in one.table.itertuples()]  # fmt: skip


def model_cost_rows(kept: list[Kept]) -> list[Row]:
    """A row per folder and candidate of ``model_cost.csv``: its model, input size, parameters, training
    time per image and that time over the first candidate's."""
    return [{"run": one.name, "model": r.model, "image px": r.image_size, "parameters": f"{r.parameters:,}",
             "training ms per image": f"{r.ms_per_image:.2f}", "cost / first": f"{r.relative_cost:.2f}"}
            for one in kept for r in one.table.itertuples()]  # fmt: skip


def grid_rows(kept: list[Kept]) -> list[Row]:
    """A row per setting and approach of a per-site grid (``site_grid.py``'s summary), grid by grid."""
    return [{"grid": one.name, **row} for one in kept for row in one.table.fillna("").to_dict("records")]


def families_rows(kept: list[Kept]) -> list[Row]:
    """A row per preparation family (``preparation_families.py``'s ``families.csv``, or
    ``families_left_out.csv``: each family on the model trained without its transform), model by
    model: accuracy, balanced accuracy and ECE with their intervals and the missed-tumor rate; then
    the mean, the worst and, where kept, the central test set."""
    rows = []
    for one in kept:
        for r in one.table.itertuples():
            without = getattr(r, "trained_without", "")
            without = "—" if pd.isna(without) or not without else without
            row = {"run": one.name, "family": r.family, "trained without": without}
            if r.family == "testing":
                row |= {"family": "Testing (in distribution)", "images": "—",
                        "accuracy": f"{r.accuracy:.4f} (leak-free {r.leak_free_accuracy:.4f})",
                        "balanced accuracy": f"{r.balanced_accuracy:.3f}", "missed tumors": "—"}  # fmt: skip
            else:
                row |= {"images": int(r.images),
                        "accuracy": interval(r.accuracy, r.accuracy_low, r.accuracy_high),
                        "balanced accuracy": interval(r.balanced_accuracy, r.balanced_accuracy_low,
                                                      r.balanced_accuracy_high),
                        "missed tumors": f"{r.missed_tumor_rate:.3f}"}  # fmt: skip
            rows.append(row | {"ECE": f"{r.ece:.3f}"})
    return rows


def families_summary_rows(kept: list[Kept]) -> list[Row]:
    """A row per model scored on the preparation families: its in-distribution accuracy (``Testing``,
    where kept), the families' mean and worst accuracy, and the mean and worst missed-tumor rate."""
    rows = []
    for one in kept:
        table = one.table.set_index("family")
        summaries = [f for f in table.index if f in ("mean", "testing") or f.startswith("worst")]
        families = table.drop(index=summaries)
        worst = families["accuracy"].idxmin()
        testing = table.loc["testing"] if "testing" in table.index else None
        rows.append({
            "run": one.name,
            "Testing (leak-free)": "—" if testing is None
            else f"{testing.accuracy:.4f} ({testing.leak_free_accuracy:.4f})",
            "families mean": f"{families['accuracy'].mean():.3f}",
            "worst family": f"{families.loc[worst, 'accuracy']:.3f} ({worst})",
            "missed tumors, mean": f"{families['missed_tumor_rate'].mean():.3f}",
            "missed tumors, worst": f"{families['missed_tumor_rate'].max():.3f}",
        })  # fmt: skip
    return rows


def cross_site_rows(kept: list[Kept]) -> list[Row]:
    """A row per model of a cross-site matrix (``cross_site.csv``): its accuracy at each site and pooled."""
    return [{"run": one.name, **{str(k): (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()}}
            for one in kept for row in one.table.to_dict("records")]  # fmt: skip
