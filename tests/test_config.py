"""Tests of run settings: defaults written once (pyproject.toml), documented once, checked once."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
from flwr.common.config import fuse_dicts, parse_config_args

from brainfl.core.errors import BrainFLError
from brainfl.settings.run_config import check_overrides_apply, settings_from_args
from brainfl.settings.run_settings import (
    SECTIONS,
    SETTING_KEYS,
    RunSettings,
    default_run_config,
    settings_from_config,
    settings_with,
)
from conftest import REPO_ROOT

CONF_FILES = sorted((REPO_ROOT / "conf").glob("*.toml"))


def declared_config(app_dir: Path = REPO_ROOT) -> dict:
    return tomllib.loads((app_dir / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_settings_are_the_declared_keys_and_carry_no_defaults_of_their_own():
    assert list(SETTING_KEYS) == list(declared_config())
    for kind in (RunSettings, *SECTIONS.values()):
        assert all(field.default is dataclasses.MISSING for field in dataclasses.fields(kind))
    assert settings_from_config({}).to_config() == declared_config() == default_run_config()


def test_a_default_changed_in_pyproject_changes_it_everywhere(tmp_path):
    text = (REPO_ROOT / "pyproject.toml").read_text()
    changed = re.sub(r"(?m)^local-epochs = \d+$", "local-epochs = 9", text)
    assert changed != text
    (tmp_path / "pyproject.toml").write_text(changed)
    assert default_run_config(tmp_path)["local-epochs"] == 9
    assert settings_from_config({}, app_dir=tmp_path).training.local_epochs == 9
    assert settings_with(tmp_path, seed=5).training.local_epochs == 9
    assert settings_from_args(tmp_path, "seed=5").training.local_epochs == 9


def test_removed_test_only_settings_are_gone():
    for key in ("attack", "attack-sites", "deterministic", "precise-bn", "max-images-per-class", "cache-dir"):
        assert key not in declared_config()


def test_partial_configs_and_keyword_overrides_fill_in_the_defaults():
    settings = settings_with(num_partitions=3, image_size=16)
    assert (settings.data.num_partitions, settings.model.image_size) == (3, 16)
    assert settings.training.local_epochs == declared_config()["local-epochs"]
    assert settings_from_config({"num-partitions": 3, "image-size": 16}) == settings
    with pytest.raises(TypeError, match="no field 'imagesize'"):
        settings_with(imagesize=16)


def test_kebab_case_keys_are_parsed_and_typed():
    settings = settings_from_config({"num-server-rounds": 7, "learning-rate": 1, "skip-unreadable": "true"})
    assert settings.federation.num_server_rounds == 7
    assert settings.training.learning_rate == 1.0 and isinstance(settings.training.learning_rate, float)
    assert settings.data.skip_unreadable is True


def test_keys_that_are_not_settings_are_ignored_as_in_a_runs_saved_config():
    assert settings_from_config({"class-names": ["a", "b"], "seed": 3}).seed == 3


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"num-server-rounds": 0}, "'num-server-rounds' must be positive, got 0"),
        ({"num-server-rounds": -2}, "'num-server-rounds' must be positive"),
        ({"model": "resnet"}, "unknown model 'resnet'"),
        ({"partitioning": "random"}, "'partitioning': unknown 'random'"),
        ({"batch-size": "many"}, "'batch-size': expected int"),
        ({"batch-size": True}, "'batch-size': expected int"),
        ({"val-fraction": 1.5}, "'val-fraction' must be in"),
        ({"test-fraction": 0}, "'test-fraction' must be in"),
        ({"round-timeout": 0}, "'round-timeout' must be positive"),
        ({"feature-shift": 1.5}, r"'feature-shift' must be in \[0, 1\], got 1\.5"),
        ({"feature-shift": -0.1}, "'feature-shift' must be in"),
        ({"feature-shift": "strong"}, "'feature-shift': expected float"),
        ({"learning-rate": float("nan")}, r"'learning-rate': expected float \(a finite number\), got nan"),
        ({"round-timeout": float("inf")}, "'round-timeout': expected float"),
        ({"dp-delta": "nan"}, "'dp-delta': expected float"),
        ({"calibrate": 2}, r"'calibrate': expected bool \(true or false\), got 2"),
        ({"secagg": 1.0}, "'secagg': expected bool"),
        ({"warmup-rounds": -1}, r"'warmup-rounds' must be >= 0 \(0: off\), got -1"),
    ],
)
def test_bad_settings_name_the_setting(config, message):
    with pytest.raises(BrainFLError, match=message):
        settings_from_config(config)


def test_zero_and_one_are_false_and_true():
    assert settings_from_config({"calibrate": 0, "skip-unreadable": 1}).value("calibrate") is False
    assert settings_from_config({"skip-unreadable": 1}).value("skip-unreadable") is True


@pytest.mark.parametrize(
    ("run_config", "message"),
    [
        ("model='a\nb'", r"--run-config: model='a\nb': not a TOML value"),
        (r'model="a\nb"', r"setting 'model': unknown model 'a\nb'"),
        ("test-dir='\x1b[31mred'", r"--run-config: test-dir='\x1b[31mred': not a TOML value"),
    ],
)
def test_a_value_with_a_line_break_or_control_character_is_escaped_in_one_line(run_config, message):
    with pytest.raises(BrainFLError) as refused:
        settings_from_args(REPO_ROOT, run_config)
    assert str(refused.value).startswith(message) and len(str(refused.value).splitlines()) == 1


def test_a_conf_file_that_is_not_utf8_is_named_in_one_line(tmp_path):
    conf = tmp_path / "recipe.toml"
    conf.write_bytes(b"model = 'vgg16'\n\xff\n")
    with pytest.raises(BrainFLError, match=f"--run-config: cannot read {conf}: not UTF-8 text"):
        settings_from_args(REPO_ROOT, str(conf))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"dp": "server-fixed"}, "use norm=group"),
        ({"secagg": True, "strategy": "median"}, "cannot be combined with dp, another strategy or resume"),
        ({"resume": True}, "'resume': needs 'output-dir'"),
        ({"model": "vgg16", "image-size": 24}, "24 px is too small for model vgg16 \\(at least 32\\)"),
        ({"image-size": 8}, "too small for model cnn"),
    ],
)
def test_settings_that_cannot_work_together_are_refused(config, message):
    with pytest.raises(BrainFLError, match=message):
        settings_from_config(config)


def test_a_changed_setting_that_would_have_no_effect_is_refused():
    defaults = default_run_config()
    ignored = settings_from_config({"dirichlet-alpha": 0.3})
    with pytest.raises(
        BrainFLError, match=r"'dirichlet-alpha'=0\.3 has no effect unless partitioning=dirichlet"
    ):
        check_overrides_apply({"dirichlet-alpha": 0.3}, ignored, defaults)
    used = settings_from_config({"dirichlet-alpha": 0.3, "partitioning": "dirichlet"})
    check_overrides_apply({"dirichlet-alpha": 0.3, "partitioning": "dirichlet"}, used, defaults)
    # A full config (as a resumed run passes it) restates defaults: nothing to refuse.
    full = settings_from_config(defaults)
    check_overrides_apply(defaults, full, defaults)
    message = "'dirichlet-alpha'=0.3 has no effect unless partitioning=dirichlet"
    with pytest.raises(BrainFLError, match=re.escape(message)):
        settings_from_args(REPO_ROOT, "dirichlet-alpha=0.3")
    momentum = "'sgd-momentum'=0.5 has no effect unless optimizer=sgd"
    with pytest.raises(BrainFLError, match=re.escape(momentum)):
        settings_from_args(REPO_ROOT, "sgd-momentum=0.5")
    assert settings_from_args(REPO_ROOT, "sgd-momentum=0.5 optimizer='sgd'").training.sgd_momentum == 0.5


def documented_settings() -> dict[str, str]:
    """``key: default`` of the settings table in docs/settings.md."""
    text = (REPO_ROOT / "docs" / "settings.md").read_text()
    table = text.split("## Every setting", 1)[1]
    rows = re.findall(r"(?m)^\| `([a-z0-9-]+)` \| `([^`]*)` \|", table)
    assert len(rows) == len(set(dict(rows))), "a key is documented twice"
    return dict(rows)


def test_the_settings_table_lists_every_declared_key_with_its_default():
    documented = documented_settings()
    declared = declared_config()
    assert sorted(documented) == sorted(declared), "docs/settings.md and pyproject.toml list different keys"
    for key, default in documented.items():
        assert tomllib.loads(f"v = {default}")["v"] == declared[key], f"'{key}' default in docs/settings.md"


def test_the_named_experiments_exist_and_are_documented():
    names = {path.name for path in CONF_FILES}
    assert {"dirichlet-0.3.toml", "iid-4-sites.toml", "privacy-dp.toml", "robust-krum.toml"} <= names
    documented = (REPO_ROOT / "docs" / "settings.md").read_text()
    assert all(f"`conf/{name}`" in documented for name in names)


@pytest.mark.parametrize("conf", CONF_FILES, ids=lambda path: path.name)
def test_every_conf_file_gives_valid_settings_by_brainfl_and_by_flower(conf):
    settings = settings_from_args(REPO_ROOT, str(conf))
    values = tomllib.loads(conf.read_text())
    assert values and all(settings.to_config()[key] == value for key, value in values.items())
    # Machine-specific paths come from run.sh's options or the command line, not from a recipe.
    assert not {"data-dir", "output-dir", "resume"} & set(values)
    # What `flwr run --run-config conf/<name>.toml` does: read the file, fuse it with the declared keys.
    flower = parse_config_args([str(conf)])
    assert flower == values
    fuse_dicts(declared_config(), flower)  # raises on a key the app does not declare


def test_conf_file_values_are_what_the_recipes_promise():
    dirichlet = settings_from_args(REPO_ROOT, str(REPO_ROOT / "conf" / "dirichlet-0.3.toml"))
    assert dirichlet.data.partitioning == "dirichlet" and dirichlet.data.dirichlet_alpha == 0.3
    assert dirichlet.training.balanced_softmax
    iid = settings_from_args(REPO_ROOT, str(REPO_ROOT / "conf" / "iid-4-sites.toml"))
    assert (iid.data.partitioning, iid.federation.num_server_rounds, iid.data.num_partitions) == (
        "iid",
        40,
        4,
    )
    private = settings_from_args(REPO_ROOT, str(REPO_ROOT / "conf" / "privacy-dp.toml"))
    assert private.privacy.dp != "none" and private.model.norm == "group"
    assert (
        settings_from_args(REPO_ROOT, str(REPO_ROOT / "conf" / "robust-krum.toml")).federation.strategy
        == "krum"
    )


def test_output_dir_is_taken_as_every_command_takes_it_and_wins_over_the_run_config(tmp_path):
    import argparse

    from brainfl.settings.run_config import add_settings_arguments

    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    args = parser.parse_args(
        ["--run-config", "output-dir='elsewhere'", "--output-dir", str(tmp_path / "run")]
    )
    assert settings_from_args(REPO_ROOT, args.run_config, args.output_dir).output_dir == str(tmp_path / "run")
    args = parser.parse_args(["--run-config", "output-dir='elsewhere'"])
    assert settings_from_args(REPO_ROOT, args.run_config, args.output_dir).output_dir == "elsewhere"
