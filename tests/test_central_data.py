"""What the coordinator reads: class names and a central test set, never training data."""

from __future__ import annotations

import shutil

import pytest

from brainfl.core.errors import BrainFLError
from brainfl.data.central import central_data
from brainfl.data.sites import load_run_dataset
from brainfl.settings.run_settings import settings_with
from conftest import CLASSES, REPO_ROOT, make_dataset, write_image


def test_a_testing_only_data_dir_is_the_test_set(tmp_path):
    data = make_dataset(tmp_path / "data")
    shutil.rmtree(data / "Training")
    central = central_data(settings_with(data_dir=str(data), image_size=16))
    assert central.official and central.class_names == CLASSES
    assert len(central.test) == 8 and all(name.startswith("Testing/") for name in central.test.files)


def test_a_test_dir_of_class_folders_is_the_test_set_whole(tmp_path):
    for index, name in enumerate(CLASSES):
        for i in range(3):
            write_image(tmp_path / "test" / name / f"patient{i}" / "scan.png", 10 * index + i)
    settings = settings_with(
        data_dir=str(tmp_path / "absent"), test_dir=str(tmp_path / "test"), image_size=16
    )
    central = central_data(settings)
    assert central.official and len(central.test) == 12 and central.root == tmp_path / "test"


def test_class_names_fix_the_order_and_may_name_classes_the_test_folder_lacks(tmp_path):
    data = make_dataset(tmp_path / "data")
    shutil.rmtree(data / "Testing" / "notumor")
    order = "pituitary,notumor,meningioma,glioma"
    central = central_data(settings_with(test_dir=str(data), class_names=order, image_size=16))
    assert central.class_names == tuple(order.split(","))
    assert sorted(set(central.test.labels.tolist())) == [0, 2, 3]  # no notumor (index 1) scans


def test_no_central_evaluation_needs_the_class_names(tmp_path):
    with pytest.raises(BrainFLError, match=r"'test-dir'='none'.*needs 'class-names'"):
        central_data(settings_with(test_dir="none"))
    central = central_data(settings_with(test_dir="none", class_names="a, b"))
    assert central.test is None and central.class_names == ("a", "b")


@pytest.mark.parametrize("names", ["glioma", "a,a"])
def test_class_names_need_two_distinct_names(names):
    with pytest.raises(BrainFLError, match="setting 'class-names'"):
        central_data(settings_with(test_dir="none", class_names=names))


def test_with_a_test_dir_the_sites_keep_every_scan(tmp_path):
    data = make_dataset(tmp_path / "data", train_per_class=5)
    shutil.rmtree(data / "Testing")  # a Training-only split: without test-dir, a hold-out is cut from it
    held_out = load_run_dataset(settings_with(data_dir=str(data), image_size=16, test_fraction=0.2))
    assert len(held_out.train) == 16 and len(held_out.test) == 4
    for test_dir in (str(make_dataset(tmp_path / "coordinator")), "none"):
        dataset = load_run_dataset(settings_with(data_dir=str(data), image_size=16, test_dir=test_dir))
        assert len(dataset.train) == 20 and len(dataset.test) == 0, test_dir


def test_prepare_refuses_a_test_folder_of_other_classes_and_warns_of_a_class_without_scans(tmp_path, capsys):
    from brainfl import cli

    data = make_dataset(tmp_path / "data")
    test = tmp_path / "test"
    for name in CLASSES[:2]:
        write_image(test / name / "a.png", 1)
        write_image(test / name / "b.png", 2)
    base = ["prepare", "--app-dir", str(REPO_ROOT), "--run-config", f"data-dir='{data}' image-size=16"]
    assert cli.main([*base, "--run-config", f"test-dir='{test}'"]) == 2
    error = capsys.readouterr().err
    assert f"the test set ({test}) has the classes glioma, meningioma, but data-dir's scans have" in error
    named = ",".join([*CLASSES, "astrocytoma"])
    assert cli.main([*base, "--run-config", f"class-names='{named}'"]) == 0
    warning = "warning: class-names has 'astrocytoma', of which data-dir has no training scan"
    assert warning in capsys.readouterr().out
