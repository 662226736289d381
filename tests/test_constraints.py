"""constraints.txt pins every package pyproject.toml asks for, inside the range pyproject.toml allows."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def pins(text: str) -> dict[str, str]:
    """``name -> version`` of a constraints file's ``name==version`` lines (comments and blanks skipped)."""
    found = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, separator, version = line.partition("==")
        assert separator and version and Requirement(line).name == name, f"not name==version: {line!r}"
        found[canonicalize_name(name)] = version
    return found


def test_every_dependency_and_dev_tool_is_pinned_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(text) for text in project["dependencies"] + project["optional-dependencies"]["dev"]]
    pinned = pins((ROOT / "constraints.txt").read_text())
    missing = [str(req) for req in wanted if canonicalize_name(req.name) not in pinned]
    assert not missing, f"constraints.txt lacks {missing}"
    outside = {
        req.name: pinned[canonicalize_name(req.name)]
        for req in wanted
        if not req.specifier.contains(pinned[canonicalize_name(req.name)], prereleases=True)
    }
    assert not outside, f"constraints.txt pins versions pyproject.toml excludes: {outside}"


def test_a_constraints_line_that_is_not_a_pin_is_reported():
    text = "# header\nnumpy==2.4.6\n\nPillow==13.0.0  # decoding\n"
    assert pins(text) == {"numpy": "2.4.6", "pillow": "13.0.0"}
    with pytest.raises(AssertionError, match="numpy>=2"):
        pins("numpy>=2\n")
