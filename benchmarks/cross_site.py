"""Cross-site validation on the deployment engine: train at hospitals with their own folders, then score
every model at every hospital with ``./run.sh --validate``, as a clinical reviewer would ask.

1. The dataset's ``Training`` and ``Testing`` scans are split IID (stratified, seeded) into ``--sites``
   hospitals, each a folder of symlinks ``train/site<i>/<class>/`` and ``test/site<i>/<class>/``.
2. ``./run.sh --site-data-dir train/site<i> ... --baselines`` trains the federation (each SuperNode on its
   own training folder, the coordinator scoring the dataset's ``Testing`` split), then each site alone
   and the sites pooled.
3. ``./run.sh --validate <that run> --site-data-dir test/site<i> ...`` scores the federated, the
   alone and the pooled models at every hospital on its own test scans (``validate``), and once more
   with ``--adapt`` (``validate-adapted``).
4. ``brainfl evaluate`` scores the federated model on the ``Testing`` split, the union of the hospitals'
   test scans: the pooled row of step 3 must equal it (same scans, same accuracy).

``comparison.json`` holds that check and the times: the validation run's wall time against the
federated run's median round::

    python3 benchmarks/cross_site.py --rounds 10 --keep cross-site-4
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from brainfl.data.loading import TEST_SPLIT, TRAIN_SPLIT, find_classes, list_images
from brainfl.data.partitioning import partition_indices
from brainfl.model.files import FINAL_MODEL, RUN_CONFIG
from brainfl.report.validation import CROSS_SITE_CSV, POOLED, VALIDATION_CSV
from harness import (
    RESULTS,
    ROOT,
    add_keep,
    add_output_dir,
    free_port_block,
    fresh_output_dir,
    keep_result,
    measured_command,
    measured_run,
    this_command,
)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "brain-tumor-mri"


def hospital_folders(data_dir: Path, destination: Path, sites: int, seed: int) -> dict[str, list[Path]]:
    """``{split: [site folder, ...]}``: each split's scans dealt IID to ``sites`` folders of symlinks."""
    folders: dict[str, list[Path]] = {}
    for split, name in ((TRAIN_SPLIT, "train"), (TEST_SPLIT, "test")):
        class_names = find_classes(data_dir / split)
        items = list_images(data_dir / split, class_names)
        labels = [label for _, label in items]
        parts = partition_indices(np.asarray(labels), sites, "iid", 1.0, seed, None)
        folders[name] = []
        for site, indices in enumerate(parts):
            folder = destination / name / f"site{site}"
            for index in indices:
                path, label = items[index]
                link = folder / class_names[label] / path.name
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.is_symlink():
                    link.symlink_to(path.resolve())
            folders[name].append(folder)
    return folders


def site_options(folders: list[Path]) -> list[str]:
    return [word for folder in folders for word in ("--site-data-dir", str(folder))]


def pooled_row(validation: Path, model: str) -> pd.Series:
    rows = pd.read_csv(validation / VALIDATION_CSV, dtype={"site": str})
    return rows[(rows["model"] == model) & (rows["site"] == POOLED)].iloc[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--run-config",
        nargs="+",
        default=["conf/iid-4-sites.toml"],
        help='the training recipe: conf files or "K=V ..." overrides, as run.sh takes them, in order',
    )
    add_output_dir(parser, None)
    add_keep(parser, where="NAME/{train,validate,validate-adapted}/")
    args = parser.parse_args()
    out = (args.output_dir or fresh_output_dir("cross-site")).resolve()
    folders = hospital_folders(args.data_dir.resolve(), out / "hospitals", args.sites, args.seed)
    common = ["--sites", str(args.sites), "--data-dir", str(args.data_dir)]
    configs = [part for config in args.run_config for part in ("--run-config", config)]
    recipe = [*configs, "--rounds", str(args.rounds)]
    train = measured_run([*common, *recipe, *site_options(folders["train"]), "--baselines"], out / "train")
    validations = {
        name: measured_command(
            [
                str(ROOT / "run.sh"),
                *common,
                "--validate",
                str(out / "train"),
                *extra,
                *site_options(folders["test"]),
                "--port",
                str(free_port_block(args.sites + 2)),
                "--output-dir",
                str(out / name),
            ],
            out / name,
            rounds=False,
        )
        for name, extra in (("validate", []), ("validate-adapted", ["--adapt"]))
    }
    measured_command(
        [
            "brainfl",
            "evaluate",
            "--model",
            str(out / "train" / FINAL_MODEL),
            str(args.data_dir),
            "--output-dir",
            str(out / "evaluate"),
        ],
        out / "evaluate",
        rounds=False,
    )
    evaluated = json.loads((out / "evaluate" / "evaluation.json").read_text())
    accuracy = next(m["value"] for m in evaluated["metrics"] if m["metric"] == "accuracy")
    pooled = pooled_row(out / "validate", "train")
    rounds = statistics.median(train["round_latency_s"])
    comparison = {
        "evaluate_images": evaluated["images"],
        "evaluate_accuracy": accuracy,
        "pooled_images": int(pooled["images"]),
        "pooled_accuracy": float(pooled["accuracy"]),
        "pooled_equals_evaluate": int(pooled["images"]) == evaluated["images"]
        and abs(float(pooled["accuracy"]) - accuracy) < 1e-6,
        "median_round_s": rounds,
        "validate_command_s": validations["validate"]["command_s"],
        "validate_adapted_command_s": validations["validate-adapted"]["command_s"],
        "validate_over_round": round(validations["validate"]["command_s"] / rounds, 2),
    }
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2) + "\n")
    print(json.dumps(comparison, indent=2))
    print(pd.read_csv(out / "validate" / CROSS_SITE_CSV).to_string(index=False))
    if args.keep:
        target = RESULTS / args.keep
        keep_result(out / "train", f"{args.keep}/train", train["command"], measurement=train)
        for name, figures in validations.items():
            (target / name).mkdir(parents=True, exist_ok=True)
            for file_name in (VALIDATION_CSV, CROSS_SITE_CSV, RUN_CONFIG):
                shutil.copyfile(out / name / file_name, target / name / file_name)
            (target / name / "command.txt").write_text(figures["command"] + "\n")
        shutil.copyfile(out / "comparison.json", target / "comparison.json")
        (target / "command.txt").write_text(this_command() + "\n")
        print(f"kept in {target}")


if __name__ == "__main__":
    main()
