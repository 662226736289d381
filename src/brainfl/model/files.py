"""Model files: the one place that saves, loads and checks brainfl ``.keras`` models.

A model file carries its own metadata (``brainfl.json`` inside the archive:
model name, class names, image size, channels, how a scan is framed
(``crop``: ``head``, or ``none`` for files written before scans were cropped
to the head), optionally the round, the temperature its probabilities are
scaled by (``temperature``, 1 when absent; see :mod:`brainfl.evaluation.calibration`), the
probability ``notumor`` must reach to be predicted (``notumor_threshold``, 0 when absent: plain
argmax; see :mod:`brainfl.model.outputs`) and, for a model re-estimated on a hospital's own scans,
what it was adapted on (``adapted``, :mod:`brainfl.inference.adaptation`)), so
the file alone says what its outputs mean and how to preprocess an image for
it. Files are written to a temporary name and renamed, so a crash never
leaves a half-written checkpoint. A file without the metadata is accepted
when a ``run_config.json`` with ``class-names`` lies beside it.

TensorFlow (Keras, and the modules that import it) is imported inside the
functions that need it, so that reading a file's metadata and the commands
that stop on a user mistake start and fail quickly, before TensorFlow loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brainfl.core.errors import BrainFLError
from brainfl.data.loading import decode_image
from brainfl.model.outputs import notumor_rule, predicted_classes, scale_probabilities
from brainfl.settings.run_settings import CROPS, RunSettings, settings_from_config

MODEL_METADATA = "brainfl.json"
RUN_CONFIG = "run_config.json"
CHECKPOINT = "checkpoint.keras"
FINAL_MODEL = "final_model.keras"


def model_metadata(
    model_name: str,
    class_names: Sequence[str],
    image_size: int,
    channels: int,
    crop: str = "head",
    **extra: Any,
) -> dict[str, Any]:
    """The metadata stored with a model: what it is, what its outputs mean, what it takes
    (``crop``: how :func:`brainfl.data.decoding.decode_scan` frames its scans)."""
    return {
        "model": model_name,
        "class_names": list(class_names),
        "image_size": int(image_size),
        "channels": int(channels),
        "crop": crop,
        **extra,
    }


def run_model_metadata(settings: RunSettings, class_names: Sequence[str], **extra: Any) -> dict[str, Any]:
    """:func:`model_metadata` of a model the run's settings build and decode for."""
    model = settings.model
    return model_metadata(model.name, class_names, model.image_size, model.channels, model.crop, **extra)


def save_model(model: Any, path: Path, metadata: Mapping[str, Any]) -> None:
    """Save a Keras model with its metadata, via a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(MODEL_METADATA, json.dumps(dict(metadata), indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def stored_metadata(path: Path) -> dict[str, Any]:
    """The metadata stored inside a ``.keras`` file (KeyError when there is none)."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(MODEL_METADATA))


def class_names_in(config: Mapping[str, Any]) -> list[str]:
    """The class names a run config records: the setting's ``"a,b,c"``, or a list (older runs)."""
    names = config.get("class-names") or []
    if isinstance(names, str):
        names = names.split(",")
    return [str(name).strip() for name in names if str(name).strip()]


def _metadata_beside(path: Path) -> dict[str, Any] | None:
    """Metadata from the ``run_config.json`` next to a model file, if there is one."""
    config_path = path.parent / RUN_CONFIG
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        raise BrainFLError(f"cannot read {config_path} (expected the run's settings as JSON)") from None
    names = class_names_in(config) if isinstance(config, dict) else []
    if not names:
        raise BrainFLError(f"{config_path} has no 'class-names': cannot name the classes of {path}")
    settings = settings_from_config({**config, "class-names": ",".join(names)})
    # (models without metadata predate it, and scans cropped to the head)
    return model_metadata(
        settings.model.name, names, settings.model.image_size, settings.model.channels, crop="none"
    )


def read_metadata(path: Path) -> dict[str, Any]:
    """The model's metadata (stored in the file, or the run config beside it), checked."""
    try:
        metadata = stored_metadata(path)
    except zipfile.BadZipFile:
        raise BrainFLError(f"model {path} is not a Keras .keras file") from None
    except KeyError:
        metadata = _metadata_beside(path)
        if metadata is None:
            raise BrainFLError(
                f"model {path} carries no brainfl metadata ({MODEL_METADATA}) and has no run_config.json "
                "beside it: save models with brainfl"
            ) from None
    except (OSError, ValueError) as error:
        raise BrainFLError(f"cannot read brainfl metadata of model {path}: {error}") from None
    names = metadata.get("class_names")
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) for n in names)
        or not isinstance(metadata.get("image_size"), int)
        or metadata.get("channels") not in (1, 3)
        or metadata.get("crop", "none") not in CROPS
        or not _is_temperature(metadata.get("temperature", 1.0))
        or not _is_threshold(metadata.get("notumor_threshold", 0.0))
    ):
        raise BrainFLError(
            f"model {path}: brainfl metadata needs class_names (list of names), image_size and channels "
            f"(1 or 3), crop one of {', '.join(CROPS)}, temperature a positive number and "
            f"notumor_threshold a number in [0, 1) if given, got {metadata}"
        )
    return metadata


def _is_temperature(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf


def _is_threshold(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A saved model with what it needs to be used: class names and input preprocessing."""

    path: Path
    model: Any  # keras.Model (keras is imported lazily to keep the CLI quick)
    model_name: str
    class_names: tuple[str, ...]
    image_size: int
    channels: int
    crop: str = "head"
    temperature: float = 1.0  # fitted after the run (calibrate=true); 1: the probabilities as computed
    notumor_threshold: float = 0.0  # fitted after the run (notumor-threshold); 0: plain argmax
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # as stored (or read beside it)

    def preprocess(self, path: Path | str):
        """One image file as the model's training input (uint8, S x S x C), framed as in training."""
        return decode_image(path, self.image_size, self.channels, self.crop)

    @property
    def norm(self) -> str:
        """The model's normalization layers, as the ``norm`` setting names them (group or batch)."""
        import keras

        group = any(
            isinstance(layer, keras.layers.GroupNormalization) for layer in self.model._flatten_layers()
        )
        return "group" if group else "batch"

    @property
    def standardization(self) -> str:
        """The model's intensity standardization, as the ``standardization`` setting names it."""
        from brainfl.model.standardization import standardization_of

        return standardization_of(self.model)

    def probabilities(self, inputs: Any, batch_size: int = 32) -> Any:
        """Class probabilities (N x classes) of preprocessed ``inputs``, scaled by the model's temperature:
        what ``brainfl predict``, ``brainfl evaluate`` and Grad-CAM's class choice all read."""
        from brainfl.model import training

        raw = training.predict_proba(self.model, inputs, batch_size=batch_size)
        return scale_probabilities(raw, self.temperature)

    def predicted(self, probabilities: Any) -> Any:
        """The class index per row of :meth:`probabilities` under the model's ``notumor`` threshold
        (-1: outputs not finite): what predict, evaluate and Grad-CAM call the scan."""
        return predicted_classes(probabilities, notumor_rule(self.class_names, self.notumor_threshold))


def _check_shapes(loaded: LoadedModel) -> None:
    expected = (loaded.image_size, loaded.image_size, loaded.channels)
    actual = tuple(loaded.model.input_shape[1:])
    if actual != expected:
        raise BrainFLError(
            f"model {loaded.path}: its input shape {actual} disagrees with its metadata "
            f"(image_size={loaded.image_size}, channels={loaded.channels})"
        )
    if loaded.model.output_shape[-1] != len(loaded.class_names):
        raise BrainFLError(
            f"model {loaded.path}: it has {loaded.model.output_shape[-1]} outputs but its metadata names "
            f"{len(loaded.class_names)} classes ({', '.join(loaded.class_names)})"
        )


def load_model(model_path: Path | str) -> LoadedModel:
    """Load a brainfl ``.keras`` model and check it against its metadata."""
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise BrainFLError(f"model file not found: {path}")
    metadata = read_metadata(path)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import brainfl.model.architectures  # noqa: F401  (registers the custom layers the file refers to)

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # keras raises many types for unreadable or foreign files
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise BrainFLError(
            f"cannot load model {path}: {error.__class__.__name__} {message}".strip()
        ) from None
    loaded = LoadedModel(
        path,
        model,
        str(metadata.get("model", model.name)),
        tuple(metadata["class_names"]),
        int(metadata["image_size"]),
        int(metadata["channels"]),
        str(metadata.get("crop", "none")),
        float(metadata.get("temperature", 1.0)),
        float(metadata.get("notumor_threshold", 0.0)),
        metadata,
    )
    _check_shapes(loaded)
    return loaded


class ModelWriter:
    """Writes a model's weights as a brainfl model file (the run's checkpoint and final model)."""

    def __init__(self, bundle: Any, metadata: Mapping[str, Any]) -> None:
        self.bundle = bundle  # brainfl.model.architectures.ModelBundle
        self.metadata = dict(metadata)

    def write(self, path: Path, weights: list[Any], **extra: Any) -> None:
        """Save the whole model (image to probabilities) with ``weights`` at ``path``."""
        self.bundle.trainable.set_weights(weights)
        save_model(self.bundle.inference_model(), path, {**self.metadata, **extra})

    def read_checkpoint(self, path: Path) -> tuple[int, list[Any]]:
        """(round, trainable weights) of a checkpoint written by :meth:`write`."""
        import keras

        return int(stored_metadata(path).get("round", 0)), trainable_weights(
            self.bundle, keras.models.load_model(path)
        )


def trainable_weights(bundle: Any, saved: Any) -> list[Any]:
    """The weights of ``bundle``'s trainable part in a saved whole model (image to probabilities)."""
    if bundle.extractor is not None:
        saved = saved.get_layer(bundle.trainable.name)
    return saved.get_weights()
