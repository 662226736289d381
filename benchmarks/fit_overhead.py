"""Where the federated/centralized time ratio comes from, without Flower: the cost of splitting training.

In one process (or, with ``--ray``, inside a Ray worker of 2 CPUs, where
Flower's simulation engine runs a ClientApp) this times, on the same
decoded images and compiled CNN, ``--epochs`` centralized epochs over the
whole training set against one round of the same epochs at ``--sites``
IID sites, each training on its partition less the 10% the app holds out
for site validation, in a ``train()`` call of its own. It prints both, their ratio
and the CPU cores used, and appends them as a JSON line to ``--out``::

    python3 benchmarks/fit_overhead.py --data-dir ../shared/data/brain-tumor-mri --epochs 4 --sites 4
    python3 benchmarks/fit_overhead.py --data-dir ../shared/data/brain-tumor-mri --epochs 4 --sites 4 --ray

A ratio near 1 here and above 1 in the suite is engine overhead; above 1
here it is the per-call cost of training in slices.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np


def timed(work) -> tuple[float, float]:
    """Wall seconds of ``work()`` and the CPU cores it kept busy on average."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    work()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu / wall


def measure(data_dir: str, image_size: int, epochs: int, sites: int, max_per_class: int) -> dict[str, float]:
    """Centralized epochs against one round at ``sites`` sites, on one compiled model."""
    from brainfl.config import settings_from_config
    from brainfl.pipeline import load_run_dataset, model_for, model_inputs
    from brainfl.training import train
    from recipe_screen import site_rows

    settings = settings_from_config(
        {"data-dir": data_dir, "image-size": image_size, "max-images-per-class": max_per_class}
    )
    dataset = load_run_dataset(settings)
    bundle = model_for(settings, dataset.train.class_names)
    model, labels = bundle.trainable, dataset.train.labels
    inputs = model_inputs(settings, bundle, dataset.train)
    slices = site_rows(dataset.train, sites, settings.seed)  # the app's IID sites less their hold-outs
    order = np.random.default_rng(settings.seed).permutation(len(labels))

    def fit(rows: np.ndarray) -> None:
        train(
            model,
            inputs[rows],
            labels[rows],
            epochs=epochs,
            batch_size=settings.batch_size,
            learning_rate=1e-3,
        )

    fit(order[: settings.batch_size * 4])  # compile and trace before timing
    central_s, central_cores = timed(lambda: fit(order))
    sites_s, sites_cores = timed(lambda: [fit(rows) for rows in slices])
    return {
        "central_s": round(central_s, 2),
        "sites_s": round(sites_s, 2),
        "ratio": round(sites_s / central_s, 3),
        "central_cores": round(central_cores, 2),
        "sites_cores": round(sites_cores, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--max-images-per-class", type=int, default=0, help="0: every image")
    parser.add_argument("--ray", action="store_true", help="measure inside a Ray worker of 2 CPUs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/runs/fit_overhead.jsonl"))
    args = parser.parse_args()
    job = (args.data_dir, args.image_size, args.epochs, args.sites, args.max_images_per_class)
    if args.ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        result = ray.get(ray.remote(num_cpus=2)(measure).remote(*job))
        ray.shutdown()
    else:
        result = measure(*job)
    result = {
        "where": "ray worker" if args.ray else "process",
        "epochs": args.epochs,
        "sites": args.sites,
        **result,
    }
    print(json.dumps(result), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as handle:
        handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
