"""End to end: a deployment run where one hospital holds DICOM files and the other JPEGs, each keeping
its own BatchNorm (FedBN).

Site 0's folder holds 12-bit DICOM files (Rescale Slope/Intercept, Window
Center/Width) written from real scans, site 1's folder real JPEGs; both
train in two rounds of ``run.sh`` on loopback with ``fedbn=true``, the
setting for sites whose scans are prepared differently: the SuperNodes start a
fresh ClientApp process for every message, so a site's own BatchNorm reaches
round 2 only through its ``Context.state``. After the last round each site
fine-tunes and saves its own model. The test stops only the processes its own
``run.sh`` started, by PID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from brainfl.federation.personalization import PERSONALIZED_MODEL
from brainfl.model.files import load_model
from brainfl.report.results import PERSONALIZATION_CSV
from conftest import CLASSES
from scan_files import scan_to_dicom
from test_e2e import free_port_block, read_rows
from test_faults import start_script, stop

pytestmark = pytest.mark.e2e
PER_CLASS = 10  # real scans per class and site
# No calibration query (not what this test checks): each query is one more ClientApp process per site.
RUN = "image-size=32 batch-size=8 local-epochs=1 fraction-evaluate=0 calibrate=false"
FEDBN = "fedbn=true fine-tune-epochs=1"


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


def test_dicom_site_and_jpeg_site_train_each_with_its_own_batchnorm(tmp_path, real_data, real_subset):
    dicom, jpeg = make_sites(real_data, tmp_path / "sites")
    assert len(list(dicom.rglob("*.dcm"))) == len(CLASSES) * PER_CLASS
    out, port = tmp_path / "run", free_port_block(3)
    script = start_script(
        "--sites",
        "2",
        "--rounds",
        "2",
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
        f"{RUN} {FEDBN}",
    )
    try:
        output, _ = script.communicate(timeout=float(os.environ.get("BRAINFL_E2E_TIMEOUT", 600)))
    except subprocess.TimeoutExpired:
        pytest.fail("run.sh did not finish in time")
    finally:
        stop(script)
    assert script.returncode == 0, output[-4000:]

    rows = read_rows(out / "federated_learning_results.csv")
    assert [row["round"] for row in rows] == ["0", "1", "2"] and rows[2]["sites_trained"] == "2"
    sites = read_rows(out / "site_metrics.csv")
    assert sorted((row["round"], row["site"]) for row in sites) == [
        ("1", "0"),
        ("1", "1"),
        ("2", "0"),
        ("2", "1"),
    ]
    partition = {row["site"]: row for row in read_rows(out / "partition.csv")}
    assert sorted(partition) == ["0", "1"]
    for row in partition.values():
        num_train = int(row["num_train"])
        assert num_train + int(row["num_val"]) == len(CLASSES) * PER_CLASS
        assert sum(int(row[name]) for name in CLASSES) == num_train
        assert all(int(row[name]) > 0 for name in CLASSES)
    for site in (0, 1):
        log = (out / "logs" / f"client_{site}.log").read_text()
        assert f"site {site} round 2: trained on" in log
        # Its own BatchNorm is missing in round 1 only: round 2's process found it in the context.
        assert log.count("FedBN: no BatchNorm of its own yet") == 1, log[-3000:]
        assert f"site {site} personalization: 1 fine-tuning epochs" in log
        assert load_model(out / "sites" / f"site_{site}" / PERSONALIZED_MODEL).class_names == CLASSES
    assert [row["site"] for row in read_rows(out / PERSONALIZATION_CSV)] == ["0", "1"]
