"""Logging to per-process files: ``logs/server.log`` and ``logs/client_<n>.log``.

brainfl logs through a child of Flower's logger, so its lines go wherever
Flower's go (console, ``flwr run --stream``) and into the files attached here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG = logging.getLogger("flwr.brainfl")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Flower's strategies log each round's whole MetricRecord and, at the end, the run's whole
# metrics history ("Final results:", one line each): hundreds of lines that the result CSVs
# and the report hold already. These are their format strings.
FLOWER_METRIC_DUMPS = frozenset(
    {"\t└──> Aggregated MetricRecord: %s", "\t└──> MetricRecord: %s", "Final results:", "\t%s"}
)


class _WithoutMetricDumps(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in FLOWER_METRIC_DUMPS


@contextmanager
def without_metric_dumps() -> Iterator[None]:
    """Leave Flower's metric dumps out of every log while the block runs; the round lines stay."""
    quiet = _WithoutMetricDumps()
    flower_logger = logging.getLogger("flwr")
    flower_logger.addFilter(quiet)
    try:
        yield
    finally:
        flower_logger.removeFilter(quiet)


@contextmanager
def log_to_file(path: Path) -> Iterator[Path]:
    """Append every Flower and brainfl log line to ``path`` while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(logging.INFO)
    flower_logger = logging.getLogger("flwr")
    flower_logger.addHandler(handler)
    try:
        yield path
    finally:
        flower_logger.removeHandler(handler)
        handler.close()
