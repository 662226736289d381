"""Where a site's message spends its seconds: start-up, data, model, validation, training.

On the deployment engine a SuperNode starts a fresh ``flwr-clientapp``
process for every message, so each message pays the interpreter's and the
imports' start-up before the handler runs; on the simulation engine a
worker process pays it once. :class:`MessageTimer` measures the handler's
phases and, for the first message of a process, the seconds since the
process started. The seconds travel in the train reply
(``<phase>_s``, and ``total_s``: start-up plus the handler's whole wall time,
the site's time from message to reply) into ``site_metrics.csv``, and are
logged at the site.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

PHASES = ("startup", "data", "model", "validation", "training")
TOTAL = "total_s"  # reply key: the site's whole time for the message (start-up plus the handler)
_first_message_in_process = True


def seconds_since_process_start() -> float:
    """Wall seconds since this process was created."""
    return max(0.0, time.time() - psutil.Process().create_time())


class MessageTimer:
    """Seconds per phase of one message (``startup``: before the handler, first message only)."""

    def __init__(self) -> None:
        global _first_message_in_process
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.started = time.perf_counter()
        if _first_message_in_process:
            self.seconds["startup"] = seconds_since_process_start()
            _first_message_in_process = False

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the block's wall seconds to phase ``name``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def total(self) -> float:
        """Seconds since the message reached the site: start-up plus the handler's wall time so far."""
        return self.seconds["startup"] + time.perf_counter() - self.started

    def metrics(self) -> dict[str, float]:
        """The phases as reply metrics, ``<phase>_s``, and :data:`TOTAL`."""
        phases = {f"{name}_s": round(value, 3) for name, value in self.seconds.items()}
        return {**phases, TOTAL: round(self.total(), 3)}

    def summary(self) -> str:
        """One log line: each phase's seconds."""
        return ", ".join(f"{name} {value:.1f} s" for name, value in self.seconds.items())
