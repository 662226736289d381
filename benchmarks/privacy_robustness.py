"""Price of privacy and robustness on the full dataset: DP noise levels, SecAgg+, poisoned sites.

Runs, one after the other on Flower's simulation engine with the same data
and schedule: 4 IID sites without DP (BatchNorm and GroupNorm), with central
DP (server-side fixed clipping) at each ``--noise`` level (epsilon reported
at delta 1e-5), with SecAgg+ (``run.sh --simulation``); then 5 IID sites
with one sign-flipping site (update scaled by -10, the poisoning mod of
``benchmarks/poisoning.py``) under fedavg, krum, multikrum, trimmed-mean and
median, next to the clean fedavg run. The product has no attack setting, so
the whole poisoning table (its clean row too, for like-for-like timings)
runs through ``poisoning.py``: Flower's ``run_simulation`` with the project's
ServerApp and ``client_app_with(poisoning_mod(...))``, on the same Ray
backend defaults as ``run.sh --simulation``. Prints the two Markdown tables
and writes them to ``<output-dir>/privacy_robustness.md`` (default: a new
folder under ``benchmarks/runs/``), which also holds every setting's run.

    python3 benchmarks/privacy_robustness.py --data-dir ../shared/data/brain-tumor-mri
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from harness import (
    add_output_dir,
    fresh_output_dir,
    markdown_table,
    measured_command,
    measured_run,
    table_row,
)

COLUMNS = ["setting", "accuracy", "leak_free", "f1_macro", "epsilon", "wall_s", "mean_round_s"]
POISONING = Path(__file__).resolve().parent / "poisoning.py"
POISON = ["--poison", "sign-flip", "--poisoned-sites", "0"]  # site 0 of 5


def privacy_settings(args: argparse.Namespace) -> dict[str, tuple[int, str]]:
    dp = f"norm='group' dp='server-fixed' dp-clipping-norm={args.clipping_norm}"
    return {
        "no DP, BatchNorm": (4, ""),
        "no DP, GroupNorm": (4, "norm='group'"),
        **{f"DP z={z:g}, C={args.clipping_norm:g}": (4, f"{dp} dp-noise-multiplier={z}") for z in args.noise},
        "SecAgg+ (BatchNorm)": (4, "secagg=true"),
    }


def poison_settings() -> dict[str, tuple[int, list[str], str]]:
    """Each poisoning row: (sites, poisoning.py options, run config)."""
    return {
        "clean, fedavg": (5, [], ""),
        **{
            f"1 of 5 poisoned, {s}": (5, POISON, f"strategy='{s}'")
            for s in ("fedavg", "krum", "multikrum", "trimmed-mean", "median")
        },
    }


def output_dir_for(args: argparse.Namespace, name: str) -> Path:
    return args.output_dir / "".join(ch if ch.isalnum() else "_" for ch in name)


def overrides_for(args: argparse.Namespace, config: str) -> str:
    return f"{args.workload} local-epochs={args.local_epochs} {config}".strip()


def run_privacy_table(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The privacy rows, each a ``run.sh --simulation`` run."""
    rows, commands = [], []
    for name, (sites, config) in privacy_settings(args).items():
        if args.match not in name:
            continue
        output_dir, overrides = output_dir_for(args, name), overrides_for(args, config)
        command = ["--simulation", "--sites", str(sites), "--rounds", str(args.rounds)]
        command += ["--data-dir", args.data_dir, "--run-config", overrides]
        commands.append(shlex.join(["./run.sh", *command]))
        figures = measured_run(command, output_dir)
        rows.append(table_row(name, figures, output_dir))
        print(json.dumps({"setting": name, **figures}), flush=True)
    return markdown_table(rows, COLUMNS), commands


def run_poison_table(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The poisoning rows, each a ``benchmarks/poisoning.py`` run (Flower's ``run_simulation``)."""
    rows, commands = [], []
    for name, (sites, poison, config) in poison_settings().items():
        if args.match not in name:
            continue
        output_dir, overrides = output_dir_for(args, name), overrides_for(args, config)
        options = ["--sites", str(sites), "--rounds", str(args.rounds), "--data-dir", args.data_dir, *poison]
        options += ["--output-dir", str(output_dir), "--run-config", overrides]
        commands.append(shlex.join(["python3", "benchmarks/poisoning.py", *options]))
        figures = measured_command([sys.executable, str(POISONING), *options], output_dir)
        rows.append(table_row(name, figures, output_dir))
        print(json.dumps({"setting": name, **figures}), flush=True)
    return markdown_table(rows, COLUMNS), commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--workload", default="image-size=64", help="run-config shared by every setting")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--clipping-norm", type=float, default=5.0)
    add_output_dir(parser, None)
    parser.add_argument("--only", choices=("privacy", "poison"), default=None)
    parser.add_argument("--match", default="", help="run only the settings whose name contains this")
    args = parser.parse_args()
    args.output_dir = (args.output_dir or fresh_output_dir("privacy")).resolve()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    if args.only in (None, "privacy"):
        sections.append(("Privacy (4 IID sites)", *run_privacy_table(args)))
    if args.only in (None, "poison"):
        sections.append(("Poisoned site (5 IID sites)", *run_poison_table(args)))
    text = "\n\n".join(
        f"### {title}\n\n{table}\n\nCommands:\n\n" + "\n".join(f"    {c}" for c in commands)
        for title, table, commands in sections
    )
    (args.output_dir / "privacy_robustness.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
