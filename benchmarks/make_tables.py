"""Regenerate the result tables of README.md and BENCHMARKS.md from the committed result folders.

A folder under ``benchmarks/results/`` is named by its path there (``iid4-r40``; ``suite24/4_IID`` for a
suite kept with ``--keep suite24``) and holds ``command.txt`` (the command that made it) and an optional
one-line ``machine.txt``. With ``federated_learning_results.csv`` it is a run (``harness.keep_result``:
``run_config.json``, ``site_metrics.csv``, ``measurement.json`` with the peak memory the benchmark script
measured); with ``evaluation.csv`` (``brainfl evaluate``) a column of the external validation table, unless
it is a run's ``shifted/`` or ``shifted-leak-free/`` (``benchmarks/shifted_copy.py``: the run's final model
on a shifted copy of the Testing split), which the runs and shifted tables show with the run; with
``decode_speed.csv`` rows of the decode-time table; with ``throughput.csv`` rows of the throughput
table; with ``model_cost.csv`` rows of the model-cost table. A table goes between
``<!-- table:NAME -->`` and ``<!-- /table -->``, under it each of its folders' command and, in
BENCHMARKS.md, the machine it ran on (README.md points there); a question no
folder answers gets one line and a command that would. A comparison pairs runs kept at the
same folder level, on the same data (folder name) and schedule. Passes = rounds x local epochs.
``result_folders.py`` reads the folders and a run's cells, ``artifact_tables.py`` makes the rows of the tables
from evaluations, calibration and timings; this module picks the rows of the other tables,
sets runs against their baselines and writes the tables into the docs::

    python3 benchmarks/make_tables.py           # rewrite the tables in README.md and BENCHMARKS.md
    python3 benchmarks/make_tables.py --check   # exit 1 if a table would change (the docs are stale)
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from artifact_tables import (
    calibration_rows,
    cross_site_rows,
    decode_rows,
    evaluation_rows,
    families_rows,
    families_summary_rows,
    grid_rows,
    model_cost_rows,
    shifted_commands,
    shifted_rows,
    throughput_rows,
)
from result_folders import (
    DEPLOYMENT_CLOCK,
    EVALUATION_FILES,
    FAMILIES_FILES,
    GRID_CALIBRATION,
    GRID_SUMMARY,
    LEFT_OUT_FILES,
    RUN_FILES,
    SHIFTED,
    THRESHOLDS,
    Kept,
    Row,
    Run,
    acc,
    duration,
    gap,
    has_deployment_clock,
    load,
    load_runs,
    ratio,
    reach,
    warm_phase_medians,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = {"README.md": False, "BENCHMARKS.md": True}  # doc: whether it notes each folder's machine
MACHINES_THERE = (
    "The machine each ran on is noted beside its command in [BENCHMARKS.md](BENCHMARKS.md#every-kept-run)."
)
SCALE_SITES = 10  # a run with at least this many sites answers "scale"
ROBUST = ("krum", "multikrum", "trimmed-mean", "median")
SCHEDULE = ("image-size", "model", "num-partitions", "num-server-rounds", "local-epochs", "emulator")
MARKER = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL)


def partner(run: Run, runs: list[Run], accept: Callable[[Run], bool], keys: tuple[str, ...]) -> Run | None:
    """The first other run kept beside ``run``, on its data, with equal ``keys``, that ``accept`` takes."""
    for other in runs:
        beside = other.group == run.group and other.data == run.data and other is not run
        if beside and all(other.get(k) == run.get(k) for k in keys) and accept(other):
            return other
    return None


PER_RUN = ("setting", "engine", "image px", "rounds x local epochs", "passes", "official accuracy",
           "best (round)", "leak-free accuracy", *SHIFTED.values(), "macro F1",
           *(f"{t}% reached" for t in THRESHOLDS),
           "wall time")  # fmt: skip

HEADLINE_PASSES = 40  # the README summary shows trained models, not short timing runs


@dataclass(frozen=True)
class Table:
    """A question's table: its runs and columns, the run each is set against, a command that answers it."""

    command: str
    columns: tuple[str, ...] = PER_RUN
    select: Callable[[Run], bool] = lambda run: True
    baseline: Callable[[Run], bool] | None = None  # set against a run kept beside it, equal in ``keys``
    keys: tuple[str, ...] = SCHEDULE
    headline: bool = False  # only the runs kept at the top of results/ (every run if none is)
    rows: Callable[[list], list[Row]] | None = None  # its own rows, from the folders holding ``files``
    files: tuple[str, str] = RUN_FILES  # (CSV, JSON)
    also: Callable[[Kept], list[Kept]] = lambda one: []  # folders inside a shown one whose commands it shows


def rows_of(table: Table, runs: list[Run]) -> list[Row]:
    """One row per selected run: its cells and, unless it is a baseline itself, its gaps to its baseline."""
    rows = []
    for run in filter(table.select, [r for r in runs if not r.group] or runs if table.headline else runs):
        row: Row = {"run": run.name, **{column: run.cells[column] for column in table.columns}}
        if table.baseline and not table.baseline(run):
            base = partner(run, runs, table.baseline, table.keys)
            row |= {"compared with": base.name if base else "none kept beside it",
                    "gap, points": gap(run.final, base.final) if base else "",
                    "leak-free gap, points": gap(run.leak_free, base.leak_free) if base else "",
                    "round time ratio": ratio(run.round_s, base.round_s) if base else ""}  # fmt: skip
        rows.append(row)
    return rows


def central_rows(runs: list[Run]) -> list[Row]:
    """Federated vs centralized: accuracy at equal passes; passes and time to the central final accuracy."""
    rows, same = [], ("image-size", "model", "emulator", "crop")
    trained = [f for f in runs if f.plain and not is_engine_timing(f)]
    for fed, central in ((f, c) for f in trained for c in runs if c.central):
        if not partner(fed, [central], lambda r: True, same):
            continue
        target, hit = reach(central.rounds, central.final), reach(fed.rounds, central.final)  # target: a hit
        at = fed.rounds[fed.rounds["round"] * fed.local_epochs <= central.passes].iloc[-1]["accuracy"]
        fed_passes, central_passes = hit and hit[0] * fed.local_epochs, target[0] * central.local_epochs
        fed98, central98 = fed.hits[98] and fed.hits[98][1], central.hits[98] and central.hits[98][1]
        rows.append({
            "federated": fed.name, "centralized": central.name,
            "passes (fed / central)": f"{fed.passes} / {central.passes}",
            "final accuracy (fed / central)": f"{acc(fed.final)} / {acc(central.final)}",
            "fed accuracy after the central passes": "fewer" if fed.passes < central.passes else acc(at),
            "passes to the central final (fed / central, ratio)":
                f"{fed_passes or 'not reached'} / {central_passes}, {ratio(fed_passes, central_passes)}",
            "time to the central final (fed / central, ratio)":
                f"{duration(hit and hit[1])} / {duration(target[1])}, {ratio(hit and hit[1], target[1])}",
            "time to 98% (fed / central, ratio)":
                f"{duration(fed98)} / {duration(central98)}, {ratio(fed98, central98)}",
            "time to the central final, deployment clock (fed / central, ratio)":
                deployment_time(fed, central.final, target[1]),
        })  # fmt: skip
    return rows


def deployment_time(fed: Run, target: float, central_s: float) -> str:
    """Seconds to ``target`` on the federated run's deployment clock (its sites in parallel) against the
    centralized run's; a dash where the results lack the clock (kept before it was recorded)."""
    if not has_deployment_clock(fed.rounds):
        return "—"
    hit = reach(fed.rounds, target, DEPLOYMENT_CLOCK)
    return f"{duration(hit and hit[1])} / {duration(central_s)}, {ratio(hit and hit[1], central_s)}"


ENGINES = ("deployment", "simulation")  # benchmarks/engine_rounds.py keeps NAME-<engine>
PHASE_COLUMNS = {"startup_s": "site start-up", "data_s": "data", "model_s": "model",
                 "validation_s": "validation", "training_s": "training"}  # fmt: skip


def is_engine_timing(run: Run) -> bool:
    """Whether ``run`` is one of ``engine_rounds.py``'s timing runs (kept as NAME-<engine>)."""
    return run.name.rpartition("-")[2] in ENGINES


def warm_round_s(run: Run) -> float:
    """Mean seconds of the rounds after the first (the first also pays one-off start-up)."""
    elapsed = run.rounds["elapsed_s"].astype(float).diff().dropna().tolist()
    warm = elapsed[1:] or elapsed
    return sum(warm) / len(warm)


def engine_rows(runs: list[Run]) -> list[Row]:
    """Deployment vs simulation, run by run: warm round time, the sites' median seconds per phase."""
    kept = {run.name: run for run in runs if is_engine_timing(run)}
    rows = []
    for name, run in kept.items():
        prefix, _, engine = name.rpartition("-")
        medians = warm_phase_medians(run.sites)
        phases = {
            label: f"{medians[c]:.1f} s" if c in medians else "n/a" for c, label in PHASE_COLUMNS.items()
        }
        simulation = kept.get(f"{prefix}-simulation")
        versus = (
            ratio(warm_round_s(run), warm_round_s(simulation)) if simulation and run is not simulation else ""
        )
        rows.append({"run": name, "engine": engine, "sites": run.get("num-partitions"),
                     "image px": run.get("image-size"), "warm round": f"{warm_round_s(run):.1f} s", **phases,
                     "round / simulation round": versus,
                     "peak memory, all processes": run.cells["peak memory, all processes"]})  # fmt: skip
    return rows


DATA = "--data-dir ../shared/data/brain-tumor-mri"
SUITE = f"python3 benchmarks/suite.py {DATA} --workload image-size=64"
PRIVACY = f"python3 benchmarks/privacy_robustness.py {DATA} --rounds 4 --local-epochs 1"
SUITE160 = f'{SUITE} --epochs 160 --local-epochs 4 --only centralized "4 IID" --keep fed160'
SKEW = '--only "4 IID" "4 Dir 0.3" "4 Dir 0.3 balanced softmax" --keep skew24'
EVALUATE = (
    "brainfl evaluate --model outputs/<run>/final_model.keras ../shared/data/brain-tumor-mri --output-dir DIR"
)
SHIFTED_COPY = (
    f"python3 benchmarks/shifted_copy.py make {DATA} --output-dir benchmarks/runs/shifted-copy\n"
    "python3 benchmarks/shifted_copy.py score --model benchmarks/runs/<run>/final_model.keras "
    "--copy benchmarks/runs/shifted-copy --output-dir benchmarks/runs/<run>-shifted --keep <run>"
)
FAMILIES = (
    f"python3 benchmarks/preparation_families.py make {DATA} --output-dir benchmarks/runs/families\n"
    "python3 benchmarks/preparation_families.py score --model benchmarks/runs/<run>/final_model.keras "
    "--families benchmarks/runs/families --output-dir benchmarks/runs/<run>-families --keep <name>"
)
LEFT_OUT = (
    f"python3 benchmarks/preparation_families.py leave-out {DATA} --families benchmarks/runs/families "
    "--epochs 30 --output-dir benchmarks/runs/<name> --keep <name>"
)
SITE_GRID = f"python3 benchmarks/site_grid.py run {DATA}\npython3 benchmarks/site_grid.py summarize"
TABLES: dict[str, Table] = {
    "summary": Table(SUITE160, ("setting", "passes", "official accuracy", "leak-free accuracy",
                                "shifted accuracy", "shifted leak-free accuracy", "97% reached", "wall time"),
                     headline=True,
                     select=lambda run: run.passes >= HEADLINE_PASSES),
    "runs": Table(f"{SUITE} --epochs 24 --local-epochs 4 --keep suite24"),
    "centralized": Table(SUITE160, rows=central_rows),
    "label-skew": Table(
        f"{SUITE} --epochs 24 --local-epochs 4 {SKEW}",
        ("setting", "official accuracy", "leak-free accuracy", "97% reached"),
        select=lambda run: run.plain and run.get("partitioning") == "dirichlet",
        baseline=lambda run: run.plain and run.get("partitioning") == "iid",
        keys=(*SCHEDULE, "strategy", "norm")),
    "scale": Table(
        f'{SUITE} --epochs 4 --local-epochs 2 --only "50 sites (scale)" "200 sites (scale)" --keep scale',
        ("setting", "engine", "training images per site", "passes", "mean round", "official accuracy",
         "wall time", "peak memory, all processes"),
        select=lambda run: not run.central and int(run.get("num-partitions", 0)) >= SCALE_SITES),
    "deployment": Table(
        f"python3 benchmarks/load_test.py {DATA} --sites 10 --rounds 3 --keep load10",
        ("sites", "TLS + node auth", "passes", "mean round", "wall time"),
        select=lambda run: run.engine == "deployment",
        baseline=lambda run: run.engine == "deployment" and not run.secure),
    "engines": Table(
        f"python3 benchmarks/engine_rounds.py {DATA} --sites 4 --rounds 3 --keep engines4", rows=engine_rows),
    "privacy": Table(
        f"{PRIVACY} --only privacy",
        ("setting", "official accuracy", "leak-free accuracy", "epsilon", "mean round"),
        select=lambda run: run.private and not run.poison, baseline=lambda run: run.plain,
        keys=(*SCHEDULE, "norm", "strategy")),
    "robustness": Table(
        f"{PRIVACY} --only poison", ("setting", "official accuracy", "leak-free accuracy"),
        select=lambda run: not run.central and bool(run.poison or run.get("strategy") in ROBUST),
        baseline=lambda run: run.plain and run.get("strategy") == "fedavg", keys=(*SCHEDULE, "norm")),
    "shifted": Table(SHIFTED_COPY, rows=shifted_rows, also=shifted_commands),
    "external-validation": Table(EVALUATE, rows=evaluation_rows, files=EVALUATION_FILES),
    "calibration": Table(f"./run.sh --simulation --sites 4 --rounds 40 {DATA}", rows=calibration_rows),
    "site-grid": Table(SITE_GRID, rows=grid_rows, files=(GRID_SUMMARY, "site_grid.json")),
    "site-grid-calibration": Table(SITE_GRID, rows=grid_rows, files=(GRID_CALIBRATION, "site_grid.json")),
    "throughput": Table(f"python3 benchmarks/throughput.py {DATA} --keep throughput", rows=throughput_rows,
                        files=("throughput.csv", "throughput.json")),
    "model-cost": Table(f"python3 benchmarks/model_cost.py {DATA} --candidates image-size=64 image-size=96 "
                        "image-size=128 \"model='rescnn'\" --keep model-cost", rows=model_cost_rows,
                        files=("model_cost.csv", "model_cost.json")),
    "preparation-families": Table(FAMILIES, rows=families_rows, files=FAMILIES_FILES),
    "preparation-families-summary": Table(FAMILIES, rows=families_summary_rows,
                                          files=FAMILIES_FILES),
    "preparation-families-left-out": Table(LEFT_OUT, rows=families_rows,
                                           files=LEFT_OUT_FILES),
    "cross-site": Table("python3 benchmarks/cross_site.py --rounds 5 --keep cross-site-4",
                        rows=cross_site_rows, files=("cross_site.csv", "cross_site.json")),
    "decode-time": Table(f"python3 benchmarks/decode_speed.py {DATA} --n 200 --keep decode-speed",
                         rows=decode_rows,
                         files=("decode_speed.csv", "decode_speed.json")),
}  # fmt: skip


def markdown(rows: list[Row]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows])


def render(name: str, results: Path, machines: bool = True) -> str:
    """The text between ``<!-- table:name -->`` and ``<!-- /table -->``: the table, then each folder's
    command under its name and, with ``machines``, the machine it ran on (else a pointer to them)."""
    if name not in TABLES:
        raise SystemExit(f"unknown table '{name}' (known: {', '.join(TABLES)})")
    table = TABLES[name]
    kept = load_runs(results) if table.files == RUN_FILES else load(results, *table.files)
    rows = table.rows(kept) if table.rows else rows_of(table, kept)
    if not rows:
        no = "No result folder in `benchmarks/results/` answers this yet; this command measures it:"
        return f"{no}\n\n```bash\n{table.command}\n```\n"
    used = [one for one in kept if any(one.name in row or one.name in row.values() for row in rows)]
    used = [part for one in used for part in (one, *table.also(one))]
    commands = "\n".join(
        f"# {one.name}\n"
        + (f"# machine: {one.machine}\n" if machines else "")
        + (one.command or "(no command.txt)")
        for one in used
    )
    heading = "Commands, each with the machine it ran on:" if machines else "Commands:"
    after = "" if machines else f"\n{MACHINES_THERE}\n"
    return f"{markdown(rows)}\n\n{heading}\n\n```bash\n{commands}\n```\n{after}"


def regenerate(text: str, results: Path, machines: bool = True) -> str:
    """``text`` with every marked table replaced by its rendering from the folders under ``results``."""
    return MARKER.sub(lambda m: f"{m[1]}\n{render(m['name'], results, machines)}\n{m[4]}", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a doc would change; write nothing")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this one)")
    args = parser.parse_args(argv)
    results, stale = args.root / "benchmarks" / "results", []
    for name, machines in DOCS.items():
        doc = args.root / name
        text = doc.read_text()
        if (new := regenerate(text, results, machines)) != text:
            stale.append(doc.name)
            if not args.check:
                doc.write_text(new)
    print(f"{'stale' if args.check else 'updated'}: {', '.join(stale)}" if stale else "current")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
