"""End to end: run.sh starts a real SuperLink and SuperNodes on loopback and trains on real data.

The deployment run is two hospitals as they hold their scans: site 0's folder holds
12-bit DICOM files (Rescale Slope/Intercept, Window Center/Width) written from real
scans, site 1's folder real JPEGs, and both keep their own BatchNorm
(``fedbn=true``, the setting for sites whose scans are prepared differently): the
SuperNodes start a fresh ClientApp process for every message, so a site's own
BatchNorm reaches round 2 only through its ``Context.state``. After the last round
each site fine-tunes and saves its own model, the sites answer the calibration
query, and ``--baselines`` trains each site alone and the sites pooled for the report.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import keras
import pytest

import brainfl.model.architectures  # noqa: F401 - registers the custom layers for loading
from brainfl.federation.personalization import PERSONALIZED_MODEL
from brainfl.model.files import load_model, stored_metadata
from brainfl.report.audit import read_audit
from brainfl.report.results import AUDIT_JSONL, PERSONALIZATION_CSV
from conftest import CLASSES, REPO_ROOT
from harness import free_port_block  # benchmarks/harness.py (conftest puts benchmarks/ on the path)
from scan_files import scan_to_dicom

pytestmark = pytest.mark.e2e
PER_CLASS = 40  # real images per class and split (a subset folder of symlinks), half of them per site
SMALL_PER_CLASS = 12  # the simulation run checks outputs, not learning: fewer images
SMALL_RUN = "image-size=32 batch-size=16 local-epochs=1 learning-rate=0.003"  # VGG-16's smallest input
# Local steps enough (18 a round) for the loss to fall in 2 rounds on a tiny subset.
DEPLOY_RUN = "image-size=32 batch-size=8 local-epochs=2 learning-rate=0.002 fedbn=true fine-tune-epochs=1"


def run_script(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO_ROOT / "run.sh"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def port_is_closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def make_sites(training: Path, root: Path) -> tuple[Path, Path]:
    """Two site folders from ``training``'s scans, half each: ``dicom/`` (.dcm files), ``jpeg/`` (copies)."""
    dicom, jpeg = root / "dicom", root / "jpeg"
    for name in CLASSES:
        scans = sorted((training / name).glob("*.jpg"))
        half = len(scans) // 2
        for source in scans[:half]:
            scan_to_dicom(source, dicom / "Training" / name / f"{source.stem}.dcm")
        (jpeg / "Training" / name).mkdir(parents=True)
        for source in scans[half:]:
            shutil.copy(source, jpeg / "Training" / name / source.name)
    return dicom, jpeg


def test_deployment_run_with_a_dicom_site_and_a_jpeg_site_on_real_data(tmp_path, real_subset):
    out = tmp_path / "run"
    port = free_port_block(3)
    data = real_subset(PER_CLASS)
    dicom, jpeg = make_sites(data / "Training", tmp_path / "sites")
    assert len(list(dicom.rglob("*.dcm"))) == len(CLASSES) * PER_CLASS // 2
    args = ["--sites", "2", "--rounds", "2", "--data-dir", str(data), "--output-dir", str(out)]
    args += ["--site-data-dir", str(dicom), "--site-data-dir", str(jpeg)]
    result = run_script(*args, "--port", str(port), "--run-config", DEPLOY_RUN, "--baselines")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"outputs: {out}" in result.stdout

    header = (out / "federated_learning_results.csv").read_text().splitlines()[0]
    assert header.startswith("round,loss,accuracy,precision_macro,recall_macro,f1_macro,recall_glioma")
    rows = read_rows(out / "federated_learning_results.csv")
    assert [row["round"] for row in rows] == ["0", "1", "2"]
    assert rows[2]["sites_trained"] == "2"
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert all(0.0 <= float(row["leak_free_accuracy"]) <= 1.0 for row in rows)
    check_clocks_and_audit(out, rows, sites=2)

    sites = read_rows(out / "site_metrics.csv")
    assert sorted((row["round"], row["site"]) for row in sites) == [
        ("1", "0"),
        ("1", "1"),
        ("2", "0"),
        ("2", "1"),
    ]
    assert all(row["val_accuracy"] and row["train_loss"] for row in sites)
    partition = {row["site"]: row for row in read_rows(out / "partition.csv")}
    assert sorted(partition) == ["0", "1"]
    for row in partition.values():
        num_train = int(row["num_train"])
        assert num_train + int(row["num_val"]) == len(CLASSES) * PER_CLASS // 2
        assert sum(int(row[name]) for name in CLASSES) == num_train and all(int(row[n]) > 0 for n in CLASSES)

    server_log = (out / "logs" / "server.log").read_text()
    assert "round 2/2 | sites 2 | test accuracy" in server_log
    for site in (0, 1):
        site_log = (out / "logs" / f"client_{site}.log").read_text()
        assert re.search(
            f"site {site} round 2: trained on .*; the received model's validation accuracy", site_log
        )
        assert re.search(f"site {site}: \\d+ of the coordinator's 160 test images have a copy", site_log)
        # Its own BatchNorm is missing in round 1 only: round 2's process found it in the context.
        assert site_log.count("FedBN: no BatchNorm of its own yet") == 1, site_log[-3000:]
        assert f"site {site} personalization: 1 fine-tuning epochs" in site_log
        assert load_model(out / "sites" / f"site_{site}" / PERSONALIZED_MODEL).class_names == CLASSES
    assert [row["site"] for row in read_rows(out / PERSONALIZATION_CSV)] == ["0", "1"]

    model = keras.models.load_model(out / "final_model.keras")
    assert model.input_shape == (None, 32, 32, 1) and model.output_shape == (None, 4)
    metadata = stored_metadata(out / "final_model.keras")
    assert metadata["class_names"] == list(CLASSES)
    # The one end-to-end run that calibrates (the default): both sites answered the query across the
    # transport, and the final model carries the temperature.
    calibration = json.loads((out / "calibration.json").read_text())
    assert [site["site"] for site in calibration["sites"]] == [0, 1] and calibration["examples"] > 0
    assert metadata["temperature"] == calibration["temperature"]
    assert all(port_is_closed(p) for p in range(port, port + 3)), "run.sh left a Flower process listening"
    check_baselines(out)


def check_clocks_and_audit(out: Path, rows: list[dict[str, str]], sites: int) -> None:
    """The deployment clock runs below this machine's and grows; the audit trail's train messages carry,
    across the real transport, the model the round before recorded, and each site logs its messages."""
    parallel = [float(row["parallel_elapsed_s"]) for row in rows]
    assert all(p <= float(row["elapsed_s"]) for p, row in zip(parallel, rows, strict=True))
    assert parallel == sorted(parallel) and parallel[-1] > parallel[0]
    audit = read_audit(out / AUDIT_JSONL)
    model = {e["round"]: e["model_sha256"] for e in audit if e["event"] == "round"}
    sent = [e for e in audit if e.get("type") == "train" and e["direction"] == "sent"]
    assert len(sent) == sites * (len(rows) - 1) and all(e["sha256"] == model[e["round"] - 1] for e in sent)
    for site in range(sites):
        assert '"direction":"sent","site":' in (out / "logs" / f"client_{site}.log").read_text()


def check_baselines(out: Path) -> None:
    """``--baselines``: each site alone and the sites pooled, with the run's settings, beside the run."""
    for kind, name in (("local", "local_baseline.csv"), ("pooled", "pooled_baseline.csv")):
        rows = read_rows(out / "baselines" / kind / name)
        assert [row["site"] for row in rows] == ["0", "1"] and all(row["val_accuracy"] for row in rows)
        config = json.loads((out / "baselines" / kind / "run_config.json").read_text())
        assert config["local-epochs"] == 2 and config["image-size"] == 32  # the run's settings
    compared = read_rows(out / "site_comparison.csv")
    assert [row["site"] for row in compared][:2] == ["0", "1"]
    assert {"alone", "FedBN", "FedBN, own BN + fine-tune", "pooled", "federated - alone"} <= set(compared[0])
    assert "Joining against going alone" in (out / "report.html").read_text()


def test_simulation_engine_run_with_vgg16_and_local_superlink_stopped(tmp_path, real_subset):
    out = tmp_path / "sim"
    port = free_port_block(1)
    args = [
        "--simulation",
        "--sites",
        "3",
        "--rounds",
        "1",
        "--data-dir",
        str(real_subset(SMALL_PER_CLASS)),
        "--output-dir",
        str(out),
    ]
    args += ["--model", "vgg16"]
    result = run_script(*args, "--port", str(port), "--run-config", f"{SMALL_RUN} tensorboard=true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = read_rows(out / "federated_learning_results.csv")
    assert [row["round"] for row in rows] == ["0", "1"] and rows[1]["sites_trained"] == "3"
    assert list((out / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard events written"
    assert (out / "report.html").is_file() and (out / "confusion_matrix.png").is_file()
    model = keras.models.load_model(out / "final_model.keras")
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 4)
    assert {p.name for p in (out / "logs").glob("client_*.log")} == {
        "client_0.log",
        "client_1.log",
        "client_2.log",
    }
    assert port_is_closed(port)


def test_bad_data_dir_stops_before_any_process_starts(tmp_path):
    result = run_script(
        "--data-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o"), timeout=300
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"brainfl: error: data directory not found: {tmp_path / 'missing'}"
    )
    assert not (tmp_path / "o" / "logs" / "superlink.log").exists()
