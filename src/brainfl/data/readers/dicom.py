"""DICOM through pydicom: a DICOM suffix, or any other name with ``DICM`` at bytes 128-132.

Rescale Slope/Intercept (modality LUT), then the Window Center/Width tags
when present, else the percentile window; MONOCHROME1 is inverted. An 8-bit
DICOM without rescale or window tags is used as stored, like an 8-bit PNG.
Multi-frame files are refused: the loader's contract is one file, one image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from brainfl.core.errors import BrainFLError
from brainfl.data.readers import ScanReader
from brainfl.data.windowing import check_pixels, window_to_uint8

_DICOM_MAGIC = b"DICM"
_MAGIC_OFFSET = 128


def has_dicom_magic(head: bytes) -> bool:
    """Whether a file's first bytes are the DICOM preamble: ``DICM`` at bytes 128-132."""
    return head[_MAGIC_OFFSET : _MAGIC_OFFSET + len(_DICOM_MAGIC)] == _DICOM_MAGIC


def _first(value: Any) -> float:
    """A DICOM number that may be multi-valued (several windows): the first one."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        return float(value)
    return float(value[0])


def _voi_window(ds: Any) -> tuple[float, float] | None:
    """``(low, high)`` of the file's first Window Center/Width (DICOM's LINEAR function), if any."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    if not np.isfinite(center) or not np.isfinite(width) or width < 1:
        return None
    if str(ds.get("VOILUTFunction", "LINEAR")).upper() == "LINEAR_EXACT":
        return center - width / 2, center + width / 2
    return center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2


def _reason(path: Path, error: Exception) -> BrainFLError:
    reason = (str(error).strip().splitlines() or [""])[0][:200]
    return BrainFLError(f"cannot decode DICOM {path}: {error.__class__.__name__} {reason}".rstrip())


def _header_number(ds: Any, keyword: str, default: int, path: Path) -> int:
    """A whole-number header field (``default`` when absent or empty); one line naming the file and
    the field when the file holds something else there."""
    try:
        value = ds.get(keyword, default)
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError, OverflowError):
        raise BrainFLError(f"cannot decode DICOM {path}: its {keyword} is not a whole number") from None


def _read_dicom(path: Path) -> tuple[Any, np.ndarray]:
    """The dataset and its one frame's stored pixel values, or a one-line error naming the file."""
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as error:  # pydicom's parser raises many kinds on a broken file
        raise BrainFLError(f"cannot decode DICOM {path}: {error.__class__.__name__}") from None
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise BrainFLError(f"cannot decode DICOM {path}: no pixel data (not an image)")
    frames = _header_number(ds, "NumberOfFrames", 1, path)
    if frames > 1:
        raise BrainFLError(f"multi-frame DICOM ({frames} frames) not supported: {path}")
    check_pixels(path, _header_number(ds, "Columns", 0, path), _header_number(ds, "Rows", 0, path))
    if "TransferSyntaxUID" not in ds.file_meta:  # a bare dataset without file meta (old files)
        implicit, _little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    try:
        return ds, ds.pixel_array
    except Exception as error:  # decoders raise RuntimeError, NotImplementedError, ValueError, ...
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax.is_compressed:
            raise BrainFLError(
                f"cannot decode DICOM {path}: compressed transfer syntax {syntax.name} ({syntax}) needs a "
                "pixel-data handler pydicom lacks here (e.g. pip install pylibjpeg pylibjpeg-libjpeg)"
            ) from None
        raise _reason(path, error) from None


def _dicom_image(ds: Any, pixels: np.ndarray) -> Image.Image:
    """Stored DICOM pixels as the 8-bit picture: modality rescale, VOI or percentile window, MONOCHROME1."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        rgb = rgb if rgb.dtype == np.uint8 else window_to_uint8(rgb, 0, float(np.iinfo(rgb.dtype).max))
        return Image.fromarray(rgb, "RGB")
    if pixels.ndim == 3 and pixels.shape[-1] == 3:  # RGB (pydicom converts YBR to RGB)
        rgb = pixels if pixels.dtype == np.uint8 else window_to_uint8(pixels)
        return Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    if pixels.ndim != 2:
        raise ValueError(f"pixel array of shape {pixels.shape} is not one grayscale or RGB image")
    window = _voi_window(ds)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if "ModalityLUTSequence" in ds or slope <= 0 or pixels.dtype.kind not in "iu":
        values = apply_modality_lut(pixels, ds)
        gray = window_to_uint8(values, *window) if window else window_to_uint8(values)
    elif window is not None:  # the window mapped back to stored values: the same picture, faster
        gray = window_to_uint8(pixels, *((edge - intercept) / slope for edge in window))
    elif pixels.dtype == np.uint8 and slope == 1 and intercept == 0:  # 8 bits, no rescale: as stored
        gray = pixels
    else:  # percentiles commute with the increasing rescale: window the stored values
        gray = window_to_uint8(pixels)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return Image.fromarray(np.ascontiguousarray(gray), "L")


def _dicom_pixels(path: Path) -> Image.Image:
    """The DICOM file's image as 8-bit ``L`` (monochrome) or ``RGB``."""
    ds, pixels = _read_dicom(path)
    try:
        return _dicom_image(ds, pixels)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as error:  # odd or broken tags
        raise _reason(path, error) from None


READER = ScanReader(
    name="dicom",
    suffixes=frozenset({".dcm", ".dicom"}),
    open=_dicom_pixels,
    sniff=has_dicom_magic,
    excluded_names=frozenset({"DICOMDIR"}),
)
