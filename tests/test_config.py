"""Tests of run settings: defaults agree with pyproject.toml, bad values are one-line errors."""

from __future__ import annotations

import tomllib

import pytest

from brainfl.config import RunSettings, settings_from_config
from brainfl.errors import BrainFLError
from conftest import REPO_ROOT


def test_defaults_match_the_flower_app_config():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    declared = pyproject["tool"]["flwr"]["app"]["config"]
    assert declared == RunSettings().to_config()


def test_kebab_case_keys_are_parsed_and_typed():
    settings = settings_from_config({"num-server-rounds": 7, "learning-rate": 1, "skip-unreadable": "true"})
    assert settings.num_server_rounds == 7
    assert settings.learning_rate == 1.0 and isinstance(settings.learning_rate, float)
    assert settings.skip_unreadable is True


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"num-server-rounds": 0}, "'num-server-rounds' must be positive, got 0"),
        ({"num-server-rounds": -2}, "'num-server-rounds' must be positive"),
        ({"model": "resnet"}, "unknown model 'resnet'"),
        ({"partitioning": "random"}, "'partitioning': unknown 'random'"),
        ({"batch-size": "many"}, "'batch-size': expected int"),
        ({"val-fraction": 1.5}, "'val-fraction' must be in"),
    ],
)
def test_bad_settings_name_the_setting(config, message):
    with pytest.raises(BrainFLError, match=message):
        settings_from_config(config)
