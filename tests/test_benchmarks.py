"""Benchmark plumbing: the suite's time ratios, kept results, subset folders, and the tiny suite."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest

from brainfl.model.files import RUN_CONFIG
from brainfl.report.results import RESULTS_CSV
from conftest import CLASSES, make_dataset, run_benchmark
from harness import COMMAND_FILE, KEPT_FILES, ROOT, add_keep, add_output_dir, keep_result, shown_command
from result_folders import MEASUREMENT, load_runs
from subset import make_subset
from suite import add_time_ratios


def test_median_epoch_ratio_ignores_a_stall_that_the_wall_ratio_counts():
    rows = [
        {"setting": "centralized", "wall_s": 40.0, "median_round_s": 5.0},  # a typical epoch: 5 s
        {"setting": "4 IID", "wall_s": 44.0, "median_round_s": 22.0},  # a typical round of 4 epochs
    ]
    add_time_ratios(rows, local_epochs=4)
    assert [row["fed/central wall"] for row in rows] == [1.0, 1.1]
    assert [row["fed/central median epoch"] for row in rows] == [1.0, 1.1]
    rows[0]["wall_s"] = 45.0  # the same centralized run with one 5 s stall
    add_time_ratios(rows, local_epochs=4)
    assert rows[1]["fed/central wall"] == 0.98
    assert rows[1]["fed/central median epoch"] == 1.1


def _finished_run(run_dir):
    """A run folder as the app leaves it: small result files, models, logs, report and images."""
    for name in (*KEPT_FILES, "final_model.keras", "checkpoint.keras", "report.html", "accuracy.png"):
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"file": name}) if name.endswith(".json") else f"{name} of the run"
        (run_dir / name).write_text(text + "\n")
    (run_dir / "logs").mkdir()
    (run_dir / "logs" / "server.log").write_text("log\n")
    return run_dir


def test_keep_result_copies_exactly_the_small_files_and_the_command(tmp_path):
    run_dir = _finished_run(tmp_path / "run")
    command = ["./run.sh", "--sites", "4", "--run-config", "partitioning='dirichlet' dirichlet-alpha=0.3"]
    kept = keep_result(run_dir, "suite/4_Dir_03", command, root=tmp_path / "results")
    assert kept == tmp_path / "results" / "suite" / "4_Dir_03"
    assert sorted(path.name for path in kept.rglob("*")) == sorted([*KEPT_FILES, COMMAND_FILE])
    for name in KEPT_FILES:
        assert (kept / name).read_text() == (run_dir / name).read_text()
    lines = (kept / COMMAND_FILE).read_text().splitlines()
    assert len(lines) == 1 and shlex.split(lines[0]) == command  # the exact command, one line


def test_keep_result_leaves_no_stale_file_and_refuses_an_unfinished_run(tmp_path):
    run_dir = _finished_run(tmp_path / "run")
    keep_result(run_dir, "name", "python3 benchmarks/x.py", root=tmp_path / "results")
    (run_dir / KEPT_FILES[1]).unlink()  # a run without site metrics
    kept = keep_result(run_dir, "name", "python3 benchmarks/x.py --again", root=tmp_path / "results")
    assert not (kept / KEPT_FILES[1]).exists()
    assert (kept / COMMAND_FILE).read_text() == "python3 benchmarks/x.py --again\n"
    with pytest.raises(FileNotFoundError, match="not a finished run"):
        keep_result(tmp_path / "empty", "other", "cmd", root=tmp_path / "results")


def test_keep_result_keeps_the_measured_numbers_and_drops_an_old_measurement(tmp_path):
    run_dir = _finished_run(tmp_path / "run")
    (run_dir / RESULTS_CSV).write_text("round,accuracy,f1_macro,elapsed_s\n0,0.2,0.1,0\n1,0.5,0.4,61.5\n")
    (run_dir / RUN_CONFIG).write_text(json.dumps({"num-partitions": 10}))
    figures = {"command": "./run.sh --sites 10", "wall_s": 61.5, "command_s": 70.2, "s_to_97": None,
               "round_latency_s": [30.1, 31.4], "peak_total_gib": 7.46, "peak_server_gib": 1.2,
               "peak_site_gib": 0.61, "model": "cnn", "sites": 10}  # fmt: skip
    kept = keep_result(
        run_dir, "scale/10", figures["command"], root=tmp_path / "results", measurement=figures
    )
    assert json.loads((kept / MEASUREMENT).read_text()) == {
        "wall_s": 61.5, "command_s": 70.2, "round_latency_s": [30.1, 31.4], "peak_total_gib": 7.46,
        "peak_server_gib": 1.2, "peak_site_gib": 0.61, "sites": 10,
    }  # fmt: skip
    (run,) = load_runs(tmp_path / "results")
    assert run.cells["peak memory, all processes"] == "7.46 GiB"
    keep_result(run_dir, "scale/10", "./run.sh --again", root=tmp_path / "results")  # kept unmeasured
    assert not (kept / MEASUREMENT).exists()


def test_a_kept_command_reruns_from_the_repository_root():
    data, runs = ROOT.parent / "shared" / "data", ROOT / "benchmarks" / "runs" / "x"
    command = [str(ROOT / "run.sh"), "--data-dir", str(data), "--output-dir", str(runs), "--port", "9"]
    command += ["--run-config", f"partitioning='iid' output-dir='{runs}'", "--certs-dir", "/tmp/certs"]
    assert shown_command(command) == (
        "./run.sh --data-dir ../shared/data --output-dir benchmarks/runs/x --port 9 "
        "--run-config \"partitioning='iid' output-dir='benchmarks/runs/x'\" --certs-dir /tmp/certs"
    )  # paths in the checkout and beside it relative; others as they are
    assert shown_command(["brainfl", "local", "--app-dir", str(ROOT)]) == "brainfl local --app-dir ."


def test_the_earlier_spellings_still_parse_with_a_warning(capsys):
    parser = argparse.ArgumentParser(prog="script.py")
    add_output_dir(parser, None)
    add_keep(parser, bare="decode-speed")
    args = parser.parse_args(["--out", "scratch", "--keep"])
    assert (args.output_dir, args.keep) == (Path("scratch"), "decode-speed")
    assert capsys.readouterr().err.splitlines() == [
        "script.py: warning: --out is deprecated, use --output-dir",
        "script.py: warning: --keep without a NAME is deprecated, use --keep decode-speed",
    ]
    args = parser.parse_args(["--output-dir", "scratch", "--keep", "decode-2"])
    assert (args.output_dir, args.keep) == (Path("scratch"), "decode-2") and not capsys.readouterr().err
    assert "--out " not in parser.format_help()  # hidden
    assert parser.parse_args([]).keep is None  # kept only when asked


def test_make_subset_links_n_seeded_images_per_class_and_split(tmp_path):
    source = make_dataset(tmp_path / "full", train_per_class=5, test_per_class=2)
    subset = make_subset(source, tmp_path / "subset", per_class=3, seed=1)
    for split, expected in (("Training", 3), ("Testing", 2)):  # a class with fewer is linked whole
        for name in CLASSES:
            links = sorted((subset / split / name).iterdir())
            assert len(links) == expected and all(link.is_symlink() for link in links)
            assert all(link.resolve().parent == (source / split / name).resolve() for link in links)
    again = make_subset(source, tmp_path / "subset", per_class=3, seed=1)  # same call: nothing changes
    assert sorted(again.rglob("*.jpg")) == sorted(subset.rglob("*.jpg"))
    other = make_subset(source, tmp_path / "other", per_class=3, seed=2)
    names = [sorted(p.name for p in root.glob("Training/*/*.jpg")) for root in (subset, other)]
    assert names[0] != names[1]  # the seed picks the images
    with pytest.raises(ValueError, match="at least 1"):
        make_subset(source, tmp_path / "none", per_class=0)


@pytest.mark.e2e
def test_suite_tiny_mode_writes_the_table_and_the_plot(tmp_path, real_data):
    out = tmp_path / "suite"
    run_benchmark("suite.py", "--tiny", "--data-dir", str(real_data), "--output-dir", str(out))
    table = (out / "suite.md").read_text()
    for setting in ("| centralized |", "| 4 IID |"):
        assert setting in table
    central_row = next(line for line in table.splitlines() if line.startswith("| centralized |"))
    assert central_row.rstrip(" |").endswith("1.0 | 1.0"), central_row  # its own time ratios
    assert (out / "suite_accuracy.png").stat().st_size > 10_000
