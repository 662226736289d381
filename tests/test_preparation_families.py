"""Tests of ``benchmarks/preparation_families.py`` on the committed sample scans."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, REPO_ROOT
from preparation_families import FAMILY_NAMES, NOTUMOR, family_row, make_families, prepared

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
