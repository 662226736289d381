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
