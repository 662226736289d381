"""One scan as another hospital might prepare it: the per-scan transform of ``shifted_copy.py``.

:func:`draw_shift` draws a scan's parameters from ``(seed, its path)`` alone;
:func:`shift_image` crops it tight to the head with that margin, rotates it,
changes its gamma and brightness and resizes it; :func:`shift_file` does so
for a file and saves an 8-bit grayscale PNG.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from brainfl.data.decoding import open_scan
from brainfl.data.framing import HEAD_MARGIN, head_box

# The shift's parameter ranges (each drawn uniformly, the resolution from the list).
MARGIN_RANGE = (0.0, 0.06)  # added around the head on each side, as a fraction of the head's side
ANGLE_RANGE = (-30.0, 30.0)  # rotation, degrees (counter-clockwise)
GAMMA_RANGE = (0.7, 1.4)  # exponent on values / 255
SCALE_RANGE = (0.55, 1.0)  # intensity factor: the brightest pixel lands between ~140 and 255
RESOLUTIONS = (128, 160, 192, 256, 320)  # square output sides, as public sets are exported


@dataclasses.dataclass(frozen=True)
class Shift:
    """The drawn parameters of one scan's copy (the manifest's columns after ``leak_free``)."""

    margin_left: float
    margin_top: float
    margin_right: float
    margin_bottom: float
    angle: float
    gamma: float
    scale: float
    resolution: int


def draw_shift(seed: int, source: str) -> Shift:
    """The parameters of the scan at ``source`` (its path relative to DATA), from ``(seed, source)`` only."""
    digest = int.from_bytes(hashlib.sha256(source.encode()).digest()[:16], "little")
    rng = np.random.default_rng([seed, digest])
    margins = rng.uniform(*MARGIN_RANGE, size=4)
    return Shift(
        *(float(m) for m in margins),
        angle=float(rng.uniform(*ANGLE_RANGE)),
        gamma=float(rng.uniform(*GAMMA_RANGE)),
        scale=float(rng.uniform(*SCALE_RANGE)),
        resolution=int(rng.choice(RESOLUTIONS)),
    )


def tight_box(gray: np.ndarray, shift: Shift) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)``: the head with the shift's margin on each side.

    :func:`brainfl.data.decoding.head_box` gives the square around the head widened
    by ``HEAD_MARGIN`` on every side; dividing that margin back out leaves the
    square of the head's larger side around its centre (tight along that side),
    to which each side adds its own drawn margin, so the box is seldom square.
    Pillow fills what lies outside the image with black.
    """
    left, top, right, bottom = head_box(gray, "head")
    width, height = (right - left) / (1 + 2 * HEAD_MARGIN), (bottom - top) / (1 + 2 * HEAD_MARGIN)
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    return (
        round(centre_x - width * (0.5 + shift.margin_left)),
        round(centre_y - height * (0.5 + shift.margin_top)),
        round(centre_x + width * (0.5 + shift.margin_right)),
        round(centre_y + height * (0.5 + shift.margin_bottom)),
    )


def shift_image(image: Image.Image, shift: Shift) -> Image.Image:
    """An 8-bit grayscale scan cropped, rotated, gamma-corrected, darkened and resized by ``shift``.

    In that order: :func:`tight_box`; a bilinear rotation about the centre
    keeping the size (black fill, so a tight crop may lose the skull's edge at
    the corners); ``(v / 255) ** gamma * scale``, rounded to 8 bits; a bilinear
    resize to ``resolution`` square (a non-square crop is stretched, as in a
    public set exported at one size).
    """
    image = image.crop(tight_box(np.asarray(image), shift))
    image = image.rotate(shift.angle, resample=Image.Resampling.BILINEAR, fillcolor=0)
    values = (np.asarray(image, dtype=np.float64) / 255.0) ** shift.gamma * shift.scale * 255.0
    image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    return image.resize((shift.resolution, shift.resolution), Image.Resampling.BILINEAR)


def shift_file(source: Path, target: Path, shift: Shift) -> None:
    """Decode ``source`` as 8-bit grayscale (:func:`brainfl.data.decoding.open_scan`), shift it,
    save a PNG."""
    image = shift_image(open_scan(source, "L"), shift)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, format="PNG")
