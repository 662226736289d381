"""The training augmentation: named random transforms of raw 0-255 scans, active only in training.

Hospitals prepare scans differently: contrast curves, intensity
non-uniformity, blur and resolution, noise, crop and orientation. Each
transform below draws its parameters per image (seeded, restarted by
:func:`brainfl.model.training.reseed_random_layers`) and is the identity at
inference, so a saved model predicts the same with or without it.

:data:`AUGMENTATIONS` is the registry: each transform's layer, in the order
the transforms are applied (intensity, then geometry, then blur, texture and
noise, so noise also covers the background the geometry filled in), which
:data:`brainfl.model.choices.AUGMENTATION_NAMES` holds; the ``augmentation``
setting names the ones a model trains with, in any order
(:func:`brainfl.model.choices.augmentation_names` reads it without Keras).

- ``flip``: horizontal flip;
- ``gamma``: ``255 * (x / 255) ** g``, ``g`` log-uniform in ``[1 / 1.5, 1.5]``;
- ``curve``: a random monotonic intensity curve (piecewise linear over 8
  knots, random slopes) times a random gain that saturates the brightest
  pixels: contrast stretches and global histogram remaps;
- ``bias``: a smooth multiplicative bias field (linear and radial terms,
  about 0.6-1.6 across the image);
- ``rotate``, ``zoom``, ``shift``: up to 30 degrees, 10% and 8%;
- ``blur``: a per-image blend towards a Gaussian blur (sigma 1.5 px): softer
  reconstructions and upsampled low-resolution scans;
- ``texture``: a random shallow convolutional network (GIN, Ouyang et al.
  2022: four 3x3 layers, 8 channels, leaky ReLU, weights drawn afresh for each
  batch) blended into the image with a per-image weight and rescaled to the
  image's own mean and standard deviation: local contrast, sharpness and
  texture that no single filter or intensity curve gives;
- ``noise``: additive Gaussian noise, standard deviation up to 15 of 255,
  over the whole image, the black background included.

``curve``, ``bias``, ``blur``, ``texture`` and ``noise`` each change a share of the images
(:data:`CURVE_PROBABILITY` and the like); the others change every image.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import keras
import numpy as np

from brainfl.model.choices import AUGMENTATION_NAMES

AUGMENT_GAMMA = 1.5  # gamma drawn from [1/1.5, 1.5]
AUGMENT_ROTATION = 30 / 360  # up to +-30 degrees
CURVE_KNOTS = 8
CURVE_SPREAD = 0.7  # log-slope spread of the intensity curve's pieces
CURVE_GAIN = 1.4  # gain drawn from [1, 1.4] before clipping at 255
BIAS_STRENGTH = 0.4  # the log-field's linear term, drawn from [-0.4, 0.4]
BLUR_SIGMA = 1.5  # pixels
NOISE_SIGMA = 15.0  # of 255
TEXTURE_LAYERS = 4
TEXTURE_WIDTH = 8  # channels of the random network's hidden layers
# The share of training images each transform changes (as nnU-Net's augmentation applies each
# transform to a share of samples): every image also passes through unchanged ones, so the model
# keeps seeing scans as this federation's hospitals prepare them.
CURVE_PROBABILITY = 0.3
BIAS_PROBABILITY = 0.3
BLUR_PROBABILITY = 0.2
NOISE_PROBABILITY = 0.15
TEXTURE_PROBABILITY = 0.5


class _PerImageRandom(keras.layers.Layer):
    """A training-only random transform of raw 0-255 pixels with per-image draws from one seed,
    applied to each image with ``probability`` (the others pass unchanged)."""

    def __init__(self, seed: int | None = None, probability: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed = seed
        self.probability = probability
        self.seed_generator = keras.random.SeedGenerator(seed)

    def uniform(self, inputs, low: float, high: float, shape: tuple | None = None):
        """Draws in ``[low, high)`` per image: shape ``(batch, 1, 1, 1)`` unless ``shape`` follows batch."""
        shape = (keras.ops.shape(inputs)[0], *(shape or (1, 1, 1)))
        return keras.random.uniform(shape, low, high, dtype=inputs.dtype, seed=self.seed_generator)

    def call(self, inputs, training: bool = False):
        if not training:
            return inputs
        changed = keras.ops.clip(self.transform(inputs), 0.0, 255.0)
        if self.probability >= 1.0:
            return changed
        chosen = self.uniform(inputs, 0.0, 1.0) < self.probability
        return keras.ops.where(chosen, changed, inputs)

    def transform(self, inputs):
        raise NotImplementedError

    def get_config(self) -> dict:
        return {**super().get_config(), "seed": self.seed, "probability": self.probability}


@keras.saving.register_keras_serializable(package="brainfl")
class RandomGamma(_PerImageRandom):
    """``255 * (x / 255) ** g``, ``g`` log-uniform in ``[1 / factor, factor]`` per image."""

    def __init__(self, factor: float = AUGMENT_GAMMA, seed: int | None = None, **kwargs) -> None:
        super().__init__(seed, **kwargs)
        self.factor = factor

    def transform(self, inputs):
        spread = float(np.log(self.factor))
        exponent = keras.ops.exp(self.uniform(inputs, -spread, spread))
        return 255.0 * keras.ops.power(keras.ops.clip(inputs / 255.0, 0.0, 1.0), exponent)

    def get_config(self) -> dict:
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="brainfl")
class RandomIntensityCurve(_PerImageRandom):
    """A random monotonic curve per image: ``knots`` linear pieces whose slopes are ``exp(spread * u)``
    (``u`` uniform in [-1, 1]) normalized to map 0 to 0 and 255 to 255, times a gain in ``[1, gain]``.

    The curve is a sum of ramps, ``sum_k slope_k * clip(knots * x / 255 - k, 0, 1)``, so it needs no
    lookup table; monotonic, it keeps the order of intensities as every global remap does.
    """

    def __init__(
        self,
        knots: int = CURVE_KNOTS,
        spread: float = CURVE_SPREAD,
        gain: float = CURVE_GAIN,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(seed, **kwargs)
        self.knots, self.spread, self.gain = knots, spread, gain

    def transform(self, inputs):
        slopes = keras.ops.exp(self.spread * self.uniform(inputs, -1.0, 1.0, (1, 1, 1, self.knots)))
        slopes = slopes / keras.ops.sum(slopes, axis=-1, keepdims=True)
        steps = keras.ops.arange(self.knots, dtype=inputs.dtype)
        ramps = keras.ops.clip(keras.ops.expand_dims(inputs, -1) * (self.knots / 255.0) - steps, 0.0, 1.0)
        curve = keras.ops.sum(ramps * slopes, axis=-1)  # ramps: (batch, h, w, channels, knots)
        return 255.0 * self.uniform(inputs, 1.0, self.gain) * curve

    def get_config(self) -> dict:
        return {**super().get_config(), "knots": self.knots, "spread": self.spread, "gain": self.gain}


@keras.saving.register_keras_serializable(package="brainfl")
class RandomBiasField(_PerImageRandom):
    """A smooth multiplicative field per image: ``exp(a * (cos t * u + sin t * v) + b * (u^2 + v^2 - 2/3))``
    over coordinates ``u, v`` in [-1, 1], ``a`` in ``[-strength, strength]``, ``b`` in half that range."""

    def __init__(self, strength: float = BIAS_STRENGTH, seed: int | None = None, **kwargs) -> None:
        super().__init__(seed, **kwargs)
        self.strength = strength

    def transform(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        v = keras.ops.reshape(keras.ops.linspace(-1.0, 1.0, height), (1, height, 1, 1))
        u = keras.ops.reshape(keras.ops.linspace(-1.0, 1.0, width), (1, 1, width, 1))
        v, u = keras.ops.cast(v, inputs.dtype), keras.ops.cast(u, inputs.dtype)
        angle = self.uniform(inputs, 0.0, 2 * np.pi)
        linear = self.uniform(inputs, -self.strength, self.strength)
        radial = self.uniform(inputs, -self.strength / 2, self.strength / 2)
        log_field = linear * (keras.ops.cos(angle) * u + keras.ops.sin(angle) * v)
        log_field = log_field + radial * (u * u + v * v - 2.0 / 3.0)
        return inputs * keras.ops.exp(log_field)

    def get_config(self) -> dict:
        return {**super().get_config(), "strength": self.strength}


def gaussian_kernel(sigma: float, channels: int) -> np.ndarray:
    """A normalized 2-D Gaussian as a depthwise kernel ``(size, size, channels, 1)``,
    ``size = 2 * ceil(2 * sigma) + 1``."""
    radius = int(np.ceil(2 * sigma))
    line = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    square = np.outer(line, line) / np.outer(line, line).sum()
    return np.repeat(square[:, :, None, None], channels, axis=2).astype("float32")


@keras.saving.register_keras_serializable(package="brainfl")
class RandomBlur(_PerImageRandom):
    """``x + w * (blur(x) - x)``, ``w`` uniform in [0, 1] per image, ``blur`` a Gaussian of ``sigma`` px."""

    def __init__(self, sigma: float = BLUR_SIGMA, seed: int | None = None, **kwargs) -> None:
        super().__init__(seed, **kwargs)
        self.sigma = sigma

    def transform(self, inputs):
        kernel = gaussian_kernel(self.sigma, inputs.shape[-1])
        kernel = keras.ops.convert_to_tensor(kernel, dtype=inputs.dtype)
        blurred = keras.ops.depthwise_conv(inputs, kernel, padding="same")
        return inputs + self.uniform(inputs, 0.0, 1.0) * (blurred - inputs)

    def get_config(self) -> dict:
        return {**super().get_config(), "sigma": self.sigma}


@keras.saving.register_keras_serializable(package="brainfl")
class RandomNoise(_PerImageRandom):
    """Additive Gaussian noise, its standard deviation uniform in ``[0, sigma]`` per image."""

    def __init__(self, sigma: float = NOISE_SIGMA, seed: int | None = None, **kwargs) -> None:
        super().__init__(seed, **kwargs)
        self.sigma = sigma

    def transform(self, inputs):
        noise = keras.random.normal(keras.ops.shape(inputs), dtype=inputs.dtype, seed=self.seed_generator)
        return inputs + self.uniform(inputs, 0.0, self.sigma) * noise

    def get_config(self) -> dict:
        return {**super().get_config(), "sigma": self.sigma}


@keras.saving.register_keras_serializable(package="brainfl")
class RandomTexture(_PerImageRandom):
    """``x + w * (g(x) - x)``: ``g`` a random convolutional network of ``layers`` 3x3 layers
    (``width`` hidden channels, leaky ReLU between, normal weights scaled by 1 / sqrt(fan-in), normal biases,
    drawn for each batch), its output given each image's own mean and standard deviation and the
    sign that keeps it positively correlated with the image (bright tissue stays bright);
    ``w`` uniform in [0, 1] per image (GIN, Ouyang et al. 2022)."""

    def __init__(
        self, layers: int = TEXTURE_LAYERS, width: int = TEXTURE_WIDTH, seed: int | None = None, **kwargs
    ) -> None:
        super().__init__(seed, **kwargs)
        self.layers, self.width = layers, width

    def random_network(self, x):
        channels = x.shape[-1]
        widths = [channels, *[self.width] * (self.layers - 1), channels]
        for depth, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
            kernel = keras.random.normal((3, 3, fan_in, fan_out), dtype=x.dtype, seed=self.seed_generator)
            bias = keras.random.normal((fan_out,), dtype=x.dtype, seed=self.seed_generator)
            x = keras.ops.conv(x, kernel / np.sqrt(9.0 * fan_in), padding="same") + bias
            if depth < self.layers - 1:
                x = keras.ops.leaky_relu(x, 0.2)
        return x

    def transform(self, inputs):
        axes = (1, 2, 3)
        mean = keras.ops.mean(inputs, axis=axes, keepdims=True)
        std = keras.ops.std(inputs, axis=axes, keepdims=True)
        texture = self.random_network(inputs / 255.0)
        texture = texture - keras.ops.mean(texture, axis=axes, keepdims=True)
        texture = texture / (keras.ops.std(texture, axis=axes, keepdims=True) + 1e-6)
        sign = keras.ops.sign(keras.ops.mean(texture * (inputs - mean), axis=axes, keepdims=True))
        texture = mean + std * keras.ops.where(sign < 0, -texture, texture)
        return inputs + self.uniform(inputs, 0.0, 1.0) * (texture - inputs)

    def get_config(self) -> dict:
        return {**super().get_config(), "layers": self.layers, "width": self.width}


# Nearest-neighbour resampling: bilinear resampling blurs every training image,
# so BatchNorm learned a variance ~19% below that of sharp test images, which
# cost 5 points of test accuracy (0.900 vs 0.950 with re-estimated statistics).
_RESAMPLE = {"fill_mode": "constant", "interpolation": "nearest"}

# name -> the layer's factory.
_LAYERS: dict[str, Callable[[], keras.layers.Layer]] = {
    "flip": lambda: keras.layers.RandomFlip("horizontal", name="aug_flip"),
    "gamma": lambda: RandomGamma(AUGMENT_GAMMA, name="aug_gamma"),
    "curve": lambda: RandomIntensityCurve(probability=CURVE_PROBABILITY, name="aug_curve"),
    "bias": lambda: RandomBiasField(probability=BIAS_PROBABILITY, name="aug_bias"),
    "rotate": lambda: keras.layers.RandomRotation(AUGMENT_ROTATION, name="aug_rotate", **_RESAMPLE),
    "zoom": lambda: keras.layers.RandomZoom(0.1, name="aug_zoom", **_RESAMPLE),
    "shift": lambda: keras.layers.RandomTranslation(0.08, 0.08, name="aug_shift", **_RESAMPLE),
    "blur": lambda: RandomBlur(probability=BLUR_PROBABILITY, name="aug_blur"),
    "texture": lambda: RandomTexture(probability=TEXTURE_PROBABILITY, name="aug_texture"),
    "noise": lambda: RandomNoise(probability=NOISE_PROBABILITY, name="aug_noise"),
}
if set(_LAYERS) != set(AUGMENTATION_NAMES):  # a transform named without a layer, or the reverse
    raise ImportError(f"augmentation layers {sorted(_LAYERS)} differ from the names {AUGMENTATION_NAMES}")
# name -> the layer's factory, in the order the transforms are applied.
AUGMENTATIONS = {name: _LAYERS[name] for name in AUGMENTATION_NAMES}


def augment(x, names: tuple[str, ...]):
    """``x`` through the named transforms' layers, in the registry's order."""
    for name in names:
        x = AUGMENTATIONS[name]()(x)
    return x
