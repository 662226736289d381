"""Joining vs going alone per site: the approaches read from their files, side by side, in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from brainfl import cli
from brainfl.core.errors import BrainFLError
from brainfl.report import page as report
from brainfl.report import site_comparison
from brainfl.report.results import PERSONALIZATION_CSV
from test_report import make_report, read_table, record_run

ALONE = [0.70, 0.80, 0.60]
POOLED = [0.90, 0.92, 0.88]
GLOBAL = [0.85, 0.86, 0.65]
TUNED = [0.86, 0.88, 0.70]


def baseline_csv(path: Path, accuracies: list[float]) -> None:
    """A ``local_baseline.csv``/``pooled_baseline.csv`` as ``brainfl local``/``pooled`` write them
    (only the columns read here, and one that is not)."""
    rows = [
        {
            "site": i,
            "num_train": 100,
            "val_accuracy": a,
            "val_balanced_accuracy": a - 0.1,
            "test_accuracy": 0.5,
        }
        for i, a in enumerate(accuracies)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)


def personalization_csv(
    folder: Path, fedbn: bool, epochs: int, strategy: str = "fedavg", optimizer: str = "adamw"
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"fedbn": fedbn, "strategy": strategy, "optimizer": optimizer}
    (folder / "run_config.json").write_text(json.dumps(config))
    rows = [
        {
            "site": i,
            "held_out_images": 10,
            "fine_tune_epochs": epochs,
            "global_accuracy": g,
            "personalized_accuracy": t,
            "global_balanced_accuracy": g - 0.05,
            "personalized_balanced_accuracy": t - 0.05,
        }
        for i, (g, t) in enumerate(zip(GLOBAL, TUNED, strict=True))
    ]
    pd.DataFrame(rows).to_csv(folder / PERSONALIZATION_CSV, index=False)


@pytest.fixture
def baselines(tmp_path) -> Path:
    folder = tmp_path / "baselines"
    folder.mkdir()
    baseline_csv(folder / site_comparison.LOCAL_CSV, ALONE)
    baseline_csv(folder / site_comparison.POOLED_CSV, POOLED)
    return folder


def test_approaches_are_read_with_names_that_say_what_each_site_model_is(tmp_path, baselines):
    found = site_comparison.approaches(baselines)
    assert list(found) == ["alone", "pooled"]
    assert found["alone"]["accuracy"].tolist() == ALONE
    assert found["alone"]["balanced_accuracy"].tolist() == pytest.approx([a - 0.1 for a in ALONE])
    personalization_csv(tmp_path / "fedavg", fedbn=False, epochs=1)
    assert list(site_comparison.approaches(tmp_path / "fedavg")) == ["federated", "FedAvg + fine-tune"]
    personalization_csv(tmp_path / "fedavg-ft3", fedbn=False, epochs=3)
    longer = list(site_comparison.approaches(tmp_path / "fedavg-ft3"))
    assert longer == ["federated", "FedAvg + fine-tune (3 epochs)"]
    personalization_csv(tmp_path / "fedbn", fedbn=True, epochs=0)
    fedbn = site_comparison.approaches(tmp_path / "fedbn")
    assert list(fedbn) == ["FedBN", "FedBN, own BN"]
    assert fedbn["FedBN, own BN"]["accuracy"].tolist() == TUNED
    personalization_csv(tmp_path / "scaffold", fedbn=False, epochs=1, strategy="scaffold")
    scaffold = site_comparison.approaches(tmp_path / "scaffold")
    assert list(scaffold) == ["scaffold", "scaffold + fine-tune"]
    assert scaffold["scaffold"]["accuracy"].tolist() == GLOBAL
    personalization_csv(
        tmp_path / "scaffold-sgd", fedbn=False, epochs=1, strategy="scaffold", optimizer="sgd"
    )
    assert list(site_comparison.approaches(tmp_path / "scaffold-sgd")) == [
        "scaffold (sgd)",
        "scaffold (sgd) + fine-tune",
    ]
    pooled_bn = tmp_path / "fedavgm-bn"
    personalization_csv(pooled_bn, fedbn=False, epochs=1, strategy="fedavgm")
    config = json.loads((pooled_bn / "run_config.json").read_text())
    (pooled_bn / "run_config.json").write_text(json.dumps({**config, "bn-statistics": "pooled"}))
    labels = ["fedavgm, pooled BN", "fedavgm, pooled BN + fine-tune"]
    assert list(site_comparison.approaches(pooled_bn)) == labels
    prior = tmp_path / "prior"
    personalization_csv(prior, fedbn=False, epochs=1)
    config = json.loads((prior / "run_config.json").read_text())
    (prior / "run_config.json").write_text(json.dumps({**config, "balanced-softmax": True}))
    table = pd.read_csv(prior / PERSONALIZATION_CSV)
    table["site_prior_accuracy"], table["site_prior_balanced_accuracy"] = ALONE, ALONE
    table.to_csv(prior / PERSONALIZATION_CSV, index=False)
    with_prior = site_comparison.approaches(prior)
    assert list(with_prior) == [
        "FedAvg, balanced softmax",
        "FedAvg, balanced softmax + fine-tune",
        "FedAvg, balanced softmax + fine-tune + site prior",
    ]
    assert with_prior["FedAvg, balanced softmax + fine-tune + site prior"]["accuracy"].tolist() == ALONE
    ranked = sorted(["pooled", "scaffold", "alone", "Ditto", "federated"], key=site_comparison.rank)
    assert ranked == ["alone", "federated", "Ditto", "scaffold", "pooled"]


def test_a_hand_edited_file_without_fine_tuning_lengths_is_still_read(tmp_path):
    personalization_csv(tmp_path / "edited", fedbn=False, epochs=1)
    table = pd.read_csv(tmp_path / "edited" / PERSONALIZATION_CSV)
    table.assign(fine_tune_epochs="").to_csv(tmp_path / "edited" / PERSONALIZATION_CSV, index=False)
    found = site_comparison.approaches(tmp_path / "edited")
    assert found["federated"]["accuracy"].tolist() == GLOBAL and len(found) == 2


def test_comparison_puts_approaches_side_by_side_with_the_gain_and_worst_site(tmp_path, baselines):
    personalization_csv(tmp_path / "run", fedbn=False, epochs=1)
    table = site_comparison.comparison(site_comparison.gathered([baselines, tmp_path / "run"]))
    assert list(table.columns) == ["alone", "federated", "FedAvg + fine-tune", "pooled", "federated - alone"]
    gains = [g - a for g, a in zip(GLOBAL, ALONE, strict=True)]
    assert table.loc[["0", "1", "2"], "federated - alone"].tolist() == pytest.approx(gains)
    assert table.loc["mean", "alone"] == pytest.approx(0.7)
    assert table.loc["worst", "federated"] == pytest.approx(0.65)
    assert table.loc["spread (max - min)", "pooled"] == pytest.approx(0.04)
    balanced = site_comparison.comparison(site_comparison.approaches(baselines), "balanced_accuracy")
    assert balanced.loc["worst", "alone"] == pytest.approx(0.5)


def test_the_report_shows_the_comparison_and_writes_it_as_csv(tmp_path, baselines):
    run = record_run(tmp_path / "run", None)
    personalization_csv(run, fedbn=False, epochs=1)
    code = cli.main(["report", str(run), "--baselines", str(baselines)])
    assert code == 0
    page = (run / report.REPORT_HTML).read_text()
    shown = read_table(page, "comparison")
    assert shown.loc["2", "alone"] == pytest.approx(0.6) and shown.loc["2", "federated"] == pytest.approx(
        0.65
    )
    written = pd.read_csv(run / site_comparison.COMPARISON_CSV, dtype={"site": str}).set_index("site")
    assert written.loc["worst", "federated - alone"] == pytest.approx(0.05)  # site 2: 0.65 - 0.6
    assert 'class="comparison"' not in make_report(run)  # without baselines the page has no such table


def test_a_baselines_folder_without_scores_is_one_clear_error(tmp_path, capsys):
    run = record_run(tmp_path / "run", None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BrainFLError, match=r"holds none of local_baseline\.csv"):
        site_comparison.report_table(run, [empty])
    code = cli.main(["report", str(run), "--baselines", str(tmp_path / "missing")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("brainfl: error:")]
    assert code == 2 and len(errors) == 1 and "missing" in errors[0]


def test_without_personalization_the_last_rounds_site_scores_stand_for_the_federated_model(
    tmp_path, baselines
):
    run = record_run(tmp_path / "run", None)  # rounds 1-2; site 2 reported round 1 only
    found = site_comparison.approaches(run)
    assert list(found) == ["federated, round 1 model"]
    assert found["federated, round 1 model"]["accuracy"].to_dict() == pytest.approx({"0": 0.5, "1": 0.51})
    table = site_comparison.comparison(site_comparison.gathered([baselines, run]))
    assert list(table.columns) == ["alone", "federated, round 1 model", "pooled", "federated - alone"]
    assert table.loc["1", "federated - alone"] == pytest.approx(0.51 - 0.8)
