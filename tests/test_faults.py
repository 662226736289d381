"""Fault tolerance with real processes on loopback: dropouts, restarts, intruders, crashes, bad sites.

Each test runs a federation on 12 real images per class and split with one
local epoch and no calibration query (each message a site answers starts a
ClientApp process), and injects the fault from outside, as an operator would see
it: ``run.sh`` (deployment engine). A site sending NaN weights is tested in
process (``test_robustness``), where the audit trail can be checked against the
messages themselves. A test stops only processes it started, found by PID in the
process tree of its own ``run.sh``, never by name: other Flower runs may
share the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO_ROOT
from test_e2e import free_port_block, read_rows

pytestmark = pytest.mark.e2e
TINY = "image-size=32 batch-size=16 local-epochs=1 fraction-evaluate=0 calibrate=false"
PER_CLASS = 12


def start_script(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(REPO_ROOT / "run.sh"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)


def rounds_done(out: Path) -> int:
    path = out / "federated_learning_results.csv"
    return len(read_rows(path)) - 1 if path.exists() else -1


def rounds_sampled(out: Path) -> int:
    """How many rounds have picked their sites (the server log's line of each round)."""
    path = out / "logs" / "server.log"
    return path.read_text().count("configure_train: Sampled") if path.exists() else 0


def started_by(script: subprocess.Popen, *fragments: str, timeout: float = 120) -> psutil.Process:
    """The process under ``script`` (its own tree) whose command line holds every fragment; waits."""

    def matches(process: psutil.Process) -> bool:
        try:
            command = " ".join(process.cmdline()) + " "
        except psutil.Error:
            return False
        return all(fragment in command for fragment in fragments)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in psutil.Process(script.pid).children(recursive=True) if matches(p)]
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no process with {fragments} under run.sh (pid {script.pid})")


def kill_tree(process: psutil.Process) -> None:
    """SIGKILL ``process`` and everything it started, as a crash of that machine would."""
    tree = [process, *process.children(recursive=True)]
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(tree, timeout=30)


def stop(process: subprocess.Popen, grace: float = 30) -> None:
    """Stop a process this test started and all it started: SIGTERM first (run.sh then stops its own
    processes), SIGKILL by PID for whatever is left."""
    if process.poll() is not None:
        return
    tree: list[psutil.Process] = []
    with contextlib.suppress(psutil.NoSuchProcess):
        tree = psutil.Process(process.pid).children(recursive=True)
    process.terminate()
    try:
        process.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
    _, left = psutil.wait_procs(tree, timeout=grace)
    for member in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()


def supernode(port: int, runtime_port: int, node_config: str, *security: str, log=subprocess.DEVNULL):
    """Start a SuperNode by hand, as a hospital's operator would."""
    command = ["flower-supernode", *(security or ["--insecure"]), "--superlink", f"127.0.0.1:{port}"]
    command += ["--port", str(runtime_port), "--max-retries", "3", "--node-config", node_config]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture
def data(real_subset) -> Path:
    """12 real images per class and split (symlinks), shared by the session's runs."""
    return real_subset(PER_CLASS)


def test_secure_run_refuses_intruders_and_survives_a_site_with_bad_data(tmp_path, data):
    out, port = tmp_path / "run", free_port_block(6)
    # Site 1's folder passes run.sh's checks, then goes away before the site loads it (an unmounted share).
    vanishing = tmp_path / "no-such-hospital-folder"
    shutil.copytree(data, vanishing, symlinks=True)
    args = [
        "--secure",
        "--sites",
        "2",
        "--rounds",
        "1",
        "--site-data-dir",
        str(data),
        "--site-data-dir",
        str(vanishing),
    ]
    args += ["--data-dir", str(data), "--output-dir", str(out), "--port", str(port)]
    script = start_script(*args, "--run-config", TINY)
    intruders: list[subprocess.Popen] = []
    try:
        wait_for(lambda: (out / "run_config.json").exists(), 600, "the server to start")
        shutil.rmtree(vanishing)  # before round 1's first message reaches the sites
        wait_for(lambda: rounds_done(out) >= 0, 600, "the secure run to start")
        other = tmp_path / "other-federation"
        subprocess.run(["brainfl", "certs", "--out", str(other), "--sites", "1"], check=True)
        attempts = {  # a key the SuperLink never registered; a CA this federation does not use
            "unregistered": (out / "certs" / "ca.crt", other / "site_0"),
            "untrusted-ca": (other / "ca.crt", out / "certs" / "site_0"),
        }
        for offset, (name, (ca, key)) in enumerate(attempts.items(), start=4):
            log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            security = ("--root-certificates", str(ca), "--auth-supernode-private-key", str(key))
            intruders.append(supernode(port, port + offset, f"data-dir='{data}'", *security, log=log))
        output, _ = script.communicate(timeout=900)
    finally:
        for process in intruders:
            stop(process)
        stop(script)
    assert script.returncode == 0, output[-3000:]
    rows = read_rows(out / "federated_learning_results.csv")
    assert [r["round"] for r in rows] == ["0", "1"]
    assert rows[1]["sites_trained"] == "1" and rows[1]["sites_failed"] == "1", rows
    bad_site_log = (out / "logs" / "client_1.log").read_text()
    assert "site 1: data directory not found" in bad_site_log and "no-such-hospital-folder" in bad_site_log
    server_log = (out / "logs" / "server.log").read_text()
    assert "data directory not found" in server_log
    assert str(vanishing) not in server_log, "a site's file path reached the server log"
    for name in ("unregistered", "untrusted-ca"):
        assert "round 1" not in (tmp_path / f"{name}.log").read_text()
    site_ids = {r["site"] for r in read_rows(out / "site_metrics.csv")}
    assert site_ids == {"0"}, f"an intruder took part: {site_ids}"
