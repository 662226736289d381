"""Summarize one run's ``federated_learning_results.csv`` as a BENCHMARKS.md row.

Usage: ``python3 benchmarks/summarize_run.py <output-dir> [--label NAME]``.
Prints final and best test accuracy, macro F1, the rounds and seconds taken to
first reach 95% and 97% test accuracy, and the total wall time (``elapsed_s``
of the last round, i.e. from the first central evaluation to the last).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

TARGETS = (0.95, 0.97)


def first_reaching(results: pd.DataFrame, target: float) -> tuple[int | None, float | None]:
    """(round, elapsed seconds) of the first round at or above ``target`` accuracy."""
    hits = results[results["accuracy"] >= target]
    if hits.empty:
        return None, None
    row = hits.iloc[0]
    return int(row["round"]), float(row["elapsed_s"])


def summarize(output_dir: Path) -> dict[str, object]:
    """Key figures of a finished run."""
    results = pd.read_csv(output_dir / "federated_learning_results.csv")
    config = json.loads((output_dir / "run_config.json").read_text())
    last = results.iloc[-1]
    summary: dict[str, object] = {
        "rounds": int(last["round"]),
        "sites": config.get("num-partitions"),
        "model": config.get("model"),
        "final_accuracy": round(float(last["accuracy"]), 4),
        "best_accuracy": round(float(results["accuracy"].max()), 4),
        "final_f1_macro": round(float(last["f1_macro"]), 4),
        "wall_s": round(float(last["elapsed_s"]), 1),
    }
    for target in TARGETS:
        reached_round, reached_s = first_reaching(results, target)
        summary[f"round_to_{int(target * 100)}"] = reached_round
        summary[f"s_to_{int(target * 100)}"] = reached_s
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    summary = summarize(args.output_dir)
    print(json.dumps({"label": args.label, **summary}, indent=2))
    print("| " + " | ".join([args.label, *(str(v) for v in summary.values())]) + " |")


if __name__ == "__main__":
    main()
