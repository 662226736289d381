"""Tests of the duplicate / leakage check (brainfl.data.duplicates, `brainfl check-data`) on tiny folders."""

from __future__ import annotations

import hashlib
import itertools
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFilter

from brainfl import cli
from brainfl.core.errors import BrainFLError
from brainfl.data import check as data_check
from brainfl.data import duplicates
from brainfl.data.check import check_data, summarize
from brainfl.data.duplicates import (
    NEAR_DUPLICATE_THRESHOLD,
    PAIR_COLUMNS,
    find_duplicates,
    hash_images,
    leak_free_test_files,
    leak_free_test_mask,
    near_pairs,
)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private hash cache (conftest's isolated_cache does the same; kept so this file stands alone)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BRAINFL_CACHE_DIR", str(cache))
    return cache


def phantom(seed: int, size: int = 128) -> Image.Image:
    """A smooth MRI-like grayscale image: a bright ellipse with blobs on black, different per seed."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    m = size // 8
    box = [m + rng.integers(0, m), m + rng.integers(0, m), size - m - rng.integers(0, m), size - m]
    draw.ellipse([int(v) for v in box], fill=int(rng.integers(90, 160)))
    for _ in range(4):
        x, y = (int(v) for v in rng.integers(size // 4, 3 * size // 4, 2))
        r = int(rng.integers(size // 16, size // 6))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=int(rng.integers(30, 255)))
    return image.filter(ImageFilter.GaussianBlur(2))


def save(image: Image.Image, path: Path, quality: int = 95) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=quality)
    return path


def copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def reencode(source: Path, target: Path) -> Path:
    """The same picture, resized, as RGB and at a lower JPEG quality: other bytes, same image."""
    with Image.open(source) as image:
        return save(image.resize((96, 96)).convert("RGB"), target, quality=60)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Training: glioma g0-g2 (+ exact copy of g0), notumor n0-n2; Testing: copies and new images.

    Testing/glioma: te_exact (bytes of Training g1), te_near (g2 re-encoded), te_new (unseen).
    Testing/notumor: te_conflict (bytes of Training glioma g0, so a label conflict), te_new (unseen).
    """
    root = tmp_path / "data"
    train, test = root / "Training", root / "Testing"
    for index in range(3):
        save(phantom(index), train / "glioma" / f"g{index}.jpg")
        save(phantom(10 + index), train / "notumor" / f"n{index}.jpg")
    copy(train / "glioma" / "g0.jpg", train / "glioma" / "g0_copy.jpg")
    copy(train / "glioma" / "g1.jpg", test / "glioma" / "te_exact.jpg")
    reencode(train / "glioma" / "g2.jpg", test / "glioma" / "te_near.jpg")
    save(phantom(20), test / "glioma" / "te_new.jpg")
    copy(train / "glioma" / "g0.jpg", test / "notumor" / "te_conflict.jpg")
    save(phantom(21), test / "notumor" / "te_new.jpg")
    # hidden files and folders are not data
    copy(train / "notumor" / "n0.jpg", test / "glioma" / ".ipynb_checkpoints" / "n0-checkpoint.jpg")
    copy(train / "notumor" / "n1.jpg", test / "notumor" / ".n1.jpg")
    return root


def pair_set(pairs: pd.DataFrame, kind: str | None = None) -> set[tuple[str, str]]:
    if kind is not None:
        pairs = pairs[pairs["kind"] == kind]
    return set(zip(pairs["file_a"], pairs["file_b"], strict=True))


def test_hash_images_one_row_per_visible_image(dataset: Path) -> None:
    table = hash_images(dataset)
    assert list(table.columns) == ["file", "split", "label", "md5", "phash"]
    assert len(table) == 12  # 7 Training + 5 Testing; hidden ones skipped
    assert not table["file"].str.contains("/\\.", regex=True).any()
    row = table.set_index("file").loc["Testing/notumor/te_conflict.jpg"]
    assert (row["split"], row["label"]) == ("Testing", "notumor")
    expected_md5 = hashlib.md5((dataset / "Training/glioma/g0.jpg").read_bytes()).hexdigest()
    assert row["md5"] == expected_md5
    assert table["phash"].str.fullmatch("[0-9a-f]{64}").all()
    assert list(table["split"].unique()) == ["Training", "Testing"]


def test_find_duplicates_exact_near_and_unrelated(dataset: Path) -> None:
    pairs = find_duplicates(hash_images(dataset))
    assert list(pairs.columns) == PAIR_COLUMNS
    assert pair_set(pairs, "exact") == {
        ("Training/glioma/g0.jpg", "Training/glioma/g0_copy.jpg"),
        ("Training/glioma/g0.jpg", "Testing/notumor/te_conflict.jpg"),
        ("Training/glioma/g0_copy.jpg", "Testing/notumor/te_conflict.jpg"),
        ("Training/glioma/g1.jpg", "Testing/glioma/te_exact.jpg"),
    }
    assert pair_set(pairs, "near") == {("Training/glioma/g2.jpg", "Testing/glioma/te_near.jpg")}
    near = pairs[pairs["kind"] == "near"].iloc[0]
    assert 0 <= near["distance"] <= NEAR_DUPLICATE_THRESHOLD
    assert (pairs.loc[pairs["kind"] == "exact", "distance"] == 0).all()
    paired = set(pairs["file_a"]) | set(pairs["file_b"])
    assert "Testing/glioma/te_new.jpg" not in paired
    assert "Testing/notumor/te_new.jpg" not in paired
    assert not paired & {f"Training/notumor/n{index}.jpg" for index in range(3)}


def test_near_copy_needs_the_threshold(dataset: Path) -> None:
    table = hash_images(dataset)
    near = find_duplicates(table).query("kind == 'near'")
    distance = int(near["distance"].iloc[0])
    if distance > 0:  # a stricter threshold drops the re-encoded copy
        below = find_duplicates(table, threshold=distance - 1)
        assert not (below["kind"] == "near").any()
    # distinct images are far apart: even a loose threshold adds no pair among them
    loose = find_duplicates(table, threshold=40)
    assert pair_set(loose) == pair_set(find_duplicates(table))


def test_leak_free_test_files_excludes_exactly_the_copies(dataset: Path) -> None:
    assert leak_free_test_files(dataset) == {"Testing/glioma/te_new.jpg", "Testing/notumor/te_new.jpg"}


def test_leak_free_mask_marks_exactly_the_leak_free_files(dataset: Path) -> None:
    files = ["Testing/glioma/te_new.jpg", "Testing/glioma/missing.jpg", "Testing/notumor/te_new.jpg"]
    assert leak_free_test_mask(dataset, files).tolist() == [True, False, True]


def test_leak_free_paths_match_the_data_loader(dataset: Path) -> None:
    from brainfl.data.loading import load_dataset

    test_files = set(load_dataset(dataset, image_size=32, channels=1).test.files)
    assert leak_free_test_files(dataset) < test_files


def test_summary_counts_and_label_conflicts(dataset: Path) -> None:
    table = hash_images(dataset)
    summary = summarize(find_duplicates(table), table)
    assert list(summary.columns) == ["exact", "near", "any"]
    assert summary.loc["duplicate pairs within Training"].tolist() == [1, 0, 1]
    assert summary.loc["duplicate pairs within Testing"].tolist() == [0, 0, 0]
    assert summary.loc["duplicate pairs across Training/Testing"].tolist() == [3, 1, 4]
    assert summary.loc["label conflicts across Training/Testing"].tolist() == [2, 0, 2]
    assert summary.loc["label conflicts within Training"].tolist() == [0, 0, 0]
    assert summary.loc["Testing images with a copy in Training"].tolist() == [2, 1, 3]
    assert summary.loc["leak-free Testing images"].tolist() == [3, 4, 2]


def test_near_pairs_match_brute_force_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(duplicates, "BLOCK_ROWS", 7)  # many blocks, a ragged last one
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, 256, dtype=np.uint8)
    bits = np.tile(base, (30, 1))
    for row in bits:  # flip a few random bits of the same hash: distances 0..~24
        row[rng.choice(256, size=int(rng.integers(0, 13)), replace=False)] ^= 1
    phashes = [np.packbits(row).tobytes().hex() for row in bits]
    for threshold in (0, 6, 12):
        got = near_pairs(phashes, threshold)
        expected = [
            (i, j, int((bits[i] != bits[j]).sum()))
            for i, j in itertools.combinations(range(len(bits)), 2)
            if (bits[i] != bits[j]).sum() <= threshold
        ]
        assert sorted(zip(*(a.tolist() for a in got), strict=True)) == expected
    assert len(expected) > 0


def test_hashes_are_cached_and_refreshed_when_a_file_changes(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = hash_images(dataset)

    def fail(path: Path) -> tuple[str, str]:
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(duplicates, "hash_image", fail)
    pd.testing.assert_frame_equal(hash_images(dataset), first)
    save(phantom(99), dataset / "Testing" / "glioma" / "te_new.jpg")
    with pytest.raises(AssertionError, match="decoded"):
        hash_images(dataset)


def test_undecodable_image_names_the_file(dataset: Path) -> None:
    bad = dataset / "Training" / "notumor" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(BrainFLError, match=r"Training/notumor/broken\.jpg"):
        hash_images(dataset)


def test_missing_folders_and_bad_threshold_are_user_errors(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(BrainFLError, match="not found"):
        hash_images(tmp_path / "nowhere")
    with pytest.raises(BrainFLError, match="Training"):
        hash_images(dataset / "Testing")
    with pytest.raises(BrainFLError, match="threshold"):
        check_data(dataset, tmp_path / "out", threshold=-1)
    with pytest.raises(BrainFLError, match="threshold"):
        find_duplicates(hash_images(dataset), threshold=duplicates.MAX_THRESHOLD + 1)


def test_without_testing_folder_nothing_is_leak_free(dataset: Path) -> None:
    shutil.rmtree(dataset / "Testing")
    assert set(hash_images(dataset)["split"]) == {"Training"}
    assert leak_free_test_files(dataset) == set()


def test_check_data_prints_and_writes(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    summary = check_data(dataset, out, NEAR_DUPLICATE_THRESHOLD)
    printed = capsys.readouterr().out
    assert "label conflicts across Training/Testing" in printed
    assert "leak-free Testing images" in printed
    written = pd.read_csv(out / "duplicates.csv")
    assert list(written.columns) == PAIR_COLUMNS
    assert len(written) == summary["any"].iloc[:3].sum() == 5
    assert (out / "leak_free_test_files.txt").read_text().splitlines() == [
        "Testing/glioma/te_new.jpg",
        "Testing/notumor/te_new.jpg",
    ]
    assert pd.read_csv(out / "summary.csv", index_col=0).equals(summary)


def test_check_data_defaults_to_cwd(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    check_data(dataset, None)
    assert (tmp_path / "data_check" / "duplicates.csv").is_file()


def test_old_names_stay_importable_from_data_check() -> None:
    """server_app and the benchmarks import the leak-free mask from brainfl.data.check."""
    for name in data_check.__all__:
        assert hasattr(data_check, name), name
    assert data_check.leak_free_test_mask is leak_free_test_mask
    assert data_check.find_duplicates is find_duplicates


def test_the_command_line_wires_the_subcommand(dataset: Path, tmp_path: Path) -> None:
    parser = cli.build_parser()
    out = tmp_path / "cli-out"
    args = parser.parse_args(["check-data", str(dataset), "--output-dir", str(out), "--threshold", "0"])
    assert (args.data_dir, args.output_dir, args.threshold) == (dataset, out, 0)
    args.handler(args)
    assert (out / "leak_free_test_files.txt").is_file()
    defaults = parser.parse_args(["check-data", str(dataset)])
    assert (defaults.output_dir, defaults.threshold) == (None, NEAR_DUPLICATE_THRESHOLD)


def test_real_dataset_has_the_documented_exact_leak(real_data: Path) -> None:
    table = hash_images(real_data)
    summary = summarize(find_duplicates(table), table)
    assert len(table) == 7019
    # its README: 216 of the 1,311 Testing images are byte-identical to Training images
    assert summary.loc["Testing images with a copy in Training", "exact"] == 216
    assert summary.loc["Testing images with a copy in Training", "any"] > 216


def test_server_leak_free_mask_marks_only_test_images_without_a_training_copy(tmp_path):
    import shutil

    from brainfl.data.loading import load_dataset
    from brainfl.evaluation.test_set import leak_free_mask
    from brainfl.settings.run_settings import settings_with
    from conftest import make_dataset

    root = make_dataset(tmp_path / "leaky", train_per_class=3, test_per_class=2)
    copied = root / "Testing" / "glioma" / "Te-glioma-0.jpg"
    shutil.copy(root / "Training" / "notumor" / "Tr-notumor-1.jpg", copied)
    dataset = load_dataset(root, 16, 1)
    mask = leak_free_mask(settings_with(data_dir=str(root)).data, dataset)
    flagged = [name for name, clean in zip(dataset.test.files, mask, strict=True) if not clean]
    assert flagged == ["Testing/glioma/Te-glioma-0.jpg"]


def test_patients_in_both_splits_are_reported_next_to_the_duplicates(tmp_path: Path, capsys) -> None:
    from test_layouts import build_folders

    root = build_folders(tmp_path / "d", per_class=4, patients=2, split="Training")  # <class>-p0, -p1
    build_folders(root, per_class=2, patients=1, split="Testing")  # <class>-p0: also in Training
    check_data(root, tmp_path / "out")
    printed = capsys.readouterr().out
    assert "patients in both Training and Testing: 4 (glioma/glioma-p0, meningioma/meningioma-p0" in printed
    listed = (tmp_path / "out" / "patients_in_both_splits.txt").read_text().splitlines()
    assert listed == [f"{name}/{name}-p0" for name in ("glioma", "meningioma", "notumor", "pituitary")]
    assert data_check.shared_patients(hash_images(root)) == listed
    assert "under more than one class" not in printed


def test_a_patient_folder_under_two_classes_is_reported(tmp_path: Path, capsys) -> None:
    from test_layouts import CLASSES, link, sample_scans

    for split in ("Training", "Testing"):
        for name in CLASSES:
            patient = "pt-shared" if name in ("glioma", "notumor") else f"{name}-own"
            for scan in sample_scans(name, split)[:2]:
                link(scan, tmp_path / "d" / split / name / patient / scan.name)
    check_data(tmp_path / "d", tmp_path / "out")
    printed = capsys.readouterr().out
    assert "patient folders under more than one class (one patient per class): 1 (pt-shared)" in printed


def test_patients_are_not_checked_unless_both_splits_are_grouped(
    dataset: Path, tmp_path: Path, capsys
) -> None:
    assert data_check.shared_patients(hash_images(dataset)) is None
    check_data(dataset, tmp_path / "out")
    assert "patients in both" not in capsys.readouterr().out
    assert not (tmp_path / "out" / "patients_in_both_splits.txt").exists()
