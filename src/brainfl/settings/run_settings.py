"""Typed run settings, their defaults and their checks.

The settings are the kebab-case keys declared in the app's ``pyproject.toml``
under ``[tool.flwr.app.config]``, which is also the only place their default
values are written: Flower merges a run's overrides into that table and hands
the result to the apps as ``context.run_config``, and
:func:`default_run_config` reads the same table for everything else (the
``brainfl`` command, tests, benchmarks). :class:`RunSettings` only names and
types the keys, grouped in sections: the run-wide ``seed`` and ``output_dir``,
and :class:`DataSettings`, :class:`ModelSettings`, :class:`TrainingSettings`,
:class:`FederationSettings`, :class:`PrivacySettings` and
:class:`EvaluationSettings`, so a function can take just the section it needs
(``settings.data``). The keys stay flat: :func:`settings_from_config`,
:func:`settings_with` and :meth:`RunSettings.replace` take them, and
:meth:`RunSettings.to_config` gives them back in ``pyproject.toml``'s order.
:func:`settings_from_config` fills missing keys from the defaults, converts
the values and checks them, so validation happens once. The keys and their
meaning are listed in ``docs/settings.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brainfl.core.errors import BrainFLError

MODEL_NAMES = ("cnn", "rescnn", "vgg16")  # brainfl.model.architectures
SCRATCH_MODELS = ("cnn", "rescnn")  # trained from scratch, with BatchNorm or GroupNorm (norm)
PARTITIONINGS = ("iid", "dirichlet")
NORMS = ("batch", "group")
OPTIMIZERS = ("adamw", "sgd")  # brainfl.model.training.OPTIMIZERS
CROPS = ("head", "head-otsu", "none")  # how scans are framed: brainfl.data.framing
# how the CNN puts intensities on one scale: brainfl.model.standardization
STANDARDIZATIONS = ("image", "foreground", "percentile", "equalize", "equalize-otsu")
VALIDATE_SPLITS = ("all", "train", "val")  # which of a site's labelled scans --validate scores
NOTUMOR_THRESHOLD_MODES = ("none", "fit")  # or a number in [0, 1)
BN_STATISTICS = ("averaged", "pooled")  # the global BatchNorm statistics: federation.statistics_query
DP_MODES = ("none", "server-fixed", "server-adaptive", "client-fixed", "client-adaptive")
# Smallest image each model accepts: the CNNs halve it four times (stride-2 stem, three
# poolings), Keras' VGG-16 refuses inputs under 32 x 32.
MIN_IMAGE_SIZE = {"cnn": 15, "rescnn": 15, "vgg16": 32}
# Where the app's pyproject.toml is when no app folder is given: the source tree (editable
# install, or the app folder Flower unpacks), else a copy packaged in the brainfl package.
DEFAULT_APP_DIRS = (Path(__file__).resolve().parents[3], Path(__file__).resolve().parents[1])


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Where the images are and how they are split into sites, validation and test sets."""

    data_dir: str
    test_dir: str
    site_data_dirs: str  # each emulated site's own folder, in site order, separated by os.pathsep
    class_names: str
    num_partitions: int
    partitioning: str
    dirichlet_alpha: float
    feature_shift: float
    val_fraction: float
    test_fraction: float
    skip_unreadable: bool


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The network: ``name`` is the ``model`` key (cnn or vgg16), its input size and weights."""

    name: str
    image_size: int
    vgg_weights: str
    norm: str
    augmentation: str
    standardization: str
    crop: str

    @property
    def channels(self) -> int:
        """Image channels the model expects: grayscale CNN, RGB for VGG-16."""
        return 3 if self.name == "vgg16" else 1


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """One site's (or the centralized baseline's) local training."""

    local_epochs: int
    batch_size: int
    learning_rate: float
    warmup_rounds: int  # rounds (centralized: epochs) whose learning rate ramps up to learning_rate
    label_smoothing: float
    weight_decay: float
    optimizer: str  # "adamw" or "sgd" (with momentum ``sgd_momentum``)
    sgd_momentum: float
    balanced_softmax: bool
    balanced_softmax_smoothing: float
    fine_tune_epochs: int
    fine_tune_learning_rate: float


@dataclasses.dataclass(frozen=True)
class FederationSettings:
    """The server: rounds, site sampling and waiting, resuming and the aggregation strategy."""

    num_server_rounds: int
    fraction_train: float
    fraction_evaluate: float
    min_sites: int
    wait_for_sites: int
    round_timeout: float
    resume: bool
    strategy: str
    proximal_mu: float
    server_learning_rate: float
    server_momentum: float
    bn_statistics: str  # "averaged" or "pooled" (BN_STATISTICS)
    byzantine_sites: int
    trim_beta: float
    fedbn: bool
    adapt_sites: bool
    ditto_lambda: float
    site_prior: bool


@dataclasses.dataclass(frozen=True)
class PrivacySettings:
    """Differential privacy and secure aggregation."""

    dp: str
    dp_noise_multiplier: float
    dp_clipping_norm: float
    dp_delta: float
    secagg: bool
    secagg_clipping_range: float


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """What the server adds to its evaluation (temperature calibration, the ``notumor`` threshold,
    TensorBoard logs), and the evaluation-only run that scores saved models at every site."""

    calibrate: bool
    tensorboard: bool
    notumor_threshold: str  # "none" (argmax), "fit" (on the sites' validation splits) or a number
    missed_tumor_target: float
    validate_models: str  # evaluation-only run: saved models (files or run folders), separated by os.pathsep
    validate_split: str
    validate_adapt: bool

    @property
    def fixed_notumor_threshold(self) -> float | None:
        """The threshold the setting fixes (None: ``none`` or ``fit``)."""
        return None if self.notumor_threshold in NOTUMOR_THRESHOLD_MODES else float(self.notumor_threshold)


SECTIONS: dict[str, type] = {
    "data": DataSettings,
    "model": ModelSettings,
    "training": TrainingSettings,
    "federation": FederationSettings,
    "privacy": PrivacySettings,
    "evaluation": EvaluationSettings,
}
# The run-config keys in pyproject.toml's order (the order of to_config() and of the files
# written from it), each as (snake-case name, section or None for run-wide, field in it).
_LAYOUT: tuple[tuple[str, str | None, str], ...] = tuple(
    (name, section, "name" if name == "model" else name)
    for name, section in (
        ("num_server_rounds", "federation"),
        ("local_epochs", "training"),
        ("batch_size", "training"),
        ("learning_rate", "training"),
        ("warmup_rounds", "training"),
        ("model", "model"),
        ("image_size", "model"),
        ("num_partitions", "data"),
        ("partitioning", "data"),
        ("dirichlet_alpha", "data"),
        ("feature_shift", "data"),
        ("data_dir", "data"),
        ("test_dir", "data"),
        ("site_data_dirs", "data"),
        ("class_names", "data"),
        ("output_dir", None),
        ("seed", None),
        ("val_fraction", "data"),
        ("test_fraction", "data"),
        ("skip_unreadable", "data"),
        ("vgg_weights", "model"),
        ("label_smoothing", "training"),
        ("weight_decay", "training"),
        ("optimizer", "training"),
        ("sgd_momentum", "training"),
        ("fraction_train", "federation"),
        ("fraction_evaluate", "federation"),
        ("min_sites", "federation"),
        ("wait_for_sites", "federation"),
        ("resume", "federation"),
        ("tensorboard", "evaluation"),
        ("round_timeout", "federation"),
        ("norm", "model"),
        ("augmentation", "model"),
        ("standardization", "model"),
        ("crop", "model"),
        ("balanced_softmax", "training"),
        ("balanced_softmax_smoothing", "training"),
        ("strategy", "federation"),
        ("proximal_mu", "federation"),
        ("server_learning_rate", "federation"),
        ("server_momentum", "federation"),
        ("bn_statistics", "federation"),
        ("byzantine_sites", "federation"),
        ("trim_beta", "federation"),
        ("dp", "privacy"),
        ("dp_noise_multiplier", "privacy"),
        ("dp_clipping_norm", "privacy"),
        ("dp_delta", "privacy"),
        ("secagg", "privacy"),
        ("secagg_clipping_range", "privacy"),
        ("calibrate", "evaluation"),
        ("fedbn", "federation"),
        ("fine_tune_epochs", "training"),
        ("fine_tune_learning_rate", "training"),
        ("validate_models", "evaluation"),
        ("validate_split", "evaluation"),
        ("validate_adapt", "evaluation"),
        ("adapt_sites", "federation"),
        ("notumor_threshold", "evaluation"),
        ("missed_tumor_target", "evaluation"),
        ("ditto_lambda", "federation"),
        ("site_prior", "federation"),
    )
)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """All settings of one run: the run-wide ``seed`` and ``output_dir``, and one section each
    for data, model, training, federation, privacy and evaluation.

    Every run-config key is one field of one section, named like the key in snake case
    (the ``model`` key is ``model.name``). The fields have no defaults on purpose: those
    live in ``pyproject.toml``. Build settings with :func:`settings_from_config` or
    :func:`settings_with`, derive changed ones with :meth:`replace`; all three take the
    flat keys.
    """

    seed: int
    output_dir: str
    data: DataSettings
    model: ModelSettings
    training: TrainingSettings
    federation: FederationSettings
    privacy: PrivacySettings
    evaluation: EvaluationSettings

    def value(self, name: str) -> Any:
        """The value of one setting by its flat name, snake or kebab case (``"dp-delta"``)."""
        _, section, field = _BY_NAME[name.replace("-", "_")]
        return getattr(self if section is None else getattr(self, section), field)

    def to_config(self) -> dict[str, Any]:
        """Return the settings as a flat kebab-case run-config mapping, in pyproject.toml's order."""
        return {key: self.value(key) for key in SETTING_KEYS}

    def replace(self, **overrides: Any) -> RunSettings:
        """These settings with some changed by flat name, converted and checked like the config:
        ``settings.replace(wait_for_sites=3)``."""
        _check_names(overrides)
        return settings_from_config({**self.to_config(), **_kebab(overrides)})


_BY_NAME = {entry[0]: entry for entry in _LAYOUT}
_TYPES: dict[str, type] = {
    name: typing.get_type_hints(RunSettings if section is None else SECTIONS[section])[field]
    for name, section, field in _LAYOUT
}
SETTING_KEYS = tuple(name.replace("_", "-") for name, _, _ in _LAYOUT)


def _kebab(overrides: Mapping[str, Any]) -> dict[str, Any]:
    return {name.replace("_", "-"): value for name, value in overrides.items()}


def _check_names(overrides: Mapping[str, Any]) -> None:
    unknown = sorted(set(overrides) - set(_TYPES))
    if unknown:
        raise TypeError(f"RunSettings has no field '{unknown[0]}'")


def pyproject_path(app_dir: Path | str | None = None) -> Path:
    """The app's ``pyproject.toml``: in ``app_dir``, else in :data:`DEFAULT_APP_DIRS`."""
    folders = [Path(app_dir).expanduser()] if app_dir is not None else DEFAULT_APP_DIRS
    for folder in folders:
        if (folder / "pyproject.toml").is_file():
            return (folder / "pyproject.toml").resolve()
    raise BrainFLError(f"no pyproject.toml in {folders[0]} (pass the app folder with --app-dir)")


@functools.lru_cache(maxsize=8)
def _declared_config(path: Path, mtime_ns: int) -> tuple[tuple[str, Any], ...]:
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)["tool"]["flwr"]["app"]["config"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as error:
        raise BrainFLError(f"cannot read [tool.flwr.app.config] from {path}: {error}") from None
    return tuple(table.items())


def default_run_config(app_dir: Path | str | None = None) -> dict[str, Any]:
    """The app's declared run config (every key with its default), from ``pyproject.toml``."""
    path = pyproject_path(app_dir)
    return dict(_declared_config(path, path.stat().st_mtime_ns))


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Convert a raw config value to the field's type, or fail naming the setting."""
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
            elif isinstance(value, int) and value in (0, 1):  # (a bool is an int)
                return bool(value)
            raise ValueError(value)
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        converted = kind(value)
        if kind is float and not math.isfinite(converted):
            raise ValueError(value)
        return converted
    except (TypeError, ValueError):
        hint = {bool: " (true or false)", float: " (a finite number)"}.get(kind, "")
        raise BrainFLError(f"setting '{key}': expected {kind.__name__}{hint}, got {value!r}") from None


def settings_from_config(config: Mapping[str, Any], app_dir: Path | str | None = None) -> RunSettings:
    """Build validated :class:`RunSettings` from a (possibly partial) run-config mapping.

    Missing keys take the app's defaults (read from ``app_dir``'s
    ``pyproject.toml`` only when a key is missing); keys that are not
    settings are ignored (a run's ``run_config.json`` also holds
    ``class-names``). Every value is type-checked and range-checked with a
    one-line :class:`BrainFLError`.
    """
    merged = dict(config)
    if any(key not in merged for key in SETTING_KEYS):
        merged = {**default_run_config(app_dir), **merged}
        missing = [key for key in SETTING_KEYS if key not in merged]
        if missing:
            raise BrainFLError(f"setting '{missing[0]}' is not declared in {pyproject_path(app_dir)}")
    sections: dict[str | None, dict[str, Any]] = {None: {}, **{section: {} for section in SECTIONS}}
    for name, section, field in _LAYOUT:
        key = name.replace("_", "-")
        sections[section][field] = _coerce(key, merged[key], _TYPES[name])
    run_wide = sections.pop(None)
    settings = RunSettings(**run_wide, **{name: SECTIONS[name](**sections[name]) for name in SECTIONS})
    check_settings(settings)
    return settings


def settings_with(app_dir: Path | str | None = None, **overrides: Any) -> RunSettings:
    """The app's default settings with some fields changed, e.g. ``settings_with(image_size=16)``."""
    _check_names(overrides)
    return settings_from_config(_kebab(overrides), app_dir)


def _positive(settings: RunSettings, *names: str) -> None:
    for name in names:
        if settings.value(name) <= 0:
            raise BrainFLError(
                f"setting '{name.replace('_', '-')}' must be positive, got {settings.value(name)}"
            )


def _within(settings: RunSettings, name: str, low: float, high: float, closed: str) -> None:
    """``closed`` says which ends are included: ``"[)"``, ``"(]"``, ``"[]"`` or ``"()"``."""
    value = settings.value(name)
    above = value >= low if closed[0] == "[" else value > low
    below = value <= high if closed[1] == "]" else value < high
    if not (above and below):
        interval = f"{closed[0]}{low:g}, {high:g}{closed[1]}"
        raise BrainFLError(f"setting '{name.replace('_', '-')}' must be in {interval}, got {value}")


def check_settings(settings: RunSettings) -> None:
    """Raise :class:`BrainFLError` naming the first setting out of range or in conflict."""
    _positive(settings, "num_server_rounds", "local_epochs", "batch_size", "image_size", "num_partitions")
    _positive(settings, "learning_rate", "fine_tune_learning_rate", "dirichlet_alpha", "min_sites")
    _positive(settings, "round_timeout")
    for key, value, choices in (
        ("model", settings.model.name, MODEL_NAMES),
        ("partitioning", settings.data.partitioning, PARTITIONINGS),
        ("norm", settings.model.norm, NORMS),
        ("optimizer", settings.training.optimizer, OPTIMIZERS),
        ("standardization", settings.model.standardization, STANDARDIZATIONS),
        ("crop", settings.model.crop, CROPS),
        ("bn-statistics", settings.federation.bn_statistics, BN_STATISTICS),
        ("dp", settings.privacy.dp, DP_MODES),
        ("validate-split", settings.evaluation.validate_split, VALIDATE_SPLITS),
    ):
        if value not in choices:
            what = "model " if key == "model" else ""
            raise BrainFLError(
                f"setting '{key}': unknown {what}'{value}' (choose one of: {', '.join(choices)})"
            )
    _within(settings, "val_fraction", 0, 1, "[)")
    _within(settings, "test_fraction", 0, 1, "()")
    _within(settings, "fraction_train", 0, 1, "(]")
    _within(settings, "fraction_evaluate", 0, 1, "[]")
    _within(settings, "label_smoothing", 0, 1, "[)")
    _within(settings, "balanced_softmax_smoothing", 0, 1, "[)")
    _within(settings, "feature_shift", 0, 1, "[]")
    _within(settings, "sgd_momentum", 0, 1, "[)")
    if settings.training.weight_decay < 0 or settings.federation.wait_for_sites < 0:
        raise BrainFLError("settings 'weight-decay' and 'wait-for-sites' must be >= 0")
    if settings.training.warmup_rounds < 0:
        raise BrainFLError(
            f"setting 'warmup-rounds' must be >= 0 (0: off), got {settings.training.warmup_rounds}"
        )
    if settings.training.fine_tune_epochs < 0:
        raise BrainFLError(
            f"setting 'fine-tune-epochs' must be >= 0 (0: off), got {settings.training.fine_tune_epochs}"
        )
    if settings.federation.ditto_lambda < 0:
        raise BrainFLError(
            f"setting 'ditto-lambda' must be >= 0 (0: off), got {settings.federation.ditto_lambda}"
        )
    check_notumor_threshold(settings)
    check_privacy_settings(settings)
    check_setting_combinations(settings)


def check_notumor_threshold(settings: RunSettings) -> None:
    """``notumor-threshold`` is ``none``, ``fit`` or a number in [0, 1); the target a rate in [0, 1)."""
    value = settings.evaluation.notumor_threshold
    if value not in NOTUMOR_THRESHOLD_MODES:
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not 0 <= number < 1:
            raise BrainFLError(
                f"setting 'notumor-threshold': expected none, fit or a probability in [0, 1), got {value!r}"
            )
    _within(settings, "missed_tumor_target", 0, 1, "[)")


def check_privacy_settings(settings: RunSettings) -> None:
    """Range checks of the differential-privacy, secure-aggregation and robustness settings."""
    _positive(settings, "dp_noise_multiplier", "dp_clipping_norm", "secagg_clipping_range")
    _within(settings, "dp_delta", 0, 1, "()")
    _within(settings, "trim_beta", 0, 0.5, "[)")
    _within(settings, "server_momentum", 0, 1, "[)")
    federation = settings.federation
    if federation.proximal_mu < 0 or federation.server_learning_rate < 0 or federation.byzantine_sites < 0:
        raise BrainFLError("settings 'proximal-mu', 'server-learning-rate', 'byzantine-sites' must be >= 0")


def check_setting_combinations(settings: RunSettings) -> None:
    """Settings that are each valid but cannot work together."""
    model, privacy, federation = settings.model, settings.privacy, settings.federation
    smallest = MIN_IMAGE_SIZE[model.name]
    if model.image_size < smallest:
        raise BrainFLError(
            f"setting 'image-size': {model.image_size} px is too small for model "
            f"{model.name} (at least {smallest})"
        )
    if federation.resume and not settings.output_dir:
        raise BrainFLError("setting 'resume': needs 'output-dir', the folder of the run to continue")
    batch_norm = model.name in SCRATCH_MODELS and model.norm == "batch"
    if federation.fedbn and not (batch_norm and privacy.dp == "none"):
        raise BrainFLError(
            "setting 'fedbn': FedBN keeps each site's own BatchNorm layers, so it needs model=cnn or rescnn "
            f"with norm=batch and no dp (got model={model.name}, norm={model.norm}, dp={privacy.dp})"
        )
    if federation.adapt_sites and not batch_norm:
        raise BrainFLError(
            "setting 'adapt-sites': re-estimating BatchNorm statistics needs model=cnn or rescnn with "
            f"norm=batch (got model={model.name}, norm={model.norm})"
        )
    if federation.bn_statistics == "pooled" and (not batch_norm or federation.fedbn or privacy.secagg):
        raise BrainFLError(
            "setting 'bn-statistics': pooling the sites' BatchNorm statistics of the global model needs "
            "model=cnn or rescnn with norm=batch, without fedbn (each site keeps its own) or secagg (the "
            f"statistics would reach the server in the clear); got model={model.name}, norm={model.norm}, "
            f"fedbn={str(federation.fedbn).lower()}, secagg={str(privacy.secagg).lower()}"
        )
    if privacy.dp != "none" and batch_norm:
        raise BrainFLError(
            "setting 'dp': DP noise on BatchNorm's moving variances can make them negative; "
            f"use norm=group with the {model.name} model"
        )
    if federation.strategy == "scaffold" and settings.training.optimizer != "sgd":
        raise BrainFLError(
            "setting 'strategy': scaffold's correction and control variates assume gradient steps; "
            f"use optimizer='sgd' (got optimizer={settings.training.optimizer})"
        )
    if federation.strategy == "scaffold" and privacy.dp != "none":
        raise BrainFLError(
            "setting 'strategy': scaffold's control variates travel outside the DP accounting of the "
            f"model updates; it cannot be combined with dp (got dp={privacy.dp})"
        )
    if privacy.secagg and (privacy.dp != "none" or federation.strategy != "fedavg" or federation.resume):
        raise BrainFLError(
            "setting 'secagg': SecAgg+ runs on Flower's legacy workflow with plain FedAvg; "
            "it cannot be combined with dp, another strategy or resume"
        )


def resolve_path(value: str, setting: str) -> Path:
    """Return an absolute path for a path setting, or fail naming the setting."""
    if not value:
        raise BrainFLError(f"setting '{setting}' is empty")
    return Path(value).expanduser().resolve()
