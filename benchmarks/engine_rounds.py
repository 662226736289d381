"""Seconds per round on Flower's deployment engine against its simulation engine, by phase.

Runs ``run.sh`` once per engine, one after the other, with the same data and
settings (``--engines deployment simulation``), and prints for each: the
warm round time (rounds after the first, seconds between central
evaluations), and the sites' median seconds per phase of a train message
from ``site_metrics.csv`` (start-up of the process before the handler, data
load, model build, validation of the received model, training); what a
round spends outside the slowest site's message is the engines' waiting and
messaging. ``--per-class N`` runs on a symlinked subset of N images per class
and split (the load test's tiny workload); ``--repo DIR`` runs another
checkout's ``run.sh`` with that checkout's package (a before/after
comparison: ``git worktree add ../brainfl-<commit> <commit>``, then ``--repo
../brainfl-<commit>``), and the kept command names the commit and the
worktree. The runs go to ``--output-dir`` (default: a new folder under the
run checkout's ``benchmarks/runs/``); ``--keep NAME`` copies each run's
result files to ``benchmarks/results/NAME-<engine>/``.

    python3 benchmarks/engine_rounds.py --data-dir ../shared/data/brain-tumor-mri --sites 4 --rounds 3
    python3 benchmarks/engine_rounds.py --data-dir ../shared/data/brain-tumor-mri --sites 10 --rounds 3 \\
        --per-class 20 --engines deployment --run-config "image-size=32 batch-size=16 local-epochs=1"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import pandas as pd

from brainfl.report.results import SITE_CSV
from harness import (
    ROOT,
    add_keep,
    add_output_dir,
    free_port_block,
    fresh_output_dir,
    keep_result,
    markdown_table,
    measured_command,
    shown_command,
    worktree_command,
)
from result_folders import FIRST_WARM_ROUND, warm_phase_medians
from subset import make_subset


def phase_medians(output_dir: Path) -> dict[str, float]:
    """The sites' median seconds per phase in the warm rounds, and the slowest site's message."""
    sites = pd.read_csv(output_dir / SITE_CSV)
    medians = {column: round(value, 1) for column, value in warm_phase_medians(sites).items()}
    if medians:
        warm = sites[sites["round"] >= FIRST_WARM_ROUND]
        slowest = warm[list(medians)].sum(axis=1).groupby(warm["round"]).max()
        medians["slowest site s"] = round(float(slowest.median()), 1)
    return medians


def run_engine(args: argparse.Namespace, engine: str, data_dir: str, subset: list[str]) -> dict[str, object]:
    """One ``run.sh`` run on ``engine``; its warm round time and phase medians (``subset``: the command
    that made the data folder, a step of the kept command)."""
    output_dir = args.output_dir / engine
    command = [str(args.repo / "run.sh"), "--sites", str(args.sites), "--rounds", str(args.rounds)]
    command += ["--data-dir", data_dir, "--port", str(free_port_block(args.sites + 2))]
    command += ["--output-dir", str(output_dir)]
    if args.run_config:
        command += ["--run-config", args.run_config]
    if engine == "simulation":
        command.append("--simulation")
    # Another checkout runs its own package: its src/ first on every Flower process's path.
    env = None if args.repo == ROOT else {**os.environ, "PYTHONPATH": str(args.repo / "src")}
    figures = measured_command(command, output_dir, env)
    if args.keep:
        if env:
            shown = worktree_command(command, args.repo, subset)
        else:
            shown = " && ".join([*([shown_command(subset)] if subset else []), shown_command(command)])
        keep_result(output_dir, f"{args.keep}-{engine}", shown, measurement=figures)
    latencies = figures["round_latency_s"]
    warm = latencies[1:] or latencies
    print(json.dumps({"engine": engine, **figures}), flush=True)
    return {
        "engine": engine,
        "sites": args.sites,
        "round s (each)": ", ".join(str(x) for x in latencies),
        "warm round s": round(statistics.mean(warm), 1),
        "command s": figures["command_s"],
        **phase_medians(output_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", nargs="+", default=["deployment", "simulation"])
    parser.add_argument("--run-config", default="", help='"key=value ..." for every run')
    parser.add_argument("--per-class", type=int, default=0, help="a subset of N images per class and split")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose run.sh runs")
    add_output_dir(parser, None)
    add_keep(parser, where="NAME-<engine>/")
    args = parser.parse_args()
    args.repo = args.repo.resolve()
    args.output_dir = (args.output_dir or fresh_output_dir("engines", under=args.repo)).resolve()
    data_dir, subset = str(Path(args.data_dir).resolve()), []
    if args.per_class:
        data_dir = str(make_subset(args.data_dir, args.output_dir / "data", args.per_class))
        subset = [
            "python3",
            "benchmarks/subset.py",
            args.data_dir,
            data_dir,
            "--per-class",
            f"{args.per_class}",
        ]
    rows = [run_engine(args, engine, data_dir, subset) for engine in args.engines]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    print(markdown_table(rows, columns))
    if len(rows) == 2:
        ratio = rows[0]["warm round s"] / rows[1]["warm round s"]
        print(f"{rows[0]['engine']} / {rows[1]['engine']} warm round: {ratio:.2f}")


if __name__ == "__main__":
    main()
