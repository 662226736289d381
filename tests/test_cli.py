"""Tests of ``brainfl prepare``: bad input ends with one line and exit code 2, no traceback."""

from __future__ import annotations

import subprocess

import pytest

from conftest import REPO_ROOT


def run_prepare(run_config: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["brainfl", "prepare", "--app-dir", str(REPO_ROOT), "--run-config", run_config],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("run_config", "expected"),
    [
        ("data-dir='/no/such/folder'", "data directory not found: /no/such/folder"),
        ("model='resnet'", "unknown model 'resnet'"),
        ("num-server-rounds=0", "'num-server-rounds' must be positive"),
        ("num-partitions=1000", "1000 sites but only 80 training images"),
        ("numserverrounds=3", "unknown setting 'numserverrounds'"),
    ],
)
def test_user_mistakes_give_one_clear_line(run_config, expected):
    result = run_prepare(run_config)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("brainfl: error:")]
    assert len(errors) == 1 and expected in errors[0]


def test_prepare_accepts_the_sample_and_reports_it():
    result = run_prepare("num-partitions=2")
    assert result.returncode == 0, result.stderr
    assert (
        "80 training images in 4 classes (glioma, meningioma, notumor, pituitary), 32 test images"
        in result.stdout
    )
