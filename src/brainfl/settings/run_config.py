"""Run configs from the command line: conf files and ``key=value`` pairs, strictly parsed.

A ``--run-config`` value is either a conf file (``conf/<name>.toml``, flat
``key = value`` lines) or ``"key=value key2=value2"`` pairs with TOML values
(strings quoted), as ``flwr run --run-config`` takes them; given several
times, later values win. Parsing is strict: a word that is not
``key=value``, an unknown key or an unreadable conf file is an error. Used by
every ``brainfl`` command that takes settings and by the benchmarks.
"""

from __future__ import annotations

import argparse
import difflib
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from brainfl.core.arguments import add_output_dir
from brainfl.core.errors import BrainFLError
from brainfl.settings.run_settings import RunSettings, default_run_config, settings_from_config

# key=value with a quoted or bare TOML value, as Flower's own parser splits them.
_PAIR = re.compile(r"""([A-Za-z0-9_.-]+)=('[^']*'|"[^"]*"|[^\s'"]+)(?=\s|$)""")


def _toml_value(key: str, text: str) -> Any:
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        raise BrainFLError(
            f"--run-config: {key}={text}: not a TOML value (quote text: {key}='{text}')"
        ) from None
    return value


def parse_pairs(text: str) -> dict[str, Any]:
    """``"k=v k2='text'"`` as a mapping; any word that is not ``key=value`` is an error."""
    parsed: dict[str, Any] = {}
    rest = text.strip()
    while rest:
        match = _PAIR.match(rest)
        if match is None:
            word = rest.split(maxsplit=1)[0]
            raise BrainFLError(f"--run-config: '{word}' is not key=value (nor a .toml conf file)")
        parsed[match.group(1)] = _toml_value(match.group(1), match.group(2))
        rest = rest[match.end() :].lstrip()
    return parsed


def _flatten(table: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def read_conf_file(path: Path) -> dict[str, Any]:
    """The flat settings of a conf file (nested tables become dotted keys, which no setting has)."""
    if not path.expanduser().is_file():
        raise BrainFLError(f"--run-config: conf file not found: {path}")
    try:
        with path.expanduser().open("rb") as handle:
            return dict(_flatten(tomllib.load(handle)))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise BrainFLError(f"--run-config: cannot read {path}: {error}") from None
    except UnicodeDecodeError as error:
        raise BrainFLError(f"--run-config: cannot read {path}: not UTF-8 text ({error.reason})") from None


def read_run_config_value(text: str) -> tuple[str, dict[str, Any]]:
    """(where it came from, its settings) of one ``--run-config`` value: a conf file or pairs."""
    stripped = text.strip()
    if stripped.endswith(".toml") and "=" not in stripped and len(stripped.split()) == 1:
        return stripped, read_conf_file(Path(stripped))
    return "--run-config", parse_pairs(stripped)


def _check_known(source: str, settings: Mapping[str, Any], declared: Mapping[str, Any]) -> None:
    for key, value in settings.items():
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise BrainFLError(f"{source}: unknown setting '{key}'{hint} (all settings: docs/settings.md)")
        if not isinstance(value, bool | int | float | str):
            raise BrainFLError(f"{source}: setting '{key}' must be a bool, number or text, got {value!r}")


def _as_list(run_configs: str | Sequence[str] | None) -> list[str]:
    if run_configs is None:
        return []
    return [run_configs] if isinstance(run_configs, str) else list(run_configs)


def overrides_from_args(app_dir: Path, run_configs: str | Sequence[str] | None) -> dict[str, Any]:
    """The settings named by ``--run-config`` values (conf files and pairs, later ones winning)."""
    declared = default_run_config(app_dir)
    overrides: dict[str, Any] = {}
    for text in _as_list(run_configs):
        source, values = read_run_config_value(text)
        _check_known(source, values, declared)
        overrides.update(values)
    return overrides


def settings_from_args(
    app_dir: Path, run_configs: str | Sequence[str] | None, output_dir: Path | None = None
) -> RunSettings:
    """Checked settings from ``--run-config`` values (and ``--output-dir``, which wins over them),
    refusing overrides that would have no effect."""
    defaults = default_run_config(app_dir)
    overrides = overrides_from_args(app_dir, run_configs)
    if output_dir is not None:
        overrides["output-dir"] = str(output_dir)
    settings = settings_from_config({**defaults, **overrides})
    check_overrides_apply(overrides, settings, defaults)
    return settings


# Settings that only act under some other setting: (when they act, in words, and the test). The
# strategies' own settings are checked by brainfl.federation.strategy.check_strategy.
_ONLY_WHEN: dict[str, tuple[str, Callable[[RunSettings], bool]]] = {
    "dirichlet-alpha": ("partitioning=dirichlet", lambda s: s.data.partitioning == "dirichlet"),
    "vgg-weights": ("model=vgg16", lambda s: s.model.name == "vgg16"),
    "sgd-momentum": ("optimizer=sgd", lambda s: s.training.optimizer == "sgd"),
    "dp-noise-multiplier": ("dp is not none", lambda s: s.privacy.dp != "none"),
    "dp-clipping-norm": ("dp is not none", lambda s: s.privacy.dp != "none"),
    "dp-delta": ("dp is not none", lambda s: s.privacy.dp != "none"),
    "secagg-clipping-range": ("secagg=true", lambda s: s.privacy.secagg),
}


def check_overrides_apply(
    overrides: Mapping[str, Any], settings: RunSettings, defaults: Mapping[str, Any]
) -> None:
    """Refuse an override that changes a setting the other settings make Flower or brainfl ignore.

    E.g. ``proximal-mu=0.1`` with ``strategy=fedavg`` would be silently
    without effect. Only keys the user set to a value other than the default
    are checked, so a full run config (a resumed run's) passes.
    """
    config = settings.to_config()
    for key, (when, applies) in _ONLY_WHEN.items():
        if key in overrides and config[key] != defaults.get(key) and not applies(settings):
            raise BrainFLError(f"setting '{key}'={config[key]} has no effect unless {when}")


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """``--app-dir``, repeatable ``--run-config`` and ``--output-dir``: how every ``brainfl`` command
    that runs the app takes its settings (read with :func:`settings_from_args`)."""
    add_output_dir(
        parser, "where the run writes: sets output-dir (default: the run config's, else outputs/<time>)"
    )
    parser.add_argument(
        "--app-dir", type=Path, default=Path.cwd(), help="folder of pyproject.toml (default: .)"
    )
    parser.add_argument(
        "--run-config",
        action="append",
        default=[],
        help='a conf file (conf/NAME.toml) or "key=value ..." overrides as in flwr run; '
        "repeat to combine (later ones win)",
    )


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes and backslashes escaped, control characters as ``\\uXXXX``."""
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def toml_value(value: Any) -> str:
    """A bool, number or text as a TOML value (as ``--run-config`` and conf files take it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return _toml_string(str(value))


def to_toml(config: Mapping[str, Any]) -> str:
    """A flat run config as TOML ``key = value`` lines (what ``flwr run --run-config FILE`` reads)."""
    return "".join(f"{key} = {toml_value(value)}\n" for key, value in config.items())
