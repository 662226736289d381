"""What a site may share about a model scored on its scans: counts, never a row per scan.

A :class:`CountSummary` holds, for every (true class, predicted class, confidence
bin), how many scans fell there and their summed top-label confidence. Its size
depends on the number of classes and bins only, not on the site's scan count, and
it names no file. Yet every statistic of the metric registry that counts images
(accuracy, balanced accuracy, sensitivity, specificity, precision, F1, ECE and the
reliability table) is the same on it as on the scans themselves:
:func:`labelled_set` rebuilds a :class:`~brainfl.evaluation.registry.LabelledSet`
with one image per count, at its cell's mean confidence, and summaries of several
sites add up to the summary of their union. ROC-AUC and the loss need each scan's
probabilities and are left out (NaN). The bootstrap intervals of such a set resample
its images as :func:`brainfl.evaluation.intervals.scores_of` does any set's.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from brainfl.evaluation.registry import LabelledSet
from brainfl.model.outputs import NotumorRule


@dataclasses.dataclass(frozen=True)
class CountSummary:
    """Scans by true class, predicted class (the last column: no prediction) and confidence bin."""

    counts: np.ndarray  # (classes, classes + 1, bins) int64
    confidence: np.ndarray  # same shape: the summed top-label confidence of those scans

    def __post_init__(self) -> None:
        k = self.counts.shape[0] if self.counts.ndim == 3 else -1
        if k < 1 or self.counts.shape[1] != k + 1 or self.confidence.shape != self.counts.shape:
            raise ValueError(f"a count summary is (k, k + 1, bins) twice, got {self.counts.shape}")
        if (self.counts < 0).any():
            raise ValueError("a count summary's counts must not be negative")

    @property
    def num_classes(self) -> int:
        return self.counts.shape[0]

    @property
    def images(self) -> int:
        return int(self.counts.sum())

    def __add__(self, other: CountSummary) -> CountSummary:
        return CountSummary(self.counts + other.counts, self.confidence + other.confidence)

    def to_arrays(self) -> list[np.ndarray]:
        """The two arrays a site sends."""
        return [self.counts.astype(np.int64), self.confidence.astype(np.float64)]

    @classmethod
    def from_arrays(cls, arrays: list[np.ndarray]) -> CountSummary:
        """The summary of :meth:`to_arrays`' arrays (ValueError when they are not one)."""
        if len(arrays) != 2:
            raise ValueError(f"a count summary is 2 arrays, got {len(arrays)}")
        counts, confidence = arrays
        if not np.issubdtype(counts.dtype, np.integer):
            raise ValueError(f"a count summary's counts must be integers, got {counts.dtype}")
        return cls(counts.astype(np.int64), confidence.astype(np.float64))


def summarize(data: LabelledSet) -> CountSummary:
    """The counts of a scored set (its images' cells and confidence bins)."""
    k, n = data.k, len(data.labels)
    predicted = np.where(data.finite, data.predicted, k)
    bin_index, confidence = np.zeros(n, dtype=np.int64), np.zeros(n)
    bin_index[data.finite], confidence[data.finite] = data.bin, data.confidence
    where = (data.labels, predicted, bin_index)
    counts = np.zeros((k, k + 1, data.bins), dtype=np.int64)
    sums = np.zeros((k, k + 1, data.bins))
    np.add.at(counts, where, 1)
    np.add.at(sums, where, confidence)
    return CountSummary(counts, sums)


def labelled_set(summary: CountSummary, notumor: NotumorRule | None = None) -> LabelledSet:
    """A labelled set with the summary's counts: one image per count, at its cell's mean confidence
    (``notumor``: which class is ``notumor``, for the tumor-vs-notumor metrics)."""
    k = summary.num_classes
    cells = np.argwhere(summary.counts > 0)
    repeats = summary.counts[tuple(cells.T)]
    true, predicted, bin_index = (np.repeat(column, repeats) for column in cells.T)
    mean_confidence = summary.confidence[tuple(cells.T)] / repeats
    return LabelledSet.from_predictions(
        true,
        np.where(predicted == k, -1, predicted),
        np.repeat(mean_confidence, repeats),
        bin_index,
        k,
        summary.counts.shape[2],
        notumor,
    )
