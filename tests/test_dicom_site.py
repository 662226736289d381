"""End to end: a deployment run where one hospital holds DICOM files and the other JPEGs.

Site 0's folder holds 12-bit DICOM files (Rescale Slope/Intercept, Window
Center/Width) written from real scans, site 1's folder real JPEGs; both
train in one round of ``run.sh`` on loopback. The test stops only the
processes its own ``run.sh`` started, by PID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import CLASSES
from scan_files import scan_to_dicom
from test_e2e import free_port_block, read_rows
from test_faults import start_script, stop

pytestmark = pytest.mark.e2e
PER_CLASS = 10  # real scans per class and site
RUN = "image-size=32 batch-size=8 local-epochs=1 fraction-evaluate=0"


def make_sites(real_data: Path, root: Path) -> tuple[Path, Path]:
    """Two site folders from different real scans: ``dicom/`` (.dcm files) and ``jpeg/`` (copies)."""
    dicom, jpeg = root / "dicom", root / "jpeg"
    for name in CLASSES:
        scans = sorted((real_data / "Training" / name).glob("*.jpg"))[: 2 * PER_CLASS]
        for source in scans[:PER_CLASS]:
            scan_to_dicom(source, dicom / "Training" / name / f"{source.stem}.dcm")
        (jpeg / "Training" / name).mkdir(parents=True)
        for source in scans[PER_CLASS:]:
            shutil.copy(source, jpeg / "Training" / name / source.name)
    return dicom, jpeg


def test_site_with_dicom_files_and_site_with_jpegs_both_train(tmp_path, real_data, real_subset):
    dicom, jpeg = make_sites(real_data, tmp_path / "sites")
    assert len(list(dicom.rglob("*.dcm"))) == len(CLASSES) * PER_CLASS
    out, port = tmp_path / "run", free_port_block(3)
    script = start_script(
        "--sites",
        "2",
        "--rounds",
        "1",
        "--data-dir",
        str(real_subset(PER_CLASS)),
        "--site-data-dir",
        str(dicom),
        "--site-data-dir",
        str(jpeg),
        "--output-dir",
        str(out),
        "--port",
        str(port),
        "--run-config",
        RUN,
    )
    try:
        output, _ = script.communicate(timeout=float(os.environ.get("BRAINFL_E2E_TIMEOUT", 300)))
    except subprocess.TimeoutExpired:
        pytest.fail("run.sh did not finish in time")
    finally:
        stop(script)
    assert script.returncode == 0, output[-4000:]

    rows = read_rows(out / "federated_learning_results.csv")
    assert [row["round"] for row in rows] == ["0", "1"] and rows[1]["sites_trained"] == "2"
    sites = read_rows(out / "site_metrics.csv")
    assert sorted((row["round"], row["site"]) for row in sites) == [("1", "0"), ("1", "1")]
    partition = {row["site"]: row for row in read_rows(out / "partition.csv")}
    assert sorted(partition) == ["0", "1"]
    for row in partition.values():
        num_train = int(row["num_train"])
        assert num_train + int(row["num_val"]) == len(CLASSES) * PER_CLASS
        assert sum(int(row[name]) for name in CLASSES) == num_train
        assert all(int(row[name]) > 0 for name in CLASSES)
    for site in (0, 1):
        log = (out / "logs" / f"client_{site}.log").read_text()
        assert f"site {site} round 1: trained on" in log
