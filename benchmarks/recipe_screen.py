"""Screen training recipes fast: centralized vs FedAvg variants at equal passes over the data.

A one-process FedAvg emulator (no Flower, so no engine overhead) built from
the app's own pieces: the CNN, :func:`brainfl.training.train`, precise BN
(:func:`brainfl.training.recalibrate_batchnorm`), the flwr-datasets IID
partitioner, each site's validation hold-out and
:func:`brainfl.strategy.weighted_average`. Every recipe gets ``--passes``
passes over the training data and is scored on the official Testing split
after each round (or epoch). A recipe is a name with ``:key=value`` options:

- ``central`` (options ``bs``, ``lr``): one epoch per evaluation;
- ``fedavg`` (options ``sites``, ``local`` epochs per round, ``bs``, ``lr``,
  ``slr`` server learning rate, ``beta`` server momentum, ``fedexp=1``
  FedExP's adaptive server step, ``alpha`` Dirichlet label skew instead of
  IID sites, ``bsm=1`` the balanced-softmax loss with each site's class
  prior): ``passes / local`` rounds.

Each score is recorded three ways: official Testing accuracy, the same with
horizontal-flip test-time augmentation (the mean of the probabilities of
each image and its mirror image) and the leak-free subset's accuracy.

Results are appended as JSON lines to ``--out``::

    python3 benchmarks/recipe_screen.py --data-dir ../shared/data/brain-tumor-mri --passes 6 \\
        --recipes "central,central:bs=128,fedavg,fedavg:bs=8,fedavg:slr=2"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np

from brainfl.data_check import leak_free_test_mask
from brainfl.data_loader import ImageSet, load_dataset
from brainfl.models import build_cnn
from brainfl.partitioning import partition_indices, split_validation
from brainfl.strategy import weighted_average
from brainfl.training import (
    predict_proba,
    recalibrate_batchnorm,
    round_learning_rate,
    site_class_prior,
    train,
)

OPTION_TYPES = {
    "sites": int,
    "local": int,
    "bs": int,
    "lr": float,
    "slr": float,
    "beta": float,
    "fedexp": int,
    "alpha": float,
    "bsm": int,
}


def parse_recipe(recipe: str) -> tuple[str, dict[str, float]]:
    """``"fedavg:local=2:bs=8"`` -> ``("fedavg", {"local": 2, "bs": 8})``."""
    kind, *options = recipe.split(":")
    if kind not in ("central", "fedavg"):
        raise SystemExit(f"recipe {recipe!r}: unknown kind {kind!r} (central or fedavg)")
    parsed = {}
    for option in options:
        key, _, value = option.partition("=")
        if key not in OPTION_TYPES:
            raise SystemExit(f"recipe {recipe!r}: unknown option {key!r} (one of {', '.join(OPTION_TYPES)})")
        parsed[key] = OPTION_TYPES[key](value)
    return kind, parsed


def site_rows(train_set: ImageSet, num_sites: int, seed: int, alpha: float = 0.0) -> list[np.ndarray]:
    """Each site's training rows: its partition (IID, or Dirichlet ``alpha`` > 0) less its hold-out.

    The same partitions and hold-outs as the app's sites.
    """
    partitioning = "dirichlet" if alpha > 0 else "iid"
    rows = []
    parts = partition_indices(train_set.labels, num_sites, partitioning, alpha=alpha or 1.0, seed=seed)
    for site, part in enumerate(parts):
        train_pos, _ = split_validation(train_set.labels[part], 0.1, seed + site)
        rows.append(part[train_pos])
    return rows


def server_step(
    global_weights: list[np.ndarray],
    site_weights: list[list[np.ndarray]],
    counts: list[int],
    is_statistic: list[bool],
    momentum: list[np.ndarray],
    options: dict[str, float],
) -> list[np.ndarray]:
    """FedAvg, with an optional server learning rate, server momentum or FedExP step.

    BatchNorm statistics are always plainly averaged.
    """
    average = weighted_average(site_weights, counts)
    server_lr = options.get("slr", 1.0)
    if options.get("fedexp"):  # Jhunjhunwala et al. 2023: max(1, mean ||d_i||^2 / (2 ||mean d||^2))
        trained = [k for k, stat in enumerate(is_statistic) if not stat]
        spread = np.mean(
            [sum(float(np.sum((w[k] - global_weights[k]) ** 2)) for k in trained) for w in site_weights]
        )
        mean_step = sum(float(np.sum((average[k] - global_weights[k]) ** 2)) for k in trained)
        server_lr = max(1.0, spread / (2 * mean_step + 1e-12))
    new_weights = []
    for k, (old, avg) in enumerate(zip(global_weights, average, strict=True)):
        if is_statistic[k]:
            new_weights.append(avg)
            continue
        momentum[k] = options.get("beta", 0.0) * momentum[k] + (avg - old)
        new_weights.append(old + server_lr * momentum[k])
    return new_weights


def run_recipe(
    recipe: str, data, passes: int, sites_default: int, seed: int, leak_free: np.ndarray | None = None
) -> dict[str, object]:
    """Train one recipe; return its accuracy after every round (or epoch)."""
    kind, options = parse_recipe(recipe)
    batch_size, peak_lr = int(options.get("bs", 32)), float(options.get("lr", 0.002))
    if kind == "central":  # the images the default sites train on, pooled
        rows, local = [np.concatenate(site_rows(data.train, sites_default, seed))], 1
    else:
        num_sites = int(options.get("sites", sites_default))
        rows = site_rows(data.train, num_sites, seed, float(options.get("alpha", 0.0)))
        local = int(options.get("local", 1))
    rounds = max(1, passes // local)
    keras.utils.set_random_seed(seed)
    num_classes = len(data.train.class_names)
    model = build_cnn(data.train.images.shape[1], 1, num_classes)
    is_statistic = ["moving_" in weight.path for weight in model.weights]
    weights = model.get_weights()
    momentum = [np.zeros_like(w) for w in weights]
    scores: dict[str, list[float]] = {"accuracy": [], "flip_tta": [], "leak_free": []}
    start = time.perf_counter()
    for server_round in range(1, rounds + 1):
        learning_rate = round_learning_rate(peak_lr, server_round, rounds)
        site_weights = []
        for site, site_row in enumerate(rows):
            model.set_weights(weights)
            inputs, labels = data.train.images[site_row], data.train.labels[site_row]
            train(
                model,
                inputs,
                labels,
                epochs=local,
                batch_size=batch_size,
                learning_rate=learning_rate,
                seed=seed + 1000 * server_round + site,
                class_prior=site_class_prior(labels, num_classes) if options.get("bsm") else None,
            )
            recalibrate_batchnorm(model, inputs, batch_size)
            site_weights.append(model.get_weights())
        if kind == "central":
            weights = site_weights[0]
        else:
            weights = server_step(
                weights, site_weights, [len(r) for r in rows], is_statistic, momentum, options
            )
        model.set_weights(weights)
        for name, value in score_model(model, data.test, leak_free).items():
            scores[name].append(round(value, 4))
        latest = ", ".join(f"{name} {values[-1]}" for name, values in scores.items())
        print(f"{recipe} round {server_round}/{rounds}: {latest}", flush=True)
    return {
        "recipe": recipe,
        "passes": passes,
        "image_size": int(data.train.images.shape[1]),
        **scores,
        "final": scores["accuracy"][-1],
        "best": max(scores["accuracy"]),
        "wall_s": round(time.perf_counter() - start, 1),
    }


def score_model(model: keras.Model, test: ImageSet, leak_free: np.ndarray | None) -> dict[str, float]:
    """Official accuracy, with horizontal-flip test-time augmentation, and on the leak-free subset."""
    probabilities = predict_proba(model, test.images)
    mirrored = predict_proba(model, test.images[:, :, ::-1])
    predicted = probabilities.argmax(axis=1)
    correct = predicted == test.labels
    return {
        "accuracy": float(np.mean(correct)),
        "flip_tta": float(np.mean((probabilities + mirrored).argmax(axis=1) == test.labels)),
        "leak_free": float(np.mean(correct[leak_free])) if leak_free is not None else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=None, help="decode cache (default: brainfl's)")
    parser.add_argument("--recipes", default="central,fedavg", help="comma-separated recipes (see above)")
    parser.add_argument("--passes", type=int, default=6, help="passes over the training data per recipe")
    parser.add_argument("--sites", type=int, default=4, help="sites of fedavg recipes without sites=")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--max-images-per-class", type=int, default=0, help="subset for a quick try (0 = all)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/runs/recipe_screen.jsonl"))
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    for recipe in recipes:
        parse_recipe(recipe)  # fail on a typo before any training
    data = load_dataset(
        args.data_dir, args.image_size, 1, args.cache_dir, max_images_per_class=args.max_images_per_class
    )
    leak_free = leak_free_test_mask(args.data_dir, data.test.files)
    leak_free = leak_free if leak_free.any() else None  # no Testing image is leak-free: no such score
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for recipe in recipes:
        result = run_recipe(recipe, data, args.passes, args.sites, args.seed, leak_free)
        print(json.dumps(result), flush=True)
        with args.out.open("a") as handle:
            handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
