"""Tests of the evaluation-only federation: saved models scored at every site, counts only coming back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Message, MessageType

from brainfl.cli import main
from brainfl.evaluation import external as evaluate
from brainfl.federation.validation_models import check_models, models_to_validate
from brainfl.report.validation import (
    CROSS_SITE_CSV,
    CROSS_SITE_FIGURE,
    POOLED,
    VALIDATION_CSV,
    VALIDATION_HTML,
)
from brainfl.settings.run_settings import settings_with
from conftest import CLASSES, REPO_ROOT
from inprocess import run_in_process
from test_predict import one_line_error, tiny_model_file

SAMPLE_TESTING = REPO_ROOT / "sample_data" / "Testing"
PER_SITE = 3  # scans per class at each site: 12 per site, 24 in all


def hospital(target: Path, first: int) -> Path:
    """A site's own folder ``<class>/*.jpg`` holding sample test scans ``first`` .. ``first + PER_SITE``."""
    for name in CLASSES:
        (target / name).mkdir(parents=True)
        for path in sorted((SAMPLE_TESTING / name).iterdir())[first : first + PER_SITE]:
            shutil.copy(path, target / name / path.name)
    return target


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> dict:
    """Two hospitals with their own folders, their union, a run folder holding the tiny model twice (the
    federated model and a site's model trained alone), and one evaluation-only run over them."""
    root = tmp_path_factory.mktemp("validation")
    model = tiny_model_file(tmp_path_factory)
    sites = [hospital(root / f"site{index}", index * PER_SITE) for index in range(2)]
    union = root / "union"
    for site in sites:
        shutil.copytree(site, union, dirs_exist_ok=True)
    run_folder = root / "run"
    (run_folder / "baselines" / "local" / "local_site_0").mkdir(parents=True)
    shutil.copy(model, run_folder / "final_model.keras")
    shutil.copy(model, run_folder / "baselines" / "local" / "local_site_0" / "final_model.keras")
    replies: list[Message] = []

    def keep_validation(reply: Message) -> None:
        if reply.metadata.message_type == MessageType.QUERY and "summary-0" in reply.content.array_records:
            replies.append(reply)

    def validate(output: Path, **settings) -> pd.DataFrame:
        config = {"validate-models": str(run_folder), "output-dir": str(output), "image-size": 64, **settings}
        run_in_process(
            2,
            config,
            node_config=lambda site: {"data-dir": str(sites[site]), "num-partitions": None},
            tap=keep_validation,
        )
        return pd.read_csv(output / VALIDATION_CSV, dtype={"site": str})

    plain = validate(root / "out")
    kept = list(replies)
    adapted = validate(root / "adapted", **{"validate-adapt": True})
    return {
        "model": model,
        "union": union,
        "out": root / "out",
        "rows": plain,
        "adapted": adapted,
        "replies": kept,
    }


def test_pooled_row_equals_evaluate_on_the_union_of_the_sites_scans(federation):
    rows = federation["rows"]
    pooled = rows[(rows["model"] == "run") & (rows["site"] == POOLED)].iloc[0]
    direct = evaluate.evaluate_model(federation["model"], federation["union"], resamples=0).scores
    assert pooled["images"] == direct.images == 2 * PER_SITE * len(CLASSES)
    assert pooled["accuracy"] == pytest.approx(direct.overall["accuracy"].value, abs=1e-6)
    assert pooled["balanced_accuracy"] == pytest.approx(direct.overall["balanced_accuracy"].value, abs=1e-6)
    for name in ("ece", "tumor_sensitivity", "missed_tumors"):
        assert pooled[name] == pytest.approx(direct.overall[name].value, abs=1e-6, nan_ok=True)
    for name, interval in zip(CLASSES, direct.per_class["sensitivity"], strict=True):
        assert pooled[f"sensitivity_{name}"] == pytest.approx(interval.value, abs=1e-6)
    site_rows = rows[(rows["model"] == "run") & (rows["site"] != POOLED)]
    assert sorted(site_rows["site"]) == ["0", "1"] and site_rows["images"].sum() == pooled["images"]
    assert pooled["accuracy_low"] <= pooled["accuracy"] <= pooled["accuracy_high"]


def test_replies_hold_numbers_only(federation):
    replies = federation["replies"]
    assert len(replies) == 2  # one per site, with both models
    for reply in replies:
        content = reply.content
        assert not content.config_records  # no text travels back
        for record in content.metric_records.values():
            assert all(isinstance(value, int | float) for value in record.values())
        for record in content.array_records.values():
            for array in record.to_numpy_ndarrays():
                assert array.dtype.kind in "if"
                assert PER_SITE * len(CLASSES) not in array.shape  # nothing with a row per scan


def test_a_run_folder_gives_every_model_and_the_cross_site_matrix(federation):
    out = federation["out"]
    rows = federation["rows"]
    assert list(dict.fromkeys(rows["model"])) == ["run", "baselines/local/local_site_0"]
    matrix = pd.read_csv(out / CROSS_SITE_CSV, index_col="model")
    assert list(matrix.columns) == ["0", "1", POOLED]
    assert matrix.loc["run", POOLED] == pytest.approx(
        rows.query("model == 'run' and site == 'pooled'")["accuracy"].iloc[0]
    )
    assert (out / CROSS_SITE_FIGURE).stat().st_size > 0
    audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    received = [e for e in audit if e.get("query") == "validate" and e.get("direction") == "received"]
    assert len(received) == 2 and all(e["bytes"] > 0 for e in received)
    page = (out / VALIDATION_HTML).read_text()
    assert "Cross-site accuracy" in page and "baselines/local/local_site_0" in page


def test_adapting_at_the_sites_changes_the_scores(federation):
    plain, adapted = federation["rows"], federation["adapted"]
    assert (plain["images"] == adapted["images"]).all()
    assert not np.allclose(plain["ece"], adapted["ece"])


def test_missing_or_mismatched_models_are_refused_in_one_line(tmp_path, federation):
    missing = settings_with(validate_models=str(tmp_path / "nowhere.keras")).evaluation
    assert "neither a model file nor a run folder" in one_line_error(lambda: models_to_validate(missing))
    empty = settings_with(validate_models=str(tmp_path)).evaluation
    assert "no final_model.keras" in one_line_error(lambda: models_to_validate(empty))
    models = models_to_validate(settings_with(validate_models=str(federation["model"])).evaluation)
    assert check_models(models) == tuple(CLASSES)


def test_brainfl_report_remakes_the_page_of_an_evaluation_only_run(federation, capsys):
    page = federation["out"] / VALIDATION_HTML
    page.unlink()
    main(["report", str(federation["out"])])
    assert page.is_file() and "validation.html" in capsys.readouterr().out
