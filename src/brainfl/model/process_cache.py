"""This process's model for a run: built once per settings and classes, and a frozen base's features cached.

Simulation keeps its worker processes alive between rounds, so building the
model once per process makes a round cost one pass of training, not a
re-build. For a model with a frozen extractor (VGG-16) the features of an
image set are computed once and kept on disk in
:func:`brainfl.data.loading.default_cache_dir` (``$BRAINFL_CACHE_DIR``).
"""

from __future__ import annotations

import functools
import hashlib

import keras
import numpy as np

from brainfl.data.loading import ImageSet, default_cache_dir, write_cache
from brainfl.model.architectures import ModelBundle, build_model
from brainfl.settings.run_settings import ModelSettings, RunSettings


def _build_seeded(settings: RunSettings, class_names: tuple[str, ...]) -> ModelBundle:
    keras.utils.set_random_seed(settings.seed)
    return build_model(
        settings.model.name,
        settings.model.image_size,
        len(class_names),
        settings.model.vgg_weights,
        tuple(class_names),
        settings.model.norm,
        settings.model.augmentation,
        settings.model.standardization,
    )


@functools.lru_cache(maxsize=2)
def _build_cached(settings: RunSettings, class_names: tuple[str, ...]) -> ModelBundle:
    return _build_seeded(settings, class_names)


def model_for(settings: RunSettings, class_names: tuple[str, ...]) -> ModelBundle:
    """This process's model for the run (built once per settings and classes, seeded;
    weights are overwritten per round)."""
    return _build_cached(settings, tuple(class_names))


def initial_weights(settings: RunSettings, class_names: tuple[str, ...]) -> list[np.ndarray]:
    """Seeded initial weights of the trainable part (identical for a seed)."""
    return _build_seeded(settings, tuple(class_names)).trainable.get_weights()


def model_inputs(model: ModelSettings, bundle: ModelBundle, images: ImageSet) -> np.ndarray:
    """What the trainable model consumes for ``images``: pixels, or cached extractor features."""
    if bundle.extractor is None:
        return images.images
    digest = hashlib.blake2b(images.images.tobytes(), digest_size=12)
    digest.update("\n".join([bundle.name, model.vgg_weights, str(model.image_size)]).encode())
    path = default_cache_dir() / f"features-{bundle.name}-{digest.hexdigest()}.npy"
    if path.exists():
        return np.load(path)
    features = bundle.features(images.images)
    write_cache(path, lambda handle: np.save(handle, features))
    return features
