"""Tests of ``benchmarks/preparation_families.py`` on the committed sample scans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import preparation_families
from brainfl.model.choices import AUGMENTATION_NAMES, augmentation_names
from conftest import CLASSES, REPO_ROOT
from preparation_families import (
    FAMILY_NAMES,
    LEAVE_OUT_TRANSFORMS,
    NOTUMOR,
    TRAINED_WITHOUT,
    augmentation_without,
    family_row,
    make_families,
    prepared,
    trained_model,
    with_mean_and_worst,
)

SAMPLE = REPO_ROOT / "sample_data"
SCAN = "Testing/glioma/" + sorted(p.name for p in (SAMPLE / "Testing" / "glioma").iterdir())[0]


@pytest.fixture(scope="module")
def scan() -> Image.Image:
    return Image.open(SAMPLE / SCAN).convert("L")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_each_family_changes_the_scan_the_same_way_every_time(scan, family):
    first, again = prepared(scan, family, SCAN, 0), prepared(scan, family, SCAN, 0)
    assert first.mode == "L" and np.array_equal(np.asarray(first), np.asarray(again))
    if family != "shifted":  # the shifted copy changes the resolution
        assert first.size == scan.size
        assert np.abs(np.asarray(first, dtype=float) - np.asarray(scan, dtype=float)).mean() > 1


def test_noise_reaches_the_black_background(scan):
    background = np.asarray(scan) == 0
    assert background.any()
    assert np.asarray(prepared(scan, "noisy", SCAN, 0))[background].std() > 5


def test_every_testing_scan_gets_a_copy_in_every_family(tmp_path):
    make_families(SAMPLE, tmp_path, families=("jpeg", "bias"))
    for family in ("jpeg", "bias"):
        for name in CLASSES:
            assert len(list((tmp_path / family / name).iterdir())) == len(
                list((SAMPLE / "Testing" / name).iterdir())
            )


def test_the_missed_tumor_rate_counts_tumor_scans_called_notumor():
    names = ["glioma", "meningioma", NOTUMOR, "pituitary"]
    counts = [[8, 0, 2, 0, 0], [0, 9, 1, 0, 0], [0, 0, 10, 0, 0], [0, 0, 0, 10, 0]]
    metrics = [
        {"metric": m, "class": None, "value": 0.9, "low": 0.8, "high": 0.95}
        for m in ("accuracy", "balanced_accuracy", "ece")
    ]
    row = family_row(
        "x", {"images": 40, "metrics": metrics, "confusion_matrix": {"rows": names, "counts": counts}}
    )
    assert row["missed_tumor_rate"] == pytest.approx(3 / 30)
    assert row["accuracy_low"] == 0.8


def test_every_family_names_a_transform_of_the_augmentation_its_model_leaves_out():
    assert set(TRAINED_WITHOUT) == set(FAMILY_NAMES)
    for family, transform in TRAINED_WITHOUT.items():
        kept = augmentation_names(augmentation_without(transform))
        if transform is None:
            assert kept == LEAVE_OUT_TRANSFORMS, family
        else:
            assert (
                transform in LEAVE_OUT_TRANSFORMS
                and transform not in kept
                and len(kept) == len(LEAVE_OUT_TRANSFORMS) - 1
            )
    # The protocol's transform set is what the committed leave-out models were trained with, in order.
    assert set(LEAVE_OUT_TRANSFORMS) < set(AUGMENTATION_NAMES)
    assert augmentation_names(",".join(LEAVE_OUT_TRANSFORMS)) == LEAVE_OUT_TRANSFORMS


def test_a_trained_model_is_reused_only_when_trained_with_the_same_settings(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(
        preparation_families.subprocess, "run", lambda command, check: trained.append(command)
    )
    folder = tmp_path / "without-noise"
    folder.mkdir()
    (folder / "final_model.keras").write_bytes(b"model")
    config = {"augmentation": augmentation_without("noise"), "num-server-rounds": 30, "local-epochs": 1}
    (folder / "run_config.json").write_text(json.dumps({**config, "data-dir": "data"}))
    assert trained_model(tmp_path, "noise", Path("data"), 30) == folder / "final_model.keras"
    assert trained == []  # reused, not trained again
    with pytest.raises(SystemExit, match="trained with other settings"):
        trained_model(tmp_path, "noise", Path("data"), 20)
    trained_model(tmp_path, "blur", Path("data"), 30)  # no folder yet: trained
    assert trained[0][:2] == ["brainfl", "centralized"]
    assert f'augmentation="{augmentation_without("blur")}"' in trained[0][3]
    assert "output-dir=" in trained[0][3] and "without-blur" in trained[0][3]
    assert "crop=" not in trained[0][3]  # the app's framing unless told
    with pytest.raises(SystemExit, match="trained with other settings"):
        trained_model(tmp_path, "noise", Path("data"), 30, crop="head")  # kept model: the app's framing
    trained_model(tmp_path, "gamma", Path("data"), 30, crop="head")
    assert 'crop="head"' in trained[1][3]


def test_mean_and_worst_rows_follow_the_families():
    table = pd.DataFrame(
        {
            "family": ["a", "b"],
            "trained_without": ["x", ""],
            "accuracy": [0.9, 0.7],
            "accuracy_low": [0.8, 0.6],
        }
    )
    summary = with_mean_and_worst(table).set_index("family")
    assert summary.loc["mean", "accuracy"] == pytest.approx(0.8) and np.isnan(
        summary.loc["mean", "accuracy_low"]
    )
    assert summary.loc["worst (b)", "accuracy"] == 0.7
