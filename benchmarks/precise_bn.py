"""What BatchNorm statistics cost FedAvg: averaged moving averages vs precise BN.

FedAvg over IID sites, simulated in one process with the project's CNN,
training function and partitioner (no Flower: only the BN statistics differ
between the columns, never the trained weights, since BatchNorm trains on
batch statistics). After each round the global weights are scored on the
official Testing split three ways:

- ``averaged``: the sites' Keras moving averages, averaged (plain FedAvg);
- ``site_precise``: each site first re-estimates its statistics with
  :func:`brainfl.training.recalibrate_batchnorm` (what ``precise-bn=true`` does);
- ``global_precise``: the averaged weights re-estimated on all training
  images (a bound: no site holds them all).

    python3 benchmarks/precise_bn.py --data-dir ../shared/data/brain-tumor-mri --rounds 6
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import keras
import numpy as np

from brainfl.data_check import leak_free_test_mask
from brainfl.data_loader import load_dataset
from brainfl.models import build_cnn
from brainfl.partitioning import partition_indices
from brainfl.strategy import weighted_average
from brainfl.training import predict_proba, recalibrate_batchnorm, round_learning_rate, train


def scores(model: keras.Model, weights: list[np.ndarray], images: np.ndarray, labels, clean) -> str:
    """Official and leak-free accuracy of ``weights``."""
    model.set_weights(weights)
    predicted = predict_proba(model, images).argmax(axis=1)
    return f"{np.mean(predicted == labels):.4f} / {np.mean(predicted[clean] == labels[clean]):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/brainfl-cache"))
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    data = load_dataset(args.data_dir, args.image_size, 1, cache_dir=args.cache_dir)
    clean = leak_free_test_mask(args.data_dir, data.test.files)
    sites = partition_indices(data.train.labels, args.sites, "iid", seed=args.seed)
    keras.utils.set_random_seed(args.seed)
    global_model = build_cnn(args.image_size, 1, len(data.train.class_names))
    site_model = build_cnn(args.image_size, 1, len(data.train.class_names))
    weights = global_model.get_weights()
    counts = [len(indices) for indices in sites]
    test = (data.test.images, data.test.labels, clean)
    print("| round | learning rate | averaged | site_precise | global_precise | site pass s | round s |")
    print("|---|---|---|---|---|---|---|")
    for server_round in range(1, args.rounds + 1):
        started = time.monotonic()
        learning_rate = round_learning_rate(args.learning_rate, server_round, args.rounds)
        averaged, precise, pass_seconds = [], [], 0.0
        for site, indices in enumerate(sites):
            site_model.set_weights(weights)
            images, labels = data.train.images[indices], data.train.labels[indices]
            seed = args.seed + 1000 * server_round + site
            train(
                site_model,
                images,
                labels,
                epochs=1,
                batch_size=args.batch_size,
                learning_rate=learning_rate,
                seed=seed,
            )
            averaged.append(site_model.get_weights())
            pass_started = time.monotonic()
            recalibrate_batchnorm(site_model, images, args.batch_size)
            pass_seconds += time.monotonic() - pass_started
            precise.append(site_model.get_weights())
        weights = weighted_average(averaged, counts)
        global_model.set_weights(weights)
        recalibrate_batchnorm(global_model, data.train.images, args.batch_size, max_images=len(data.train))
        bound = global_model.get_weights()
        print(
            f"| {server_round} | {learning_rate:.5f} | {scores(global_model, weights, *test)} | "
            f"{scores(global_model, weighted_average(precise, counts), *test)} | "
            f"{scores(global_model, bound, *test)} | {pass_seconds / len(sites):.1f} | "
            f"{time.monotonic() - started:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
