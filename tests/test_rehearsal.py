"""The hospital-IT deploy/ folder: its scripts, env files and systemd units, and a cross-host rehearsal.

``deploy/rehearse.sh`` runs a federation across "hosts" on this machine: a
bridge and one network namespace per host (the coordinator and two
hospitals, each with its own address and its own data folder), TLS and
SuperNode authentication, every process started by the deploy scripts from
env files as a hospital's systemd would. The rehearsal runs once for the
module (it needs root and iproute2, and the real dataset's subsets); the
checks of the units, env files and scripts need neither.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import flwr
import pytest
from cryptography import x509

from conftest import CLASSES, REPO_ROOT, cache_at
from subset import make_subset  # benchmarks/subset.py (conftest puts benchmarks/ on the path)
from test_e2e import read_rows

DEPLOY = REPO_ROOT / "deploy"
REHEARSE = DEPLOY / "rehearse.sh"
# Small and quick: 32 px, one local epoch, no federated evaluation or calibration messages.
RUN = "image-size=32 batch-size=16 local-epochs=1 fraction-evaluate=0 calibrate=false"
# Variables that point at an env file or switch to printing the command: not settings of a host.
CONTROL_VARIABLES = {"BRAINFL_SITE_ENV", "BRAINFL_COORDINATOR_ENV", "BRAINFL_DRY_RUN"}
APP_VARIABLES = {"BRAINFL_CACHE_DIR"}  # read by the app itself, documented in the env examples


def server_run_config(test_dir: Path) -> str:
    """The coordinator's settings: its test folder and the class names (it holds no training data)."""
    return f"test-dir='{test_dir}' class-names='{','.join(CLASSES)}'"


# --- deploy/ files: units, env examples, scripts (no root needed) ---------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Key=Value`` lines of a systemd unit, every value of a repeated key kept."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def variables_read(script: Path) -> set[str]:
    """``BRAINFL_*`` names in a script's code (comments left out)."""
    code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
    return set(re.findall(r"\bBRAINFL_[A-Z0-9_]+\b", code))


def variables_documented(example: Path) -> tuple[set[str], set[str]]:
    """(every variable of an env example, set or commented out; those set) of one kind of host."""
    every, set_ = set(), set()
    for line in example.read_text().splitlines():
        match = re.match(r"^(#?)([A-Z][A-Z0-9_]*)=", line)
        if match:
            every.add(match.group(2))
            if not match.group(1):
                set_.add(match.group(2))
    return every, set_


UNITS = sorted(DEPLOY.glob("*.service"))


def test_deploy_folder_has_the_units_and_scripts():
    assert {unit.name for unit in UNITS} == {"brainfl-supernode.service", "brainfl-superlink.service"}
    for name in ("install.sh", "supernode.sh", "superlink.sh", "coordinator.sh", "rehearse.sh"):
        assert os.access(DEPLOY / name, os.X_OK), f"deploy/{name} is missing or not executable"


@pytest.mark.parametrize("unit", UNITS, ids=lambda path: path.name)
def test_unit_runs_a_deploy_script_with_the_variables_of_its_env_example(unit):
    settings = unit_settings(unit)
    (exec_start,) = settings["ExecStart"]
    command = shlex.split(exec_start)
    assert command[0].startswith("/") and "/deploy/" in command[0], exec_start
    script = DEPLOY / command[0].rsplit("/deploy/", 1)[1]
    assert script.is_file() and os.access(script, os.X_OK), f"{unit.name}: {script} is not a deploy script"
    assert settings["Restart"] == ["on-failure"]
    assert settings["User"] != ["root"] and settings["User"][0], f"{unit.name}: needs a dedicated user"

    (env_file,) = settings["EnvironmentFile"]
    example = DEPLOY / (Path(env_file.lstrip("-")).name + ".example")
    assert example.is_file(), f"{unit.name}: EnvironmentFile={env_file} has no {example.name} in deploy/"
    documented, required = variables_documented(example)
    # Every deploy script that takes this env file (its header names the example) reads from it.
    readers = [path for path in DEPLOY.glob("*.sh") if example.name in path.read_text()]
    assert script in readers
    read = set().union(*(variables_read(path) for path in [*readers, DEPLOY / "lib.sh"])) - CONTROL_VARIABLES
    brainfl_documented = {name for name in documented if name.startswith("BRAINFL_")}
    assert read == brainfl_documented - APP_VARIABLES, (
        f"read by the scripts, not in {example.name}: {sorted(read - brainfl_documented)}; "
        f"in {example.name}, read by no script: {sorted(brainfl_documented - APP_VARIABLES - read)}"
    )
    assert required <= read


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    for unit in UNITS:  # with ExecStart pointing at this checkout (verify needs the program)
        text = re.sub(r"(ExecStart=)\S*/deploy/", rf"\g<1>{DEPLOY}/", unit.read_text())
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / unit.name) for unit in UNITS)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_flower_variables_in_deploy_files_exist_in_the_installed_flower():
    names = set()
    for path in [*DEPLOY.glob("*.example"), *DEPLOY.glob("*.sh")]:
        names |= set(re.findall(r"\bFLWR_[A-Z0-9_]+\b", path.read_text()))
    assert "FLWR_SUPEREXEC_TASK_POLL_INTERVAL" in names and "FLWR_TELEMETRY_ENABLED" in names
    names -= {"FLWR_HOME"}
    source = "\n".join(p.read_text() for p in Path(flwr.__file__).parent.rglob("*.py"))
    assert not {name for name in names if f'"{name}"' not in source}, "variables Flower does not read"


@pytest.mark.parametrize("script", sorted(DEPLOY.glob("*.sh")), ids=lambda path: path.name)
def test_deploy_script_parses(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def dry_run(script: str, env_file: Path, **env: str) -> list[str]:
    result = subprocess.run(
        [str(DEPLOY / script), str(env_file)],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "BRAINFL_DRY_RUN": "1"},
    )
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


def flower_options(command: str) -> set[str]:
    help_text = subprocess.run([command, "--help"], capture_output=True, text=True).stdout
    return set(re.findall(r"(--[a-z][a-z-]+)", help_text))


def test_site_and_coordinator_commands_built_from_env_files(tmp_path):
    for name in ("ca.crt", "site_0", "server.pem", "server.key"):
        (tmp_path / name).write_text("x")
    (tmp_path / "site_0").chmod(0o600)
    (tmp_path / "scans").mkdir()
    (tmp_path / "site.env").write_text(
        "# a hospital\n"
        "BRAINFL_SUPERLINK=coordinator.example.org:9191\n"
        f'BRAINFL_CA_CERT="{tmp_path}/ca.crt"\n'
        f"BRAINFL_SITE_KEY='{tmp_path}/site_0'\n"
        f"BRAINFL_DATA_DIR={tmp_path}/scans\n"
        f"BRAINFL_LOG_DIR={tmp_path}/logs\n"
        "BRAINFL_SITE_ID=3\n"
    )
    site = dry_run("supernode.sh", tmp_path / "site.env", BRAINFL_CLIENTAPP_PORT="9300")
    assert site[0] == "flower-supernode" and set(site[1::2]) <= flower_options("flower-supernode")
    options = dict(zip(site[1::2], site[2::2], strict=True))
    assert options == {
        "--superlink": "coordinator.example.org:9191",
        "--root-certificates": f"{tmp_path}/ca.crt",
        "--auth-supernode-private-key": f"{tmp_path}/site_0",
        "--node-config": f"partition-id=3 data-dir='{tmp_path}/scans' log-dir='{tmp_path}/logs'",
        "--host": "127.0.0.1",
        "--port": "9300",  # the environment wins over the file
    }
    assert (tmp_path / "logs").is_dir()
    # With BRAINFL_OUTPUT_DIR the site saves its personalized models there (node config output-dir).
    site = dry_run("supernode.sh", tmp_path / "site.env", BRAINFL_OUTPUT_DIR=f"{tmp_path}/models")
    node_config = dict(zip(site[1::2], site[2::2], strict=True))["--node-config"]
    assert node_config.endswith(f"log-dir='{tmp_path}/logs' output-dir='{tmp_path}/models'")
    assert (tmp_path / "models").is_dir()

    (tmp_path / "coordinator.env").write_text(
        f"BRAINFL_CA_CERT={tmp_path}/ca.crt\nBRAINFL_SERVER_CERT={tmp_path}/server.pem\n"
        f"BRAINFL_SERVER_KEY={tmp_path}/server.key\nBRAINFL_FLEET_PORT=9555\n"
        f"BRAINFL_DATABASE={tmp_path}/state/superlink.db\nBRAINFL_FLWR_HOME={tmp_path}/cli\n"
    )
    link = dry_run("superlink.sh", tmp_path / "coordinator.env")
    assert link[0] == "flower-superlink" and {o for o in link if o.startswith("--")} <= flower_options(
        "flower-superlink"
    )
    assert " ".join(link[1:]) == (
        f"--ssl-ca-certfile {tmp_path}/ca.crt --ssl-certfile {tmp_path}/server.pem "
        f"--ssl-keyfile {tmp_path}/server.key --enable-supernode-auth "
        f"--disable-runtime-dependency-installation --host 0.0.0.0 --port 9555 "
        f"--database {tmp_path}/state/superlink.db"
    )

    config = subprocess.run(
        [str(DEPLOY / "coordinator.sh"), "--env", str(tmp_path / "coordinator.env"), "config"],
        capture_output=True,
        text=True,
    )
    assert config.returncode == 0, config.stderr
    cli = tomllib.loads((tmp_path / "cli" / "config.toml").read_text())["superlink"]
    assert cli["default"] == "brainfl"
    assert cli["brainfl"] == {"address": "127.0.0.1:9555", "root-certificates": f"{tmp_path}/ca.crt"}

    (tmp_path / "broken.env").write_text(
        f"BRAINFL_SUPERLINK=coordinator:9191\nBRAINFL_CA_CERT={tmp_path}/no\n"
    )
    refused = subprocess.run(
        [str(DEPLOY / "supernode.sh"), str(tmp_path / "broken.env")], capture_output=True
    )
    assert refused.returncode == 2 and b"BRAINFL_CA_CERT" in refused.stderr.splitlines()[-1]


# --- the rehearsal (root, iproute2, real data) -----------------------------------------------------


@dataclass
class Rehearsal:
    result: subprocess.CompletedProcess
    out: Path
    names: dict[str, str]
    seconds: float


def read_names(path: Path) -> dict[str, str]:
    names = {}
    for line in path.read_text().splitlines():
        key, value = line.split("=", 1)
        names[key] = value.strip('"')
    return names


@pytest.fixture(scope="module")
def rehearsal(real_data, real_subset, tmp_path_factory) -> Rehearsal:
    if os.geteuid() != 0:
        pytest.skip("the rehearsal creates network namespaces and a bridge: needs root")
    if not (shutil.which("ip") and shutil.which("ss")):
        pytest.skip("the rehearsal needs iproute2 (ip, ss)")
    root = tmp_path_factory.mktemp("rehearsal")
    server = root / "coordinator"  # a Testing folder only, as a coordinator holds
    server.mkdir()
    (server / "Testing").symlink_to(real_subset(6) / "Testing")
    # Each hospital its own folder: one in the Kaggle split, one as class folders.
    site_0 = make_subset(real_data, root / "hospital-a", 8, seed=1)
    site_1 = make_subset(real_data, root / "hospital-b", 8, seed=2) / "Training"
    out = root / "run"
    command = [
        str(REHEARSE),
        "--sites",
        "2",
        "--rounds",
        "1",
        "--site-data-dir",
        str(site_0),
        "--site-data-dir",
        str(site_1),
    ]
    command += ["--output-dir", str(out), "--run-config", RUN, "--run-config", server_run_config(server)]
    started = time.monotonic()
    with cache_at(root / "cache"):
        script = subprocess.Popen(
            [*command, "--timeout", "480"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            stdout, _ = script.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            script.terminate()  # the script's trap removes what it made
            stdout, _ = script.communicate(timeout=60)
    result = subprocess.CompletedProcess(command, script.returncode, stdout, "")
    names_file = out / "rehearsal" / "names.env"
    names = read_names(names_file) if names_file.exists() else {}
    print(f"rehearsal: {time.monotonic() - started:.0f} s")
    return Rehearsal(result, out, names, time.monotonic() - started)


def ok(rehearsal: Rehearsal) -> Rehearsal:
    assert rehearsal.result.returncode == 0, rehearsal.result.stdout[-4000:]
    return rehearsal


@pytest.mark.e2e
def test_rehearsal_trains_a_round_across_namespaces(rehearsal):
    run = ok(rehearsal)
    rows = read_rows(run.out / "federated_learning_results.csv")
    assert [row["round"] for row in rows] == ["0", "1"]
    assert all(row["sites_trained"] == "2" for row in rows[1:])
    assert "outputs written to" in (run.out / "logs" / "server.log").read_text()
    assert re.search(r"^seconds per round: \d+\.\d", run.result.stdout, re.MULTILINE)
    for site in (0, 1):
        assert "round 1: trained on" in (run.out / f"site_{site}" / f"client_{site}.log").read_text()


@pytest.mark.e2e
def test_superlink_listened_on_the_coordinator_and_sites_connected_from_their_own_addresses(rehearsal):
    run = ok(rehearsal)
    coordinator, port = run.names["COORDINATOR_IP"], run.names["PORT"]
    sites = run.names["SITE_IPS"].split()
    subnet = ipaddress.ip_network(run.names["SUBNET"])
    assert len(set(sites)) == 2 and all(ipaddress.ip_address(a) in subnet for a in [coordinator, *sites])
    superlink_log = (run.out / "logs" / "superlink.log").read_text()
    assert f"Fleet HTTP API on {coordinator}:{port}" in superlink_log
    listening = (run.out / "rehearsal" / "coordinator_listening.txt").read_text().split()
    assert f"{coordinator}:{port}" in listening
    for site, address in enumerate(sites):
        env = (run.out / "rehearsal" / f"site_{site}.env").read_text()
        assert f"BRAINFL_SUPERLINK={coordinator}:{port}\n" in env
        # The SuperLink's access log and the sampled TCP connections name the site's own address.
        assert re.search(rf"{re.escape(address)}:\d+ - \"POST /v1/fleet/activate-node", superlink_log)
        # A hospital listens on its loopback address only.
        site_listening = (run.out / "rehearsal" / f"site_{site}_listening.txt").read_text().splitlines()
        assert site_listening and all(line.split()[4].startswith("127.0.0.1:") for line in site_listening)
    peers = set((run.out / "rehearsal" / "peers.txt").read_text().split())
    assert set(sites) <= peers <= {coordinator, *sites}


@pytest.mark.e2e
def test_certificate_names_the_coordinator_address(rehearsal):
    run = ok(rehearsal)
    certs = run.out / "certs"
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((certs / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address(run.names["COORDINATOR_IP"]) in names.get_values_for_type(x509.IPAddress)


@pytest.mark.e2e
def test_nothing_of_the_rehearsal_remains(rehearsal):
    run = rehearsal  # also after a failed run
    assert run.names, run.result.stdout[-4000:]
    assert f"outputs: {run.out}" in run.result.stdout
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"brainfl-{run.names['RUN_ID']}-" not in namespaces
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    for link in [run.names["BRIDGE"], *run.names["VETHS"].split()]:
        assert f" {link}:" not in links and f" {link}@" not in links, f"{link} is left"
    seen = [line.split() for line in (run.out / "rehearsal" / "pids.txt").read_text().splitlines()]
    assert len(seen) >= 4  # the SuperLink, two SuperNodes, flwr run at least
    for pid, start in seen:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # Another process may have the PID now; a zombie has ended (init reaps it).
        assert fields[19] != start or fields[0] == "Z", f"process {pid} of the rehearsal is still running"
