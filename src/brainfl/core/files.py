"""Atomic file writes (a reader never sees a half-written cache, CSV or model), and checking early
that an output can be written at all."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from brainfl.core.errors import BrainFLError


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, flush it to disk, then rename it into place:
    ``path`` is the old file or the whole new one, never part of one (an interrupted write leaves no
    temporary file either)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (no NaN: strict JSON) atomically at ``path``; the path."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    write_atomically(path, lambda handle: handle.write(text.encode()))
    return path


def check_can_create(path: Path, option: str, folder: bool = False) -> None:
    """One line naming ``option`` unless ``path`` (a file, or with ``folder`` a folder, perhaps in
    folders still to be made) can be written: the nearest existing one of it and its parents must be
    a writable folder."""
    parent = path.absolute() if folder else path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BrainFLError(f"{option}: cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BrainFLError(f"{option}: cannot write {path}: the folder {parent} is not writable")
