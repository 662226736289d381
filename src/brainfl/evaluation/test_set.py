"""The server's central evaluation: a global model's scores and probabilities on the test set.

:class:`CentralEvaluator` holds the server's test set (the official
``Testing`` split, or a stratified hold-out of ``Training`` where there is
none) and its leak-free subset (Testing images with no exact or near copy in
Training). Calling it with a model's weights returns an :class:`Evaluation`:
the metrics of :func:`brainfl.evaluation.metrics.score` (with the clinical metrics and
their bootstrap intervals, :data:`brainfl.evaluation.intervals.RESAMPLES` resamples:
about 0.3 s per round for 1311 images and 4 classes on two busy CPU cores)
and the probabilities they came from, with its seconds. It writes nothing:
:mod:`brainfl.federation.recorder` does.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from brainfl.core.logs import LOG
from brainfl.data.check import leak_free_test_mask
from brainfl.data.loading import Dataset, ImageSet
from brainfl.evaluation.intervals import RESAMPLES
from brainfl.evaluation.metrics import score
from brainfl.model.process_cache import model_for, model_inputs
from brainfl.model.training import predict_proba
from brainfl.settings.run_settings import DataSettings, RunSettings, resolve_path


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One global model on the server's test set."""

    metrics: dict[str, float]
    probabilities: np.ndarray
    seconds: float = 0.0  # the evaluation's wall time


@dataclasses.dataclass(frozen=True)
class CentralTestSet:
    """What the server evaluates on: files, true labels, class names and the leak-free mask."""

    files: list[str]
    labels: np.ndarray
    class_names: tuple[str, ...]
    leak_free: np.ndarray | None
    official: bool


def leak_free_mask(data: DataSettings, dataset: Dataset) -> np.ndarray | None:
    """Which official Testing images have no exact or near copy in Training (None: no Testing split)."""
    if not dataset.test_is_official:
        return None
    mask = leak_free_test_mask(resolve_path(data.data_dir, "data-dir"), dataset.test.files)
    LOG.info("leak-free test subset: %d of %d Testing images have no copy in Training", mask.sum(), len(mask))
    return mask if mask.any() else None


class CentralEvaluator:
    """Scores global models on a test set (the coordinator's, or a pooled dataset's)."""

    def __init__(
        self,
        settings: RunSettings,
        test: ImageSet,
        class_names: tuple[str, ...],
        *,
        official: bool,
        leak_free: np.ndarray | None,
    ) -> None:
        self.bundle = model_for(settings, class_names)
        self.inputs = model_inputs(settings.model, self.bundle, test)
        self.test_set = CentralTestSet(
            files=list(test.files),
            labels=test.labels,
            class_names=tuple(class_names),
            leak_free=leak_free,
            official=official,
        )
        LOG.info(
            "central test set: %d images (%s)",
            len(self.test_set.labels),
            "the coordinator's test folder or Testing split" if official else "held-out training scans",
        )

    @classmethod
    def for_dataset(cls, settings: RunSettings, dataset: Dataset) -> CentralEvaluator:
        """The evaluator of a pooled dataset (centralized training, benchmarks): its test split,
        leak-free where no Training image copies it."""
        return cls(
            settings,
            dataset.test,
            tuple(dataset.train.class_names),
            official=dataset.test_is_official,
            leak_free=leak_free_mask(settings.data, dataset),
        )

    def __call__(self, weights: list[np.ndarray]) -> Evaluation:
        """Score the model with ``weights`` (NaN outputs count as wrong), with bootstrap intervals."""
        started = time.perf_counter()
        self.bundle.trainable.set_weights(weights)
        probabilities = predict_proba(self.bundle.trainable, self.inputs)
        test = self.test_set
        metrics = score(test.labels, probabilities, test.class_names, test.leak_free, resamples=RESAMPLES)
        return Evaluation(metrics, probabilities, time.perf_counter() - started)
