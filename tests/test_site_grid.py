"""The per-site grid's summary: per-site rows, mean ± sd over seeds, worst site, wins over training alone."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest

from brainfl.report.results import PERSONALIZATION_CSV, RESULTS_CSV
from brainfl.settings.run_config import parse_pairs
from make_tables import render
from result_folders import GRID_CALIBRATION, GRID_SUMMARY, in_a_grid, load_runs
from site_grid import APPROACHES, GRID_CSV, command, folder_name, summarize

# per seed, the two sites' held-out accuracy of each approach
ALONE = {1: [0.60, 0.80], 2: [0.70, 0.80]}
FEDERATED = {1: [0.85, 0.75], 2: [0.90, 0.86]}
TUNED = {1: [0.86, 0.84], 2: [0.91, 0.88]}
PERSONAL = {1: [0.88, 0.86], 2: [0.92, 0.90]}  # Ditto's personal models
POOLED = {1: [0.90, 0.92], 2: [0.93, 0.94]}


def baseline(path: Path, accuracies: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"site": i, "val_accuracy": a, "val_balanced_accuracy": a - 0.05} for i, a in enumerate(accuracies)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)


def federated(
    folder: Path,
    fedbn: bool,
    first: list[float],
    second: list[float],
    ece: float,
    stage: str = "personalized",
    epochs: int = 1,
) -> None:
    """A kept federated run: personalization (global, then ``stage``), calibration, round results."""
    folder.mkdir(parents=True)
    (folder / "run_config.json").write_text(json.dumps({"fedbn": fedbn, "num-server-rounds": 3}))
    tuned = 0 if fedbn or stage == "ditto" else epochs
    pd.DataFrame(
        [
            {"site": i, "fine_tune_epochs": tuned, "global_accuracy": g,
             f"{stage}_accuracy": p, "global_balanced_accuracy": g, f"{stage}_balanced_accuracy": p}
            for i, (g, p) in enumerate(zip(first, second, strict=True))
        ]
    ).to_csv(folder / PERSONALIZATION_CSV, index=False)  # fmt: skip
    test = {"before": {"ece": ece}, "after": {"ece": ece / 4}}
    (folder / "calibration.json").write_text(json.dumps({"test": test}))
    pd.DataFrame({"round": [0, 1], "accuracy": [0.2, 0.8], "elapsed_s": [0, 9]}).to_csv(folder / RESULTS_CSV)


@pytest.fixture
def grid(tmp_path) -> Path:
    keep = tmp_path / "results" / "grid"
    for seed in (1, 2):
        cell = keep / "shift4" / f"seed{seed}"
        baseline(cell / "local" / "local_baseline.csv", ALONE[seed])
        baseline(cell / "pooled" / "pooled_baseline.csv", POOLED[seed])
        federated(cell / "fedavg", False, FEDERATED[seed], TUNED[seed], ece=0.08 * seed)
        federated(cell / "fedbn", True, FEDERATED[seed], POOLED[seed], ece=0.2)
        # a Ditto run's global model is FedAvg's, trained apart: the fedavg run's is the one kept
        federated(cell / "ditto", False, [0.5, 0.5], PERSONAL[seed], ece=0.1, stage="ditto")
    (keep / "command.txt").write_text("python3 benchmarks/site_grid.py run\n")
    return keep


def test_summary_is_mean_and_sd_over_seeds_of_site_mean_and_worst_site(grid):
    results = grid.parent
    assert not in_a_grid(grid / "shift4" / "seed1" / "fedavg", results)  # before the summary
    summarize(grid)
    sites = pd.read_csv(grid / GRID_CSV)
    assert len(sites) == 2 * 2 * 7  # seeds x sites x approaches
    alone = sites[(sites["approach"] == "alone") & (sites["seed"] == 2)]
    assert alone["accuracy"].tolist() == ALONE[2]
    summary = pd.read_csv(grid / GRID_SUMMARY).set_index("approach")
    # alone: site means 0.70 and 0.75 -> 0.725 ± 0.0354; worst sites 0.60 and 0.70 -> 0.65 ± 0.0707
    assert summary.loc["alone", "site mean accuracy"] == "0.7250 ± 0.0354"
    assert summary.loc["alone", "worst site accuracy"] == "0.6500 ± 0.0707"
    assert summary.loc["alone", "worst below mean, points"] == pytest.approx(7.5)
    assert summary.loc["federated", "sites above alone"] == "3/4"  # seed 1 site 1: 0.75 < 0.80
    assert summary.loc["FedAvg + fine-tune", "sites above alone"] == "4/4"
    federated_scores = sites[(sites["approach"] == "federated") & (sites["seed"] == 1)]
    assert federated_scores["accuracy"].tolist() == FEDERATED[1]  # the fedavg run's, not the Ditto run's
    ditto = sites[(sites["approach"] == "Ditto") & (sites["seed"] == 2)]
    assert ditto["accuracy"].tolist() == PERSONAL[2]
    assert summary.loc["Ditto", "site mean accuracy"] == "0.8900 ± 0.0283"  # site means 0.87 and 0.91
    assert (
        summary.loc["FedBN, own BN", "site mean accuracy"] == "0.9225 ± 0.0177"
    )  # site means 0.91 and 0.935
    calibration = pd.read_csv(grid / GRID_CALIBRATION).set_index("setting")
    assert calibration.loc["shift4", "ECE before"] == "0.1200 ± 0.0566"
    assert calibration.loc["shift4", "worst ECE after"] == pytest.approx(0.04)
    assert in_a_grid(grid / "shift4" / "seed1" / "fedavg", results)
    assert load_runs(results) == []  # the grid's runs are shown by its own tables only
    table = render("site-grid", results)
    assert "| grid/shift4 |" not in table and "| grid | shift4 | FedBN, own BN | 2 |" in table
    assert "python3 benchmarks/site_grid.py run" in table
    assert "0.1200 ± 0.0566" in render("site-grid-calibration", results)


def test_summarize_without_cells_stops_with_the_folder(tmp_path):
    with pytest.raises(SystemExit, match="no kept cell"):
        summarize(tmp_path)


def grid_arguments(**changed) -> argparse.Namespace:
    """The site grid's ``run`` options, as its parser gives them by default, with ``changed``."""
    defaults = dict(rounds=10, local_epochs=2, data_dir="data", fine_tune_epochs=1, ditto_lambda=0.1)
    optimizers = dict(server_learning_rate=2.0, server_momentum=0.0, sgd_learning_rate=0.03)
    return argparse.Namespace(**{**defaults, **optimizers, "run_config": "", **changed})


def test_scaffold_cells_train_with_sgd_and_fine_tune_at_a_tenth_of_its_rate(tmp_path):
    args = grid_arguments(sgd_learning_rate=0.05)
    line = " ".join(command(args, "dir03", 1, "scaffold", tmp_path))
    assert "strategy='scaffold' optimizer='sgd' learning-rate=0.05 fine-tune-learning-rate=0.005" in line
    assert "optimizer" not in " ".join(command(args, "dir03", 1, "fedavg", tmp_path))


def test_fedavgm_cells_take_the_server_step_and_fine_tune_as_fedavg(tmp_path):
    args = grid_arguments(server_learning_rate=1.5, fine_tune_epochs=3)
    settings = parse_pairs(command(args, "iid4", 1, "fedavgm", tmp_path)[-1])
    assert settings["strategy"] == "fedavgm" and settings["server-learning-rate"] == 1.5
    assert settings["server-momentum"] == 0.0 and settings["fine-tune-epochs"] == 3
    assert folder_name("fedavgm", 3) == "fedavgm-ft3"
    assert "strategy" not in parse_pairs(command(args, "iid4", 1, "fedavg", tmp_path)[-1])
    pooled = parse_pairs(command(args, "iid4", 1, "fedavgm-bn", tmp_path)[-1])
    assert pooled == {**settings, "bn-statistics": "pooled"}  # FedAvgM's cell, the statistics pooled
    assert folder_name("fedavgm-bn", 1) == "fedavgm-bn"


def test_the_grids_run_config_reaches_every_approach_before_the_cells_settings(tmp_path):
    args = grid_arguments(run_config="crop='head'")
    for approach in APPROACHES:
        config = command(args, "dir03", 1, approach, tmp_path)[-1]
        assert config.startswith("crop='head' partitioning='dirichlet'"), approach


def test_longer_fine_tuning_gets_folders_and_rows_of_its_own_beside_one_epoch(grid):
    assert folder_name("prior", 3) == "prior-ft3" and folder_name("prior", 1) == "prior"
    assert folder_name("local", 3) == "local" and folder_name("fedbn", 3) == "fedbn"
    for seed in (1, 2):
        cell = grid / "shift4" / f"seed{seed}"
        federated(cell / folder_name("fedavg", 3), False, ALONE[seed], POOLED[seed], ece=0.1, epochs=3)
        federated(cell / "prior-unsmoothed", False, FEDERATED[seed], ALONE[seed], ece=0.1, epochs=3)
    summarize(grid)
    summary = pd.read_csv(grid / GRID_SUMMARY).set_index("approach")
    assert summary.loc["FedAvg + fine-tune", "site mean accuracy"] == "0.8725 ± 0.0318"  # TUNED
    assert summary.loc["FedAvg + fine-tune (3 epochs)", "site mean accuracy"] == "0.9225 ± 0.0177"  # POOLED
    assert summary.loc["FedAvg + fine-tune (3 epochs)", "sites above alone"] == "4/4"
    sites = pd.read_csv(grid / GRID_CSV)
    assert len(sites) == 2 * 2 * 8  # the one more approach; a folder of another name is not read
    federated_scores = sites[(sites["approach"] == "federated") & (sites["seed"] == 1)]
    assert federated_scores["accuracy"].tolist() == FEDERATED[1]  # the fedavg run's global model, kept
