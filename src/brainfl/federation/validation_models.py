"""The models an evaluation-only federation scores: what the ``validate-models`` setting names.

A ``validate-models`` entry is a model file or a run folder; a run folder gives
every ``final_model.keras`` under it (the federated model, and with ``--baselines``
each site's model trained alone and the pooled model). Their metadata (classes,
input size, framing) must agree, and sets the run's classes, model and input
size (:func:`validation_settings`). Nothing here loads a model or imports Keras:
``brainfl prepare`` checks the models before any Flower process starts, and
:mod:`brainfl.federation.validation` scores them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from brainfl.core.errors import BrainFLError
from brainfl.model.files import FINAL_MODEL, read_metadata
from brainfl.settings.run_settings import EvaluationSettings, RunSettings


@dataclasses.dataclass(frozen=True)
class ModelToValidate:
    """One saved model and its name in the tables."""

    label: str
    path: Path


def models_in(folder: Path) -> list[ModelToValidate]:
    """Every final model under a run folder: its own (named after the folder) first, then the rest by path."""
    found = sorted(folder.rglob(FINAL_MODEL), key=lambda path: (path.parent != folder, str(path)))
    return [
        ModelToValidate(
            folder.name if path.parent == folder else path.parent.relative_to(folder).as_posix(), path
        )
        for path in found
    ]


def models_to_validate(evaluation: EvaluationSettings) -> list[ModelToValidate]:
    """The models the ``validate-models`` setting names, files or run folders (one line if one is missing)."""
    models: list[ModelToValidate] = []
    for entry in filter(str.strip, evaluation.validate_models.split(os.pathsep)):
        path = Path(entry).expanduser()
        if path.is_file():
            models.append(ModelToValidate(path.stem, path))
        elif path.is_dir():
            found = models_in(path)
            if not found:
                raise BrainFLError(f"setting 'validate-models': no {FINAL_MODEL} in run folder {path}")
            models += found
        else:
            raise BrainFLError(f"setting 'validate-models': {path} is neither a model file nor a run folder")
    labels = [model.label for model in models]
    return [
        dataclasses.replace(model, label=f"{model.label} ({index + 1})")
        if labels.count(model.label) > 1
        else model
        for index, model in enumerate(models)
    ]


INPUT = ("class_names", "image_size", "channels", "crop")  # what one query's models must share


def check_models(models: Sequence[ModelToValidate]) -> tuple[str, ...]:
    """The models' common class names; one line naming the first model that differs in classes or
    input, or that frames its scans otherwise than the sites do (cropped to the head)."""
    first = read_metadata(models[0].path)
    for model in models:
        metadata = read_metadata(model.path)
        if metadata.get("crop", "none") == "none":
            raise BrainFLError(
                f"setting 'validate-models': {model.path} takes uncropped scans (crop none) but sites decode "
                "them cropped to the head; score it with brainfl evaluate"
            )
        if [metadata[key] for key in INPUT] != [first[key] for key in INPUT]:
            raise BrainFLError(
                f"setting 'validate-models': {model.path} differs from {models[0].path} in its classes, "
                "input size or crop; validate them in separate runs"
            )
    return tuple(first["class_names"])


def validation_settings(settings: RunSettings, models: Sequence[ModelToValidate]) -> RunSettings:
    """``settings`` with the classes, model and input size of ``models`` (what the sites decode their
    scans for); one line when they differ."""
    class_names = check_models(models)
    metadata = read_metadata(models[0].path)
    return settings.replace(
        class_names=",".join(class_names),
        model=str(metadata["model"]),
        image_size=int(metadata["image_size"]),
    )
