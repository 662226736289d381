"""Screen training recipes fast: centralized vs FedAvg settings at equal passes over the data.

Each recipe runs in the one-process federation of :mod:`emulator` (the app's
sites, site update, FedAvg and scoring, without Flower's engine). A recipe
is a kind and ``:K=V`` run-config overrides in the app's syntax:

- ``central``: the centralized baseline, one site holding every training image;
- ``fedavg``: the run's ``num-partitions`` sites.

For example ``fedavg:local-epochs=4:partitioning='dirichlet':dirichlet-alpha=0.3:balanced-softmax=true``.
Every recipe gets ``--passes`` passes over the training data, as
``passes / local-epochs`` rounds (one local epoch unless a recipe or
``--run-config`` says otherwise), and is scored on the server's test set
after each round: official and leak-free accuracy.

One JSON line per recipe is appended to ``<output-dir>/recipe_screen.jsonl``
and each recipe's run is written in the app's format to
``<output-dir>/<recipe>/``; ``--keep NAME`` also copies its small result
files to ``benchmarks/results/NAME/<recipe>/``::

    python3 benchmarks/recipe_screen.py --data-dir ../shared/data/brain-tumor-mri --passes 6 \\
        --run-config "num-partitions=4" --recipes "central,central:batch-size=128,fedavg,fedavg:batch-size=8"

For a quick try, point ``--data-dir`` at a subset made by ``benchmarks/subset.py``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import emulator
from brainfl.core.errors import BrainFLError
from brainfl.settings.run_settings import RunSettings
from harness import add_keep, add_output_dir, keep_result, this_command

KINDS = ("central", "fedavg")


def parse_recipe(recipe: str) -> tuple[str, str]:
    """``"fedavg:local-epochs=2:batch-size=8"`` -> ``("fedavg", "local-epochs=2 batch-size=8")``."""
    kind, *options = recipe.split(":")
    if kind not in KINDS:
        raise SystemExit(f"recipe {recipe!r}: unknown kind {kind!r} ({' or '.join(KINDS)})")
    return kind, " ".join(options)


def recipe_settings(recipe: str, data_dir: Path, run_config: str, passes: int) -> tuple[bool, RunSettings]:
    """Whether ``recipe`` is pooled (centralized), and its settings with ``passes`` worth of rounds."""
    kind, overrides = parse_recipe(recipe)
    try:
        settings = emulator.settings_for(f'data-dir="{data_dir}" local-epochs=1', run_config, overrides)
    except BrainFLError as error:
        raise SystemExit(f"recipe {recipe!r}: {error}") from None
    rounds = max(1, passes // settings.training.local_epochs)
    return kind == "central", settings.replace(num_server_rounds=rounds)


def run_recipe(recipe: str, pooled: bool, settings: RunSettings, output_dir: Path) -> dict[str, object]:
    """Train one recipe, writing its run to ``output_dir``; return its scores after every round."""
    started = time.perf_counter()
    rows = emulator.run(emulator.federation(settings, pooled), output_dir)[1:]  # (row 0: the initial model)
    accuracy = [round(row["accuracy"], 4) for row in rows]
    return {
        "recipe": recipe,
        "passes": settings.federation.num_server_rounds * settings.training.local_epochs,
        "image_size": settings.model.image_size,
        "accuracy": accuracy,
        "leak_free": [round(row.get("leak_free_accuracy", float("nan")), 4) for row in rows],
        "final": accuracy[-1],
        "best": max(accuracy),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def folder_name(recipe: str) -> str:
    """A file-name-safe form of a recipe."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", recipe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--recipes", default="central,fedavg", help="comma-separated recipes (see above)")
    parser.add_argument("--passes", type=int, default=6, help="passes over the training data per recipe")
    parser.add_argument("--run-config", default="", help='overrides for every recipe, e.g. "image-size=96"')
    add_output_dir(parser, Path("benchmarks/runs/recipe_screen"))
    add_keep(parser, where="NAME/<recipe>/")
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    # Every recipe is checked first: a typo in the last one fails before the first one trains.
    checked = [recipe_settings(recipe, args.data_dir, args.run_config, args.passes) for recipe in recipes]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for recipe, (pooled, settings) in zip(recipes, checked, strict=True):
        output_dir = args.output_dir / folder_name(recipe)
        result = run_recipe(recipe, pooled, settings, output_dir)
        print(json.dumps(result), flush=True)
        with (args.output_dir / "recipe_screen.jsonl").open("a") as handle:
            handle.write(json.dumps(result) + "\n")
        if args.keep:
            keep_result(output_dir, f"{args.keep}/{folder_name(recipe)}", this_command())


if __name__ == "__main__":
    main()
