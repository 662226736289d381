"""High-bit pixel values to the 8-bit picture: a robust percentile window, and the decompression-bomb check.

The readers (:mod:`brainfl.data.readers`) use these for every format whose
pixels hold more than 8 bits: 16-bit, 32-bit and float PNG/TIFF and DICOM
are windowed between :data:`WINDOW_PERCENTILES` of their pixel values, so a
12- or 16-bit scan keeps its contrast instead of being clipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from brainfl.core.errors import BrainFLError

WINDOW_PERCENTILES = (0.5, 99.5)
_PERCENTILE_SAMPLES = 1 << 20  # enough pixels for a stable percentile of a large image


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


def check_pixels(path: Path, width: int, height: int) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise BrainFLError(
            f"image too large ({width}x{height} = {width * height} pixels, limit {limit}, "
            f"a possible decompression bomb): {path}"
        )
