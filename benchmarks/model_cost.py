"""What a training pass costs per model and image size, measured side by side in one process.

Resolution and capacity are chosen at about equal wall time per pass, and
this machine's speed drifts while other work runs, so the candidates are
timed here in turns (round-robin, the fastest of ``--repeats`` calls of each
kept) rather than read from runs made at different times. Each candidate is a
run config (``"image-size=96"``, ``"model='rescnn'"``) on the app's defaults;
its model is built as the app builds it and trained with the app's training
step (:func:`brainfl.model.training.train`, one epoch, augmentation on) on the
first ``--images`` training images of the real dataset, decoded at its size.
Each row gives the model's parameters, milliseconds per training image and the
cost relative to the first candidate; ``--keep NAME`` writes
``benchmarks/results/NAME/model_cost.csv`` with ``command.txt`` and
``machine.txt``::

    python3 benchmarks/model_cost.py --data-dir ../shared/data/brain-tumor-mri \\
        --candidates "image-size=64" "image-size=96" "image-size=128" "model='rescnn'" --keep model-cost
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from harness import RESULTS, add_keep, keep_timing_table  # noqa: E402

RESULT_CSV = "model_cost.csv"
COLUMNS = ["candidate", "model", "image_size", "parameters", "images", "ms_per_image", "relative_cost"]


def prepared(data_dir: str, candidate: str, images: int):
    """(settings, model, images, labels) of one candidate: its model built and trained once (tracing)."""
    import emulator
    from brainfl.data.sites import load_run_dataset
    from brainfl.model.process_cache import model_for

    settings = emulator.settings_for(f'data-dir="{data_dir}"', candidate)
    train_set = load_run_dataset(settings).train
    inputs, labels = train_set.images[:images], train_set.labels[:images]
    bundle = model_for(settings, train_set.class_names)
    timed_pass(settings, bundle, inputs, labels)
    return settings, bundle, inputs, labels


def timed_pass(settings, bundle, inputs, labels) -> float:
    """Seconds of one epoch of the app's training step over ``inputs``."""
    from brainfl.model.training import OptimizerRecipe, train

    start = time.perf_counter()
    train(
        bundle.trainable,
        inputs,
        labels,
        epochs=1,
        batch_size=settings.training.batch_size,
        learning_rate=settings.training.learning_rate,
        optimizer=OptimizerRecipe.of(settings.training),
    )
    return time.perf_counter() - start


def measure(data_dir: str, candidates: list[str], images: int, repeats: int) -> list[dict]:
    """One row per candidate, its fastest pass in turn with the others'."""
    ready = {candidate: prepared(data_dir, candidate, images) for candidate in candidates}
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(repeats):
        for candidate, (settings, bundle, inputs, labels) in ready.items():
            best[candidate] = min(best[candidate], timed_pass(settings, bundle, inputs, labels))
    first = best[candidates[0]]
    rows = []
    for candidate, (settings, bundle, inputs, _) in ready.items():
        rows.append(
            {
                "candidate": candidate,
                "model": settings.model.name,
                "image_size": settings.model.image_size,
                "parameters": bundle.trainable.count_params(),
                "images": len(inputs),
                "ms_per_image": round(1000 * best[candidate] / len(inputs), 3),
                "relative_cost": round(best[candidate] / first, 2),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "brain-tumor-mri"))
    parser.add_argument(
        "--candidates", nargs="+", default=["image-size=64"], help="run configs, the first the reference"
    )
    parser.add_argument("--images", type=int, default=1024, help="training images per timed pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per candidate, fastest kept")
    add_keep(parser)
    args = parser.parse_args(argv)
    rows = measure(args.data_dir, args.candidates, args.images, args.repeats)
    for row in rows:
        print("  ".join(f"{key}={value}" for key, value in row.items()))
    if args.keep:
        print(f"kept: {keep_timing_table(rows, COLUMNS, RESULTS / args.keep, RESULT_CSV)}")


if __name__ == "__main__":
    main()
