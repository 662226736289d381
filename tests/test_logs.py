"""Per-process log files, and Flower's metric dumps kept out of the logs."""

from __future__ import annotations

import logging

from flwr.common.logger import log

from brainfl.core.logs import log_to_file, without_metric_dumps


def test_flowers_metric_dumps_are_dropped_and_round_lines_kept(tmp_path):
    with log_to_file(tmp_path / "server.log") as path, without_metric_dumps():
        log(logging.INFO, "[ROUND %d/%d]", 1, 3)
        log(logging.INFO, "\t└──> MetricRecord: %s", {"accuracy": 0.5, "sensitivity_glioma_low": 0.0})
        log(logging.INFO, "Final results:")
        log(logging.INFO, "\t%s", "'sensitivity_glioma_low': '0.0000e+00'")
    log(logging.INFO, "\t%s", "after the block")
    text = path.read_text()
    assert "[ROUND 1/3]" in text
    assert "MetricRecord" not in text and "Final results" not in text and "sensitivity" not in text
    assert logging.getLogger("flwr").filters == []  # removed again


def test_every_flower_and_brainfl_line_goes_to_the_file(tmp_path):
    with log_to_file(tmp_path / "client_0.log") as path:
        log(logging.INFO, "from flower")
        logging.getLogger("flwr.brainfl").info("from brainfl")
    assert "from flower" in path.read_text() and "from brainfl" in path.read_text()
