"""Tests of the data folder layouts (Kaggle split, class folders, labels.csv) and patient-grouped splits.

The folders are built in tmp_path from symlinks to real scans of ``sample_data``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from brainfl.core.errors import BrainFLError
from brainfl.data.layouts import CLASS_FOLDERS, KAGGLE_SPLIT, LABELS_CSV, detect_layout, split_patient
from brainfl.data.loading import ImageSet, load_dataset, load_images
from brainfl.data.sites import site_data
from brainfl.settings.run_settings import settings_with
from conftest import CLASSES, REPO_ROOT

SAMPLE = REPO_ROOT / "sample_data"


def sample_scans(class_name: str, split: str = "Training") -> list[Path]:
    """The real scans of one class of ``sample_data`` (20 per class in Training, 8 in Testing)."""
    return sorted((SAMPLE / split / class_name).glob("*.jpg"))


def link(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)
    return target


def build_folders(
    root: Path, per_class: int = 10, patients: int = 0, split: str = "", classes: tuple[str, ...] = CLASSES
) -> Path:
    """``root/[split/]<class>/<scan>``; with ``patients``, scans dealt round-robin to patient folders
    ``<class>-p<k>`` (every other one a level deeper, in a study folder). Returns ``root``."""
    for name in classes:
        for index, scan in enumerate(sample_scans(name, split or "Training")[:per_class]):
            folder = root / split / name
            if patients:
                folder = folder / f"{name}-p{index % patients}" / ("study-2" if index % 2 else "")
            link(scan, folder / scan.name)
    return root


def write_labels_csv(root: Path, rows: list[tuple[str, ...]], header: str = "path,label,patient") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header.split(","))
        writer.writerows(rows)
    return root / "labels.csv"


def csv_dataset(root: Path, per_class: int = 8, patients: int = 4) -> Path:
    """``root/scans/<n>.jpg`` (unsorted) listed in ``labels.csv`` with a patient per scan."""
    rows = []
    for name in CLASSES:
        for index, scan in enumerate(sample_scans(name)[:per_class]):
            target = link(scan, root / "scans" / f"{len(rows):03d}.jpg")
            rows.append((target.relative_to(root).as_posix(), name, f"{name[:3]}{index % patients}"))
    write_labels_csv(root, rows)
    return root


def patients_of(image_set: ImageSet) -> set[str]:
    return set(image_set.groups.tolist())


def test_each_layout_is_detected(tmp_path):
    assert detect_layout(SAMPLE) == KAGGLE_SPLIT
    assert detect_layout(build_folders(tmp_path / "folders", per_class=2)) == CLASS_FOLDERS
    assert detect_layout(csv_dataset(tmp_path / "csv", per_class=2)) == LABELS_CSV
    (tmp_path / "test-only" / "Testing").mkdir(parents=True)
    assert detect_layout(tmp_path / "test-only") == KAGGLE_SPLIT
    with pytest.raises(BrainFLError, match=r"no Training folder in .*test-only"):
        load_dataset(tmp_path / "test-only", 16, 1)  # as before: the server needs Training


def test_class_folders_hold_out_a_stratified_test_set(tmp_path):
    root = build_folders(tmp_path / "d", per_class=10)
    (root / "glioma" / ".DS_Store").write_text("hidden")
    data = load_dataset(root, 16, 1, test_fraction=0.2)
    assert (data.layout, data.test_is_official) == (CLASS_FOLDERS, False)
    assert data.train.class_names == CLASSES
    assert data.train.class_counts() == [8, 8, 8, 8] and data.test.class_counts() == [2, 2, 2, 2]
    assert data.train.groups is None and data.test.groups is None
    assert not set(data.train.files) & set(data.test.files)
    assert all(name.split("/")[0] in CLASSES for name in data.train.files)


def test_nested_patient_folders_never_straddle_the_hold_out(tmp_path):
    root = build_folders(tmp_path / "d", per_class=15, patients=5)
    write_hidden = root / "notumor" / "notumor-p0" / ".ipynb_checkpoints" / "copy.jpg"
    link(sample_scans("notumor")[0], write_hidden)
    data = load_dataset(root, 16, 1, test_fraction=0.2)
    assert len(data.train) + len(data.test) == 60
    assert data.train.num_patients() == 16 and data.test.num_patients() == 4
    assert not patients_of(data.train) & patients_of(data.test)
    assert data.test.class_counts() == [3, 3, 3, 3]  # one whole patient of each class
    assert not any(".ipynb" in name for name in data.train.files + data.test.files)
    for image_set in (data.train, data.test):  # each image's patient: its class and first folder under it
        assert ["/".join(name.split("/")[:2]) for name in image_set.files] == image_set.groups.tolist()


def test_kaggle_split_with_nested_patients_keeps_groups_in_both_splits(tmp_path):
    root = build_folders(tmp_path / "d", per_class=6, patients=3, split="Training")
    build_folders(root, per_class=4, patients=2, split="Testing")
    data = load_dataset(root, 16, 1)
    assert (data.layout, data.test_is_official) == (KAGGLE_SPLIT, True)
    assert data.train.num_patients() == 12 and len(data.train) == 24
    assert data.test.num_patients() == 8 and len(data.test) == 16
    assert split_patient(data.test.files[0]) == data.test.groups[0]


def test_training_only_nested_folder_holds_out_whole_patients(tmp_path):
    root = build_folders(tmp_path / "d", per_class=10, patients=5, split="Training")
    data = load_dataset(root, 16, 1, test_fraction=0.2)
    assert (data.layout, data.test_is_official) == (KAGGLE_SPLIT, False)
    assert not patients_of(data.train) & patients_of(data.test)
    assert data.test.num_patients() == 4


def test_labels_csv_with_patients(tmp_path):
    root = csv_dataset(tmp_path / "d", per_class=8, patients=4)
    data = load_dataset(root, 16, 1, test_fraction=0.25)
    assert (data.layout, data.test_is_official) == (LABELS_CSV, False)
    assert data.train.class_names == CLASSES  # the sorted unique labels
    assert data.train.class_counts() == [6, 6, 6, 6] and data.test.class_counts() == [2, 2, 2, 2]
    assert not patients_of(data.train) & patients_of(data.test)
    assert data.train.files[0].startswith("scans/")


def test_labels_csv_without_patients_and_with_other_labels(tmp_path):
    scans = sample_scans("glioma")[:6] + sample_scans("pituitary")[:6]
    rows = [(link(s, tmp_path / "d" / "x" / s.name).relative_to(tmp_path / "d").as_posix(),) for s in scans]
    write_labels_csv(
        tmp_path / "d", [(p, "tumor" if i < 6 else "healthy") for i, (p,) in enumerate(rows)], "path,label"
    )
    data = load_dataset(tmp_path / "d", 16, 1, test_fraction=0.34)
    assert data.train.class_names == ("healthy", "tumor")
    assert data.train.groups is None and len(data.train) + len(data.test) == 12


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([("scans/nope.jpg", "glioma", "a")], r"labels\.csv line 3: unknown path 'scans/nope\.jpg'"),
        ([("scans/000.jpg", "", "a")], r"labels\.csv line 3: empty label"),
        (
            [("../outside.jpg", "glioma", "a")],
            r"labels\.csv line 3: path '\.\./outside\.jpg' must be relative",
        ),
        (
            [("scans/000.jpg", "glioma", "a")],
            r"labels\.csv line 3: 'scans/000\.jpg' is listed twice \(also line",
        ),
    ],
)
def test_labels_csv_mistakes_name_the_row(tmp_path, rows, expected):
    root = tmp_path / "d"
    scan = link(sample_scans("glioma")[0], root / "scans" / "000.jpg")
    write_labels_csv(root, [(scan.relative_to(root).as_posix(), "glioma", "a"), *rows])
    with pytest.raises(BrainFLError, match=expected):
        load_dataset(root, 16, 1)


def test_labels_csv_header_is_checked(tmp_path):
    write_labels_csv(tmp_path / "d", [("a.jpg", "glioma", "p")], header="path,label,patient_id")
    with pytest.raises(BrainFLError, match=r"labels\.csv: header .* is not path,label\[,patient\]"):
        load_dataset(tmp_path / "d", 16, 1)


@pytest.mark.parametrize("where", ["class-folders", "labels-csv"])
def test_unsupported_scan_file_is_named_or_skipped_with_a_warning(tmp_path, caplog, where):
    root = build_folders(tmp_path / "d", per_class=5)
    odd = root / "glioma" / "patient-x" / "brain.nii.gz"
    odd.parent.mkdir()
    odd.write_bytes(b"\x1f\x8b not read by the decoder")
    if where == "labels-csv":
        files = sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())
        write_labels_csv(
            root,
            [(p.relative_to(root).as_posix(), p.relative_to(root).parts[0]) for p in files],
            "path,label",
        )
    with pytest.raises(BrainFLError, match=r"unsupported scan file .*brain\.nii\.gz"):
        load_dataset(root, 16, 1)
    data = load_dataset(root, 16, 1, skip_unreadable=True)
    assert len(data.train) + len(data.test) == 20
    assert "brain.nii.gz" in caplog.text


def test_class_folders_refuse_loose_scans_split_like_folders_and_a_single_class(tmp_path):
    root = build_folders(tmp_path / "loose", per_class=3)
    link(sample_scans("glioma")[5], root / "stray.jpg")
    with pytest.raises(BrainFLError, match=r"scan outside a class folder: .*stray\.jpg"):
        load_dataset(root, 16, 1)
    split_like = tmp_path / "lower"  # train/<class>/, test/<class>/: not Training/Testing
    build_folders(split_like / "train", per_class=3)
    build_folders(split_like / "test", per_class=2)
    with pytest.raises(
        BrainFLError, match=r"folders of .*lower \(test, train\) look like splits, not classes"
    ):
        load_dataset(split_like, 16, 1)
    single = build_folders(tmp_path / "one", per_class=5, classes=("glioma",))
    with pytest.raises(BrainFLError, match=r"only one class \(glioma\) in .*one: need at least 2 classes"):
        load_dataset(single, 16, 1)


def test_too_few_patients_for_the_hold_out_names_the_setting(tmp_path):
    root = build_folders(tmp_path / "d", per_class=4, patients=1)
    with pytest.raises(BrainFLError, match=r"setting 'test-fraction'=0\.2: too few patients in .*d "):
        load_dataset(root, 16, 1)


def test_a_site_keeps_patients_whole_in_its_validation_split(tmp_path):
    root = build_folders(tmp_path / "site", per_class=12, patients=4)
    settings = settings_with(image_size=16, val_fraction=0.25)
    site = site_data(settings, {"data-dir": str(root), "partition-id": 2}, CLASSES)
    assert len(site.train) + len(site.val) == 48  # its own folder: every scan, no hold-out
    assert site.val.num_patients() == 4 and not patients_of(site.train) & patients_of(site.val)
    assert sorted(set(site.val.labels.tolist())) == [0, 1, 2, 3]


@pytest.mark.parametrize("partitioning", ["iid", "dirichlet"])
def test_emulated_sites_hold_disjoint_patients(tmp_path, partitioning):
    root = build_folders(tmp_path / "d", per_class=20, patients=10)
    settings = settings_with(
        image_size=16, data_dir=str(root), num_partitions=3, partitioning=partitioning, val_fraction=0.2
    )
    server = load_dataset(root, 16, 1, test_fraction=settings.data.test_fraction, seed=settings.seed)
    sites = [site_data(settings, {"partition-id": i, "num-partitions": 3}, CLASSES) for i in range(3)]
    seen = patients_of(server.test)
    for site in sites:
        patients = patients_of(site.train) | (patients_of(site.val) if len(site.val) else set())
        assert not patients & seen
        assert not patients_of(site.train) & (patients_of(site.val) if len(site.val) else set())
        seen |= patients
    assert sum(len(site.train) + len(site.val) for site in sites) == len(server.train)


def test_a_site_with_labels_csv_follows_the_server_classes(tmp_path):
    root = csv_dataset(tmp_path / "d", per_class=4, patients=2)
    train, layout = load_images(root, 16, 1, ["glioma", "meningioma", "notumor", "pituitary", "other"])
    assert layout == LABELS_CSV and train.class_names[-1] == "other" and len(train) == 16
    with pytest.raises(BrainFLError, match=r"labels\.csv line 2: label 'glioma' is not one of the classes"):
        load_images(root, 16, 1, ["healthy", "tumor"])
    assert np.array_equal(np.unique(train.labels), [0, 1, 2, 3])


def test_patient_folders_named_alike_in_two_classes_are_two_patients(tmp_path):
    root = tmp_path / "d"
    for name in CLASSES:
        for index, scan in enumerate(sample_scans(name)[:3]):
            link(scan, root / name / "pt0" / scan.name) if index < 2 else link(
                scan, root / name / "pt1" / scan.name
            )
    data = load_dataset(root, 16, 1, test_fraction=0.5)
    groups = patients_of(data.train) | patients_of(data.test)
    assert groups == {f"{name}/{patient}" for name in CLASSES for patient in ("pt0", "pt1")}  # 8, not 2


def test_a_link_into_another_class_or_up_a_folder_is_refused_or_skipped(tmp_path, caplog):
    root = build_folders(tmp_path / "d", per_class=4)
    (root / "glioma" / "loop").symlink_to("..")  # would list every class's scans as glioma
    with pytest.raises(
        BrainFLError, match=r"symbolic link .*glioma/loop points to .*outside its class folder"
    ):
        load_dataset(root, 16, 1, test_fraction=0.25)
    data = load_dataset(root, 16, 1, test_fraction=0.25, skip_unreadable=True)
    assert len(data.train) + len(data.test) == 16  # 4 per class, the link skipped
    assert "skipping symbolic link" in caplog.text and "glioma/loop" in caplog.text
    (root / "glioma" / "loop").unlink()
    (root / "glioma" / "pituitary.jpg").symlink_to(root / "pituitary" / sample_scans("pituitary")[0].name)
    # (the target is itself a link to sample_data: the first hop, into another class, is what counts)
    with pytest.raises(BrainFLError, match=r"glioma/pituitary\.jpg points to .*outside its class folder"):
        load_dataset(root, 16, 1, test_fraction=0.25)


def test_a_folder_link_looping_inside_its_class_and_a_dangling_link_are_named(tmp_path):
    root = build_folders(tmp_path / "d", per_class=4)
    (root / "glioma" / "deeper").mkdir()
    (root / "glioma" / "deeper" / "again").symlink_to(root / "glioma")
    with pytest.raises(BrainFLError, match=r"deeper/again points to .*a folder above it \(a loop\)"):
        load_dataset(root, 16, 1, test_fraction=0.25)
    (root / "glioma" / "deeper" / "again").unlink()
    (root / "meningioma" / "gone.jpg").symlink_to(tmp_path / "no-such-scan.jpg")
    with pytest.raises(BrainFLError, match=r"meningioma/gone\.jpg is dangling"):
        load_dataset(root, 16, 1, test_fraction=0.25)


def test_labels_differing_only_in_case_are_refused_with_their_lines(tmp_path):
    root = csv_dataset(tmp_path / "d", per_class=2, patients=1)
    rows = list(csv.reader((root / "labels.csv").open()))[1:]
    rows[0][1] = rows[0][1].capitalize()  # Glioma beside glioma
    write_labels_csv(root, [tuple(row) for row in rows])
    with pytest.raises(
        BrainFLError, match=r"labels differ only in case or spaces: 'Glioma' \(line 2\), 'glioma' "
    ):
        load_dataset(root, 16, 1, test_fraction=0.25)


def test_a_misspelt_label_is_named_with_its_line_not_blamed_on_test_fraction(tmp_path):
    root = csv_dataset(tmp_path / "d", per_class=4, patients=2)
    rows = list(csv.reader((root / "labels.csv").open()))[1:]
    rows[5][1] = "gliomma"
    write_labels_csv(root, [tuple(row) for row in rows])
    with pytest.raises(BrainFLError, match=r"line 7: label 'gliomma' is given to this scan only") as error:
        load_dataset(root, 16, 1, test_fraction=0.25)
    assert "test-fraction" not in str(error.value)


@pytest.mark.parametrize("splits", [("Training", "Testing"), ("Training",), ("Testing",)])
@pytest.mark.parametrize("command", ["check-data", "prepare"])
def test_a_labels_csv_beside_a_kaggle_split_is_refused_in_one_line(tmp_path, capsys, splits, command):
    from brainfl import cli

    data = tmp_path / "data"
    for split in splits:
        build_folders(data, per_class=2, split=split)
    listed = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.jpg"))
    write_labels_csv(data, [(path, path.split("/")[1]) for path in listed], header="path,label")
    out = tmp_path / "out"
    argv = {
        "check-data": ["check-data", str(data), "--output-dir", str(out)],
        "prepare": ["prepare", "--app-dir", str(REPO_ROOT), "--run-config", f"data-dir='{data}'"],
    }[command]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("brainfl: error:")]
    assert len(lines) == 1, lines
    assert "layout" not in captured.out and "images" not in captured.out  # no second, contradicting word
    assert lines[0].startswith(f"brainfl: error: {data} holds two layouts, a labels.csv and a Kaggle split")
    assert f"({'/ and '.join(splits)}/)" in lines[0] and "move labels.csv out" in lines[0]
    assert not out.exists()


def test_a_testing_scan_linked_to_a_training_scan_is_refused_not_labelled_again(tmp_path):
    root = build_folders(
        build_folders(tmp_path / "d", per_class=2, split="Training"), per_class=1, split="Testing"
    )
    (root / "Testing" / "meningioma" / "copy.jpg").symlink_to(
        root / "Training" / "glioma" / sample_scans("glioma")[0].name
    )
    with pytest.raises(
        BrainFLError, match=r"Testing/meningioma/copy\.jpg points to .*outside its class folder"
    ):
        load_dataset(root, 16, 1)


def test_a_scan_in_a_split_but_in_no_class_folder_is_refused(tmp_path):
    root = build_folders(
        build_folders(tmp_path / "d", per_class=2, split="Training"), per_class=1, split="Testing"
    )
    link(sample_scans("glioma")[5], root / "Testing" / "stray.jpg")
    with pytest.raises(BrainFLError, match=r"scan outside a class folder: .*Testing/stray\.jpg \(put it in"):
        load_dataset(root, 16, 1)


def test_class_folders_named_alike_but_for_case_are_refused(tmp_path):
    root = build_folders(tmp_path / "d", per_class=2)
    link(sample_scans("glioma")[5], root / "Glioma" / "extra.jpg")
    with pytest.raises(
        BrainFLError, match=r"class folders of .*d differ only in case or spaces: 'Glioma', 'glioma'"
    ):
        load_dataset(root, 16, 1, test_fraction=0.25)
