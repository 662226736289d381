"""Shared fixtures: tiny image folders made in the test, the real dataset and small subsets of it,
an isolated cache."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings as hypothesis_settings
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # tests reuse the benchmark helpers
from subset import make_subset  # noqa: E402 - benchmarks/ is on the path from here

# Property-based tests: few, short examples (the suite's time limit), no deadline (a first example
# imports and decodes); the example database is .hypothesis/, kept out of git.
# HYPOTHESIS_PROFILE=thorough runs many more.
hypothesis_settings.register_profile("brainfl", max_examples=40, deadline=None, print_blob=True)
hypothesis_settings.register_profile("thorough", max_examples=500, deadline=None, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "brainfl"))

REAL_DATA = (REPO_ROOT / ".." / "shared" / "data" / "brain-tumor-mri").resolve()
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test decodes into its own cache folder, never the user's."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("BRAINFL_CACHE_DIR", str(cache))
    return cache


@contextmanager
def cache_at(path: Path) -> Iterator[Path]:
    """``BRAINFL_CACHE_DIR=path`` for a block (module-scoped fixtures run before the per-test cache)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BRAINFL_CACHE_DIR", str(path))
        yield path


def write_image(path: Path, seed: int, size: int = 40, mode: str = "L") -> Path:
    """Write a random-texture image (grayscale or RGB) to ``path``."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def make_dataset(root: Path, train_per_class: int = 4, test_per_class: int = 2) -> Path:
    """A Kaggle-layout folder of random images, grayscale and RGB mixed."""
    seed = 0
    for split, count in (("Training", train_per_class), ("Testing", test_per_class)):
        for name in CLASSES:
            for i in range(count):
                seed += 1
                write_image(
                    root / split / name / f"{split[:2]}-{name}-{i}.jpg", seed, mode="RGB" if i % 2 else "L"
                )
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """4 training and 2 testing images per class."""
    return make_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The shared copy of the Kaggle dataset (tests that need it fail loudly without it)."""
    assert (REAL_DATA / "Training").is_dir(), f"real dataset missing at {REAL_DATA}"
    return REAL_DATA


@pytest.fixture(scope="session")
def real_subset(real_data, tmp_path_factory) -> Callable[[int], Path]:
    """``real_subset(n)``: a folder of symlinks to ``n`` seeded real images per class and split.

    Each size is made once per session (``benchmarks/subset.py``); runs read it as a full dataset.
    """
    made: dict[int, Path] = {}

    def subset(per_class: int) -> Path:
        if per_class not in made:
            made[per_class] = make_subset(real_data, tmp_path_factory.mktemp(f"brain-{per_class}"), per_class)
        return made[per_class]

    return subset


def run_benchmark(script: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``benchmarks/<script>`` with this interpreter; fail the test with its output if it fails."""
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / script), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture
def first_row_nan(monkeypatch) -> None:
    """Make ``training.predict_proba`` return NaN for its first row (a model broken for one scan)."""
    from brainfl.model import training

    real = training.predict_proba

    def predict_with_nan(*args, **kwargs):
        probabilities = real(*args, **kwargs)
        probabilities[0] = np.nan
        return probabilities

    monkeypatch.setattr(training, "predict_proba", predict_with_nan)


# The modules that take longest (end-to-end runs, minutes each), longest first. The README's command
# keeps this order (``--no-loadscope-reorder``; xdist would otherwise hand out the modules with the
# most tests first, and these, with one to three tests each, last): started first, they run while the
# other worker goes through the many short modules, and the two workers finish together.
SLOWEST_MODULES = (
    "test_restarts.py",
    "test_e2e.py",
    "test_faults.py",
    "test_ray_cluster.py",
    "test_rehearsal.py",
    "test_benchmarks.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run :data:`SLOWEST_MODULES` first, in that order; every other module after them, as collected."""
    rank = {name: index for index, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
