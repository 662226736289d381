"""Typed run settings parsed and validated from Flower's run config.

The keys are the kebab-case ones declared in ``pyproject.toml`` under
``[tool.flwr.app.config]``; every consumer (server, client, CLI, benchmarks)
reads them through :func:`settings_from_config`, so validation happens once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brainfl.errors import BrainFLError

MODEL_NAMES = ("cnn", "vgg16")
PARTITIONINGS = ("iid", "dirichlet")
NORMS = ("batch", "group")
STRATEGIES = (
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedavgm",
    "krum",
    "multikrum",
    "trimmed-mean",
    "median",
)
DP_MODES = ("none", "server-fixed", "server-adaptive", "client-fixed", "client-adaptive")
ATTACKS = ("none", "sign-flip", "noise", "nan")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """All settings of one run; field names mirror the run-config keys."""

    num_server_rounds: int = 3
    local_epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 0.002
    model: str = "cnn"
    image_size: int = 64
    num_partitions: int = 2
    partitioning: str = "iid"
    dirichlet_alpha: float = 1.0
    data_dir: str = "sample_data"
    output_dir: str = ""
    cache_dir: str = ""
    seed: int = 42
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    max_images_per_class: int = 0
    skip_unreadable: bool = False
    vgg_weights: str = "none"
    label_smoothing: float = 0.1
    weight_decay: float = 0.0001
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_sites: int = 1
    wait_for_sites: int = 0
    resume: bool = False
    tensorboard: bool = False
    round_timeout: float = 3600.0
    norm: str = "batch"
    precise_bn: bool = True
    balanced_softmax: bool = False
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    server_learning_rate: float = 0.0
    server_momentum: float = 0.9
    byzantine_sites: int = 1
    trim_beta: float = 0.2
    dp: str = "none"
    dp_noise_multiplier: float = 1.0
    dp_clipping_norm: float = 1.0
    dp_delta: float = 1e-5
    secagg: bool = False
    secagg_clipping_range: float = 32.0
    attack: str = "none"
    attack_sites: int = 1
    deterministic: bool = False

    @property
    def channels(self) -> int:
        """Image channels the model expects: grayscale CNN, RGB for VGG-16."""
        return 3 if self.model == "vgg16" else 1

    def to_config(self) -> dict[str, Any]:
        """Return the settings as a kebab-case run-config mapping."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}


_FIELDS = {f.name: f for f in dataclasses.fields(RunSettings)}


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Convert a raw config value to the type of the field's default."""
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise BrainFLError(f"setting '{key}': expected {kind.__name__}, got {value!r}") from None


def settings_from_config(config: Mapping[str, Any]) -> RunSettings:
    """Build validated :class:`RunSettings` from a run-config mapping.

    Unknown keys are ignored (Flower adds its own); every known key is
    type-checked and range-checked with a one-line :class:`BrainFLError`.
    """
    values: dict[str, Any] = {}
    for key, raw in config.items():
        name = key.replace("-", "_")
        if name in _FIELDS:
            values[name] = _coerce(key, raw, _FIELDS[name].default)
    settings = RunSettings(**values)
    validate(settings)
    return settings


def validate(settings: RunSettings) -> None:
    """Raise :class:`BrainFLError` naming the first setting out of range."""
    positive = ("num_server_rounds", "local_epochs", "batch_size", "image_size", "num_partitions")
    for name in positive:
        if getattr(settings, name) <= 0:
            raise BrainFLError(
                f"setting '{name.replace('_', '-')}' must be positive, got {getattr(settings, name)}"
            )
    if settings.model not in MODEL_NAMES:
        raise BrainFLError(
            f"setting 'model': unknown model '{settings.model}' (choose one of: {', '.join(MODEL_NAMES)})"
        )
    if settings.learning_rate <= 0:
        raise BrainFLError(f"setting 'learning-rate' must be positive, got {settings.learning_rate}")
    if settings.dirichlet_alpha <= 0:
        raise BrainFLError(f"setting 'dirichlet-alpha' must be positive, got {settings.dirichlet_alpha}")
    for name in ("val_fraction", "test_fraction"):
        if not 0 <= getattr(settings, name) < 1:
            raise BrainFLError(
                f"setting '{name.replace('_', '-')}' must be in [0, 1), got {getattr(settings, name)}"
            )
    if not 0 < settings.fraction_train <= 1:
        raise BrainFLError(f"setting 'fraction-train' must be in (0, 1], got {settings.fraction_train}")
    if not 0 <= settings.fraction_evaluate <= 1:
        raise BrainFLError(f"setting 'fraction-evaluate' must be in [0, 1], got {settings.fraction_evaluate}")
    if settings.min_sites <= 0:
        raise BrainFLError(f"setting 'min-sites' must be positive, got {settings.min_sites}")
    for key, value, choices in (
        ("partitioning", settings.partitioning, PARTITIONINGS),
        ("norm", settings.norm, NORMS),
        ("strategy", settings.strategy, STRATEGIES),
        ("dp", settings.dp, DP_MODES),
        ("attack", settings.attack, ATTACKS),
    ):
        if value not in choices:
            raise BrainFLError(f"setting '{key}': unknown '{value}' (choose one of: {', '.join(choices)})")
    validate_privacy(settings)


def validate_privacy(settings: RunSettings) -> None:
    """Range checks of the differential-privacy, secure-aggregation and robustness settings."""
    for name in ("dp_noise_multiplier", "dp_clipping_norm", "secagg_clipping_range"):
        if getattr(settings, name) <= 0:
            raise BrainFLError(
                f"setting '{name.replace('_', '-')}' must be positive, got {getattr(settings, name)}"
            )
    if not 0 < settings.dp_delta < 1:
        raise BrainFLError(f"setting 'dp-delta' must be in (0, 1), got {settings.dp_delta}")
    if not 0 <= settings.trim_beta < 0.5:
        raise BrainFLError(f"setting 'trim-beta' must be in [0, 0.5), got {settings.trim_beta}")
    if settings.proximal_mu < 0 or settings.server_learning_rate < 0 or settings.byzantine_sites < 0:
        raise BrainFLError("settings 'proximal-mu', 'server-learning-rate', 'byzantine-sites' must be >= 0")
    if settings.dp != "none" and settings.norm == "batch" and settings.model == "cnn":
        raise BrainFLError(
            "setting 'dp': DP noise on BatchNorm's moving variances can make them negative; "
            "use norm=group with the cnn model"
        )
    if settings.secagg and (settings.dp != "none" or settings.strategy != "fedavg" or settings.resume):
        raise BrainFLError(
            "setting 'secagg': SecAgg+ runs on Flower's legacy workflow with plain FedAvg; "
            "it cannot be combined with dp, another strategy or resume"
        )


def resolve_path(value: str, setting: str) -> Path:
    """Return an absolute path for a path setting, or fail naming the setting."""
    if not value:
        raise BrainFLError(f"setting '{setting}' is empty")
    return Path(value).expanduser().resolve()
