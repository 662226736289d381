"""What the model settings can name, known without Keras: the augmentation's transforms, VGG-16 weights.

``brainfl prepare`` checks these settings before any Flower process starts,
and without TensorFlow, which :mod:`brainfl.model.augmentation` and
:mod:`brainfl.model.architectures` import.

:data:`AUGMENTATION_NAMES` are the transforms of the ``augmentation`` setting
in the order they are applied (intensity, then geometry, then blur, texture and noise;
:mod:`brainfl.model.augmentation` describes each); the setting names the ones
a model trains with, in any order. :data:`DEFAULT_AUGMENTATION` is every
transform and :data:`GEOMETRY_AND_GAMMA` the earlier recipe (flip, gamma,
rotation, zoom, shift), which builds exactly the layers it built.
"""

from __future__ import annotations

from pathlib import Path

from brainfl.core.errors import BrainFLError
from brainfl.settings.run_settings import ModelSettings

AUGMENTATION_NAMES = ("flip", "gamma", "curve", "bias", "rotate", "zoom", "shift", "blur", "texture", "noise")
GEOMETRY_AND_GAMMA = "flip,gamma,rotate,zoom,shift"
DEFAULT_AUGMENTATION = ",".join(AUGMENTATION_NAMES)


def augmentation_names(value: str) -> tuple[str, ...]:
    """The transforms a comma-separated ``augmentation`` setting names, in the order they are applied
    (``none`` or empty: none); raises :class:`BrainFLError` naming an unknown one."""
    names = {name.strip() for name in value.split(",")} - {"", "none"}
    unknown = sorted(names - set(AUGMENTATION_NAMES))
    if unknown:
        raise BrainFLError(
            f"setting 'augmentation': unknown transform '{unknown[0]}' "
            f"(choose from: {', '.join(AUGMENTATION_NAMES)}, or none)"
        )
    return tuple(name for name in AUGMENTATION_NAMES if name in names)


def check_vgg_weights(model: ModelSettings) -> None:
    """``vgg-weights`` must be ``none``, ``imagenet`` or an existing file (checked before Flower starts)."""
    value = model.vgg_weights
    if value in ("", "none", "imagenet") or Path(value).expanduser().is_file():
        return
    raise BrainFLError(f"setting 'vgg-weights'={value!r}: not none, imagenet or an existing weights file")
