"""Per-site benchmark grid: does each site gain by joining, and which personalization helps where.

For every setting (4 IID sites, 4 sites Dirichlet 0.3, 4 IID sites with a
synthetic scanner per site) and seed, with the same
model, rounds x local epochs and learning-rate schedule, it runs:

- ``fedavg``: the federation (simulation engine), then 1 fine-tuning epoch per
  site (``fine-tune-epochs``): ``personalization.csv`` gives each site's held-out
  scores of the global model (FedAvg) and of its fine-tuned copy
  (FedAvg + fine-tune); ``calibration.json`` the ECE before and after federated
  temperature scaling;
- ``fedbn``: the same federation with ``fedbn=true``: each site's held-out
  scores of the global model with its own BatchNorm layers;
- ``ditto``: the same federation with ``ditto-lambda`` (``--ditto-lambda``, default
  0.1): each site's held-out scores of the Ditto personal model it trained beside
  the global one through the rounds (``personalization.csv``'s ``ditto`` stage; its
  global model is FedAvg's, so the ``fedavg`` run's is the one shown);
- ``scaffold``: the same federation with ``strategy=scaffold`` (control variates against
  client drift under label skew) and the sites' local steps SGD with momentum, whose
  gradient steps the correction assumes (``--sgd-learning-rate``, default 0.03; fine-tuning
  at a tenth of it), then 1 fine-tuning epoch per site as for ``fedavg``;
- ``fedavgm``: the same federation with FedAvgM's server step (``strategy=fedavgm``,
  ``--server-learning-rate``, default 2, ``--server-momentum``, default 0: the averaged update
  of the trained weights extrapolated, BatchNorm statistics averaged plainly), then 1
  fine-tuning epoch per site as for ``fedavg``;
- ``fedavgm-bn``: ``fedavgm`` with ``bn-statistics='pooled'``: after each server step the sites
  measure the new global model's BatchNorm statistics on their images and the server pools them
  (:mod:`brainfl.federation.statistics_query`), instead of averaging the statistics of the sites'
  own models, which the extrapolated weights no longer match; fine-tuned as ``fedavg``;
- ``prior``: the same federation with the balanced-softmax loss (``balanced-softmax=true``: each
  site fits the class-balanced world under its own class mix, so the global model follows no
  site's; ``balanced-softmax-smoothing=0.1``: a class a site lacks keeps 2.5% of its mix), then
  1 fine-tuning epoch per site (with the same loss) and the site's own class mix folded back
  into the classifier (``site-prior=true``, :mod:`brainfl.federation.site_prior`): the global
  model (``FedAvg, balanced softmax``), fine-tuned, and with the site prior;
- ``local``: ``brainfl local``, each site trains alone on its own images;
- ``pooled``: ``brainfl pooled``, one model on the sites' training splits pooled.

Every score is a site's accuracy on its own held-out split (the same images in
all of them). Every approach but ``prior`` trains with plain cross-entropy: the balanced-softmax
loss (``balanced-softmax``) fits a model to a class-balanced world, and a site
trained alone with it on a few classes scores near zero on its own skewed split unless its own
class mix is put back, as ``prior`` does.

``--fine-tune-epochs`` other than 1 puts the fine-tuning approaches' cells in folders of their own
(``prior-ft3``), named ``... + fine-tune (3 epochs)`` in the tables.

``run`` trains what is missing into ``--output-dir`` (default
``benchmarks/runs/<keep>``; a cell whose result file exists
is skipped, so a stopped grid resumes; ``--rounds``, ``--local-epochs``,
``--seeds``, ``--settings`` and ``--approaches`` pick a smaller or longer grid)
and keeps each cell's small files in
``benchmarks/results/<keep>/<setting>/seed<k>/<approach>/``; ``summarize``
reads those into ``site_grid.csv`` (per site), ``site_grid_summary.csv`` (mean
and sd over seeds of the per-site mean and of the worst site, and at how many
sites each approach beats training alone) and ``site_grid_calibration.csv``,
which ``make_tables.py`` shows.

    python3 benchmarks/site_grid.py run --data-dir ../shared/data/brain-tumor-mri --keep site-grid
    python3 benchmarks/site_grid.py summarize --keep site-grid
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path

import pandas as pd

from brainfl.model.files import RUN_CONFIG
from brainfl.report.results import PERSONALIZATION_CSV
from brainfl.report.site_comparison import ALONE, LOCAL_CSV, POOLED_CSV, SCORES, approaches, gathered, rank
from harness import (
    RESULTS,
    ROOT,
    RUNS,
    add_keep,
    add_output_dir,
    free_port_block,
    keep_result,
    measured_command,
    shown_command,
    this_command,
)
from result_folders import GRID_CALIBRATION, GRID_SUMMARY

SETTINGS = {  # folder name: run-config of the setting
    "iid4": "partitioning='iid'",
    "dir03": "partitioning='dirichlet' dirichlet-alpha=0.3",
    "shift4": "partitioning='iid' feature-shift=1.0",
}
APPROACHES = ("fedavg", "fedavgm", "fedavgm-bn", "fedbn", "ditto", "scaffold", "prior", "local", "pooled")
RESULT_FILE = {
    "fedavg": PERSONALIZATION_CSV,
    "fedavgm": PERSONALIZATION_CSV,
    "fedavgm-bn": PERSONALIZATION_CSV,
    "fedbn": PERSONALIZATION_CSV,
    "ditto": PERSONALIZATION_CSV,
    "scaffold": PERSONALIZATION_CSV,
    "prior": PERSONALIZATION_CSV,
    "local": LOCAL_CSV,
    "pooled": POOLED_CSV,
}
# The approaches that fine-tune (``--fine-tune-epochs``).
TUNED = ("fedavg", "fedavgm", "fedavgm-bn", "scaffold", "prior")
SITES = 4
GRID_CSV = "site_grid.csv"  # per setting, seed, site and approach


def run_config(args: argparse.Namespace, setting: str, seed: int) -> str:
    """The run-config every approach of a cell shares (after the grid's own ``--run-config``)."""
    cell = (
        f"{SETTINGS[setting]} num-partitions={SITES} num-server-rounds={args.rounds} "
        f"local-epochs={args.local_epochs} seed={seed} data-dir='{args.data_dir}'"
    )
    return f"{args.run_config} {cell}" if args.run_config else cell


def command(args: argparse.Namespace, setting: str, seed: int, approach: str, out: Path) -> list[str]:
    """The command of one approach of one cell, writing its outputs to ``out``."""
    shared = run_config(args, setting, seed)
    if approach in ("local", "pooled"):
        config = f"{shared} output-dir='{out}'"
        return ["brainfl", approach, "--app-dir", str(ROOT), "--run-config", config]
    fedavgm = (
        f"strategy='fedavgm' server-learning-rate={args.server_learning_rate:g} "
        f"server-momentum={args.server_momentum:g}"
    )
    extra = {
        "fedavg": "",
        "fedavgm": fedavgm,
        "fedavgm-bn": f"{fedavgm} bn-statistics='pooled'",
        "fedbn": "fedbn=true",
        "ditto": f"ditto-lambda={args.ditto_lambda}",
        "scaffold": (
            f"strategy='scaffold' optimizer='sgd' learning-rate={args.sgd_learning_rate:g} "
            f"fine-tune-learning-rate={args.sgd_learning_rate / 10:g}"
        ),
        "prior": "balanced-softmax=true balanced-softmax-smoothing=0.1 site-prior=true",
    }[approach]
    if approach in TUNED:
        extra = f"{extra} fine-tune-epochs={args.fine_tune_epochs}".lstrip()
    port = str(free_port_block(SITES + 2))
    return [
        str(ROOT / "run.sh"),
        "--simulation",
        "--sites",
        str(SITES),
        "--port",
        port,
        "--output-dir",
        str(out),
        "--data-dir",  # run.sh's options win over its run-config
        args.data_dir,
        "--run-config",
        f"{shared} {extra}",
    ]


def folder_name(approach: str, fine_tune_epochs: int) -> str:
    """A cell's folder for ``approach``: its name, with ``-ft<N>`` when it fine-tunes for N epochs other
    than 1 (``prior-ft3``), so that fine-tuning lengths sit side by side in one grid."""
    return f"{approach}-ft{fine_tune_epochs}" if approach in TUNED and fine_tune_epochs != 1 else approach


def keep_baseline(out: Path, target: Path, line: str, result_file: str) -> None:
    """Keep a baseline's CSV and run config with its command (a baseline has no round results)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in (result_file, RUN_CONFIG):
        shutil.copyfile(out / name, target / name)
    (target / "command.txt").write_text(line + "\n")


def run(args: argparse.Namespace) -> None:
    """Train every missing cell (a run whose result file is there already is only kept) and keep it."""
    (RESULTS / args.keep).mkdir(parents=True, exist_ok=True)
    (RESULTS / args.keep / "command.txt").write_text(this_command() + "\n")
    for seed in args.seeds:
        for setting in args.settings:
            for approach in args.approaches:
                folder = folder_name(approach, args.fine_tune_epochs)
                out = args.output_dir / setting / f"seed{seed}" / folder
                target = RESULTS / args.keep / setting / f"seed{seed}" / folder
                if (target / RESULT_FILE[approach]).is_file():
                    continue
                line = command(args, setting, seed, approach, out)
                text = shown_command(line)
                print(f"{setting} seed {seed} {approach}: {text}", flush=True)
                baseline = approach in ("local", "pooled")
                figures: dict[str, object] = {}
                if not (out / RESULT_FILE[approach]).is_file():
                    figures = measured_command(line, out, rounds=not baseline)
                if baseline:
                    keep_baseline(out, target, text, RESULT_FILE[approach])
                else:
                    keep_result(out, str(target.relative_to(RESULTS)), text, measurement=figures)
                print(f"  done in {figures.get('command_s', '(already run)')} s", flush=True)


def variants(cell: Path, approach: str) -> list[str]:
    """The folders of ``approach`` with another fine-tuning length in a kept cell (``prior-ft3``)."""
    return sorted(path.name for path in cell.glob(f"{approach}-ft*"))


def cell_sites(cell: Path) -> pd.DataFrame:
    """One row per site and approach of a kept cell: its held-out accuracy and balanced accuracy (a later
    folder's approach of the same name wins: the Ditto run's global model, FedAvg's, is read first). An
    approach's folders of other fine-tuning lengths, ``<approach>-ft<N>``, add only the rows its own
    folder lacks (``+ fine-tune (3 epochs)``): their global model, a run of the same recipe, is not
    shown twice."""
    order = ("ditto", *(approach for approach in APPROACHES if approach != "ditto"))
    found = gathered(cell / approach for approach in order if (cell / approach).is_dir())
    for name in (name for approach in order for name in variants(cell, approach)):
        for label, scores in approaches(cell / name).items():
            found.setdefault(label, scores)
    return pd.concat(
        [found[approach].rename_axis("site").reset_index().assign(approach=approach)
         for approach in sorted(found, key=rank)]
    )  # fmt: skip


def mean_sd(values: pd.Series) -> str:
    """``mean ± sd`` over seeds (sd with n - 1; only the mean for one seed)."""
    if len(values) < 2:
        return f"{values.mean():.4f}"
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


def summary(sites: pd.DataFrame) -> pd.DataFrame:
    """Per setting and approach, over seeds: the per-site mean and the worst site (mean ± sd), the worst
    site's distance below the mean, and at how many (seed, site) pairs the approach beats training alone."""
    keys = ["setting", "approach", "seed"]
    per_seed = sites.groupby(keys, sort=False)["accuracy"].agg(["mean", "min"]).reset_index()
    alone = sites[sites["approach"] == ALONE].set_index(["setting", "seed", "site"])["accuracy"]
    rows = []
    for (setting, approach), group in per_seed.groupby(["setting", "approach"], sort=False):
        mine = sites[(sites["setting"] == setting) & (sites["approach"] == approach)]
        versus = mine.set_index(["setting", "seed", "site"])["accuracy"]
        versus, base = versus.align(alone, join="inner")
        rows.append(
            {
                "setting": setting,
                "approach": approach,
                "seeds": len(group),
                "site mean accuracy": mean_sd(group["mean"]),
                "worst site accuracy": mean_sd(group["min"]),
                "worst below mean, points": round(float((group["mean"] - group["min"]).mean()) * 100, 2),
                "sites above alone": "" if approach == ALONE else f"{int((versus > base).sum())}/{len(base)}",
            }
        )
    return pd.DataFrame(rows)


def calibration(keep: Path) -> pd.DataFrame:
    """Per setting, over seeds: the FedAvg model's test ECE before and after federated temperature scaling."""
    rows = []
    for path in sorted(keep.glob("*/seed*/fedavg/calibration.json")):
        test = json.loads(path.read_text())["test"]
        setting, seed = path.parts[-4], path.parts[-3]
        rows.append(
            {"setting": setting, "seed": seed, "before": test["before"]["ece"], "after": test["after"]["ece"]}
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return (
        table.groupby("setting", sort=False)
        .agg(seeds=("seed", "count"), before=("before", mean_sd), after=("after", mean_sd),
             worst_after=("after", lambda after: round(after.max(), 4)))
        .rename(columns={"before": "ECE before", "after": "ECE after", "worst_after": "worst ECE after"})
        .reset_index()
    )  # fmt: skip


def summarize(keep: Path) -> None:
    """Write the grid's per-site table, summary and calibration summary from the cells kept in ``keep``."""
    cells = sorted(keep.glob("*/seed*"))
    if not cells:
        raise SystemExit(f"no kept cell under {keep}")
    sites = pd.concat(
        [cell_sites(cell).assign(setting=cell.parent.name, seed=int(cell.name.removeprefix("seed")))
         for cell in cells]
    )[["setting", "seed", "site", "approach", *SCORES]]  # fmt: skip
    order = {name: i for i, name in enumerate(SETTINGS)}
    sites = sites.sort_values(
        ["setting", "seed", "site"], key=lambda c: c.map(order) if c.name == "setting" else c
    )
    summarized, calibrated = summary(sites), calibration(keep)
    sites.round(6).to_csv(keep / GRID_CSV, index=False)
    summarized.to_csv(keep / GRID_SUMMARY, index=False)
    calibrated.to_csv(keep / GRID_CALIBRATION, index=False)
    if not (keep / "machine.txt").is_file():  # a note on what shared the machine stays
        (keep / "machine.txt").write_text(
            f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU, Python {platform.python_version()}; "
            "one run at a time\n"
        )
    print(summarized.to_string(index=False))
    print(calibrated.to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    runner = sub.add_parser("run", help="train the missing cells and keep their result files")
    runner.add_argument("--data-dir", required=True)
    runner.add_argument("--rounds", type=int, default=3)
    runner.add_argument("--local-epochs", type=int, default=2)
    runner.add_argument("--fine-tune-epochs", type=int, default=1)
    runner.add_argument("--ditto-lambda", type=float, default=0.1)
    runner.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    runner.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    runner.add_argument("--sgd-learning-rate", type=float, default=0.03)
    runner.add_argument("--server-learning-rate", type=float, default=2.0)
    runner.add_argument("--server-momentum", type=float, default=0.0)
    runner.add_argument("--run-config", default="", help="overrides for every cell, e.g. \"crop='head'\"")
    runner.add_argument("--approaches", nargs="+", choices=APPROACHES, default=list(APPROACHES))
    add_output_dir(runner, None, help_text="where the runs go (default: benchmarks/runs/<keep>)")
    add_keep(runner, "site-grid", where="NAME/<setting>/seed<k>/<approach>/")
    summarizer = sub.add_parser("summarize", help="the kept cells' per-site table and summaries")
    add_keep(summarizer, "site-grid")
    args = parser.parse_args()
    if args.action == "run":
        args.output_dir = (args.output_dir or RUNS / args.keep).resolve()
        run(args)
    else:
        summarize(RESULTS / args.keep)
        commands = RESULTS / args.keep / "command.txt"
        lines = commands.read_text().splitlines() if commands.is_file() else []
        commands.write_text("\n".join(dict.fromkeys([*lines, this_command()])) + "\n")


if __name__ == "__main__":
    main()
