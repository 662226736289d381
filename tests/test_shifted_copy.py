"""Tests of ``benchmarks/shifted_copy.py`` on a few committed sample scans in a Kaggle-layout folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import CLASSES, REPO_ROOT
from preparation_shift import RESOLUTIONS, draw_shift
from shifted_copy import (
    ALL,
    COPY_FILE,
    LEAK_FREE,
    MANIFEST,
    SHIFTED,
    SHIFTED_LEAK_FREE,
    main,
    make_copy,
)

SAMPLE = REPO_ROOT / "sample_data"
BYTE_COPY = "Testing/glioma/Te-copy.jpg"  # the bytes of a Training scan
REENCODED = "Testing/meningioma/Te-reencoded.jpg"  # a Training scan saved again as JPEG
IMAGE_SIZE = 32


def _sample(split: str, name: str, count: int) -> list[Path]:
    return sorted((SAMPLE / split / name).iterdir())[:count]


def make_data(root: Path, test_per_class: int = 2) -> Path:
    """3 Training and ``test_per_class`` Testing sample scans per class, plus two planted copies."""
    for split, count in (("Training", 3), ("Testing", test_per_class)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for path in _sample(split, name, count):
                shutil.copy(path, root / split / name / path.name)
    shutil.copy(_sample("Training", "glioma", 1)[0], root / BYTE_COPY)
    with Image.open(_sample("Training", "meningioma", 1)[0]) as image:
        image.save(root / REENCODED, quality=75)
    return root


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def copied(data: Path, out: Path, seed: int = 0) -> dict[str, bytes]:
    """The PNGs (by path under ``all/``) of a fresh copy of ``data``."""
    make_copy(data, out, seed=seed, command="x")
    return pngs(out / ALL)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("shifted") / "data")


@pytest.fixture(scope="module")
def copy(data, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("shifted") / "copy"
    with pytest.MonkeyPatch.context() as patch:  # module-scoped: its own hash cache
        patch.setenv("BRAINFL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return out, make_copy(data, out, seed=0, command="make it")


def test_the_drawn_shift_depends_on_the_seed_and_the_path_only():
    assert draw_shift(0, "Testing/glioma/a.jpg") == draw_shift(0, "Testing/glioma/a.jpg")
    assert draw_shift(1, "Testing/glioma/a.jpg") != draw_shift(0, "Testing/glioma/a.jpg")
    assert draw_shift(0, "Testing/glioma/b.jpg") != draw_shift(0, "Testing/glioma/a.jpg")


def test_the_copy_is_deterministic_independent_of_order_and_8_bit_gray(copy, data, tmp_path):
    out, _ = copy
    written = pngs(out / ALL)
    assert len(written) == 2 * len(CLASSES) + 2
    assert copied(data, tmp_path / "again") == written
    other = copied(data, tmp_path / "seed1", seed=1)
    assert other.keys() == written.keys()
    assert all(other[name] != written[name] for name in written)
    # fewer scans listed (another order of the rest): each remaining scan's copy is unchanged
    smaller = copied(make_data(tmp_path / "fewer", test_per_class=1), tmp_path / "fewer-copy")
    assert len(smaller) == len(CLASSES) + 2
    assert all(written[name] == smaller[name] for name in smaller)
    for path in (out / ALL).rglob("*.png"):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "L"
            assert image.width == image.height and image.width in RESOLUTIONS


def test_leak_free_leaves_out_the_byte_copy_and_the_reencoded_copy_only(copy):
    out, manifest = copy
    everything, leak_free = pngs(out / ALL), pngs(out / LEAK_FREE)
    copies = {"glioma/Te-copy.png", "meningioma/Te-reencoded.png"}
    assert leak_free.keys() == everything.keys() - copies
    assert all(leak_free[name] == everything[name] for name in leak_free)
    assert set(manifest.loc[~manifest["leak_free"], "source"]) == {BYTE_COPY, REENCODED}


def test_manifest_rows_match_the_files_written(copy, data):
    out, manifest = copy
    saved = pd.read_csv(out / MANIFEST)
    pd.testing.assert_frame_equal(saved, manifest, check_dtype=False)
    assert sorted(manifest["output"]) == sorted(f"{ALL}/{name}" for name in pngs(out / ALL))
    assert all((data / source).is_file() for source in manifest["source"])
    assert (manifest["output"].str.split("/").str[1] == manifest["class"]).all()
    assert (manifest["source"].str.split("/").str[1] == manifest["class"]).all()
    for row in manifest.itertuples():
        with Image.open(out / row.output) as image:
            assert image.size == (row.resolution, row.resolution)
        assert (out / LEAK_FREE / Path(row.output).relative_to(ALL)).is_file() == row.leak_free
    assert (
        manifest[["margin_left", "margin_top", "margin_right", "margin_bottom"]]
        .stack()
        .between(0, 0.06)
        .all()
    )
    assert manifest["angle"].between(-30, 30).all() and manifest["gamma"].between(0.7, 1.4).all()
    assert manifest["scale"].between(0.55, 1.0).all()
    assert (out / COPY_FILE).read_text().startswith("command: make it\nseed: 0\n")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """An untrained tiny cnn saved with brainfl metadata: scoring needs a model, not a good one."""
    import keras

    from brainfl.model.architectures import build_model
    from brainfl.model.files import model_metadata, save_model

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("model") / "final_model.keras"
    bundle = build_model("cnn", IMAGE_SIZE, len(CLASSES))
    save_model(bundle.inference_model(), path, model_metadata("cnn", CLASSES, IMAGE_SIZE, 1))
    return path


def test_score_writes_both_evaluations_and_keeps_the_small_files(copy, model_file, tmp_path, capsys):
    out, _ = copy
    results = tmp_path / "results"
    run_files = {"federated_learning_results.csv": "round,accuracy\n1,0.5\n", "command.txt": "the run\n"}
    for name, text in run_files.items():
        (results / "run-a").mkdir(parents=True, exist_ok=True)
        (results / "run-a" / name).write_text(text)
    argv = ["score", "--model", str(model_file), "--copy", str(out), "--output-dir", str(tmp_path / "scores")]
    assert main([*argv, "--resamples", "20", "--keep", "run-a"], results_root=results) == 0
    printed = capsys.readouterr().out
    assert f"{SHIFTED}: accuracy" in printed and f"{SHIFTED_LEAK_FREE}: accuracy" in printed
    for folder, scans in ((SHIFTED, 2 * len(CLASSES) + 2), (SHIFTED_LEAK_FREE, 2 * len(CLASSES))):
        table = pd.read_csv(tmp_path / "scores" / folder / "evaluation.csv")
        assert table.loc[table["metric"] == "accuracy", "value"].between(0, 1).all()
        assert json.loads((tmp_path / "scores" / folder / "evaluation.json").read_text())["images"] == scans
        kept = results / "run-a" / folder
        assert sorted(p.name for p in kept.iterdir()) == sorted(
            ["evaluation.csv", "evaluation.json", "command.txt", COPY_FILE]
        )
        assert (
            (kept / "command.txt").read_text().startswith("python3 benchmarks/shifted_copy.py score --model")
        )
        assert (kept / COPY_FILE).read_text().startswith("command: make it\n")
    assert all((results / "run-a" / name).read_text() == text for name, text in run_files.items())


def _error(capsys, argv: list[str], results_root: Path | None = None) -> str:
    assert main(argv, **({} if results_root is None else {"results_root": results_root})) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_bad_input_is_one_line_and_exit_code_2(copy, model_file, tmp_path, capsys):
    out, _ = copy
    no_testing = tmp_path / "no-testing"
    (no_testing / "Training" / "glioma").mkdir(parents=True)
    assert str(no_testing) in _error(
        capsys, ["make", "--data-dir", str(no_testing), "--output-dir", str(tmp_path / "o")]
    )
    missing = tmp_path / "missing.keras"
    score = ["score", "--copy", str(out), "--output-dir", str(tmp_path / "s")]
    assert f"model file not found: {missing}" in _error(capsys, [*score, "--model", str(missing)])
    bare = tmp_path / "bare"
    bare.mkdir()
    message = _error(capsys, ["score", "--model", str(model_file), "--copy", str(bare), "--output-dir", "s"])
    assert f"no {ALL}/ folder in {bare}" in message
    message = _error(capsys, [*score, "--model", str(model_file), "--keep", "nope"], tmp_path / "results")
    assert str(tmp_path / "results" / "nope") in message
    script = str(REPO_ROOT / "benchmarks" / "shifted_copy.py")
    make = ["make", "--data-dir", str(no_testing), "--output-dir", str(tmp_path / "o")]
    result = subprocess.run([sys.executable, script, *make], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and str(no_testing) in result.stderr
