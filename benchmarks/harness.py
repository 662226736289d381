"""Run ``run.sh`` for a benchmark and measure it: wall time, round latency, peak memory; keep results.

Shared by the benchmark scripts. :func:`measured_run` starts ``run.sh`` with
the given arguments, samples the resident memory of every process it
starts (psutil, every 0.5 s): the whole tree, the server process
(``flwr-serverapp`` or the simulation's server) and the largest single site
process (a ``flwr-clientapp`` or Ray worker), and returns those peaks with
the run's figures from :func:`summarize_run.summarize` and the exact command.
:func:`keep_result` copies a run's small result files (never models, logs or
images) to ``benchmarks/results/<name>/`` with the command that made them and,
given the figures :func:`measured_command` returned, their numbers in
``measurement.json`` (peak memory, wall and command seconds, round latencies).

A kept command is one shell line that reruns from the repository root as
written (:func:`shown_command`): paths in this checkout and beside it
relative, a run of another checkout as a ``git worktree`` of its commit
(:func:`worktree_command`). Every script spells its options alike
(:func:`add_output_dir`, :func:`add_keep`): ``--output-dir DIR`` for its
scratch outputs, ``--keep NAME`` for ``benchmarks/results/NAME/``; the earlier
``--out`` (``--output``) and a bare ``--keep`` still work, hidden, with a
warning on stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from brainfl.core.arguments import add_old_spellings
from brainfl.evaluation.calibration import CALIBRATION_JSON
from brainfl.model.files import RUN_CONFIG
from brainfl.report.results import PERSONALIZATION_CSV, RESULTS_CSV, SITE_CSV

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_folders import MEASUREMENT
from summarize_run import summarize

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "runs"  # scratch outputs (git-ignored)
KEPT_FILES = (RESULTS_CSV, SITE_CSV, RUN_CONFIG, CALIBRATION_JSON, PERSONALIZATION_CSV)
COMMAND_FILE = "command.txt"
SERVER_MARKERS = ("flwr-serverapp", "flower-superexec", "flwr run")
SITE_MARKERS = ("flwr-clientapp", "ray::", "default_worker.py")
GIB = 1024**3


class MemorySampler(threading.Thread):
    """Peak RSS of a process tree, of its server process and of its largest site process."""

    def __init__(self, root_pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root_pid, self.interval = root_pid, interval
        self.started = time.time() - 1.0  # processes older than the run are not the run's
        self.peak_total = self.peak_server = self.peak_site = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                root = psutil.Process(self.root_pid)
                processes = [root, *root.children(recursive=True)]
            except psutil.Error:
                processes = []
            processes += [  # the simulation's SuperLink and Ray workers detach from the tree
                p for p in psutil.process_iter() if _is_flower_worker(p) and _started_after(p, self.started)
            ]
            total = server = site = 0
            for process in {p.pid: p for p in processes}.values():
                try:
                    rss, command = process.memory_info().rss, " ".join(process.cmdline())
                except psutil.Error:
                    continue
                total += rss
                if any(marker in command for marker in SERVER_MARKERS):
                    server = max(server, rss)
                if any(marker in command for marker in SITE_MARKERS):
                    site = max(site, rss)
            self.peak_total = max(self.peak_total, total)
            self.peak_server, self.peak_site = max(self.peak_server, server), max(self.peak_site, site)
            self.stopped.wait(self.interval)


def _is_flower_worker(process: psutil.Process) -> bool:
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return any(marker in command for marker in (*SERVER_MARKERS, *SITE_MARKERS, "flower-superlink"))


def _started_after(process: psutil.Process, moment: float) -> bool:
    try:
        return process.create_time() >= moment
    except psutil.Error:
        return False


def round_latencies(output_dir: Path) -> list[float]:
    """Seconds between consecutive central evaluations (one per round)."""
    elapsed = pd.read_csv(output_dir / "federated_learning_results.csv")["elapsed_s"].tolist()
    return [round(b - a, 1) for a, b in itertools.pairwise(elapsed)]


def free_port_block(size: int) -> int:
    """A port P such that P..P+size-1 are free on 127.0.0.1 (run.sh uses one per site after P)."""
    for _ in range(50):
        base = random.randint(20000, 40000)
        try:
            for port in range(base, base + size):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port block on 127.0.0.1")


def measured_run(args: list[str], output_dir: Path) -> dict[str, object]:
    """Run ``run.sh args --output-dir output_dir`` on free ports; return its figures and peak memory (GiB)."""
    if "--port" not in args:  # several runs (benchmarks, tests) may share the machine
        sites = int(args[args.index("--sites") + 1]) if "--sites" in args else 2
        args = [*args, "--port", str(free_port_block(sites + 2))]
    return measured_command([str(ROOT / "run.sh"), *args, "--output-dir", str(output_dir)], output_dir)


def measured_command(
    command: list[str], output_dir: Path, env: dict[str, str] | None = None, rounds: bool = True
) -> dict[str, object]:
    """Run a command that writes a run's outputs to ``output_dir``; return figures and peak memory.

    ``env``: the command's environment (default: this process's). ``rounds``: the command writes a
    run's per-round results, whose figures (accuracy, time to thresholds, round latencies) are read;
    False for one without them (a baseline's per-site table): only its seconds and memory."""
    started = time.monotonic()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(output_dir.with_suffix(".log"), "w") as handle:
        process = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
        sampler = MemorySampler(process.pid)
        sampler.start()
        returncode = process.wait()
        sampler.stopped.set()
        sampler.join()
    if returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {returncode}); see {handle.name}")
    return {
        **(summarize(output_dir) if rounds else {}),
        "command": shown_command(command),
        "command_s": round(time.monotonic() - started, 1),
        "round_latency_s": round_latencies(output_dir) if rounds else [],
        "peak_total_gib": round(sampler.peak_total / GIB, 2),
        "peak_server_gib": round(sampler.peak_server / GIB, 2),
        "peak_site_gib": round(sampler.peak_site / GIB, 2),
    }


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def measured_numbers(figures: Mapping[str, object]) -> dict[str, object]:
    """The numbers among ``figures`` (and lists of numbers, such as round latencies); no text, no None."""
    return {
        key: value if is_number(value) else list(value)
        for key, value in figures.items()
        if is_number(value) or (isinstance(value, list | tuple) and value and all(map(is_number, value)))
    }


def keep_result(
    run_dir: Path,
    name: str,
    command: str | Sequence[str],
    root: Path = RESULTS,
    measurement: Mapping[str, object] | None = None,
) -> Path:
    """Copy ``run_dir``'s result CSVs and run config to ``root/name`` with a one-line ``command.txt``.

    Only those small files: a run's models, logs and images stay where the
    run wrote them. A file of that list the run lacks is not written (nor
    left over from an earlier result of the same name). ``measurement``: the
    figures of :func:`measured_command`, whose numbers (``peak_total_gib``,
    ``peak_server_gib``, ``peak_site_gib``, ``wall_s``, ``command_s``,
    ``round_latency_s``...) go to ``measurement.json``. Returns the folder.
    """
    if not (Path(run_dir) / RESULTS_CSV).is_file():
        raise FileNotFoundError(f"no {RESULTS_CSV} in {run_dir}: not a finished run")
    target = Path(root) / name
    target.mkdir(parents=True, exist_ok=True)
    for file_name in KEPT_FILES:
        (target / file_name).unlink(missing_ok=True)
        if (Path(run_dir) / file_name).is_file():
            shutil.copyfile(Path(run_dir) / file_name, target / file_name)
    line = command if isinstance(command, str) else shell_join(command)
    (target / COMMAND_FILE).write_text(line.replace("\n", " ") + "\n")
    (target / MEASUREMENT).unlink(missing_ok=True)
    if measurement:
        (target / MEASUREMENT).write_text(json.dumps(measured_numbers(measurement), indent=2) + "\n")
    return target


def shell_join(words: Sequence[str]) -> str:
    """``words`` as one shell line; a word holding single quotes (a run config) in double quotes."""
    plain = re.compile(r'[^"$`\\!]*')  # nothing that double quotes leave special
    return " ".join(
        f'"{word}"' if "'" in word and plain.fullmatch(word) else shlex.quote(word) for word in words
    )


def relative_paths(word: str, at: Path = ROOT, moved: Mapping[Path, Path] | None = None) -> str:
    """``word`` with every path in this checkout or beside it (in its parent folder) relative to ``at``.

    ``moved``: a checkout's folder and the folder it is shown in instead (another checkout shown as a
    worktree beside this one). Other paths (``/tmp/...``) stay as they are."""
    places = {**(moved or {}), ROOT: ROOT, ROOT.parent: ROOT.parent}
    for real, shown in places.items():  # the deepest first: a moved checkout, this one, the folder beside
        if real == real.parent:
            continue  # the file system's root: not a folder beside the checkout
        pattern = rf"(?<![\w./-]){re.escape(str(real))}(/[^\s'\"]*)?(?![\w.-])"
        word = re.sub(pattern, lambda m, shown=shown: os.path.relpath(f"{shown}{m[1] or ''}", at), word)
    return word


def shown_command(command: Sequence[str], at: Path = ROOT, moved: Mapping[Path, Path] | None = None) -> str:
    """``command`` as one shell line run from ``at`` (default: the repository root), paths relative to it."""
    words = [relative_paths(word, at, moved) for word in command]
    if words and words[0] != command[0] and "/" not in words[0]:
        words[0] = f"./{words[0]}"  # a program in that folder: ./run.sh
    return shell_join(words)


def worktree_command(command: Sequence[str], repo: Path, first: Sequence[str] = ()) -> str:
    """``command``, run with the package of ``repo`` (a checkout other than this one), as one line to
    rerun from the repository root: a ``git worktree`` of ``repo``'s commit beside this checkout,
    ``first`` (a step run from the root, such as the subset of the data it reads), then ``command`` in
    the worktree with its own ``src/`` first on the path."""
    found = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    commit = found.stdout.strip() if found.returncode == 0 else ""
    tree = ROOT.parent / (f"brainfl-{commit}" if commit else repo.name)
    steps = [f"(test -d ../{tree.name} || git worktree add ../{tree.name} {commit})"] if commit else []
    steps += [shown_command(first, moved={repo: tree})] if first else []
    steps.append(f"(cd ../{tree.name} && PYTHONPATH=src {shown_command(command, tree, {repo: tree})})")
    return " && ".join(steps)


def fresh_output_dir(name: str, under: Path = ROOT) -> Path:
    """A new scratch folder ``benchmarks/runs/<name>-XXXXXXXX`` of the checkout ``under``."""
    runs = under / "benchmarks" / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=runs))


def add_output_dir(
    parser: argparse.ArgumentParser,
    default: Path | None,
    old: Sequence[str] = ("--out",),
    help_text: str = "",
) -> None:
    """``--output-dir DIR``: where a benchmark writes its runs (scratch: models, logs, figures).

    ``default`` None: a new folder ``benchmarks/runs/<script>-XXXXXXXX`` (:func:`fresh_output_dir`), or
    the option is required, as the script says. ``old``: earlier spellings, hidden, with a warning."""
    where = f"default: {default}" if default is not None else "default: a new folder under benchmarks/runs/"
    parser.add_argument("--output-dir", type=Path, default=default, metavar="DIR", help=help_text or where)
    add_old_spellings(parser, "--output-dir", old, type=Path)


class _Keep(argparse.Action):
    """``--keep NAME``; a bare ``--keep`` (an earlier switch) keeps in ``bare`` with a warning."""

    def __init__(self, *args: object, bare: str | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.bare = bare

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        if values is None:
            print(
                f"{parser.prog}: warning: {option_string} without a NAME is deprecated, "
                f"use {option_string} {self.bare}",
                file=sys.stderr,
            )
            values = self.bare
        setattr(namespace, self.dest, values)


def add_keep(
    parser: argparse.ArgumentParser, default: str | None = None, bare: str | None = None, where: str = ""
) -> None:
    """``--keep NAME``: also keep the run's small result files in ``benchmarks/results/NAME/``.

    ``default``: the name kept without the option (None: nothing is kept). ``bare``: the name an
    earlier bare ``--keep`` kept in, still accepted with a warning. ``where``: the folders under
    ``benchmarks/results/`` if not ``NAME/`` itself (``NAME/<setting>/``)."""
    kept = f"benchmarks/results/{where or 'NAME/'}"
    help_text = f"also keep the small result files in {kept}" + (f" (default: {default})" if default else "")
    extra = {"nargs": "?", "const": None} if bare else {}
    parser.add_argument(
        "--keep", action=_Keep, bare=bare, default=default, metavar="NAME", help=help_text, **extra
    )


def this_command() -> str:
    """The command line that started this benchmark script, as one shell line run from the repository
    root (:func:`shown_command`)."""
    return shown_command(["python3", *sys.argv])


def keep_timing_table(rows: list[dict], columns: Sequence[str], folder: Path, csv_name: str) -> Path:
    """Write a one-process timing benchmark's rows as ``folder/csv_name`` with ``command.txt`` and
    ``machine.txt`` (cores, Python, the load average when it ended); return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(columns)).to_csv(folder / csv_name, index=False)
    (folder / COMMAND_FILE).write_text(this_command() + "\n")
    (folder / "machine.txt").write_text(
        f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU, Python {platform.python_version()}; "
        f"one process, best of the timed passes; load average {os.getloadavg()[0]:.1f} when it ended\n"
    )
    return folder


def table_row(name: str, figures: dict[str, object], output_dir: Path) -> dict[str, object]:
    """One benchmark table row: final figures of a run, its timings and peak memory."""
    results = pd.read_csv(output_dir / "federated_learning_results.csv")
    last = results.iloc[-1]
    recall_columns = [c for c in results.columns if c.startswith("recall_") and c != "recall_macro"]
    recalls = "/".join(f"{last[c]:.2f}" for c in recall_columns)
    latencies = figures["round_latency_s"] or [0.0]
    leak_free = last.get("leak_free_accuracy")
    return {
        "setting": name,
        "accuracy": round(float(last["accuracy"]), 4),
        "leak_free": "" if pd.isna(leak_free) else round(float(leak_free), 4),
        "f1_macro": round(float(last["f1_macro"]), 4),
        "recall (g/m/n/p)": recalls,
        "wall_s": figures["wall_s"],
        "s_to_95": figures["s_to_95"],
        "s_to_97": figures["s_to_97"],
        "mean_round_s": round(sum(latencies) / len(latencies), 1),
        "median_round_s": round(float(np.median(latencies)), 1),
        "peak_server_gib": figures["peak_server_gib"],
        "peak_site_gib": figures["peak_site_gib"],
        "peak_total_gib": figures["peak_total_gib"],
        "epsilon": "" if pd.isna(last.get("epsilon")) else f"{float(last['epsilon']):.3g}",
    }


def markdown_table(rows: list[dict[str, object]], columns: list[str]) -> str:
    """A Markdown table of ``columns`` from ``rows``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
