"""The ``brainfl`` command: prepare and check data, train centrally, make credentials, predict, adapt, report.

``brainfl prepare`` validates a run config and the data before any Flower
process starts (``run.sh`` calls it), decoding and caching the images so
that the sites and the server start training at once. A user mistake ends
with one line on stderr and exit code 2, never a traceback.

``--run-config`` values are read by :mod:`brainfl.settings.run_config`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from brainfl.baselines import centralized
from brainfl.baselines import local_pooled as baselines
from brainfl.core.errors import EXIT_USER_ERROR, BrainFLError
from brainfl.data import check as data_check
from brainfl.evaluation import external as evaluate
from brainfl.federation import certs, prepare
from brainfl.inference import adaptation, predict
from brainfl.report import page as report


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the ``brainfl`` command and its sub-commands."""
    parser = argparse.ArgumentParser(prog="brainfl", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare.add_parser(commands)
    data_check.add_parser(commands)
    centralized.add_parser(commands)
    baselines.add_parsers(commands)
    certs.add_parser(commands)
    evaluate.add_parser(commands)
    predict.add_parser(commands)
    adaptation.add_parser(commands)
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
