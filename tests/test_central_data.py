"""What the coordinator reads: class names and a central test set, never training data."""

from __future__ import annotations

import shutil

import pytest

from brainfl.core.errors import BrainFLError
from brainfl.data.central import central_data
from brainfl.settings.run_settings import settings_with
from conftest import CLASSES, make_dataset, write_image


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
