"""Tests of the synthetic feature shift: deterministic per-site scanner profiles, each transform doing
what it says, a site's training and validation images shifted alike, the central test set never."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from brainfl.core.errors import BrainFLError
from brainfl.data.scanner_shift import PROFILES_JSON, scanner_profile, shift_images, write_profiles
from brainfl.data.sites import cached_partition, load_run_dataset, site_data
from brainfl.settings.run_settings import settings_with
from conftest import CLASSES

RNG = np.random.default_rng(0)
TEXTURE = RNG.integers(0, 256, (6, 32, 32, 1), dtype=np.uint8)
# Only the step under test acts: the others at their identity.
IDENTITY = dataclasses.replace(
    scanner_profile(0, 0, 1.0), blur=0.0, resolution=1.0, gamma=1.0, scale=1.0, noise=0.0
)


def high_frequency_energy(images: np.ndarray) -> float:
    """Mean squared difference of neighbouring pixels, both axes."""
    values = images.astype(np.float64)
    return float((np.diff(values, axis=1) ** 2).mean() + (np.diff(values, axis=2) ** 2).mean())


def test_profiles_are_deterministic_per_seed_and_site_and_grow_with_strength():
    assert scanner_profile(42, 1, 0.6) == scanner_profile(42, 1, 0.6)
    profiles = [scanner_profile(42, site, 0.6) for site in range(8)]
    assert len({(p.gamma, p.scale, p.noise, p.blur, p.resolution) for p in profiles}) == 8
    assert scanner_profile(43, 1, 0.6).gamma != profiles[1].gamma
    off = scanner_profile(42, 1, 0.0)
    assert (off.gamma, off.scale, off.noise, off.blur, off.resolution) == (1.0, 1.0, 0.0, 0.0, 1.0)
    weak, strong = scanner_profile(42, 1, 0.3), scanner_profile(42, 1, 0.9)
    assert abs(np.log(strong.gamma)) > abs(np.log(weak.gamma)) > 0
    assert strong.noise > weak.noise > 0 and strong.blur > weak.blur > 0
    assert strong.resolution < weak.resolution < 1


def test_strength_zero_returns_the_images_untouched():
    assert shift_images(TEXTURE, scanner_profile(42, 3, 0.0)) is TEXTURE


def test_shifting_is_deterministic_new_and_per_image():
    profile = scanner_profile(7, 2, 1.0)
    before = TEXTURE.copy()
    shifted = shift_images(TEXTURE, profile)
    assert shifted.dtype == np.uint8 and shifted.shape == TEXTURE.shape
    assert np.array_equal(TEXTURE, before), "the input must not change"
    assert np.array_equal(shifted, shift_images(TEXTURE, profile))
    # an image comes out the same whichever other images it is shifted with (train or val)
    assert np.array_equal(shift_images(TEXTURE[[4, 1]], profile), shifted[[4, 1]])
    assert not np.array_equal(shifted, shift_images(TEXTURE, scanner_profile(7, 3, 1.0)))


def test_noise_raises_the_spread_of_a_flat_image_and_keeps_its_mean():
    flat = np.full((4, 64, 64, 1), 128, dtype=np.uint8)
    flat[2:] = 129
    noisy = shift_images(flat, dataclasses.replace(IDENTITY, noise=6.0)).astype(np.float64)
    assert all(5.5 < image.std() < 6.5 for image in noisy) and abs(noisy.mean() - 128.5) < 0.5
    # the noise is keyed by an image's pixels: the same scan twice gets the same noise, another scan other
    assert np.array_equal(noisy[0], noisy[1]) and not np.array_equal(noisy[1] + 1, noisy[2])


def test_noise_is_one_plane_shared_by_the_channels_of_an_rgb_scan():
    gray = np.repeat(TEXTURE, 3, axis=-1)
    noisy = shift_images(gray, dataclasses.replace(IDENTITY, noise=6.0))
    assert np.array_equal(noisy[..., 0], noisy[..., 1]) and np.array_equal(noisy[..., 0], noisy[..., 2])


@pytest.mark.parametrize("change", [{"blur": 1.0 / 32}, {"resolution": 0.5}])
def test_blur_and_lower_resolution_remove_high_frequencies_and_keep_flat_regions(change):
    smooth = shift_images(TEXTURE, dataclasses.replace(IDENTITY, **change))
    assert high_frequency_energy(smooth) < 0.6 * high_frequency_energy(TEXTURE)
    assert abs(smooth.astype(float).mean() - TEXTURE.mean()) < 2
    flat = np.full((2, 32, 32, 1), 90, dtype=np.uint8)
    assert np.array_equal(shift_images(flat, dataclasses.replace(IDENTITY, **change)), flat)


@pytest.mark.parametrize(
    ("change", "darker"),
    [({"gamma": 1.5}, True), ({"gamma": 0.7}, False), ({"scale": 0.8}, True), ({"scale": 1.2}, False)],
)
def test_gamma_and_intensity_scale_move_the_mean_the_right_way(change, darker):
    mid = np.full((1, 8, 8, 1), 100, dtype=np.uint8)
    mean = float(shift_images(mid, dataclasses.replace(IDENTITY, **change)).mean())
    assert mean < 100 if darker else mean > 100


def _raw_by_file(settings) -> dict[str, np.ndarray]:
    train = load_run_dataset(settings, class_names=CLASSES).train
    return {file: image for file, image in zip(train.files, train.images, strict=True)}


def test_a_sites_training_and_validation_images_share_its_profile(tiny_dataset):
    settings = settings_with(image_size=16, data_dir=str(tiny_dataset), val_fraction=0.25, feature_shift=0.8)
    node = {"partition-id": 1, "num-partitions": 2}
    site = site_data(settings, node, CLASSES)
    assert len(site.train) and len(site.val)
    raw = _raw_by_file(settings)
    profile = scanner_profile(settings.seed, 1, 0.8)
    for split in (site.train, site.val):
        expected = shift_images(np.stack([raw[file] for file in split.files]), profile)
        assert np.array_equal(split.images, expected)
        assert not np.array_equal(split.images, np.stack([raw[file] for file in split.files]))
    again = site_data(settings, node, CLASSES)
    assert np.array_equal(again.train.images, site.train.images)
    other = site_data(settings, {"partition-id": 0, "num-partitions": 2}, CLASSES)
    other_expected = shift_images(np.stack([raw[f] for f in other.train.files]), scanner_profile(42, 0, 0.8))
    assert np.array_equal(other.train.images, other_expected)


def test_without_shift_a_site_holds_its_images_byte_for_byte(tiny_dataset):
    settings = settings_with(image_size=16, data_dir=str(tiny_dataset), val_fraction=0.25)
    assert settings.data.feature_shift == 0
    site = site_data(settings, {"partition-id": 0, "num-partitions": 2}, CLASSES)
    raw = _raw_by_file(settings)
    for split in (site.train, site.val):
        assert np.array_equal(split.images, np.stack([raw[file] for file in split.files]))


def test_the_central_test_set_and_the_cached_training_set_are_never_shifted(tiny_dataset):
    settings = settings_with(image_size=16, data_dir=str(tiny_dataset), feature_shift=1.0)
    dataset = load_run_dataset(settings)
    test_before, train_before = dataset.test.images.copy(), dataset.train.images.copy()
    for site in range(2):
        site_data(settings, {"partition-id": site, "num-partitions": 2}, CLASSES)
    assert load_run_dataset(settings).test is dataset.test
    assert np.array_equal(dataset.test.images, test_before)
    assert np.array_equal(dataset.train.images, train_before)
    assert len(cached_partition(settings, dataset.train, 2)) == 2


def test_a_site_with_its_own_folder_refuses_the_shift(tiny_dataset):
    settings = settings_with(image_size=16, feature_shift=0.5)
    message = r"setting 'feature-shift'=0\.5: .* site 3 has its own data folder"
    with pytest.raises(BrainFLError, match=message):
        site_data(settings, {"data-dir": str(tiny_dataset), "partition-id": 3}, CLASSES)


def test_a_sites_profile_is_logged_once_per_process(tiny_dataset, caplog):
    settings = settings_with(image_size=16, data_dir=str(tiny_dataset), feature_shift=0.4, seed=913)
    with caplog.at_level("INFO", logger="flwr"):
        for _ in range(2):
            site_data(settings, {"partition-id": 0, "num-partitions": 2}, CLASSES)
    lines = [record.getMessage() for record in caplog.records if "synthetic scanner" in record.getMessage()]
    assert lines == [scanner_profile(913, 0, 0.4).describe(16)]
    assert lines[0].startswith("site 0: synthetic scanner profile (feature-shift=0.4, seed 913): blur sigma")


def test_the_run_records_the_sites_profiles_as_synthetic(tmp_path):
    write_profiles(tmp_path, settings_with(), [0, 1])
    assert not (tmp_path / PROFILES_JSON).exists()
    settings = settings_with(feature_shift=0.5, seed=5)
    write_profiles(tmp_path, settings, {2: 10, 0: 12})
    record = json.loads((tmp_path / PROFILES_JSON).read_text())
    assert record["synthetic"] is True and record["feature-shift"] == 0.5 and record["seed"] == 5
    assert [site["site"] for site in record["sites"]] == [0, 2]
    assert record["sites"][1]["gamma"] == scanner_profile(5, 2, 0.5).gamma
    assert record["sites"][1]["resolution_px"] == scanner_profile(5, 2, 0.5).low_side(64)


def test_a_shifted_federation_records_the_profiles_and_each_site_logs_its_own(tiny_dataset, tmp_path):
    from inprocess import run_in_process

    out = tmp_path / "run"
    config = {
        "data-dir": str(tiny_dataset),
        "image-size": 16,
        "num-partitions": 2,
        "num-server-rounds": 1,
        "local-epochs": 1,
        "feature-shift": 0.5,
        "seed": 77,  # a profile no other test logs first (each is logged once per process)
        "output-dir": str(out),
    }
    run_in_process(2, config)
    record = json.loads((out / PROFILES_JSON).read_text())
    assert [site["site"] for site in record["sites"]] == [0, 1] and record["synthetic"] is True
    for site in (0, 1):
        log = (out / "logs" / f"client_{site}.log").read_text()
        assert scanner_profile(77, site, 0.5).describe(16) in log
