"""The ``brainfl`` command: prepare and check data, train centrally, make credentials, predict, adapt, report.

``brainfl prepare`` validates a run config and the data before any Flower
process starts (``run.sh`` calls it), decoding and caching the images so
that the sites and the server start training at once. A user mistake ends
with one line on stderr and exit code 2, never a traceback.

A sub-command's module is imported only when that command runs: the commands
that train or load a model import TensorFlow, seconds of start-up that
``prepare``, ``certs`` and ``check-data`` do without. :data:`COMMANDS` names
every command with its help line (what ``brainfl --help`` lists); its module
adds the command's options and handler to the command's parser.

``--run-config`` values are read by :mod:`brainfl.settings.run_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

from brainfl.core.errors import EXIT_USER_ERROR, BrainFLError

AddArguments = Callable[[argparse.ArgumentParser], None]  # adds a command's options and its handler


# Each of these imports a command's module when the command runs (not when brainfl starts) and
# gives its function that adds the command's options and handler.
def _prepare() -> AddArguments:
    from brainfl.federation import prepare

    return prepare.add_arguments


def _check_data() -> AddArguments:
    from brainfl.data import check

    return check.add_arguments


def _centralized() -> AddArguments:
    from brainfl.baselines import centralized

    return centralized.add_arguments


def _local() -> AddArguments:
    from brainfl.baselines import local_pooled

    return local_pooled.add_local_arguments


def _pooled() -> AddArguments:
    from brainfl.baselines import local_pooled

    return local_pooled.add_pooled_arguments


def _certs() -> AddArguments:
    from brainfl.federation import certs

    return certs.add_arguments


def _evaluate() -> AddArguments:
    from brainfl.evaluation import external

    return external.add_arguments


def _predict() -> AddArguments:
    from brainfl.inference import predict

    return predict.add_arguments


def _adapt() -> AddArguments:
    from brainfl.inference import adaptation

    return adaptation.add_arguments


def _report() -> AddArguments:
    from brainfl.report import page

    return page.add_arguments


@dataclasses.dataclass(frozen=True)
class Command:
    """A sub-command: its help line and where its options and handler come from."""

    help: str
    arguments: Callable[[], AddArguments]


# Every sub-command, in the order ``brainfl --help`` lists them.
COMMANDS: dict[str, Command] = {
    "prepare": Command("validate settings and data, and cache decoded images", _prepare),
    "check-data": Command(
        "find exact and near-duplicate images, label conflicts and the leak-free Testing subset", _check_data
    ),
    "centralized": Command(
        "train the same model centrally (the upper bound for federated runs)", _centralized
    ),
    "local": Command("train each site's model alone on its own images (the local-only baseline)", _local),
    "pooled": Command(
        "train one model on the run's sites' training images pooled (the pooled baseline)", _pooled
    ),
    "certs": Command("create a CA, a SuperLink TLS certificate and site keys", _certs),
    "evaluate": Command("score a saved model on a labelled folder of scans, with 95%% intervals", _evaluate),
    "predict": Command("classify MRI images with a saved model", _predict),
    "adapt": Command(
        "re-estimate a saved model's BatchNorm statistics on a hospital's unlabelled scans", _adapt
    ),
    "report": Command("write figures and report.html for a run", _report),
}


class CommandParser(argparse.ArgumentParser):
    """A sub-command's parser that gets the command's options when it first parses (its own help too)."""

    def __init__(self, *args: Any, command: Command | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.command = command

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Add the command's options and handler (once), then parse."""
        if self.command is not None:
            command, self.command = self.command, None
            command.arguments()(self)
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the ``brainfl`` command and its sub-commands."""
    parser = argparse.ArgumentParser(prog="brainfl", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for name, command in COMMANDS.items():
        commands.add_parser(name, help=command.help, command=command)
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
