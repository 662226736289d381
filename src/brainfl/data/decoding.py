"""Decode every scan format a hospital holds into the 8-bit image the model sees.

One entry point, :func:`decode_scan` (``data_loader.decode_image`` calls it), so a
scan looks the same in training, the server's test set, ``predict``, Grad-CAM
and ``check-data``:

* Every scan is cropped to the head (:func:`brainfl.data.framing.head_box`: the square around the
  large bright regions, with a small margin; the ``crop`` setting says how bright is found, or
  ``none``) before it is resized, so a scan exported with a wide black border and one cropped tight
  to the skull give the model the same picture.
* Each format is read by its reader (:mod:`brainfl.data.readers`: Pillow's
  JPEG, PNG, BMP and TIFF; DICOM through pydicom), which gives the full-size
  8-bit picture, high-bit pixel values windowed (:mod:`brainfl.data.windowing`);
  it is converted to the model's channels and resized bilinearly.

Anything that cannot be decoded (a compressed transfer syntax without a
pydicom handler, an image over Pillow's decompression-bomb limit, a
multi-frame file, a broken file) raises :class:`BrainFLError` with one line
naming the file, which ``skip-unreadable`` turns into a skipped file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from brainfl.core.errors import BrainFLError
from brainfl.data.framing import crop_box
from brainfl.data.readers import reader_for, scan_suffixes

SCAN_SUFFIXES = scan_suffixes()


def is_scan_file(path: Path | str) -> bool:
    """Whether a file is a scan some reader reads: by its suffix, or by its bytes (DICOM without a
    DICOM name; a ``DICOMDIR`` index is not a scan)."""
    return reader_for(path) is not None


def open_scan(path: Path | str, mode: str | None = None) -> Image.Image:
    """The scan at full size as an 8-bit Pillow image, converted to ``mode`` (``"L"``/``"RGB"``) if given.

    High-bit images and DICOM are windowed as the module docstring says; use
    this (not ``Image.open``) wherever a scan is shown or hashed.
    """
    path = Path(path)
    reader = reader_for(path)
    if reader is None:
        raise BrainFLError(f"not a scan file this version reads ({', '.join(sorted(SCAN_SUFFIXES))}): {path}")
    image = reader.open(path)
    return image.convert(mode) if mode and image.mode != mode else image


def decode_scan(path: Path | str, image_size: int, channels: int, crop: str = "head") -> np.ndarray:
    """Decode one scan file to uint8 ``(image_size, image_size, channels)``, framed by :func:`crop_box`.

    Raises :class:`BrainFLError` naming the file when it cannot be decoded.
    """
    image = open_scan(path, "L" if channels == 1 else "RGB")
    image = image.crop(crop_box(image, crop)).resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(image_size, image_size, channels)
