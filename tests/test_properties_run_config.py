"""Property-based tests of run configs (Hypothesis): generated ``key=value`` overrides and TOML conf
files either parse to exactly the values they say or are refused with a one-line BrainFLError, never
another exception."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from brainfl.core.errors import BrainFLError
from brainfl.settings.run_config import overrides_from_args, settings_from_args, to_toml, toml_value
from brainfl.settings.run_settings import SETTING_KEYS, default_run_config
from conftest import REPO_ROOT

DEFAULTS = default_run_config(REPO_ROOT)
KINDS = {key: type(DEFAULTS[key]) for key in SETTING_KEYS}
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def assert_one_line_refusal(error: BrainFLError) -> None:
    message = str(error)
    assert message and len(message.splitlines()) == 1 and message.isprintable(), repr(message)


def typed_value(kind: type) -> st.SearchStrategy[Any]:
    """A value of the setting's own type, as TOML writes it: any float; text without a double quote,
    which a ``key="..."`` pair cannot hold, nor a lone surrogate, which no UTF-8 file can."""
    return {
        bool: st.booleans(),
        int: st.integers(-(2**63), 2**63 - 1),
        float: st.floats(),
        str: st.text(st.characters(exclude_characters='"', exclude_categories=("Cs",)), max_size=20),
    }[kind]


@st.composite
def typed_overrides(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(SETTING_KEYS), min_size=1, max_size=6, unique=True))
    return {key: draw(typed_value(KINDS[key])) for key in keys}


def same(parsed: dict[str, Any], values: dict[str, Any]) -> bool:
    """Equal, NaN included (NaN is the one value not equal to itself)."""
    return parsed.keys() == values.keys() and all(
        parsed[key] == value or (isinstance(value, float) and math.isnan(value) and math.isnan(parsed[key]))
        for key, value in values.items()
    )


@given(typed_overrides())
def test_key_value_pairs_of_typed_values_parse_to_exactly_those_values(values):
    text = " ".join(f"{key}={toml_value(value)}" for key, value in values.items())
    assert same(overrides_from_args(REPO_ROOT, text), values)


@given(typed_overrides())
def test_a_conf_file_of_typed_values_parses_to_exactly_those_values(values):
    with tempfile.TemporaryDirectory() as folder:
        conf = Path(folder) / "recipe.toml"
        conf.write_text(to_toml(values), encoding="utf-8")
        assert same(overrides_from_args(REPO_ROOT, str(conf)), values)


def expected_setting(kind: type, value: Any) -> Any:
    """What a setting of ``kind`` holds when given ``value``, or None where it must be refused."""
    if kind is bool:
        if isinstance(value, str):
            return True if value.lower() in TRUE else False if value.lower() in FALSE else None
        return bool(value) if not isinstance(value, float) and value in (0, 1) else None
    if isinstance(value, bool):
        return None
    if kind is str:
        return str(value)
    try:  # (text that Python reads as a number says that number)
        number = kind(value) if isinstance(value, str) else value
    except ValueError:
        return None
    if not math.isfinite(number) or (kind is int and not float(number).is_integer()):
        return None
    return kind(number)


any_value = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.sampled_from([*TRUE, *FALSE, "True", "cnn", "fedprox", "dirichlet", "group", "none", "sample_data"]),
    st.text(st.characters(exclude_characters='"'), max_size=12),
)


@given(st.sampled_from(SETTING_KEYS), any_value)
@example("learning-rate", math.nan)
@example("round-timeout", math.inf)
@example("calibrate", 2)
@example("model", "a\nb")
def test_a_setting_holds_exactly_the_value_given_or_is_refused_in_one_line(key, value):
    try:
        settings = settings_from_args(REPO_ROOT, f"{key}={toml_value(value)}")
    except BrainFLError as error:
        assert_one_line_refusal(error)
        return
    expected = expected_setting(KINDS[key], value)
    assert expected is not None, f"{key}={value!r} was accepted as {settings.value(key)!r}"
    assert settings.value(key) == expected and type(settings.value(key)) is KINDS[key]


words = st.one_of(
    st.sampled_from(SETTING_KEYS),
    st.text(st.sampled_from("abcdefgh-_.=' \"\n\t\\{}[]#é0123456789"), max_size=10),
).flatmap(
    lambda key: st.tuples(
        st.just(key),
        st.one_of(
            st.text(st.sampled_from("abc'\" \n\\=.-+0123456789einfaturs{}[],#"), max_size=10),
            any_value.map(toml_value),
        ),
    )
)


@given(
    st.one_of(
        st.text(max_size=40), st.lists(words, max_size=4).map(lambda pairs: " ".join(map("=".join, pairs)))
    )
)
@example("model='a\nb'")
@example('data-dir="x\\u2028y"')
@example("x.toml")
def test_any_run_config_text_gives_settings_or_a_one_line_refusal(text):
    try:
        settings_from_args(REPO_ROOT, text)
    except BrainFLError as error:
        assert_one_line_refusal(error)


@given(
    st.one_of(
        st.binary(max_size=60),
        st.text(max_size=60).map(str.encode),
        typed_overrides().map(lambda values: to_toml(values).encode()),
    )
)
@example(b"model = 'vgg16'\n\xff")
@example(b"[federation]\nrounds = 3\n")
def test_any_conf_file_gives_settings_or_a_one_line_refusal(content):
    with tempfile.TemporaryDirectory() as folder:
        conf = Path(folder) / "recipe.toml"
        conf.write_bytes(content)
        try:
            settings_from_args(REPO_ROOT, str(conf))
        except BrainFLError as error:
            assert_one_line_refusal(error)
