"""Read the result folders kept under ``benchmarks/results/`` into runs and the cells of their table rows.

A folder is named by its path there (``iid4-r40``; ``suite24/4_IID`` for a suite kept with ``--keep
suite24``) and holds ``command.txt`` (the command that made it) and an optional one-line ``machine.txt``
(else ``CI_MACHINE``). ``load`` reads every folder holding a given CSV (and its JSON) into a ``Kept``;
``load_runs`` reads every run (``harness.keep_result``: ``federated_learning_results.csv``,
``run_config.json``, ``site_metrics.csv``) into a ``Run``: its kind (centralized, private, poisoned,
deployed), its numbers (passes = rounds x local epochs, final and leak-free accuracy, time to each
threshold, on ``elapsed_s`` and, where the results hold it, the deployment clock
``parallel_elapsed_s``) and, in ``Run.cells``, its cell in every column a table of ``make_tables.py``
may show. A run folder may also hold ``measurement.json`` (``harness.keep_result(..., measurement=...)``:
what the benchmark script measured while it ran, such as ``peak_total_gib``, the peak memory of all its
processes) and, from ``benchmarks/shifted_copy.py``, ``brainfl evaluate``'s scores of its final model on a
shifted copy of the Testing split: ``shifted/evaluation.csv`` and ``shifted-leak-free/evaluation.csv``
(``Run.shifted``).
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from brainfl.core.timings import PHASES  # site_metrics.csv's <phase>_s columns

CI_MACHINE = "2 CPU cores, no GPU (the project's CI machine)"
THRESHOLDS = (95, 97, 98)  # official accuracy, percent
RUN_FILES = ("federated_learning_results.csv", "run_config.json")  # and site_metrics.csv
CALIBRATION_JSON = (
    "calibration.json"  # brainfl.evaluation.calibration: the run's federated temperature scaling
)
MEASUREMENT = "measurement.json"  # a run's figures measured by the benchmark script (harness.keep_result)
EVALUATION_FILES = (
    "evaluation.csv",
    "evaluation.json",
)  # brainfl evaluate (brainfl.evaluation.external.CSV_NAME)
SHIFTED = {"shifted": "shifted accuracy", "shifted-leak-free": "shifted leak-free accuracy"}  # in a run
COPY_FILE = "copy.txt"  # beside a shifted evaluation: "command: <the shifted_copy.py make command>", ...
FAMILIES_FILES = ("families.csv", "families.json")  # preparation_families.py score
LEFT_OUT_FILES = ("families_left_out.csv", "families_left_out.json")  # preparation_families.py leave-out
GRID_SUMMARY = "site_grid_summary.csv"  # site_grid.py: per setting and approach, over seeds
GRID_CALIBRATION = "site_grid_calibration.csv"  # site_grid.py: per setting, ECE before and after
Row = dict[str, object]


FIRST_WARM_ROUND = 2  # round 1 also pays one-off start-up


def warm_phase_medians(sites: pd.DataFrame) -> dict[str, float]:
    """Median seconds per phase (``<phase>_s``) of the sites' train messages in the warm rounds."""
    if sites.empty:
        return {}
    warm = sites[sites["round"] >= FIRST_WARM_ROUND]
    columns = [f"{phase}_s" for phase in PHASES if f"{phase}_s" in warm.columns]
    return {column: float(warm[column].median()) for column in columns if warm[column].notna().any()}


DEPLOYMENT_CLOCK = "parallel_elapsed_s"  # the results' clock with the sites in parallel (newer runs only)


def reach(rounds: pd.DataFrame, target: float, clock: str = "elapsed_s") -> tuple[int, float] | None:
    """(round, seconds on ``clock``) of the first evaluation with official accuracy >= ``target``."""
    hits = rounds[rounds["accuracy"] >= target - 1e-9]
    return None if hits.empty else (int(hits["round"].iloc[0]), float(hits[clock].iloc[0]))


def has_deployment_clock(rounds: pd.DataFrame) -> bool:
    """Whether a run's results hold the deployment clock (runs kept before it was recorded do not)."""
    return DEPLOYMENT_CLOCK in rounds and bool(rounds[DEPLOYMENT_CLOCK].notna().all())


def read(path: Path) -> str:
    """A kept file's text, stripped; empty when the folder has no such file."""
    return path.read_text().strip() if path.is_file() else ""


@dataclass(eq=False)
class Kept:
    """A kept result folder: its name under results/, its CSV and JSON, its command and machine."""

    name: str
    folder: Path
    table: pd.DataFrame
    info: dict
    command: str
    machine: str


def kept(folder: Path, name: str, csv_name: str, json_name: str, kind: type[Kept] = Kept) -> Kept:
    """The ``kind`` of ``folder`` (which holds ``csv_name``), named ``name``."""
    return kind(name, folder, pd.read_csv(folder / csv_name), json.loads(read(folder / json_name) or "{}"),
                read(folder / "command.txt"), read(folder / "machine.txt") or CI_MACHINE)  # fmt: skip


def load(
    results: Path,
    csv_name: str,
    json_name: str,
    kind: type[Kept] = Kept,
    skip: Callable[[Path], bool] = lambda folder: False,
) -> list:
    """A ``kind`` for every folder under ``results`` holding ``csv_name`` (``skip`` of it false), by name."""
    found = sorted(results.rglob(csv_name)) if results.is_dir() else []
    return [kept(csv.parent, csv.parent.relative_to(results).as_posix(), csv_name, json_name, kind)
            for csv in found if not skip(csv.parent)]  # fmt: skip


def shifted_evaluation(folder: Path, name: str) -> Kept:
    """A run's shifted-copy evaluation; its command: the one that made the copy, then the one scoring it."""
    one = kept(folder, name, *EVALUATION_FILES)
    lines = read(folder / COPY_FILE).splitlines()
    made = [line.removeprefix("command: ") for line in lines if line.startswith("command: ")]
    one.command = "\n".join(line for line in (*made[:1], one.command) if line)
    return one


def in_a_run(one: Kept) -> bool:
    """Whether ``one`` is a run's shifted-copy evaluation (``<run>/shifted``), shown with the run."""
    return one.folder.name in SHIFTED and (one.folder.parent / RUN_FILES[0]).is_file()


def a_family(one: Kept) -> bool:
    """Whether ``one`` is a preparation family's evaluation (``<model>/<family>``), in the families tables."""
    return any((one.folder.parent / csv).is_file() for csv, _ in (FAMILIES_FILES, LEFT_OUT_FILES))


def overall(evaluation: pd.DataFrame, metric: str = "accuracy") -> tuple[float, float, float]:
    """(value, low, high) of an overall metric (empty class) of ``evaluation.csv``; NaNs when absent."""
    rows = evaluation[(evaluation["metric"] == metric) & evaluation["class"].isna()]
    return tuple(float(rows[c].iloc[0]) for c in ("value", "low", "high")) if len(rows) else (math.nan,) * 3


@dataclass(eq=False)
class Run(Kept):
    """One kept run (``table``: its rounds; ``info``: its settings): the kind of run, numbers, cells."""

    def __post_init__(self) -> None:
        self.rounds = r = self.table.sort_values("round", ignore_index=True)
        self.info.setdefault("crop", "head")  # kept before the setting existed: framed by the head rule
        sites, last, words = self.folder / "site_metrics.csv", r.iloc[-1], shlex.split(self.command)
        self.sites = pd.read_csv(sites) if sites.is_file() else pd.DataFrame()
        self.measurement = json.loads(read(self.folder / MEASUREMENT) or "{}")  # harness.keep_result
        self.calibration = json.loads(read(self.folder / CALIBRATION_JSON) or "{}")  # federated calibration
        shifted = [sub for sub in SHIFTED if (self.folder / sub / EVALUATION_FILES[0]).is_file()]
        self.shifted = {sub: shifted_evaluation(self.folder / sub, f"{self.name}/{sub}") for sub in shifted}
        self.group = self.name.rpartition("/")[0]  # the folder level it was kept at ("" = the top)
        self.data = Path(str(self.get("data-dir", ""))).name
        self.central = bool(self.get("centralized"))
        self.private = self.get("dp", "none") != "none" or bool(self.get("secagg"))  # DP or SecAgg+
        self.poison = words[words.index("--poison") + 1] if "--poison" in words[:-1] else ""  # poisoning.py
        self.plain = not self.central and not self.private and not self.poison  # federated, no DP, no poison
        rehearsal = "rehearse.sh" in self.command  # deploy/rehearse.sh: always TLS and node auth
        self.secure = "--secure" in words or rehearsal  # run.sh --secure: TLS and SuperNode authentication
        deployed = rehearsal or ("run.sh" in self.command and "--simulation" not in words)
        self.engine = ("one process (emulator)" if self.get("emulator") else "one process" if self.central
                       else "deployment" if deployed else "simulation")  # fmt: skip
        self.unit = "epoch" if self.central else "round"  # what a row of its results follows
        self.local_epochs = int(self.get("local-epochs", 1))
        self.passes = int(last["round"]) * self.local_epochs
        self.final, self.f1 = float(last["accuracy"]), float(last["f1_macro"])
        self.leak_free = float(last.get("leak_free_accuracy", math.nan))
        self.wall, self.epsilon = float(last["elapsed_s"]), float(last.get("epsilon", math.nan))
        self.round_s = (self.wall - float(r["elapsed_s"].iloc[0])) / max(len(r) - 1, 1)
        self.hits = {t: reach(r, t / 100) for t in THRESHOLDS}
        self.cells = cells(self)

    def get(self, key: str, default: object = None) -> object:
        return self.info.get(key, default)


def in_a_grid(folder: Path, results: Path) -> bool:
    """Whether ``folder`` is a cell of a per-site grid (``site_grid.py``: a folder above it, under
    ``results``, holds :data:`GRID_SUMMARY`), shown by the grid's own tables only."""
    return any(
        (parent / GRID_SUMMARY).is_file() for parent in folder.parents if parent.is_relative_to(results)
    )


def load_runs(results: Path) -> list[Run]:
    """Every run kept under ``results`` (a grid's cells aside), sorted by name."""
    return load(results, *RUN_FILES, Run, skip=lambda folder: in_a_grid(folder, results))


def acc(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.4f}"


def gap(a: float, b: float) -> str:
    """``a - b`` in percentage points."""
    return "" if pd.isna(a) or pd.isna(b) else f"{(a - b) * 100:+.2f}"


def duration(s: float | None) -> str:
    return "not reached" if s is None else f"{s:.0f} s" if s < 100 else f"{s / 60:.1f} min"


def gib(value: object) -> str:
    """A measured memory in GiB; ``-`` when it was not kept."""
    return f"{float(value):.2f} GiB" if isinstance(value, int | float) and not pd.isna(value) else "-"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def setting(run: Run) -> str:
    """A run's setting in words: centralized, or its sites, partitioning and what differs from FedAvg."""
    if run.central:
        return "centralized"
    skew = f"Dirichlet {run.get('dirichlet-alpha')}" if run.get("partitioning") == "dirichlet" else "IID"
    words = [f"{run.get('num-partitions')} sites", skew]
    shift = float(run.get("feature-shift", 0) or 0)
    words += [f"synthetic scanner shift {shift:g}"] if shift else []
    words += ["balanced softmax"] if run.get("balanced-softmax") else []
    words += [str(run.get("strategy"))] if run.get("strategy", "fedavg") != "fedavg" else []
    words += ["pooled BN"] if run.get("bn-statistics") == "pooled" else []
    words += [f"{run.get('norm')} norm"] if run.get("norm", "batch") != "batch" else []
    if run.get("dp", "none") != "none":
        words.append(f"DP {run.get('dp')} z={run.get('dp-noise-multiplier')} C={run.get('dp-clipping-norm')}")
    words += ["SecAgg+"] if run.get("secagg") else []
    words += [f"poisoned ({run.poison})"] if run.poison else []
    return ", ".join(words)


def cells(run: Run) -> Row:
    """A run's cell in every column a table may show."""
    best, sites = run.rounds.loc[run.rounds["accuracy"].idxmax()], run.sites
    first = sites[sites["round"] == sites["round"].min()] if "num_train" in sites else sites
    return {
        "setting": setting(run), "engine": run.engine, "image px": run.get("image-size"),
        "sites": run.get("num-partitions"), "TLS + node auth": "yes" if run.secure else "no",
        "training images per site": f"{first['num_train'].mean():.0f}" if len(first) else "",
        "rounds x local epochs": f"{run.rounds['round'].iloc[-1]} x {run.local_epochs}", "passes": run.passes,
        "official accuracy": acc(run.final), "best (round)": f"{best['accuracy']:.4f} ({int(best['round'])})",
        "leak-free accuracy": acc(run.leak_free), "macro F1": acc(run.f1),
        **{label: acc(overall(run.shifted[sub].table)[0]) or "n/a" if sub in run.shifted else "-"
           for sub, label in SHIFTED.items()},
        "peak memory, all processes": gib(run.measurement.get("peak_total_gib")),
        "epsilon": "" if pd.isna(run.epsilon) else f"{run.epsilon:.3g} at delta {run.get('dp-delta')}",
        **{f"{t}% reached": f"{run.unit} {hit[0]}, {duration(hit[1])}" if hit else "not reached"
           for t, hit in run.hits.items()},
        "mean round": duration(run.round_s), "wall time": duration(run.wall),
    }  # fmt: skip
