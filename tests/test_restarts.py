"""A coordinator killed mid-run and resumed: the run goes on from its last checkpoint with one row per round.

The same real-process setting as :mod:`test_faults` (``run.sh`` on loopback, 12 real
images per class, the fault injected by PID into this run's own process tree); a
module of its own so that the parallel suite runs it beside the other fault tests.
"""

from __future__ import annotations

import pytest

from test_e2e import free_port_block, read_rows, run_script
from test_faults import TINY, data, kill_tree, rounds_done, start_script, started_by, stop, wait_for

__all__ = ["data"]  # the fixture, used by name
pytestmark = pytest.mark.e2e


def test_resume_after_the_server_is_killed_keeps_one_row_per_round(tmp_path, data):
    out, port = tmp_path / "run", free_port_block(3)
    args = ["--sites", "2", "--rounds", "2", "--data-dir", str(data), "--port", str(port)]
    script = start_script(*args, "--output-dir", str(out), "--run-config", TINY)
    try:
        wait_for(lambda: rounds_done(out) >= 1, 600, "round 1")
        kill_tree(started_by(script, "flwr-serverapp"))  # this run's server only
        output, _ = script.communicate(timeout=300)
    finally:
        stop(script)
    assert script.returncode != 0 and "the run did not finish" in output
    done = rounds_done(out)
    assert done == 1, "the server was killed after the last round: nothing left to resume"

    resumed = run_script("--resume", str(out), "--port", str(port))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = read_rows(out / "federated_learning_results.csv")
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    assert f"resuming {out} after round {done} of 2" in (out / "logs" / "server.log").read_text()
    assert all(r["sites_trained"] == "2" for r in rows[1:])
