"""Price of privacy and robustness on the full dataset: DP noise levels, SecAgg+, poisoned sites.

Runs, one after the other on Flower's simulation engine with the same data
and schedule: 4 IID sites without DP (BatchNorm and GroupNorm), with central
DP (server-side fixed clipping) at each ``--noise`` level (epsilon reported
at delta 1e-5), with SecAgg+; then 5 IID sites with one sign-flipping site
(update scaled by -10) under fedavg, krum, multikrum, trimmed-mean and
median, next to the clean fedavg run. Prints the two Markdown tables and
writes them to ``<out>/privacy_robustness.md``.

    python3 benchmarks/privacy_robustness.py --data-dir ../shared/data/brain-tumor-mri
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from harness import markdown_table, measured_run, table_row

COLUMNS = ["setting", "accuracy", "leak_free", "f1_macro", "epsilon", "wall_s", "mean_round_s"]
POISON = "attack='sign-flip' attack-sites=1"


def privacy_settings(args: argparse.Namespace) -> dict[str, tuple[int, str]]:
    dp = f"norm='group' dp='server-fixed' dp-clipping-norm={args.clipping_norm}"
    return {
        "no DP, BatchNorm": (4, ""),
        "no DP, GroupNorm": (4, "norm='group'"),
        **{f"DP z={z:g}, C={args.clipping_norm:g}": (4, f"{dp} dp-noise-multiplier={z}") for z in args.noise},
        "SecAgg+ (BatchNorm)": (4, "secagg=true"),
    }


def poison_settings() -> dict[str, tuple[int, str]]:
    return {
        "clean, fedavg": (5, ""),
        **{
            f"1 of 5 poisoned, {s}": (5, f"{POISON} strategy='{s}'")
            for s in ("fedavg", "krum", "multikrum", "trimmed-mean", "median")
        },
    }


def run_table(settings: dict[str, tuple[int, str]], args: argparse.Namespace) -> tuple[str, list[str]]:
    rows, commands = [], []
    chosen = {name: value for name, value in settings.items() if args.match in name}
    for name, (sites, config) in chosen.items():
        output_dir = args.out / "".join(ch if ch.isalnum() else "_" for ch in name)
        overrides = f"{args.workload} local-epochs={args.local_epochs} {config}".strip()
        command = ["--simulation", "--sites", str(sites), "--rounds", str(args.rounds)]
        command += ["--data-dir", args.data_dir, "--run-config", overrides]
        commands.append("./run.sh " + " ".join(command[:-1]) + f' "{overrides}"')
        figures = measured_run(command, output_dir)
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
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="brainfl-privacy-")))
    parser.add_argument("--only", choices=("privacy", "poison"), default=None)
    parser.add_argument("--match", default="", help="run only the settings whose name contains this")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sections = []
    if args.only in (None, "privacy"):
        sections.append(("Privacy (4 IID sites)", *run_table(privacy_settings(args), args)))
    if args.only in (None, "poison"):
        sections.append(("Poisoned site (5 IID sites)", *run_table(poison_settings(), args)))
    text = "\n\n".join(
        f"### {title}\n\n{table}\n\nCommands:\n\n" + "\n".join(f"    {c}" for c in commands)
        for title, table, commands in sections
    )
    (args.out / "privacy_robustness.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
