"""The ``brainfl`` command: prepare and check data, train centrally, make credentials, predict, report.

``brainfl prepare`` validates a run config and the data before any Flower
process starts (``run.sh`` calls it), decoding and caching the images so
that the sites and the server start training at once. A user mistake ends
with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from brainfl import centralized, certs, data_check, predict, report
from brainfl.config import RunSettings, settings_from_config
from brainfl.errors import BrainFLError

EXIT_USER_ERROR = 2


def run_config_from_args(app_dir: Path, overrides: str) -> dict[str, Any]:
    """The app's default run config from ``pyproject.toml`` with ``k=v`` overrides."""
    from flwr.common.config import get_fused_config_from_dir, parse_config_args

    pyproject = app_dir / "pyproject.toml"
    if not pyproject.is_file():
        raise BrainFLError(f"no pyproject.toml in app directory {app_dir}")
    try:
        parsed = parse_config_args([overrides]) if overrides.strip() else {}
    except Exception as error:  # flwr raises click/toml errors for malformed strings
        raise BrainFLError(f"--run-config {overrides!r}: {error}") from None
    known = {key.replace("_", "-") for key in RunSettings.__dataclass_fields__}
    unknown = sorted(set(parsed) - known)
    if unknown:
        raise BrainFLError(
            f"--run-config: unknown setting '{unknown[0]}' (known: {', '.join(sorted(known))})"
        )
    return dict(get_fused_config_from_dir(app_dir, parsed))


def prepare(args: argparse.Namespace) -> None:
    """Validate settings and data, decode and cache the images, check the partitions."""
    from brainfl.partitioning import partition_indices
    from brainfl.pipeline import load_run_dataset

    settings = settings_from_config(run_config_from_args(args.app_dir, args.run_config))
    dataset = load_run_dataset(settings)
    parts = partition_indices(
        dataset.train.labels,
        settings.num_partitions,
        settings.partitioning,
        settings.dirichlet_alpha,
        settings.seed,
    )
    print(
        f"data ok: {len(dataset.train)} training images in {len(dataset.train.class_names)} classes "
        f"({', '.join(dataset.train.class_names)}), {len(dataset.test)} test images; "
        f"{len(parts)} sites of {min(map(len, parts))}-{max(map(len, parts))} images"
    )


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the ``brainfl`` command and its sub-commands."""
    parser = argparse.ArgumentParser(prog="brainfl", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="validate settings and data, and cache decoded images")
    prep.add_argument(
        "--app-dir", type=Path, default=Path.cwd(), help="folder of pyproject.toml (default: .)"
    )
    prep.add_argument("--run-config", default="", help='overrides as in flwr run, e.g. "num-server-rounds=5"')
    prep.set_defaults(handler=prepare)
    data_check.add_parser(commands)
    centralized.add_parser(commands)
    certs.add_parser(commands)
    predict.add_parser(commands)
    report.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a sub-command; user errors print one line and return exit code 2."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], None] = args.handler
    try:
        handler(args)
    except BrainFLError as error:
        print(f"brainfl: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
