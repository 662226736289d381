"""Benchmark suite: centralized vs federated settings, same model, data and passes over the data.

One command runs every setting one after the other on this machine (so the
ratios are fair), then prints a Markdown table (official and leak-free
accuracy, macro F1, per-class recall, wall time, time to 95% / 97%, peak
memory of the server and of one site, federated / centralized wall-time
ratio), writes it to ``<output-dir>/suite.md`` with the commands, and plots
accuracy per round for every setting (``<output-dir>/suite_accuracy.png``);
``--output-dir`` (default: a new folder under ``benchmarks/runs/``) also holds
every setting's run.

    python3 benchmarks/suite.py --data-dir ../shared/data/brain-tumor-mri --epochs 12 --local-epochs 2
    python3 benchmarks/suite.py --data-dir ../shared/data/brain-tumor-mri --tiny   # CI: seconds, not hours

Settings: centralized; 4 sites IID; 4 sites Dirichlet alpha 1.0 and 0.3;
10 sites Dirichlet 0.3; on 4 sites alpha 0.3 also FedProx, FedAvgM,
GroupNorm and the balanced-softmax loss; and scale runs of 50 and 200 simulated sites (round time,
total memory).
``--only`` picks some by name. ``--tiny`` uses a few dozen images at 32 px
(a subset folder of 12 images per class and split, see ``subset.py``) for
one round and the first two settings. ``--keep NAME`` copies each
setting's small result files to ``benchmarks/results/NAME/<setting>/``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import matplotlib.pyplot as plt  # picks a non-interactive backend on a headless machine
import pandas as pd

from harness import (
    ROOT,
    add_keep,
    add_output_dir,
    fresh_output_dir,
    keep_result,
    markdown_table,
    measured_command,
    measured_run,
    table_row,
)
from subset import make_subset

DIR03 = "partitioning='dirichlet' dirichlet-alpha=0.3"
SETTINGS = {  # name: (sites, run-config); sites 0 = centralized
    "centralized": (0, ""),
    "4 IID": (4, "partitioning='iid'"),
    "10 Dir 0.3": (10, DIR03),
    "4 Dir 1.0": (4, "partitioning='dirichlet' dirichlet-alpha=1.0"),
    "4 Dir 0.3": (4, DIR03),
    "4 Dir 0.3 FedProx": (4, f"{DIR03} strategy='fedprox' proximal-mu=0.01"),
    "4 Dir 0.3 FedAvgM": (4, f"{DIR03} strategy='fedavgm' server-momentum=0.9"),
    "4 Dir 0.3 GroupNorm": (4, f"{DIR03} norm='group'"),
    "4 Dir 0.3 balanced softmax": (4, f"{DIR03} balanced-softmax=true"),
    "50 sites (scale)": (50, "partitioning='iid' fraction-evaluate=0"),
    "200 sites (scale)": (200, "partitioning='iid' fraction-evaluate=0"),
}
TINY_SETTINGS = ("centralized", "4 IID")
TINY = "image-size=32 batch-size=16"
TINY_PER_CLASS = 12
COLUMNS = [
    "setting",
    "accuracy",
    "leak_free",
    "f1_macro",
    "recall (g/m/n/p)",
    "wall_s",
    "s_to_95",
    "s_to_97",
    "mean_round_s",
    "peak_server_gib",
    "peak_site_gib",
    "peak_total_gib",
    "fed/central wall",
    "fed/central median epoch",
]


def command_for(name: str, args: argparse.Namespace, output_dir: Path) -> tuple[list[str], bool]:
    """The command of one setting and whether it goes through ``run.sh``."""
    sites, config = SETTINGS[name]
    common = f"{TINY if args.tiny else args.workload} {config}".strip()
    if sites == 0:  # centralized: every epoch is one evaluated "round"
        overrides = f'num-server-rounds={args.epochs} local-epochs=1 data-dir="{args.data_dir}" {common}'
        overrides += f' output-dir="{output_dir}"'
        return ["brainfl", "centralized", "--app-dir", str(ROOT), "--run-config", overrides], False
    rounds = max(1, args.epochs // args.local_epochs)
    local = f"local-epochs={args.local_epochs} {common}"
    run = ["--simulation", "--sites", str(sites), "--rounds", str(rounds), "--data-dir", args.data_dir]
    return [*run, "--run-config", local], True


def accuracy_per_pass(output_dir: Path, epochs_per_round: int) -> pd.Series:
    """Official accuracy after each evaluation, indexed by passes over the data so far."""
    results = pd.read_csv(output_dir / "federated_learning_results.csv")
    return results.set_index(results["round"] * epochs_per_round)["accuracy"]


def plot(curves: dict[str, pd.Series], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(8, 5))
    for name, accuracy in curves.items():
        axis.plot(accuracy.index, accuracy.values, marker="o", label=name)
    axis.set_xlabel("passes over the training data (a federated round is its local epochs)")
    axis.set_ylabel("official Testing accuracy")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def add_time_ratios(rows: list[dict[str, object]], local_epochs: int) -> None:
    """Each row's wall time over the centralized run's, and the same for the median epoch.

    The median compares a typical federated round (``local_epochs`` epochs
    at every site) with ``local_epochs`` typical centralized epochs, so a
    stall of this noisy machine in one run does not decide the ratio.
    """
    central = next((row for row in rows if row["setting"] == "centralized"), None)
    for row in rows:
        if central is None:
            row["fed/central wall"] = row["fed/central median epoch"] = ""
            continue
        epochs_per_round = 1 if row is central else local_epochs
        row["fed/central wall"] = round(row["wall_s"] / central["wall_s"], 2)
        median_epoch = row["median_round_s"] / epochs_per_round
        row["fed/central median epoch"] = round(median_epoch / central["median_round_s"], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--epochs", type=int, default=12, help="passes over the data, every setting")
    parser.add_argument("--local-epochs", type=int, default=2)
    add_output_dir(parser, None)
    parser.add_argument("--workload", default="", help='run-config for every setting, e.g. "image-size=64"')
    parser.add_argument("--only", nargs="*", choices=list(SETTINGS), help="run only these settings")
    parser.add_argument("--tiny", action="store_true", help="a few dozen images, one round (CI)")
    add_keep(parser, where="NAME/<setting>/")
    args = parser.parse_args()
    out = args.output_dir = (args.output_dir or fresh_output_dir("suite")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        args.epochs, args.local_epochs = 1, 1
        args.data_dir = str(make_subset(args.data_dir, out / "data", TINY_PER_CLASS))
    names = args.only or (TINY_SETTINGS if args.tiny else list(SETTINGS))
    rows, curves, commands = [], {}, []
    for name in names:
        output_dir = out / name.replace(" ", "_").replace(".", "").replace("(", "").replace(")", "")
        command, via_run_script = command_for(name, args, output_dir)
        if via_run_script:
            figures = measured_run(command, output_dir)
        else:
            figures = measured_command(command, output_dir)
        commands.append(str(figures["command"]))
        rows.append(table_row(name, figures, output_dir))
        if args.keep:
            keep_result(
                output_dir, f"{args.keep}/{output_dir.name}", str(figures["command"]), measurement=figures
            )
        curves[name] = accuracy_per_pass(output_dir, args.local_epochs if SETTINGS[name][0] else 1)
        print(json.dumps({"setting": name, **figures}), flush=True)
    add_time_ratios(rows, args.local_epochs)
    plot(curves, out / "suite_accuracy.png")
    machine = f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    text = "\n".join(
        [
            f"Machine: {machine}. Epochs: {args.epochs} ({args.local_epochs} local per round). "
            f"Workload: {args.workload or 'defaults'}.",
            "",
            markdown_table(rows, COLUMNS),
            "",
            "Commands:",
            *[f"    {c}" for c in commands],
        ]
    )
    (out / "suite.md").write_text(text + "\n")
    print(text)
    print(f"table: {out / 'suite.md'}  plot: {out / 'suite_accuracy.png'}")


if __name__ == "__main__":
    main()
