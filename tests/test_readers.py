"""The scan-reader registry: a format is one module in brainfl.data.readers, found without being listed."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from brainfl.core.errors import BrainFLError
from brainfl.data import readers
from brainfl.data.decoding import decode_scan, is_scan_file, open_scan

TOY_READER = textwrap.dedent(
    """
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from brainfl.core.errors import BrainFLError
    from brainfl.data.readers import ScanReader


    def open_toy(path: Path) -> Image.Image:
        data = Path(path).read_bytes()
        if not data.startswith(b"TOY8"):
            raise BrainFLError(f"cannot decode toy scan {path}: no TOY8 header")
        width, height = data[4], data[5]
        return Image.fromarray(np.frombuffer(data[6:], np.uint8).reshape(height, width), "L")


    READER = ScanReader(
        name="toy", suffixes=frozenset({".toy"}), open=open_toy, sniff=lambda head: head.startswith(b"TOY8")
    )
    """
)


def toy_scan(path, pixels: np.ndarray):
    path.write_bytes(b"TOY8" + bytes([pixels.shape[1], pixels.shape[0]]) + pixels.astype(np.uint8).tobytes())
    return path


@pytest.fixture
def toy_format(tmp_path, monkeypatch):
    """One more module on the readers package's path, as a new reader file would be."""
    folder = tmp_path / "more_readers"
    folder.mkdir()
    (folder / "toy.py").write_text(TOY_READER)
    monkeypatch.setattr(readers, "__path__", [*readers.__path__, str(folder)])
    readers.readers.cache_clear()
    yield
    readers.readers.cache_clear()


def test_the_registry_holds_the_shipped_formats():
    assert [reader.name for reader in readers.readers()] == ["dicom", "pillow"]
    assert readers.scan_suffixes() == {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}


def test_a_new_reader_module_is_found_and_decodes_by_suffix_and_by_bytes(toy_format, tmp_path):
    pixels = np.tile(np.arange(0, 240, 15, dtype=np.uint8), (12, 1))  # 12 x 16, a ramp
    named = toy_scan(tmp_path / "scan.toy", pixels)
    unnamed = toy_scan(tmp_path / "IM0001", pixels)
    assert "toy" in [reader.name for reader in readers.readers()]
    assert readers.reader_for(named).name == "toy" and readers.reader_for(unnamed).name == "toy"
    assert is_scan_file(named) and is_scan_file(unnamed)
    np.testing.assert_array_equal(np.asarray(open_scan(named)), pixels)
    assert decode_scan(unnamed, 8, 3, crop="none").shape == (8, 8, 3)


def test_without_the_module_the_format_is_no_scan(tmp_path):
    path = toy_scan(tmp_path / "scan.toy", np.zeros((4, 4), np.uint8))
    assert readers.reader_for(path) is None and not is_scan_file(path)
    with pytest.raises(BrainFLError, match=r"scan\.toy"):
        open_scan(path)
