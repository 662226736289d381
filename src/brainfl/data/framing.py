"""How a scan is framed before it is resized to the model's input: cropped to the head, or as stored.

Kaggle's export leaves a wide black border around the head; other hospitals
crop tight to the skull. :func:`head_box` finds the head (its large bright
regions) and frames it in a square with a small margin, so both give the model
the same picture; :func:`crop_box` is what :func:`brainfl.data.decoding.decode_scan`
and Grad-CAM's overlay use.

The ``crop`` setting names the framing (:data:`HEAD_THRESHOLDS` holds the ways to
find the head; :data:`brainfl.settings.run_settings.CROPS` the names, with ``none``):

- ``head``: bright is above :data:`HEAD_THRESHOLD` of the image's 99th percentile;
- ``head-otsu``: bright is above Otsu's threshold (scikit-image), which separates
  the image's two intensity classes. A preparation that lifts the dark background
  (histogram equalization, CLAHE, noise) lifts its noise above a tenth of the 99th
  percentile, and the ``head`` box grows toward the whole picture; Otsu's threshold
  moves with the background;
- ``none``: the scan as stored (models saved before the head crop).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.filters import threshold_otsu

from brainfl.core.errors import BrainFLError
from brainfl.settings.run_settings import CROPS

# Head crop: a pixel is bright above this fraction of the image's 99th percentile, and a connected
# bright region is part of the head when it is at least this fraction of the largest one.
HEAD_THRESHOLD = 0.1
HEAD_PART = 0.05
HEAD_MARGIN = 0.04  # of the head's larger side, on every side


def _tenth_of_99th_percentile(gray: np.ndarray) -> float:
    return HEAD_THRESHOLD * float(np.percentile(gray, 99))


def _otsu(gray: np.ndarray) -> float:
    return float(threshold_otsu(gray)) if gray.min() < gray.max() else float(gray.max())


# What is bright, by crop that finds the head (every crop of CROPS but "none").
HEAD_THRESHOLDS: dict[str, Callable[[np.ndarray], float]] = {
    "head": _tenth_of_99th_percentile,
    "head-otsu": _otsu,
}


def head_box(gray: np.ndarray, crop: str = "head") -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the square framing the head in an 8-bit grayscale image.

    The head is every connected region of bright pixels (above the ``crop``'s
    threshold, :data:`HEAD_THRESHOLDS`, and above 1) that is at least
    :data:`HEAD_PART` of the largest such region (so a burnt-in label or speckle
    is left out); the box is their bounding box made square around its centre
    and widened by :data:`HEAD_MARGIN` on each side, and may reach past the
    image (Pillow fills that with black). An image with nothing bright is framed whole.
    """

    height, width = gray.shape
    regions, count = ndimage.label(gray > max(1.0, HEAD_THRESHOLDS[crop](gray)))
    if count == 0:
        return 0, 0, width, height
    sizes = np.bincount(regions.ravel())[1:]
    head = np.isin(regions, 1 + np.flatnonzero(sizes >= HEAD_PART * sizes.max()))
    rows, cols = np.flatnonzero(head.any(axis=1)), np.flatnonzero(head.any(axis=0))
    half = max(rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]) * (0.5 + HEAD_MARGIN)
    centre_x, centre_y = (cols[0] + cols[-1] + 1) / 2, (rows[0] + rows[-1] + 1) / 2
    return (
        round(centre_x - half),
        round(centre_y - half),
        round(centre_x + half),
        round(centre_y + half),
    )


def crop_box(image: Image.Image, crop: str) -> tuple[int, int, int, int]:
    """The part of ``image`` (a scan from :func:`open_scan`) that :func:`decode_scan` shows the model."""
    if crop == "none":
        return 0, 0, image.width, image.height
    if crop not in HEAD_THRESHOLDS:
        raise BrainFLError(f"crop {crop!r} is not one of {', '.join(CROPS)}")
    return head_box(np.asarray(image.convert("L")), crop)
