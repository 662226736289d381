"""Write DICOM files (and 16-bit PNGs) from 8-bit scans, as a hospital's archive would hold them.

The 8-bit picture is stored as 12-bit values (``BitsStored`` 12 in uint16),
with Rescale Slope/Intercept and, optionally, a Window Center/Width covering
the whole rescaled range, so a correct decoder gives back the 8-bit picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import MRImageStorage, generate_uid

MAX_12_BIT = 4095


def to_12_bit(pixels: np.ndarray) -> np.ndarray:
    """8-bit values spread over 0..4095 (uint16)."""
    return np.rint(np.asarray(pixels, dtype=np.float64) * (MAX_12_BIT / 255.0)).astype(np.uint16)


def read_gray(path: Path | str) -> np.ndarray:
    """An 8-bit image file as a 2-D uint8 array (RGB converted to grayscale)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def write_dicom(
    path: Path | str,
    pixels: np.ndarray,
    *,
    slope: float = 2.0,
    intercept: float = -1024.0,
    window: bool = True,
    monochrome1: bool = False,
    stored: np.ndarray | None = None,
) -> Path:
    """Write an MR DICOM file (with preamble and ``DICM``) showing the 8-bit ``pixels``.

    ``pixels`` (H x W, or frames x H x W for a multi-frame file) are stored as
    12-bit values; the rescaled range is ``intercept .. intercept + slope * 4095``
    and, with ``window``, Window Center/Width span exactly that range.
    ``monochrome1`` stores the negative and marks it MONOCHROME1, so a decoder
    that inverts MONOCHROME1 shows the same picture. ``stored`` overrides the
    stored values as given (uint16).
    """
    path = Path(path)
    values = to_12_bit(pixels) if stored is None else np.asarray(stored, dtype=np.uint16)
    if monochrome1 and stored is None:
        values = (MAX_12_BIT - values).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.PatientID = "brainfl-test"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.set_pixel_data(values, "MONOCHROME1" if monochrome1 else "MONOCHROME2", 12)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    if window:
        low, high = intercept, intercept + slope * MAX_12_BIT
        # DICOM's LINEAR window maps c - 0.5 -/+ (w - 1) / 2 to black/white.
        ds.WindowCenter = f"{(low + high) / 2 + 0.5:g}"
        ds.WindowWidth = f"{high - low + 1:g}"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def scan_to_dicom(source: Path | str, path: Path | str, **options) -> Path:
    """Write the 8-bit scan file ``source`` as a DICOM file (see :func:`write_dicom`)."""
    return write_dicom(path, read_gray(source), **options)


def scan_to_png16(source: Path | str, path: Path | str, bits: int = 16) -> Path:
    """Write the 8-bit scan ``source`` as a 16-bit grayscale PNG (values x 257, or into ``bits`` bits)."""
    pixels = read_gray(source).astype(np.float64)
    values = np.rint(pixels * ((2**bits - 1) / 255.0)).astype(np.uint16)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path)
    return path


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images' pixel values."""
    return float(np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1])
