"""Outputs are never half-written: a write that fails midway, or a process stopped before the rename,
leaves the earlier complete file at the final name and no temporary file beside it."""

from __future__ import annotations

import builtins
import errno
import json
import stat
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from brainfl.core import files
from brainfl.evaluation.figures import save_figure
from brainfl.federation import certs
from brainfl.report.results import CsvAppender, write_run_config


class Stopped(BaseException):
    """The process stopped (a kill, Ctrl-C) between writing and renaming."""


@pytest.fixture
def disk_full_midway(monkeypatch, tmp_path):
    """Files opened for writing under ``tmp_path`` take half of what is written, then fail (disk full)."""
    real_open = builtins.open

    class HalfWriter:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def half_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        writing = any(flag in mode for flag in "wax+")
        inside = isinstance(file, str | Path) and Path(file).resolve().is_relative_to(tmp_path.resolve())
        return HalfWriter(handle) if writing and inside else handle

    monkeypatch.setattr(builtins, "open", half_open)


@pytest.fixture
def stopped_before_rename(monkeypatch):
    def stop(*args):
        raise Stopped

    monkeypatch.setattr(files.os, "replace", stop)


def _table(tmp_path: Path) -> tuple[CsvAppender, bytes]:
    appender = CsvAppender(tmp_path / "r.csv", ["round", "loss"])
    appender.append({"round": 0, "loss": 1.5})
    appender.append({"round": 1, "loss": 1.25})
    return appender, appender.path.read_bytes()


def test_an_append_that_fails_midway_leaves_the_table_without_a_partial_row(tmp_path, request):
    appender, before = _table(tmp_path)
    request.getfixturevalue("disk_full_midway")
    with pytest.raises(OSError, match="No space left"):
        appender.append({"round": 2, "loss": 1.125})
    assert appender.path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]


def test_an_append_stopped_before_the_rename_leaves_the_table_as_it_was(tmp_path, request):
    appender, before = _table(tmp_path)
    request.getfixturevalue("stopped_before_rename")
    with pytest.raises(Stopped):
        appender.append({"round": 2, "loss": 1.125})
    assert appender.path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]


def _figure() -> Figure:
    figure = Figure()
    figure.subplots().plot([0, 1], [1, 0])
    return figure


WRITERS = {
    "run config": (lambda folder: write_run_config(folder, {"rounds": 3}), "run_config.json"),
    "figure": (lambda folder: save_figure(_figure(), folder / "curves.png"), "curves.png"),
    "private key": (lambda folder: certs._write(folder / "ca.key", b"secret", private=True), "ca.key"),
    "table header": (lambda folder: CsvAppender(folder / "new.csv", ["round"]), "new.csv"),
}


@pytest.mark.parametrize("interruption", ["disk_full_midway", "stopped_before_rename"])
@pytest.mark.parametrize("writer", WRITERS)
def test_an_interrupted_writer_leaves_the_earlier_file_and_no_temporary_one(
    tmp_path, request, writer, interruption
):
    write, name = WRITERS[writer]
    earlier = b"the earlier complete file"
    if name != "new.csv":  # (a table's header is written only where there is no table yet)
        (tmp_path / name).write_bytes(earlier)
    request.getfixturevalue(interruption)
    with pytest.raises((OSError, Stopped)):
        write(tmp_path)
    kept = [p.name for p in tmp_path.iterdir()]
    if name == "new.csv":
        assert kept == []
    else:
        assert kept == [name] and (tmp_path / name).read_bytes() == earlier


def test_writers_leave_only_their_complete_files(tmp_path):
    for write, _ in WRITERS.values():
        write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(name for _, name in WRITERS.values())
    assert json.loads((tmp_path / "run_config.json").read_text()) == {"rounds": 3}
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    assert (tmp_path / "new.csv").read_bytes() == b"round\r\n"
