"""Synthetic feature shift: each emulated site's images look as if from its own scanner.

With ``feature-shift`` > 0 every site split from one dataset (``partition-id``
of ``num-partitions``) gets a :class:`ScannerProfile`, drawn from ``(seed,
site)`` alone, and its training and validation images are redrawn by it in
one order: Gaussian blur, a lower resolution (area down-sampling, then
bilinear up-sampling back to the image size), a gamma curve and an intensity
scale (``255 * scale * (v / 255) ** gamma``), then additive Gaussian noise,
rounded to 8 bits. The coordinator's test set is never shifted. The shift is
synthetic: real scanners differ in more ways, and the same site's shift is
the same for every image.

A profile's unit draws do not depend on the strength, so a larger
``feature-shift`` makes every site's profile stronger in the same direction;
at 0 the images are not touched. The spatial steps are one linear operator
on each image axis (``M @ image @ M.T``, all images at once); each image's
noise comes from a generator seeded by ``(seed, site, its pixels)``, so an
image is shifted the same whether it lands in the site's training or
validation split.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from brainfl.core.files import write_atomically
from brainfl.core.logs import LOG
from brainfl.settings.run_settings import RunSettings

PROFILES_JSON = "scanner_profiles.json"
# Profile ranges at feature-shift = 1 (each scaled by the strength).
MAX_LOG2_GAMMA = 1.0  # gamma in [1/2, 2]
MAX_LOG2_SCALE = 0.5  # intensity scale in [0.71, 1.41]
MAX_NOISE = 12.0  # noise standard deviation, in 0-255 units
MAX_BLUR = 1.5 / 64  # blur sigma as a share of the image side: 1.5 px at 64 px
MAX_RESOLUTION_LOSS = 0.5  # down to half the image side
_PROFILE_TAG = 0x5CA77E  # keeps these draws apart from the other uses of ``seed``
_NOISE_TAG = 0x5CA77F


@dataclasses.dataclass(frozen=True)
class ScannerProfile:
    """One emulated site's scanner: what its images go through, in :func:`shift_images`' order."""

    site: int
    strength: float
    seed: int
    blur: float  # Gaussian sigma as a share of the image side
    resolution: float  # share of the image side kept before up-sampling back
    gamma: float
    scale: float
    noise: float  # standard deviation of the additive noise, 0-255 units

    def blur_px(self, side: int) -> float:
        """The blur's sigma in pixels of an image ``side`` pixels wide."""
        return self.blur * side

    def low_side(self, side: int) -> int:
        """The side, in pixels, an image ``side`` pixels wide is down-sampled to."""
        return max(2, min(side, round(side * self.resolution)))

    def describe(self, side: int) -> str:
        """One line: the site's synthetic scanner and what it does to images ``side`` pixels wide."""
        return (
            f"site {self.site}: synthetic scanner profile "
            f"(feature-shift={self.strength:g}, seed {self.seed}): "
            f"blur sigma {self.blur_px(side):.2f} px, resolution {self.low_side(side)}/{side} px, "
            f"gamma {self.gamma:.3f}, intensity x{self.scale:.3f}, noise sd {self.noise:.2f}/255"
        )

    def as_record(self, side: int) -> dict[str, float | int]:
        """The profile as JSON-ready numbers, with the pixel values at ``side``."""
        return {
            **dataclasses.asdict(self),
            "blur_sigma_px": round(self.blur_px(side), 4),
            "resolution_px": self.low_side(side),
        }


def scanner_profile(seed: int, site: int, strength: float) -> ScannerProfile:
    """Site ``site``'s profile at ``strength`` in [0, 1]; the unit draws depend on ``(seed, site)`` only."""
    signed, magnitude = np.random.default_rng([_PROFILE_TAG, seed, site]).random((2, 3))
    gamma_draw, scale_draw = 2 * signed[:2] - 1
    blur_draw, resolution_draw, noise_draw = magnitude
    return ScannerProfile(
        site=site,
        strength=strength,
        seed=seed,
        blur=float(strength * MAX_BLUR * blur_draw),
        resolution=float(1 - strength * MAX_RESOLUTION_LOSS * resolution_draw),
        gamma=float(2 ** (strength * MAX_LOG2_GAMMA * gamma_draw)),
        scale=float(2 ** (strength * MAX_LOG2_SCALE * scale_draw)),
        noise=float(strength * MAX_NOISE * noise_draw),
    )


def _area_downsample(side: int, low: int) -> np.ndarray:
    """``low x side``: each output pixel the mean of the input it covers (fractional overlaps)."""
    edges = np.arange(low + 1) * side / low
    starts, ends = edges[:-1, None], edges[1:, None]
    pixels = np.arange(side)[None, :]
    overlap = np.clip(np.minimum(ends, pixels + 1) - np.maximum(starts, pixels), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _linear_upsample(low: int, side: int) -> np.ndarray:
    """``side x low``: bilinear interpolation between pixel centres, edges held."""
    position = np.clip((np.arange(side) + 0.5) * low / side - 0.5, 0, low - 1)
    left = np.floor(position).astype(int)
    right = np.minimum(left + 1, low - 1)
    weight = position - left
    matrix = np.zeros((side, low))
    np.add.at(matrix, (np.arange(side), left), 1 - weight)
    np.add.at(matrix, (np.arange(side), right), weight)
    return matrix


def _gaussian(side: int, sigma: float) -> np.ndarray:
    """``side x side`` Gaussian blur; each row renormalised at the border, so flat stays flat."""
    if sigma <= 0:
        return np.eye(side)
    distance = np.arange(side)[:, None] - np.arange(side)[None, :]
    matrix = np.exp(-0.5 * (distance / sigma) ** 2) * (np.abs(distance) <= np.ceil(4 * sigma))
    return matrix / matrix.sum(axis=1, keepdims=True)


@functools.lru_cache(maxsize=32)
def spatial_operator(side: int, blur_px: float, low: int) -> np.ndarray:
    """The blur and the resolution loss as one ``side x side`` matrix on each image axis."""
    resample = _linear_upsample(low, side) @ _area_downsample(side, low) if low < side else np.eye(side)
    return (resample @ _gaussian(side, blur_px)).astype(np.float32)


def _noise(images: np.ndarray, profile: ScannerProfile) -> np.ndarray:
    """Standard normal noise per image, one plane shared by its channels, keyed by its pixels."""
    noise = np.empty((*images.shape[:3], 1), dtype=np.float32)
    for i, image in enumerate(images):
        key = int.from_bytes(hashlib.blake2b(image.tobytes(), digest_size=8).digest(), "little")
        rng = np.random.default_rng([_NOISE_TAG, profile.seed, profile.site, key])
        noise[i] = rng.standard_normal(noise.shape[1:], dtype=np.float32)
    return noise


def shift_images(images: np.ndarray, profile: ScannerProfile) -> np.ndarray:
    """``images`` (uint8, N x S x S x C) as the profile's scanner would give them; a new array.

    At strength 0 the same array is returned, untouched.
    """
    if profile.strength == 0 or len(images) == 0:
        return images
    side = images.shape[1]
    values = images.astype(np.float32)
    matrix = spatial_operator(side, profile.blur_px(side), profile.low_side(side))
    if not np.array_equal(matrix, np.eye(side, dtype=np.float32)):
        planes = values.transpose(0, 3, 1, 2)  # N, C, row, column
        values = (matrix @ planes @ matrix.T).transpose(0, 2, 3, 1)
    if profile.gamma != 1 or profile.scale != 1:
        values = 255 * profile.scale * (np.clip(values, 0, 255) / 255) ** profile.gamma
    if profile.noise > 0:
        values = values + profile.noise * _noise(images, profile)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


@functools.cache
def log_profile(profile: ScannerProfile, side: int) -> None:
    """Log a site's profile once per process (a site's data is loaded for every message)."""
    LOG.info("%s", profile.describe(side))


def write_profiles(output_dir: Path, settings: RunSettings, sites: Iterable[int]) -> None:
    """With ``feature-shift`` > 0, record the sites' synthetic profiles in ``scanner_profiles.json``."""
    if not settings.data.feature_shift:
        return
    sites = sorted(sites)
    record = {
        "synthetic": True,
        "feature-shift": settings.data.feature_shift,
        "seed": settings.seed,
        "image-size": settings.model.image_size,
        "order": "blur, resolution, gamma and intensity, noise",
        "sites": [
            scanner_profile(settings.seed, site, settings.data.feature_shift).as_record(
                settings.model.image_size
            )
            for site in sites
        ],
    }
    text = json.dumps(record, indent=2) + "\n"
    write_atomically(output_dir / PROFILES_JSON, lambda handle: handle.write(text.encode()))
    LOG.info("synthetic feature shift %g: site profiles in %s", settings.data.feature_shift, PROFILES_JSON)
