"""Decode every scan format a hospital holds into the 8-bit image the model sees.

One entry point, :func:`decode_scan` (``data_loader.decode_image`` calls it), so a
scan looks the same in training, the server's test set, ``predict``, Grad-CAM
and ``check-data``:

* Every scan is cropped to the head (:func:`brainfl.data.framing.head_box`: the square around the
  large bright regions, with a small margin) before it is resized, so a scan exported with a wide black border
  and one cropped tight to the skull give the model the same picture.
* 8-bit JPEG, PNG, BMP and TIFF (grayscale, RGB, palette) are converted to the
  model's channels and resized bilinearly, exactly as Pillow always did here.
* 16-bit, 32-bit and float PNG/TIFF are windowed to 8 bits with a robust
  percentile window (:data:`WINDOW_PERCENTILES` of the pixel values), so a
  12- or 16-bit scan keeps its contrast instead of being clipped.
* DICOM (``.dcm``/``.dicom``, or any other name whose bytes 128-132 are
  ``DICM``) is read with pydicom: Rescale Slope/Intercept (modality LUT), then
  the Window Center/Width tags when present, else the percentile window;
  MONOCHROME1 is inverted. An 8-bit DICOM without rescale or window tags is
  used as stored, like an 8-bit PNG. Multi-frame files are refused: the
  loader's contract is one file, one image.

Anything that cannot be decoded (a compressed transfer syntax without a
pydicom handler, an image over Pillow's decompression-bomb limit, a
multi-frame file, a broken file) raises :class:`BrainFLError` with one line
naming the file, which ``skip-unreadable`` turns into a skipped file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from brainfl.core.errors import BrainFLError
from brainfl.data.framing import crop_box

PILLOW_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
SCAN_SUFFIXES = PILLOW_SUFFIXES | DICOM_SUFFIXES
WINDOW_PERCENTILES = (0.5, 99.5)
# Pillow modes holding more than 8 bits per pixel (grayscale): windowed, never clipped.
HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_DICOM_MAGIC = b"DICM"
_MAGIC_OFFSET = 128
_PERCENTILE_SAMPLES = 1 << 20  # enough pixels for a stable percentile of a large image


def has_dicom_magic(path: Path | str) -> bool:
    """Whether the file has the DICOM preamble: ``DICM`` at bytes 128-132."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_MAGIC_OFFSET + len(_DICOM_MAGIC))
    except OSError:
        return False
    return head[_MAGIC_OFFSET:] == _DICOM_MAGIC


def is_scan_file(path: Path | str) -> bool:
    """Whether a file is a scan the loader reads: a :data:`SCAN_SUFFIXES` name, or DICOM by its bytes.

    Files with any other name (none, or a UID-like ``1.2.840.113619.2.55``)
    are sniffed for the DICOM magic; a ``DICOMDIR`` index is not a scan.
    """
    path = Path(path)
    if path.suffix.lower() in SCAN_SUFFIXES:
        return True
    return path.name.upper() != "DICOMDIR" and has_dicom_magic(path)


def percentile_window(values: np.ndarray) -> tuple[float, float] | None:
    """The :data:`WINDOW_PERCENTILES` of the finite ``values`` (as ``np.percentile``), or None if none.

    Integer images of up to 16 bits are counted in a histogram (exact, and
    several times faster than sorting); others use a sample of at most
    about a million finite values.
    """
    values = np.asarray(values)
    if values.dtype.kind in "biu" and values.dtype.itemsize <= 2:
        if values.size == 0:
            return None
        flat = values.ravel()
        base = int(flat.min())
        cumulative = np.cumsum(np.bincount(flat.astype(np.int64) - base))
        ranks = np.asarray(WINDOW_PERCENTILES) / 100.0 * (flat.size - 1)
        # The k-th smallest value (0-based) is the first bin whose cumulative count exceeds k.
        below = np.searchsorted(cumulative, np.floor(ranks), side="right") + base
        above = np.searchsorted(cumulative, np.ceil(ranks), side="right") + base
        low, high = below + (ranks - np.floor(ranks)) * (above - below)
        return float(low), float(high)
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
    if finite.size == 0:
        return None
    sample = finite[:: max(1, finite.size // _PERCENTILE_SAMPLES)]
    low, high = np.percentile(sample, WINDOW_PERCENTILES)
    return float(low), float(high)


def window_to_uint8(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Map ``values`` linearly from ``[low, high]`` to 0..255 (clipped), as uint8.

    Without ``low``/``high`` the window is :func:`percentile_window` (the
    full range if that is flat). NaN and -inf become 0, +inf 255; a flat
    image becomes black.
    """
    values = np.asarray(values)
    if low is None or high is None:
        window = percentile_window(values)
        if window is None:
            return np.zeros(values.shape, dtype=np.uint8)
        low, high = window
        if high <= low:
            finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
            low, high = float(finite.min()), float(finite.max())
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = values.astype(np.float32)  # a copy, changed in place below
    scaled -= np.float32(low)
    scaled *= np.float32(255.0 / (high - low))
    if values.dtype.kind == "f":
        np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)


def _check_pixels(path: Path, width: int, height: int) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise BrainFLError(
            f"image too large ({width}x{height} = {width * height} pixels, limit {limit}, "
            f"a possible decompression bomb): {path}"
        )


def _open_pillow(path: Path, mode: str | None) -> Image.Image:
    try:
        with Image.open(path) as image:
            _check_pixels(path, image.width, image.height)
            if image.format == "TIFF" and getattr(image, "n_frames", 1) > 1:
                raise BrainFLError(f"multi-frame TIFF ({image.n_frames} frames) not supported: {path}")
            if image.mode in HIGH_BIT_MODES:
                image = Image.fromarray(window_to_uint8(np.asarray(image)), "L")
            return image.convert(mode) if mode else image.copy()
    except Image.DecompressionBombError:
        raise BrainFLError(
            f"image too large (over Pillow's limit of {Image.MAX_IMAGE_PIXELS} pixels, "
            f"a possible decompression bomb): {path}"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
        raise BrainFLError(f"cannot decode image {path}: {error.__class__.__name__}") from None


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


def _read_dicom(path: Path) -> tuple[Any, np.ndarray]:
    """The dataset and its one frame's stored pixel values, or a one-line error naming the file."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as error:  # pydicom's parser raises many kinds on a broken file
        raise BrainFLError(f"cannot decode DICOM {path}: {error.__class__.__name__}") from None
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise BrainFLError(f"cannot decode DICOM {path}: no pixel data (not an image)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise BrainFLError(f"multi-frame DICOM ({frames} frames) not supported: {path}")
    _check_pixels(path, int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0))
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
    from pydicom.pixels import apply_color_lut, apply_modality_lut

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


def is_dicom_file(path: Path | str) -> bool:
    """Whether :func:`open_scan` reads the file as DICOM: a DICOM suffix, or another name with the magic."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    return suffix not in PILLOW_SUFFIXES and has_dicom_magic(path)


def open_scan(path: Path | str, mode: str | None = None) -> Image.Image:
    """The scan at full size as an 8-bit Pillow image, converted to ``mode`` (``"L"``/``"RGB"``) if given.

    High-bit images and DICOM are windowed as the module docstring says; use
    this (not ``Image.open``) wherever a scan is shown or hashed.
    """
    path = Path(path)
    if is_dicom_file(path):
        image = _dicom_pixels(path)
        return image.convert(mode) if mode else image
    return _open_pillow(path, mode)


def decode_scan(path: Path | str, image_size: int, channels: int, crop: str = "head") -> np.ndarray:
    """Decode one scan file to uint8 ``(image_size, image_size, channels)``, framed by :func:`crop_box`.

    Raises :class:`BrainFLError` naming the file when it cannot be decoded.
    """
    image = open_scan(path, "L" if channels == 1 else "RGB")
    image = image.crop(crop_box(image, crop)).resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(image_size, image_size, channels)
