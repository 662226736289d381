"""Where the federated/centralized time ratio comes from, without Flower: the cost of splitting training.

In one process (or, with ``--ray``, inside a Ray worker of 2 CPUs, where
Flower's simulation engine runs a ClientApp) this times one round of the
one-process federation of :mod:`emulator` twice on the same compiled model:
pooled (the centralized baseline: one site holding every training image)
and at the run's ``num-partitions`` sites (the app's sites, each less its
validation hold-out), each round being ``local-epochs`` epochs of the app's
site update at every site, then FedAvg. It prints both, their ratio and the
CPU cores used, and appends them as a JSON line to ``--out``::

    python3 benchmarks/fit_overhead.py --data-dir ../shared/data/brain-tumor-mri \\
        --run-config "num-partitions=4 local-epochs=4"
    python3 benchmarks/fit_overhead.py --data-dir ../shared/data/brain-tumor-mri \\
        --run-config "num-partitions=4 local-epochs=4" --ray

A ratio near 1 here and above 1 in the suite is engine overhead; above 1
here it is the per-call cost of training in slices.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path


def timed(work: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds of ``work()`` and the CPU cores it kept busy on average."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    work()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu / wall


def measure(data_dir: str, run_config: str) -> dict[str, float]:
    """One pooled round against one round at the run's sites, on one compiled model."""
    import emulator  # here, so that a Ray worker imports it (and TensorFlow) itself
    from brainfl.federation.site_training import local_update
    from brainfl.model.process_cache import initial_weights

    settings = emulator.settings_for(f'data-dir="{data_dir}"', run_config)
    sites, pooled = emulator.federation(settings), emulator.federation(settings, pooled=True)
    weights = initial_weights(settings, sites.class_names)
    first, few = pooled.sites[0], slice(0, settings.training.batch_size * 4)
    local_update(  # trace the training step on the shared model before timing
        settings,
        pooled.evaluator.bundle,
        first.inputs[few],
        first.data.train.labels[few],
        learning_rate=settings.training.learning_rate,
        server_round=1,
    )
    central_s, central_cores = timed(lambda: emulator.fedavg_round(pooled, weights, 1))
    sites_s, sites_cores = timed(lambda: emulator.fedavg_round(sites, weights, 1))
    return {
        "sites": settings.data.num_partitions,
        "epochs": settings.training.local_epochs,
        "central_s": round(central_s, 2),
        "sites_s": round(sites_s, 2),
        "ratio": round(sites_s / central_s, 3),
        "central_cores": round(central_cores, 2),
        "sites_cores": round(sites_cores, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--run-config", default="", help='overrides, e.g. "num-partitions=4 local-epochs=4"')
    parser.add_argument("--ray", action="store_true", help="measure inside a Ray worker of 2 CPUs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/runs/fit_overhead.jsonl"))
    args = parser.parse_args()
    if args.ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        result = ray.get(ray.remote(num_cpus=2)(measure).remote(args.data_dir, args.run_config))
        ray.shutdown()
    else:
        result = measure(args.data_dir, args.run_config)
    result = {"where": "ray worker" if args.ray else "process", **result}
    print(json.dumps(result), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as handle:
        handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
