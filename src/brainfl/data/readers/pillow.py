"""JPEG, PNG, BMP and TIFF through Pillow: 8-bit grayscale, RGB and palette as stored, high-bit windowed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from brainfl.core.errors import BrainFLError
from brainfl.data.readers import ScanReader
from brainfl.data.windowing import check_pixels, window_to_uint8

# Pillow modes holding more than 8 bits per pixel (grayscale): windowed, never clipped.
HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def open_pillow(path: Path) -> Image.Image:
    """The image at full size, 8 bits per channel (high-bit grayscale windowed)."""
    try:
        with Image.open(path) as image:
            check_pixels(path, image.width, image.height)
            if image.format == "TIFF" and getattr(image, "n_frames", 1) > 1:
                raise BrainFLError(f"multi-frame TIFF ({image.n_frames} frames) not supported: {path}")
            if image.mode in HIGH_BIT_MODES:
                image = Image.fromarray(window_to_uint8(np.asarray(image)), "L")
            return image.copy()
    except Image.DecompressionBombError:
        raise BrainFLError(
            f"image too large (over Pillow's limit of {Image.MAX_IMAGE_PIXELS} pixels, "
            f"a possible decompression bomb): {path}"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
        raise BrainFLError(f"cannot decode image {path}: {error.__class__.__name__}") from None


READER = ScanReader(
    name="pillow",
    suffixes=frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}),
    open=open_pillow,
)
