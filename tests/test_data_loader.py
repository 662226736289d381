"""Tests of the loader: layouts, modes, hidden files, nested patients, cache (and its key) and errors."""

from __future__ import annotations

import numpy as np
import pytest

from brainfl.core.errors import BrainFLError
from brainfl.data import loading as data_loader
from brainfl.data.loading import decode_image, load_dataset, load_split
from brainfl.settings.run_settings import CROPS
from conftest import CLASSES, write_image


def test_layout_classes_sorted_and_hidden_entries_skipped(tiny_dataset):
    write_image(tiny_dataset / "Testing" / "meningioma" / ".ipynb_checkpoints" / "x.jpg", 99)
    write_image(tiny_dataset / "Training" / "glioma" / ".hidden.jpg", 98)
    (tiny_dataset / "Training" / "glioma" / "notes.txt").write_text("not an image")
    data = load_dataset(tiny_dataset, 32, 1)
    assert data.train.class_names == CLASSES
    assert data.train.class_counts() == [4, 4, 4, 4]
    assert data.test.class_counts() == [2, 2, 2, 2]
    assert data.test_is_official
    assert not any(".ipynb" in f or ".hidden" in f for f in data.train.files + data.test.files)


def test_mixed_modes_sizes_and_suffixes_convert_to_configured_shape(tmp_path):
    root = tmp_path / "d"
    write_image(root / "Training" / "a" / "gray.JPG", 1, size=50, mode="L")
    write_image(root / "Training" / "a" / "rgb.png", 2, size=70, mode="RGB")
    write_image(root / "Training" / "b" / "x.jpeg", 3, size=30, mode="RGB")
    gray = load_split(root, "Training", 24, 1)
    rgb = load_split(root, "Training", 24, 3)
    assert gray.images.shape == (3, 24, 24, 1) and gray.images.dtype == np.uint8
    assert rgb.images.shape == (3, 24, 24, 3)
    assert gray.labels.tolist() == [0, 0, 1]


def test_second_load_reuses_cache_without_decoding(tiny_dataset, monkeypatch):
    first = load_dataset(tiny_dataset, 32, 1)
    monkeypatch.setattr(data_loader, "decode_image", lambda *a: pytest.fail("decoded again"))
    second = load_dataset(tiny_dataset, 32, 1)
    assert np.array_equal(first.train.images, second.train.images)
    assert first.test.files == second.test.files


def test_cache_is_invalidated_when_a_file_changes(tiny_dataset):
    before = load_split(tiny_dataset, "Training", 32, 1)
    write_image(tiny_dataset / "Training" / "glioma" / "Tr-glioma-0.jpg", 1234)
    after = load_split(tiny_dataset, "Training", 32, 1)
    assert not np.array_equal(before.images[0], after.images[0])


def test_without_testing_folder_a_stratified_split_is_made(tmp_path):
    from conftest import make_dataset

    root = make_dataset(tmp_path / "d", train_per_class=10, test_per_class=0)
    assert not (root / "Testing").exists()
    data = load_dataset(root, 16, 1, test_fraction=0.2)
    assert not data.test_is_official
    assert data.test.class_counts() == [2, 2, 2, 2]
    assert not set(data.train.files) & set(data.test.files)


def test_missing_data_dir_names_the_path(tmp_path):
    with pytest.raises(BrainFLError, match=r"data directory not found: .*nowhere"):
        load_dataset(tmp_path / "nowhere", 32, 1)


def test_data_dir_without_class_folders(tmp_path):
    (tmp_path / "d" / "Training").mkdir(parents=True)
    with pytest.raises(BrainFLError, match=r"no class folders in .*Training"):
        load_dataset(tmp_path / "d", 32, 1)


def test_empty_class_folder(tiny_dataset):
    (tiny_dataset / "Training" / "zzz_empty").mkdir()
    with pytest.raises(BrainFLError, match=r"class folder has no images: .*zzz_empty"):
        load_dataset(tiny_dataset, 32, 1)


def test_testing_class_missing_from_training(tiny_dataset):
    write_image(tiny_dataset / "Testing" / "astrocytoma" / "x.jpg", 5)
    with pytest.raises(BrainFLError, match="astrocytoma is not one of the classes"):
        load_dataset(tiny_dataset, 32, 1)


def test_undecodable_image_is_an_error_naming_it_unless_skipping(tiny_dataset):
    broken = tiny_dataset / "Training" / "glioma" / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    with pytest.raises(BrainFLError, match=r"cannot decode image .*broken\.jpg.*skip-unreadable"):
        load_dataset(tiny_dataset, 32, 1)
    data = load_dataset(tiny_dataset, 32, 1, skip_unreadable=True)
    assert data.train.class_counts() == [4, 4, 4, 4]


def test_decode_real_grayscale_and_rgb_images(real_data):
    files = sorted((real_data / "Training" / "glioma").glob("*.jpg"))[:40]
    shapes = {decode_image(f, 64, 3).shape for f in files} | {decode_image(f, 64, 1).shape for f in files}
    assert shapes == {(64, 64, 3), (64, 64, 1)}


def test_a_site_folder_uses_all_its_training_images_with_the_server_classes(tiny_dataset):
    from brainfl.data.sites import site_data
    from brainfl.settings.run_settings import settings_with

    (tiny_dataset / "Testing").rename(tiny_dataset.parent / "elsewhere")
    for image in (tiny_dataset / "Training" / "glioma").iterdir():
        image.unlink()
    (tiny_dataset / "Training" / "glioma").rmdir()  # this hospital has no glioma cases
    settings = settings_with(image_size=16, val_fraction=0.25)
    site = site_data(settings, {"data-dir": str(tiny_dataset), "partition-id": 3}, CLASSES)
    assert site.site_id == 3
    assert len(site.train) + len(site.val) == 12
    assert set(site.train.labels) | set(site.val.labels) == {1, 2, 3}


def test_a_site_with_a_class_the_server_does_not_know_fails_clearly(tiny_dataset):
    from brainfl.data.sites import site_data
    from brainfl.settings.run_settings import settings_with

    write_image(tiny_dataset / "Training" / "lymphoma" / "x.jpg", 7)
    with pytest.raises(BrainFLError, match="lymphoma is not one of the classes"):
        site_data(settings_with(image_size=16), {"data-dir": str(tiny_dataset)}, CLASSES)


def test_every_cache_goes_to_brainfl_cache_dir(tiny_dataset, isolated_cache):
    from brainfl.data.sites import site_data
    from brainfl.settings.run_settings import settings_with

    settings = settings_with(image_size=16, data_dir=str(tiny_dataset), num_partitions=2)
    site = site_data(settings, {"partition-id": 1, "num-partitions": 2}, CLASSES)
    assert len(site.train) + len(site.val) == 8
    cached = sorted(path.name.split("-")[0] for path in isolated_cache.iterdir())
    assert cached == ["partitions", "testing", "training"]


def test_cache_key_covers_skip_unreadable_and_the_crop(tiny_dataset):
    broken = tiny_dataset / "Training" / "glioma" / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    skipped = load_dataset(tiny_dataset, 32, 1, skip_unreadable=True)
    assert "Training/glioma/broken.jpg" not in skipped.train.files
    # a cache written while skipping must not hide the broken file from a run that does not skip
    with pytest.raises(BrainFLError, match=r"cannot decode image .*broken\.jpg"):
        load_dataset(tiny_dataset, 32, 1)
    entries = data_loader.list_class_folders(tiny_dataset / "Training", list(CLASSES))
    options = [(skip, crop) for skip in (False, True) for crop in CROPS]
    keys = {data_loader._cache_key(entries, 32, 1, list(CLASSES), *option) for option in options}
    assert len(keys) == len(options)
    framed = {crop: load_dataset(tiny_dataset, 32, 1, skip_unreadable=True, crop=crop) for crop in CROPS}
    assert not np.array_equal(framed["head"].train.images, framed["none"].train.images)


def test_unwritable_cache_folder_is_one_line_naming_the_setting(tiny_dataset, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("BRAINFL_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(
        BrainFLError, match=r"cannot write to the cache folder .*a-file/cache .*BRAINFL_CACHE_DIR"
    ):
        load_dataset(tiny_dataset, 32, 1)


def test_an_image_size_beyond_memory_is_refused_before_decoding(tiny_dataset, monkeypatch):
    monkeypatch.setattr(data_loader, "decode_image", lambda *a: pytest.fail("decoded"))
    with pytest.raises(BrainFLError, match=r"setting 'image-size'=1000000: 16 images .* GiB"):
        load_dataset(tiny_dataset, 1_000_000, 1)


def test_images_nested_in_a_kaggle_split_are_read_with_their_patients(tiny_dataset):
    from conftest import write_image

    write_image(tiny_dataset / "Training" / "glioma" / "patient-7" / "series-1" / "a.png", 500)
    write_image(tiny_dataset / "Training" / "glioma" / "patient-7" / "b.png", 501)
    data = load_dataset(tiny_dataset, 16, 1)
    assert data.train.class_counts() == [6, 4, 4, 4] and data.test.groups is None
    groups = dict(zip(data.train.files, data.train.groups.tolist(), strict=True))
    assert groups["Training/glioma/patient-7/series-1/a.png"] == groups["Training/glioma/patient-7/b.png"]
    assert groups["Training/glioma/Tr-glioma-0.jpg"] == "glioma/Tr-glioma-0.jpg"  # a patient of its own
