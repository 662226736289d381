"""The command line's shared grammar: one spelling per argument across every brainfl command.

Every command that writes takes ``--output-dir DIR``; every command that uses
a saved model takes ``--model FILE``. Spellings of earlier releases
(``--output``, ``--out``) still work for one release, hidden from ``--help``,
with a warning on stderr naming the new spelling.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class _OldSpelling(argparse.Action):
    """An earlier spelling of an option: stores into the new option's place and warns once."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_old_spellings(parser: argparse.ArgumentParser, new: str, old: Sequence[str], **kwargs: Any) -> None:
    """Accept each of ``old`` as ``new`` (hidden, with a warning)."""
    dest = new.lstrip("-").replace("-", "_")
    for spelling in old:
        parser.add_argument(
            spelling, dest=dest, action=_OldSpelling, new=new, help=argparse.SUPPRESS, **kwargs
        )


def add_output_dir(
    parser: argparse.ArgumentParser, help_text: str, default: Path | None = None, old: Sequence[str] = ()
) -> None:
    """``--output-dir DIR``: where the command writes."""
    parser.add_argument("--output-dir", type=Path, default=default, metavar="DIR", help=help_text)
    add_old_spellings(parser, "--output-dir", old, type=Path)


def add_model(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--model FILE``: a saved brainfl model."""
    parser.add_argument(
        "--model",
        type=Path,
        required=required,
        metavar="FILE",
        help="a brainfl model, e.g. final_model.keras",
    )
