"""Crashes and restarts in one deployment run: a SuperNode killed and restarted, the coordinator
killed and resumed, with one row per round.

The same real-process setting as :mod:`test_faults` (``run.sh`` on loopback, 12 real
images per class, the faults injected by PID into this run's own process tree); a
module of its own so that the parallel suite runs it beside the other fault tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from brainfl.model.files import CHECKPOINT, stored_metadata
from test_e2e import free_port_block, read_rows, run_script
from test_faults import (
    TINY,
    data,
    kill_tree,
    rounds_done,
    rounds_sampled,
    start_script,
    started_by,
    stop,
    supernode,
    wait_for,
)

__all__ = ["data"]  # the fixture, used by name
pytestmark = pytest.mark.e2e


def checkpoint_round(out: Path) -> int:
    """The round of the run's checkpoint (-1 before the first)."""
    path = out / CHECKPOINT
    return int(stored_metadata(path).get("round", -1)) if path.exists() else -1


def test_a_killed_supernode_rejoins_and_a_killed_server_resumes_with_one_row_per_round(tmp_path, data):
    """One deployment run, two crashes: a hospital's SuperNode killed after round 1 (the round it was
    sampled for runs without it) and restarted by hand, so that it trains again in round 3; then the
    coordinator's ServerApp killed after round 3, and ``run.sh --resume`` finishes round 4 from the
    checkpoint."""
    out, port = tmp_path / "run", free_port_block(3)
    args = ["--sites", "2", "--rounds", "4", "--min-sites", "1", "--data-dir", str(data)]
    script = start_script(*args, "--output-dir", str(out), "--port", str(port), "--run-config", TINY)
    restarted = None
    try:
        wait_for(lambda: rounds_done(out) >= 1, 600, "round 1")
        kill_tree(started_by(script, "flower-supernode", f"--port {port + 2} "))
        # Round 2 has picked its sites, the killed one among them (the SuperLink still counts it until
        # it misses its heartbeats): the site restarted now (a new SuperNode) can only join round 3.
        wait_for(lambda: rounds_sampled(out) >= 2, 600, "round 2 to pick its sites")
        node_config = f"partition-id=1 num-partitions=2 data-dir='{data}' log-dir='{out / 'logs'}'"
        restarted = supernode(port, port + 2, node_config)
        # Round 3's checkpoint, not only its row: a server killed between the two resumes from round 2.
        wait_for(lambda: checkpoint_round(out) >= 3, 600, "round 3's checkpoint")
        kill_tree(started_by(script, "flwr-serverapp"))  # this run's server only
        output, _ = script.communicate(timeout=300)
    finally:
        if restarted is not None:
            stop(restarted)
        stop(script)
    assert script.returncode != 0 and "the run did not finish" in output
    done = rounds_done(out)
    assert done == 3, "the server was killed after the last round: nothing left to resume"
    sites_round_3 = {r["site"] for r in read_rows(out / "site_metrics.csv") if r["round"] == "3"}
    assert sites_round_3 == {"0", "1"}, "the restarted site did not rejoin"

    resumed = run_script("--resume", str(out), "--port", str(port))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = read_rows(out / "federated_learning_results.csv")
    assert [r["round"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[1]["sites_trained"] == "2" and rows[4]["sites_trained"] == "2"
    assert any(int(r["sites_failed"] or 0) >= 1 or r["sites_trained"] == "1" for r in rows[2:4])
    assert f"resuming {out} after round {done} of 4" in (out / "logs" / "server.log").read_text()
