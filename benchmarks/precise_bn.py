"""What BatchNorm statistics cost FedAvg: the sites' Keras moving averages vs precise BN.

Two runs of the one-process federation of :mod:`emulator` from the same
initial weights, sites and seeds, scored on the server's test set after
every round (official / leak-free accuracy):

- ``keras averages``: each site only trains (:func:`brainfl.model.training.train`)
  and sends Keras' moving averages of its last batches' statistics;
- ``precise BN``: each site runs the app's update,
  :func:`brainfl.federation.site_training.local_update`, which re-estimates them on
  the site's own images after training.

BatchNorm trains on batch statistics, so the statistics a site sends never
change what the next round trains: the scores differ by the statistics
(and by the augmentation draws, as the model's random layers carry their
state from one training call to the next)::

    python3 benchmarks/precise_bn.py --data-dir ../shared/data/brain-tumor-mri \\
        --run-config "num-server-rounds=6 num-partitions=4 local-epochs=1"

``--output-dir`` gets each run in the app's format; ``--keep NAME`` also
copies its small result files to ``benchmarks/results/NAME/<run>/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import emulator
from brainfl.federation.site_training import local_update, update_seed
from brainfl.model.architectures import ModelBundle
from brainfl.model.training import OptimizerRecipe, train
from brainfl.settings.run_settings import RunSettings
from harness import add_keep, add_output_dir, keep_result, markdown_table, this_command


def keras_averages_update(
    settings: RunSettings,
    bundle: ModelBundle,
    inputs: np.ndarray,
    labels: np.ndarray,
    *,
    learning_rate: float,
    server_round: int,
    site_id: int = 0,
) -> dict[str, float]:
    """The site update without precise BN: train only, leaving Keras' moving averages."""
    seed, epochs = update_seed(settings, server_round, site_id), settings.training.local_epochs
    regularization = {
        "optimizer": OptimizerRecipe.of(settings.training),
        "label_smoothing": settings.training.label_smoothing,
    }
    return train(
        bundle.trainable,
        inputs,
        labels,
        epochs=epochs,
        batch_size=settings.training.batch_size,
        learning_rate=learning_rate,
        seed=seed,
        **regularization,
    )


ARMS = {"keras averages": keras_averages_update, "precise BN": local_update}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--run-config", default="", help='overrides, e.g. "num-server-rounds=6"')
    add_output_dir(parser, Path("benchmarks/runs/precise_bn"))
    add_keep(parser, where="NAME/<run>/")
    args = parser.parse_args()
    settings = emulator.settings_for(f'data-dir="{args.data_dir}"', args.run_config)
    if settings.training.balanced_softmax:
        raise SystemExit("precise_bn compares plain cross-entropy sites; leave balanced-softmax off")
    fed = emulator.federation(settings)
    table = [{"round": server_round} for server_round in range(settings.federation.num_server_rounds + 1)]
    for arm, update in ARMS.items():
        output_dir = args.output_dir / arm.replace(" ", "_")
        for line, row in zip(table, emulator.run(fed, output_dir, update), strict=True):
            line[arm] = f"{row['accuracy']:.4f} / {row.get('leak_free_accuracy', float('nan')):.4f}"
        if args.keep:
            keep_result(output_dir, f"{args.keep}/{output_dir.name}", this_command())
    print(markdown_table(table, ["round", *ARMS]))


if __name__ == "__main__":
    main()
