"""Grad-CAM heatmaps of a saved brainfl model, overlaid on the original scan.

The model is split into a feature-map part and the rest. For a model whose
convolutions are its own layers (the ``cnn``), the feature map is the output
of its last convolutional stage: the last layer with a spatial (4-D) output
that is not a pooling layer. For ``vgg16`` it is the output of the nested
Keras ``vgg16`` base inside ``vgg16_extractor`` (after ``vgg_preprocess``).
The gradient of the class probability with respect to the feature map,
averaged per channel, weights the channels; the weighted sum, after a ReLU and
normalization to [0, 1], is resized to the original image's size and drawn
over it with a colormap. The functions that write overlay files take a
:class:`brainfl.model.files.LoadedModel`, so the image is preprocessed exactly
as the model was trained.

Keras and TensorFlow are imported inside the functions that run the model, so
that importing this module (the report, ``brainfl predict``) loads them only
when a heat map is drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from brainfl.core.errors import BrainFLError
from brainfl.core.files import write_atomically
from brainfl.data.decoding import open_scan
from brainfl.data.framing import crop_box
from brainfl.model.files import LoadedModel

COLORMAP = "jet"
ALPHA = 0.4
BATCH_SIZE = 32  # images per Grad-CAM pass when writing overlays

Stage = Callable[[object], object]


def feature_layer(model):
    """The layer whose output Grad-CAM explains: the last spatial, non-pooling layer of ``model``."""
    import keras

    pooling = (
        keras.layers.MaxPooling2D,
        keras.layers.AveragePooling2D,
        keras.layers.GlobalAveragePooling2D,
        keras.layers.GlobalMaxPooling2D,
    )
    candidates = [
        layer
        for layer in model.layers
        if not isinstance(layer, (keras.layers.InputLayer, keras.Model, *pooling))
        and len(layer.output.shape) == 4
    ]
    if not candidates:
        raise BrainFLError(
            f"Grad-CAM: model '{model.name}' has no convolutional feature map "
            "(expected a cnn or a model with a 'vgg16_extractor')"
        )
    return candidates[-1]


def split_model(model) -> tuple[Stage, Stage]:
    """``(features, rest)``: image batch -> last conv feature maps -> class probabilities (inference mode)."""
    import keras

    names = {layer.name for layer in model.layers}
    if "vgg16_extractor" in names:  # vgg16: preprocess + VGG-16 base, then vgg_pool + head
        extractor = model.get_layer("vgg16_extractor")
        preprocess = extractor.get_layer("vgg_preprocess")
        base = extractor.get_layer("vgg16")
        vgg_pool = extractor.get_layer("vgg_pool")
        head = model.get_layer("vgg16_head") if "vgg16_head" in names else model.layers[-1]

        def vgg_features(images):
            return base(preprocess(images), training=False)

        def vgg_rest(feature_maps):
            return head(vgg_pool(feature_maps), training=False)

        return vgg_features, vgg_rest
    layer = feature_layer(model)  # cnn: its convolutions are its own layers
    features = keras.Model(model.input, layer.output, name="gradcam_features")
    rest = keras.Model(layer.output, model.output, name="gradcam_rest")
    # training=False matters: the augmentation layers would otherwise transform the image
    return (lambda images: features(images, training=False)), (lambda maps: rest(maps, training=False))


def gradcam_heatmaps(model, images: np.ndarray, class_indices: np.ndarray | None = None) -> np.ndarray:
    """Grad-CAM maps in [0, 1] (N x h x w, the feature-map grid) for ``class_indices``.

    ``images`` are model inputs (N x S x S x C, 0-255); ``class_indices``
    defaults to each image's predicted class.
    """
    import tensorflow as tf

    features, rest = split_model(model)
    inputs = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    feature_maps = features(inputs)
    with tf.GradientTape() as tape:
        tape.watch(feature_maps)
        probabilities = rest(feature_maps)
        if class_indices is None:
            class_indices = tf.argmax(probabilities, axis=1).numpy()
        chosen = tf.gather(probabilities, np.asarray(class_indices, dtype=np.int64), axis=1, batch_dims=1)
    gradients = tape.gradient(chosen, feature_maps)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(weights * feature_maps, axis=-1)).numpy()
    peaks = cams.max(axis=(1, 2), keepdims=True)
    return np.where(peaks > 0, cams / np.where(peaks > 0, peaks, 1.0), 0.0).astype(np.float32)


def overlay(original: Image.Image, heatmap: np.ndarray, crop: str, alpha: float = ALPHA) -> Image.Image:
    """The original image (as RGB, its own size) with ``heatmap`` colored over the part the model saw.

    The heatmap covers the image's :func:`brainfl.data.decoding.crop_box` (the
    head, for models that crop to it), resized to that box.
    """

    base = np.asarray(original.convert("RGB"), dtype=np.float32)
    left, top, right, bottom = crop_box(original, crop)
    resized = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(
        (right - left, bottom - top), Image.Resampling.BILINEAR
    )
    canvas = Image.new("F", original.size, 0.0)
    canvas.paste(resized, (left, top))  # (the parts of the box outside the image fall away)
    values = np.clip(np.asarray(canvas), 0.0, 1.0)
    colored = matplotlib.colormaps[COLORMAP](values)[..., :3] * 255.0
    blended = (1.0 - alpha) * base + alpha * colored
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), mode="RGB")


def open_original(path: Path | str) -> Image.Image:
    """The scan at full size as an 8-bit image (DICOM and high-bit images windowed as for the model)."""
    return open_scan(path)


def save_gradcam(
    loaded: LoadedModel, image_path: Path | str, out_path: Path | str, class_index: int | None = None
) -> Path:
    """Write the Grad-CAM overlay of one image file (PNG, the file's size) for ``class_index``.

    The image is preprocessed as the model was trained (``loaded.preprocess``);
    ``class_index`` defaults to the class predicted as ``brainfl predict`` calls it
    (:meth:`~brainfl.model.files.LoadedModel.predicted`, the model's ``notumor`` threshold applied).
    """
    inputs = loaded.preprocess(image_path)[np.newaxis]
    if class_index is None:
        class_index = int(loaded.predicted(loaded.probabilities(inputs))[0])
        if class_index < 0:
            raise BrainFLError(f"Grad-CAM: the model's outputs for {image_path} are not finite (no class)")
    heatmap = gradcam_heatmaps(loaded.model, inputs, np.asarray([class_index]))[0]
    out_path = Path(out_path)
    return _save_png(overlay(open_original(image_path), heatmap, loaded.crop), out_path)


def _save_png(image: Image.Image, path: Path) -> Path:
    write_atomically(path, lambda handle: image.save(handle, format="PNG"))
    return path


def gradcam_names(files: Sequence[Path]) -> list[str]:
    """``<stem>_gradcam.png`` per file, numbered where two files share a stem."""
    names: list[str] = []
    used: set[str] = set()
    for path in files:
        name, n = f"{path.stem}_gradcam.png", 1
        while name in used:
            n += 1
            name = f"{path.stem}_{n}_gradcam.png"
        used.add(name)
        names.append(name)
    return names


def write_gradcams(
    loaded: LoadedModel,
    files: Sequence[Path],
    inputs: np.ndarray,
    class_indices: Sequence[int] | np.ndarray,
    out_dir: Path,
    names: Sequence[str] | None = None,
) -> list[Path]:
    """Grad-CAM overlays of ``files`` for ``class_indices``, as PNGs in ``out_dir``.

    ``inputs`` are the files preprocessed by ``loaded.preprocess``. Each class
    index must be a class of the model (not the ``-1`` that
    :func:`brainfl.model.outputs.predicted_classes` gives a non-finite output);
    ``names`` are the PNG file names (default :func:`gradcam_names`).
    """
    class_indices = np.asarray(class_indices, dtype=np.int64)
    if ((class_indices < 0) | (class_indices >= len(loaded.class_names))).any():
        raise ValueError(f"Grad-CAM class indices must be 0..{len(loaded.class_names) - 1}")
    out_dir = Path(out_dir).expanduser()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BrainFLError(f"Grad-CAM: cannot create folder {out_dir}: {error.strerror}") from None
    written: list[Path] = []
    names = list(names) if names is not None else gradcam_names(files)
    for start in range(0, len(files), BATCH_SIZE):
        end = start + BATCH_SIZE
        heatmaps = gradcam_heatmaps(loaded.model, inputs[start:end], class_indices[start:end])
        for path, name, heatmap in zip(files[start:end], names[start:end], heatmaps, strict=True):
            written.append(_save_png(overlay(open_original(path), heatmap, loaded.crop), out_dir / name))
    return written
