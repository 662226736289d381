"""Scan readers, one module per format family, and the registry that picks a file's reader.

Each module of this package defines ``READER = ScanReader(...)``: its name,
the suffixes it claims, how it opens a file as a full-size 8-bit Pillow image
(``L`` or ``RGB``), and optionally how it recognises its format from a file's
first :data:`HEAD_BYTES` bytes (DICOM files often have UID-like names with no
suffix). :func:`readers` finds every module here the first time it is asked,
so a new format is one new file; :func:`reader_for` picks a file's reader by
its suffix, else by its bytes. As MONAI's ``ImageReader`` and nnU-Net's
reader registry, nothing else in brainfl names a format.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path

from PIL import Image

HEAD_BYTES = 132  # what a sniffer sees of a file: enough for DICOM's preamble and magic


@dataclasses.dataclass(frozen=True)
class ScanReader:
    """One format family: the suffixes it claims, how it opens a file, how it knows its bytes."""

    name: str
    suffixes: frozenset[str]  # lower case, with the dot
    open: Callable[[Path], Image.Image]  # full size, 8 bits per channel; BrainFLError naming the file
    sniff: Callable[[bytes], bool] | None = None  # the file's first HEAD_BYTES bytes -> is it this format
    excluded_names: frozenset[str] = frozenset()  # file names (upper case) never read, e.g. DICOMDIR


@functools.cache
def readers() -> tuple[ScanReader, ...]:
    """Every reader of this package's modules, by name."""
    found = [
        importlib.import_module(f"{__name__}.{module.name}").READER
        for module in pkgutil.iter_modules(__path__)
    ]
    return tuple(sorted(found, key=lambda reader: reader.name))


def scan_suffixes() -> frozenset[str]:
    """Every suffix some reader claims."""
    return frozenset().union(*(reader.suffixes for reader in readers()))


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(HEAD_BYTES)
    except OSError:
        return b""


def reader_for(path: Path | str) -> ScanReader | None:
    """The reader whose suffixes include the file's; else, for a suffix no reader claims, the first
    whose sniffer knows the file's bytes; None: not a scan."""
    path = Path(path)
    suffix = path.suffix.lower()
    for reader in readers():
        if suffix in reader.suffixes:
            return reader
    sniffers = [r for r in readers() if r.sniff is not None and path.name.upper() not in r.excluded_names]
    if not sniffers:
        return None
    head = _head(path)
    return next((reader for reader in sniffers if reader.sniff(head)), None)
