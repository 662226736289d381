"""Images per second of the app's training, evaluation and precise BN against a tight loop of the same model.

In one process, on the run's real training images held in memory, this
times each of the app's steps and a tight loop over the same model and
images, one after the other, after a warm-up call of each (tracing left out):

- **training**: :func:`brainfl.model.training.train` (the sites' and centralized
  training: its tf.data pipeline, shuffling, AdamW, augmentation) against
  Keras ``fit`` over pre-batched, pre-cast, cached in-memory batches with a
  whole epoch per execution (``steps_per_execution`` = batches per epoch),
  no shuffling;
- **evaluation**: :func:`brainfl.model.training.predict_proba` (the server's and a
  site's scoring) against ``predict`` over pre-batched cached batches with
  every batch in one execution;
- **precise BN**: :func:`brainfl.model.batch_norm.recalibrate_batchnorm` against
  its own traced moments function over the same pre-cast batches.

It prints images per second and the app's share of the tight loop; ``--keep
NAME`` writes ``benchmarks/results/NAME/throughput.csv`` with ``command.txt``
and ``machine.txt``::

    python3 benchmarks/throughput.py --data-dir ../shared/data/brain-tumor-mri --keep throughput
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from harness import RESULTS, add_keep, keep_timing_table  # noqa: E402

if TYPE_CHECKING:
    from brainfl.settings.run_settings import TrainingSettings

RESULT_NAME = "throughput"  # what the committed tables read; a bare --keep keeps there
RESULT_DIR = RESULTS / RESULT_NAME
RESULT_CSV = "throughput.csv"
COLUMNS = ["step", "images", "batch_size", "app_images_per_s", "tight_images_per_s", "app_share"]


def best_rate(work: Callable[[], object], images: int, repeats: int) -> float:
    """Images per second of the fastest of ``repeats`` calls of ``work`` (each over ``images``)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return images / best


def cached_batches(inputs: np.ndarray, batch_size: int, labels: np.ndarray | None = None, classes: int = 0):
    """Pre-cast (and one-hot) batches held in memory by tf.data's cache: the tight loops' input."""
    import tensorflow as tf

    tensors = tf.cast(inputs, tf.float32)
    if labels is not None:
        tensors = (tensors, tf.one_hot(labels, classes))
    data = tf.data.Dataset.from_tensor_slices(tensors).batch(batch_size).cache()
    for _ in data:  # fill the cache
        pass
    return data


def training_rates(
    training: TrainingSettings, model_factory, inputs, labels, epochs: int, repeats: int
) -> tuple[float, float]:
    """(app, tight) training images per second."""
    from brainfl.model.training import OptimizerRecipe, compile_model, train

    size, classes = training.batch_size, len(np.unique(labels))
    recipe = {"learning_rate": training.learning_rate, "optimizer": OptimizerRecipe.of(training)}
    app_model = model_factory()

    def app_train():
        train(app_model, inputs, labels, epochs=epochs, batch_size=size, **recipe)

    app_train()
    app = best_rate(app_train, epochs * len(labels), repeats)
    tight_model = model_factory()
    compile_model(
        tight_model,
        training.learning_rate,
        recipe["optimizer"],
        training.label_smoothing,
    )
    batches = -(-len(labels) // size)
    tight_model.compile(
        optimizer=tight_model.optimizer,
        loss=tight_model.loss,
        metrics=["accuracy"],
        steps_per_execution=batches,
    )
    data = cached_batches(inputs, size, labels, classes)
    tight_model.fit(data, epochs=1, verbose=0)
    tight = best_rate(lambda: tight_model.fit(data, epochs=epochs, verbose=0), epochs * len(labels), repeats)
    return app, tight


def evaluation_rates(model, inputs, repeats: int, batch_size: int = 128) -> tuple[float, float]:
    """(app, tight) scoring images per second."""
    from brainfl.model.training import predict_proba

    predict_proba(model, inputs)
    app = best_rate(lambda: predict_proba(model, inputs, batch_size), len(inputs), repeats)
    model.compile(steps_per_execution=-(-len(inputs) // batch_size))
    data = cached_batches(inputs, batch_size)
    model.predict(data, verbose=0)
    tight = best_rate(lambda: model.predict(data, verbose=0), len(inputs), repeats)
    return app, tight


def precise_bn_rates(model, inputs, batch_size: int, repeats: int) -> tuple[float, float]:
    """(app, tight) precise-BN images per second, over at most PRECISE_BN_IMAGES images."""
    from brainfl.model.batch_norm import PRECISE_BN_IMAGES, _batch_moments_function, recalibrate_batchnorm

    used = inputs[:PRECISE_BN_IMAGES]
    recalibrate_batchnorm(model, used, batch_size)
    app = best_rate(lambda: recalibrate_batchnorm(model, used, batch_size), len(used), repeats)
    moments, data = _batch_moments_function(model), cached_batches(used, batch_size)
    tight = best_rate(lambda: [moments(batch) for batch in data], len(used), repeats)
    return app, tight


def measure(data_dir: str, run_config: str, epochs: int, repeats: int) -> list[dict]:
    """One row per step: the app's images per second, the tight loop's, and their ratio."""
    import emulator
    from brainfl.data.sites import load_run_dataset
    from brainfl.model.architectures import build_model

    settings = emulator.settings_for(f'data-dir="{data_dir}"', run_config)
    train_set = load_run_dataset(settings).train
    inputs, labels = train_set.images, train_set.labels

    def fresh_model():
        classes = int(labels.max()) + 1
        return build_model(
            settings.model.name, settings.model.image_size, classes, settings.model.vgg_weights
        ).trainable

    rates = {
        "training": training_rates(settings.training, fresh_model, inputs, labels, epochs, repeats),
        "evaluation": evaluation_rates(fresh_model(), inputs, repeats),
        "precise BN": precise_bn_rates(fresh_model(), inputs, settings.training.batch_size, repeats),
    }
    return [
        {
            "step": step,
            "images": len(inputs),
            "batch_size": settings.training.batch_size if step != "evaluation" else 128,
            "app_images_per_s": round(app, 1),
            "tight_images_per_s": round(tight, 1),
            "app_share": round(app / tight, 3),
        }
        for step, (app, tight) in rates.items()
    ]


def keep(rows: list[dict], folder: Path = RESULT_DIR) -> Path:
    """Write the rows, the command and the machine to ``folder``."""
    return keep_timing_table(rows, COLUMNS, folder, RESULT_CSV)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "brain-tumor-mri"))
    parser.add_argument("--run-config", default="", help='overrides, e.g. "image-size=64 batch-size=32"')
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed training call (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per step, fastest kept")
    add_keep(parser, bare=RESULT_NAME)
    args = parser.parse_args(argv)
    rows = measure(args.data_dir, args.run_config, args.epochs, args.repeats)
    for row in rows:
        print("  ".join(f"{key}={value}" for key, value in row.items()))
    if args.keep:
        print(f"kept: {keep(rows, RESULTS / args.keep)}")


if __name__ == "__main__":
    main()
