"""End to end: Flower's simulation engine on an existing two-node Ray cluster (docs/ray-cluster.md).

The test starts a Ray head and a second Ray node joining it (both on this
machine, 1 CPU each, in their own temp dir and ports), then a SuperLink with
``RAY_ADDRESS`` pointing at the head, and ``flwr run`` with one virtual
client per CPU (``client-resources-num-cpus=1``). It checks the run's outputs
and, from the cluster's own GCS tables, that the ``flwr-simulation`` process
was a driver of *this* cluster whose ``ClientAppActor`` actors ran on both
nodes: had Flower started a local Ray of its own, the cluster would hold no
such job. The Ray nodes get a ``BRAINFL_CACHE_DIR`` different from the
SuperLink's, which shows that the ClientApps run with the environment of
``ray start``. Everything started here is stopped by process id.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO_ROOT
from harness import free_port_block  # benchmarks/harness.py (conftest puts benchmarks/ on the path)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ray") is None, reason="the `ray` CLI is missing (flwr[simulation])"),
]
PER_CLASS = 12  # real images per class and split
RUN = "image-size=32 local-epochs=1 batch-size=16 num-server-rounds=1 num-partitions=2 calibrate=false"
NICE = ["nice", "-n", "10"]
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # Ray's minimum is 75 MiB; the default, 30% of RAM, per node

# Ray's GCS tables (nodes, jobs, actors) read as a short-lived driver of the cluster;
# `ray list actors` would need ray[default]'s dashboard, which flwr[simulation] does not install.
CLUSTER_STATE = """
import json, sys
import ray
from ray._private import state
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps({
    "nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
    "jobs": {j["JobID"]: j.get("Entrypoint", "") for j in state.jobs()},
    "actors": [
        {"class": a["ActorClassName"], "job": a["JobID"], "node": a["Address"].get("NodeID", "")}
        for a in state.actors().values()
    ],
}))
"""


def cluster_state(address: str, env: dict[str, str]) -> dict:
    result = subprocess.run(
        [*NICE, sys.executable, "-c", CLUSTER_STATE, address],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def tail(path: Path, chars: int = 3000) -> str:
    return f"\n--- {path.name} ---\n" + (path.read_text(errors="replace")[-chars:] if path.exists() else "")


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_until(condition, what: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"{what}: process exited early{tail(log)}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s{tail(log)}"
        time.sleep(0.5)


def start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "w") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([*NICE, *command], stdout=handle, stderr=subprocess.STDOUT, env=env)


def stop(process: subprocess.Popen, grace: float = 20) -> list[psutil.Process]:
    """SIGTERM a process this test started (``ray start --block`` then stops its GCS, raylet and
    workers), SIGKILL by process id whatever of its tree is left; returns the tree."""
    tree: list[psutil.Process] = []
    if process.poll() is not None:  # exited and reaped: its process id may belong to another by now
        return tree
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    _, left = psutil.wait_procs(tree, timeout=grace)
    for member in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(left, timeout=grace)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    return tree


def running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ours(marker: str) -> list[psutil.Process]:
    """Processes whose command line names this test's own Ray temp dir (GCS, raylets, monitors)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if process.pid != os.getpid() and marker in " ".join(process.info["cmdline"] or []):
                found.append(process)
    return found


def test_simulation_runs_its_clients_on_an_existing_two_node_ray_cluster(tmp_path, real_subset):
    data = real_subset(PER_CLASS)
    out = tmp_path / "run"
    logs = tmp_path / "logs"
    logs.mkdir()
    # A short root for Ray's sockets (their paths are limited to 107 characters).
    ray_root = Path(tempfile.mkdtemp(prefix="brainfl-ray-", dir="/tmp"))
    base_port = free_port_block(3)
    gcs_port, client_server_port, superlink_port = base_port, base_port + 1, base_port + 2
    head_address = f"127.0.0.1:{gcs_port}"

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", FLWR_TELEMETRY_ENABLED="0", PYTHONUNBUFFERED="1")
    # The ClientApps run in Ray workers, with the environment of `ray start` on their node.
    node_env = {**env, "BRAINFL_CACHE_DIR": str(tmp_path / "node-cache")}
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "raycluster"\n\n'
        f'[superlink.raycluster]\naddress = "127.0.0.1:{superlink_port}"\ninsecure = true\n'
    )
    link_env = {**env, "FLWR_HOME": str(flwr_home), "RAY_ADDRESS": head_address}

    ray_node = ["ray", "start", "--block", "--temp-dir", str(ray_root / "ray"), "--num-cpus", "1"]
    ray_node += ["--node-ip-address", "127.0.0.1", "--object-store-memory", str(OBJECT_STORE_BYTES)]
    ray_node += ["--disable-usage-stats"]
    started: list[subprocess.Popen] = []
    stopped: list[psutil.Process] = []
    try:
        head_options = ["--head", "--port", str(gcs_port), "--include-dashboard=false"]
        head_options += ["--ray-client-server-port", str(client_server_port)]  # not the fixed 10001
        head = start([*ray_node, *head_options], logs / "ray-head.log", node_env)
        started.append(head)
        address_file = ray_root / "ray" / "ray_current_cluster"  # written once the head is up
        wait_until(address_file.exists, "Ray head", head, logs / "ray-head.log")
        worker = start([*ray_node, "--address", head_address], logs / "ray-worker.log", node_env)
        started.append(worker)
        # The SuperLink starts meanwhile: it connects to Ray only when a run starts.
        superlink_command = ["flower-superlink", "--insecure", "--simulation", "--port", str(superlink_port)]
        superlink_command += ["--disable-runtime-dependency-installation"]
        superlink = start(superlink_command, logs / "superlink.log", link_env)
        started.append(superlink)
        nodes: list[str] = []

        def two_nodes() -> bool:
            nonlocal nodes
            nodes = cluster_state(head_address, env)["nodes"]
            return len(nodes) == 2

        # `ray start` says so once its node has registered with the head: read the cluster's tables after
        # that (each reading starts a Ray driver, seconds of CPU), not over and over before it.
        wait_until(
            lambda: "Ray runtime started" in (logs / "ray-worker.log").read_text(errors="replace"),
            "second Ray node to start",
            worker,
            logs / "ray-worker.log",
        )
        wait_until(two_nodes, "second Ray node", worker, logs / "ray-worker.log")
        wait_until(lambda: port_open(superlink_port), "SuperLink", superlink, logs / "superlink.log")

        began = time.monotonic()
        run_command = ["flwr", "run", str(REPO_ROOT), "raycluster", "--stream"]
        run_command += ["--federation-config", "num-supernodes=2 client-resources-num-cpus=1"]
        run_command += ["--run-config", f"{RUN} output-dir='{out}' data-dir='{data}'"]
        flwr_run = start(run_command, logs / "flwr_run.log", link_env)
        started.append(flwr_run)
        flwr_run.wait(timeout=300)
        run_seconds = time.monotonic() - began
        run_logs = tail(logs / "flwr_run.log") + tail(logs / "superlink.log")

        # The run finished (`flwr run` exits 0 even when the simulation fails: check the outputs).
        assert flwr_run.returncode == 0, run_logs
        server_log = out / "logs" / "server.log"
        assert server_log.exists() and "outputs written to" in server_log.read_text(), run_logs
        with open(out / "federated_learning_results.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [row["round"] for row in rows] == ["0", "1"] and rows[1]["sites_trained"] == "2"
        for site in (0, 1):
            assert f"site {site} round 1: trained on" in (out / "logs" / f"client_{site}.log").read_text()

        # The simulation was a driver of this cluster, and its ClientApp actors ran on both nodes.
        cluster = cluster_state(head_address, env)
        simulations = [job for job, entry in cluster["jobs"].items() if "flwr-simulation" in entry]
        drivers = [" ".join(Path(w).name for w in entry.split()[:2]) for entry in cluster["jobs"].values()]
        assert len(simulations) == 1, f"no flwr-simulation among this cluster's drivers: {drivers}"
        actors = [a for a in cluster["actors"] if a["job"] in simulations]
        actor_nodes = {a["node"] for a in actors if a["class"] == "ClientAppActor"}
        assert actor_nodes == set(nodes), f"ClientAppActor nodes {actor_nodes}, cluster nodes {nodes}"
        # ...with the environment of `ray start` (its cache), not the SuperLink's.
        decoded_by_clients = list((tmp_path / "node-cache").glob("training-32px-*.npz"))
        assert decoded_by_clients, "the ClientApps did not use the BRAINFL_CACHE_DIR of `ray start`"
        print(f"flwr run on the Ray cluster: {run_seconds:.1f} s")
    finally:
        for process in reversed(started):  # flwr run, SuperLink, then the worker node and the head
            stopped += stop(process)
        for process in ours(f"{ray_root}/"):
            with contextlib.suppress(psutil.Error):
                process.kill()
        shutil.rmtree(ray_root, ignore_errors=True)

    left = [p.pid for p in stopped if running(p)]
    assert not left and not ours(f"{ray_root}/"), f"processes left running: {left}"
