"""Tests of ``brainfl prepare`` and ``--run-config``: conf files, pairs, strict one-line errors."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

import brainfl
from brainfl import cli
from brainfl.settings import run_config as run_configs
from conftest import REPO_ROOT

CONF = REPO_ROOT / "conf"


def run_prepare(capsys, *run_configs: str, extra: tuple[str, ...] = ()) -> tuple[int, str, list[str]]:
    """(exit code, stdout, the ``brainfl: error:`` lines) of ``brainfl prepare`` on the sample data."""
    argv = ["prepare", "--app-dir", str(REPO_ROOT), "--run-config", f"data-dir='{REPO_ROOT / 'sample_data'}'"]
    for run_config in run_configs:
        argv += ["--run-config", run_config]
    code = cli.main([*argv, *extra])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.startswith("brainfl: error:")]


@pytest.mark.parametrize(
    ("run_config", "expected"),
    [
        ("data-dir='/no/such/folder'", "data directory not found: /no/such/folder"),
        ("model='resnet'", "unknown model 'resnet'"),
        ("augmentation='flip,sharpen'", "setting 'augmentation': unknown transform 'sharpen'"),
        ("num-server-rounds=0", "'num-server-rounds' must be positive"),
        ("num-partitions=1000", "1000 sites but only 80 training images"),
        ("numserverrounds=3", "unknown setting 'numserverrounds'; did you mean 'num-server-rounds'?"),
        ("local-epochs 1", "'local-epochs' is not key=value"),
        ("local-epochs=1 seed", "'seed' is not key=value"),
        ("model=vgg16", "model=vgg16: not a TOML value (quote text: model='vgg16')"),
        ("proximal-mu=0.1", "'proximal-mu'=0.1 has no effect unless strategy=fedprox"),
        ("bn-statistics='mean'", "setting 'bn-statistics': unknown 'mean' (choose one of: averaged, pooled)"),
        ("bn-statistics='pooled' fedbn=true", "setting 'bn-statistics': pooling the sites' BatchNorm"),
        ("bn-statistics='pooled' norm='group'", "needs model=cnn or rescnn with norm=batch"),
        ("bn-statistics='pooled' strategy='krum'", "the robust aggregation of strategy=krum"),
        ("conf/no-such-recipe.toml", "conf file not found: conf/no-such-recipe.toml"),
    ],
)
def test_user_mistakes_give_one_clear_line_and_exit_code_2(capsys, run_config, expected):
    code, _, errors = run_prepare(capsys, run_config)
    assert code == 2
    assert len(errors) == 1 and expected in errors[0], errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("local-epochs = 2\nattack = 'nan'\n", "unknown setting 'attack'"),
        ("local-epochs = \n", "cannot read"),
        ("[model]\nname = 'cnn'\n", "unknown setting 'model.name'"),
        ("seed = [1, 2]\n", "setting 'seed' must be a bool, number or text"),
    ],
)
def test_a_bad_conf_file_is_named_in_one_line(capsys, tmp_path, text, expected):
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    code, _, errors = run_prepare(capsys, str(conf))
    assert code == 2
    assert len(errors) == 1 and expected in errors[0] and ("bad.toml" in errors[0]), errors


def test_prepare_accepts_the_sample_and_reports_it(capsys):
    code, out, errors = run_prepare(capsys, "num-partitions=2")
    assert code == 0, errors
    assert "80 training images in 4 classes (glioma, meningioma, notumor, pituitary), 32 test images" in out


def test_conf_file_and_pairs_combine_and_the_written_config_is_what_flower_reads(capsys, tmp_path):
    written = tmp_path / "run_config.toml"
    code, out, errors = run_prepare(
        capsys,
        str(CONF / "dirichlet-0.3.toml"),
        "local-epochs=2",
        extra=("--await-all-sites", "--write-run-config", str(written)),
    )
    assert code == 0, errors
    assert 'partitioning="dirichlet"' in out and "dirichlet-alpha=0.3" in out and "local-epochs=2" in out
    config = tomllib.loads(written.read_text())
    assert config["partitioning"] == "dirichlet" and config["balanced-softmax"] is True
    assert config["local-epochs"] == 2 and config["wait-for-sites"] == config["num-partitions"]
    assert parse_config_args([str(written)]) == config  # `flwr run --run-config FILE` reads the same
    assert set(config) == set(run_configs.default_run_config(REPO_ROOT))


def test_later_run_configs_win(capsys, tmp_path):
    written = tmp_path / "run_config.toml"
    extra = ("--write-run-config", str(written))
    code, _, errors = run_prepare(capsys, str(CONF / "iid-4-sites.toml"), "num-server-rounds=2", extra=extra)
    assert code == 0, errors
    config = tomllib.loads(written.read_text())
    assert (config["num-server-rounds"], config["num-partitions"]) == (2, 4)


def test_pairs_take_quoted_text_with_spaces_and_flowers_value_types():
    parsed = run_configs.parse_pairs("""model='cnn' data-dir="/a b/c" seed=3 dp-delta=1e-5 resume=true""")
    assert parsed == {"model": "cnn", "data-dir": "/a b/c", "seed": 3, "dp-delta": 1e-5, "resume": True}
    assert parsed == parse_config_args(["""model='cnn' data-dir="/a b/c" seed=3 dp-delta=1e-5 resume=true"""])


def test_written_toml_round_trips_any_text():
    config = {"data-dir": 'we"ird\\path\tx é', "seed": 1, "dp-delta": 1e-5, "resume": False}
    assert tomllib.loads(run_configs.to_toml(config)) == config


def _run_sh(*args: str) -> subprocess.CompletedProcess:
    """``run.sh`` from the repository root (conf paths are relative to the working directory)."""
    return subprocess.run(
        [str(REPO_ROOT / "run.sh"), *args], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )


def test_run_sh_hands_a_conf_file_to_brainfl_prepare(tmp_path):
    """run.sh checks the conf file with `brainfl prepare`, then stops at its port check (port taken)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = ["--output-dir", str(tmp_path / "out"), "--port", str(port)]
        result = _run_sh("--run-config", "conf/dirichlet-0.3.toml", *options)
    assert 'settings: partitioning="dirichlet"' in result.stdout, result.stderr
    assert "data ok: 80 training images" in result.stdout
    assert result.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in result.stderr


@pytest.mark.parametrize(
    ("run_config", "expected"),
    [
        ("conf/missing.toml", "conf file not found: conf/missing.toml"),
        ("local-epochs 1", "'local-epochs' is not key=value"),
    ],
)
def test_run_sh_stops_on_a_bad_run_config_with_one_line(tmp_path, run_config, expected):
    result = _run_sh("--run-config", run_config, "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if re.match(r"(brainfl|run\.sh): error:", line)]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_prepare_prints_the_layout(capsys, tmp_path):
    from test_layouts import build_folders

    code, out, errors = run_prepare(capsys)
    assert code == 0, errors
    assert "layout: kaggle split\n" in out
    root = build_folders(tmp_path / "nested", per_class=10, patients=5)
    code, out, errors = run_prepare(capsys, f"data-dir='{root}' image-size=16")
    assert code == 0, errors
    assert "layout: class folders (hold-out test); 16 training patients, each kept whole in one split" in out
    assert "data ok: 32 training images in 4 classes" in out


def _data_mistakes(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Folders with one data mistake each: (data folder, the expected error line's text)."""
    from test_layouts import build_folders, link, sample_scans, write_labels_csv

    few = build_folders(tmp_path / "few", per_class=2, split="Training")
    one = build_folders(tmp_path / "one", per_class=4, classes=("glioma",))
    csv_dir = tmp_path / "csv"
    first = link(sample_scans("glioma")[0], csv_dir / "a.jpg").name
    write_labels_csv(csv_dir, [(first, "glioma"), ("missing.jpg", "notumor")], "path,label")
    odd = build_folders(tmp_path / "odd", per_class=3)
    (odd / "notumor" / "scan.nii").write_bytes(b"\x5c\x01 nifti")
    return {
        "few": (few, f"setting 'test-fraction'=0.2: too few images in {few / 'Training'}"),
        "one": (one, f"only one class (glioma) in {one}: need at least 2 classes"),
        "csv": (csv_dir, f"{csv_dir / 'labels.csv'} line 3: unknown path 'missing.jpg'"),
        "odd": (odd, f"unsupported scan file {odd / 'notumor' / 'scan.nii'}"),
    }


@pytest.mark.parametrize("mistake", ["few", "one", "csv", "odd"])
def test_data_mistakes_give_one_line_naming_the_file_or_setting(capsys, tmp_path, mistake):
    data_dir, expected = _data_mistakes(tmp_path)[mistake]
    code, _, errors = run_prepare(capsys, f"data-dir='{data_dir}' image-size=16")
    assert code == 2
    assert len(errors) == 1 and expected in errors[0], errors


@pytest.mark.parametrize(
    ("run_config", "expected"),
    [
        ("model='vgg16' vgg-weights='/no/such/vgg.h5'", "setting 'vgg-weights'='/no/such/vgg.h5': not none"),
        ("model='vgg16' vgg-weights='imagenett'", "setting 'vgg-weights'='imagenett': not none, imagenet"),
        ("image-size=1000000", "setting 'image-size'=1000000: 32 images of 1000000x1000000x1 need"),
    ],
)
def test_model_settings_are_checked_before_flower_starts(capsys, run_config, expected):
    code, _, errors = run_prepare(capsys, run_config)
    assert code == 2
    assert len(errors) == 1 and expected in errors[0], errors


def test_unwritable_cache_folder_and_outputs_are_one_line_errors(capsys, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, errors = run_prepare(capsys, extra=("--write-run-config", str(blocker / "run.toml")))
    assert code == 2 and len(errors) == 1 and f"--write-run-config: cannot write {blocker}" in errors[0]
    code = cli.main(["check-data", str(REPO_ROOT / "sample_data"), "--output-dir", str(blocker / "out")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("brainfl: error:")]
    assert code == 2 and len(errors) == 1 and f"--output-dir: cannot write {blocker / 'out'}" in errors[0]
    assert f"{blocker} is a file, not a folder" in errors[0]
    monkeypatch.setenv("BRAINFL_CACHE_DIR", str(blocker / "cache"))
    code, _, errors = run_prepare(capsys, "image-size=17")
    assert code == 2 and len(errors) == 1
    assert (
        f"cannot write to the cache folder {blocker / 'cache'}" in errors[0]
        and "BRAINFL_CACHE_DIR" in errors[0]
    )


def test_prepare_loads_each_site_folder_before_flower_starts(capsys, tmp_path) -> None:
    sample = str(REPO_ROOT / "sample_data")
    code, out, errors = run_prepare(capsys, extra=("--site-data-dir", sample, "--site-data-dir", sample))
    assert code == 0 and not errors
    assert "site 0: " in out and "site 1: " in out and "training and" in out
    missing = str(tmp_path / "no-such-site")
    code, _, errors = run_prepare(capsys, extra=("--site-data-dir", sample, "--site-data-dir", missing))
    assert code == 2 and len(errors) == 1 and missing in errors[0]
    code, _, errors = run_prepare(capsys, extra=("--site-data-dir", sample))
    assert code == 2 and "1 folders for 2 sites" in errors[0]


def test_run_sh_takes_site_folders_once_per_site_as_brainfl_does():
    """``--site-data-dir DIR`` per site, as ``brainfl prepare``/``local``/``pooled`` take it; the earlier
    ``--site-data-dirs "A B"`` still parses, with a warning."""
    run_sh = str(REPO_ROOT / "run.sh")
    usage = subprocess.run([run_sh, "--help"], capture_output=True, text=True, check=True).stdout
    assert "--site-data-dir DIR" in usage and "--site-data-dirs" not in usage
    old = subprocess.run([run_sh, "--site-data-dirs", "a b", "--help"], capture_output=True, text=True)
    assert old.returncode == 0 and "--site-data-dirs is deprecated, use --site-data-dir" in old.stderr
    one = subprocess.run(
        [run_sh, "--sites", "2", "--site-data-dir", str(REPO_ROOT / "sample_data")],
        capture_output=True,
        text=True,
    )
    assert one.returncode == 2 and "1 folders for 2 sites" in one.stderr


def test_prepare_refuses_an_output_folder_that_holds_a_run(capsys, tmp_path):
    (tmp_path / "federated_learning_results.csv").write_text("round,loss\n0,1.0\n")
    code, _, errors = run_prepare(capsys, f"output-dir='{tmp_path}'")
    assert code == 2 and len(errors) == 1 and f"output-dir {tmp_path} already holds a run" in errors[0]
    assert run_prepare(capsys, f"output-dir='{tmp_path}' resume=true")[0] == 0


def test_run_sh_checks_ports_sites_and_quotes_before_starting(tmp_path):
    run_sh = str(REPO_ROOT / "run.sh")
    for options, expected in (
        (
            ["--port", "70000"],
            "--port 70000: the SuperLink's port and the 0 SuperNodes' next ports must lie in",
        ),
        (["--port", "0"], "--port 0: the SuperLink's port"),
        (["--sites", "2", "--min-sites", "3"], "--min-sites 3 is more than --sites 2"),
        (["--adapt"], "--adapt goes with --validate MODEL"),
        (["--validate", "m.keras", "--baselines"], "--validate trains nothing: it takes no --baselines"),
    ):
        result = subprocess.run([run_sh, *options], capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and expected in result.stderr, (
            options
        )
    # a data folder whose name holds a quote is read as the path it is, not blamed on --run-config
    quoted = tmp_path / "it's here"
    result = subprocess.run([run_sh, "--data-dir", str(quoted)], capture_output=True, text=True)
    assert result.returncode == 2 and f"data directory not found: {quoted}" in result.stderr
    assert "--run-config" not in result.stderr
    # a model to validate that is not there is named before any Flower process starts
    result = subprocess.run(
        [run_sh, "--validate", str(tmp_path / "none.keras")], capture_output=True, text=True
    )
    assert (
        result.returncode == 2
        and f"{tmp_path / 'none.keras'} is neither a model file nor a run folder" in (result.stderr)
    )


def test_prepare_refuses_more_minimum_sites_than_sites(capsys):
    code, _, errors = run_prepare(capsys, "num-partitions=2 min-sites=3")
    assert code == 2 and len(errors) == 1 and "'min-sites'=3 is more than num-partitions=2" in errors[0]


# brainfl's main in a fresh interpreter; prints its exit code and whether TensorFlow and Keras got imported.
MAIN_AND_IMPORTS = """
import sys
from brainfl import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as stop:  # --help
    code = stop.code
print(code, "tensorflow" in sys.modules, "keras" in sys.modules)
"""


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["prepare", "--app-dir", str(REPO_ROOT), "--run-config", f"data-dir='{REPO_ROOT / 'sample_data'}'"],
        ["certs", "--output-dir", "{tmp}/certs", "--sites", "1"],
        ["check-data", str(REPO_ROOT / "sample_data"), "--output-dir", "{tmp}/check"],
    ],
    ids=lambda command: command[0],
)
def test_commands_that_need_no_model_start_without_tensorflow(tmp_path, command):
    """TensorFlow takes seconds to import: prepare (which run.sh runs first), certs and check-data,
    and brainfl --help, never import it, nor Keras."""
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in command]
    source = str(Path(brainfl.__file__).resolve().parents[1])  # the brainfl under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", MAIN_AND_IMPORTS, *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "0 False False", result.stdout[-3000:]
