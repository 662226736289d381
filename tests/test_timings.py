"""A site's seconds per phase: start-up counted once per process, blocks added to their phase."""

from __future__ import annotations

import time

import brainfl.core.timings as timings
from brainfl.core.timings import PHASES, TOTAL, MessageTimer


def test_startup_is_counted_for_the_first_message_of_a_process_only(monkeypatch):
    monkeypatch.setattr(timings, "_first_message_in_process", True)
    first, second = MessageTimer(), MessageTimer()
    assert first.seconds["startup"] > 0 and second.seconds["startup"] == 0


def test_a_phase_adds_the_seconds_of_its_blocks():
    timer = MessageTimer()
    for _ in range(2):
        with timer.phase("training"):
            time.sleep(0.05)
    metrics = timer.metrics()
    assert set(metrics) == {*(f"{phase}_s" for phase in PHASES), TOTAL}
    assert 0.1 <= metrics["training_s"] < 0.5 and metrics["data_s"] == 0
    assert metrics[TOTAL] >= sum(metrics[f"{phase}_s"] for phase in PHASES) - 0.01  # the whole message
