"""One decoder for every scan format: 8-bit images as before, 16-bit and float windowed, DICOM via pydicom."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageOps
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from brainfl.core.errors import BrainFLError
from brainfl.data import loading as data_loader
from brainfl.data.decoding import SCAN_SUFFIXES, decode_scan, is_scan_file, open_scan
from brainfl.data.framing import HEAD_MARGIN, HEAD_THRESHOLDS, crop_box, head_box
from brainfl.data.readers import reader_for
from brainfl.data.windowing import window_to_uint8
from brainfl.settings.run_settings import CROPS
from conftest import CLASSES
from scan_files import correlation, read_gray, scan_to_dicom, scan_to_png16, write_dicom

SIZE = 128


def bundled(name: str) -> str:
    """A test file shipped inside pydicom (never downloaded)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not bundled with pydicom {pydicom.__version__}"
    return str(path)


@pytest.fixture(scope="module")
def scans(real_data) -> list:
    """Two real scans of each class."""
    found = []
    for name in CLASSES:
        found += sorted((real_data / "Training" / name).glob("*.jpg"))[:2]
    return found


def gray(path, size: int = SIZE, crop: str = "none") -> np.ndarray:
    """The decoded picture; as stored by default (these tests are about windowing, not framing)."""
    return decode_scan(path, size, 1, crop)[..., 0]


def one_line_error(call, *args) -> str:
    with pytest.raises(BrainFLError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_scan_suffixes_and_data_loader_use_this_decoder():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"} == SCAN_SUFFIXES
    assert data_loader.IMAGE_SUFFIXES == SCAN_SUFFIXES
    assert data_loader.CACHE_VERSION >= 2


def test_8bit_jpeg_decodes_exactly_as_pillow_did(scans):
    for path in scans[:4]:
        for channels, mode in ((1, "L"), (3, "RGB")):
            with Image.open(path) as image:
                converted = image.convert(mode)
                box = head_box(np.asarray(image.convert("L")))
                whole = np.asarray(converted.resize((40, 40), Image.Resampling.BILINEAR))
                head = np.asarray(converted.crop(box).resize((40, 40), Image.Resampling.BILINEAR))
            assert np.array_equal(decode_scan(path, 40, channels, "none"), whole.reshape(40, 40, channels))
            assert np.array_equal(decode_scan(path, 40, channels), head.reshape(40, 40, channels))
            assert np.array_equal(
                data_loader.decode_image(path, 40, channels), head.reshape(40, 40, channels)
            )


def test_head_box_is_the_square_around_the_head_without_a_burnt_in_label():
    image = np.zeros((300, 400), dtype=np.uint8)
    yy, xx = np.mgrid[:300, :400]
    image[((yy - 150) / 100) ** 2 + ((xx - 220) / 80) ** 2 <= 1] = 180  # a head 160 wide, 200 high
    image[5:12, 5:30] = 255  # a small label in the corner
    left, top, right, bottom = head_box(image)
    assert right - left == bottom - top  # square
    side = 200 * (1 + 2 * HEAD_MARGIN)
    assert abs((right - left) - side) <= 2
    assert abs((left + right) / 2 - 220) <= 1 and abs((top + bottom) / 2 - 150) <= 1
    assert left > 30  # the label is left out


def test_an_image_with_nothing_bright_is_framed_whole():
    assert head_box(np.zeros((20, 30), dtype=np.uint8)) == (0, 0, 30, 20)
    assert crop_box(Image.new("L", (30, 20)), "none") == (0, 0, 30, 20)
    with pytest.raises(BrainFLError, match="crop 'tight'"):
        crop_box(Image.new("L", (30, 20)), "tight")


def box_overlap(first: tuple[int, ...], second: tuple[int, ...]) -> float:
    """Intersection over union of two ``(left, top, right, bottom)`` boxes."""
    width = max(0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0, min(first[3], second[3]) - max(first[1], second[1]))
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return width * height / (area(first) + area(second) - width * height)


def test_every_crop_setting_frames_scans_and_otsu_finds_the_head_of_an_equalized_scan(real_data):
    """Histogram equalization lifts the dark background's noise above a tenth of the 99th percentile,
    and the ``head`` box grows toward the whole picture; Otsu's threshold moves with the background."""
    assert (*HEAD_THRESHOLDS, "none") == CROPS
    overlap = {crop: [] for crop in HEAD_THRESHOLDS}
    for name in CLASSES:
        for path in sorted((real_data / "Training" / name).glob("*.jpg"))[:5]:
            original = Image.open(path).convert("L")
            equalized = ImageOps.equalize(original)
            for crop in HEAD_THRESHOLDS:
                boxes = [head_box(np.asarray(image), crop) for image in (original, equalized)]
                overlap[crop].append(box_overlap(*boxes))
    assert np.mean(overlap["head-otsu"]) > 0.9 > np.mean(overlap["head"]) + 0.05
    assert decode_scan(path, 16, 1, "head-otsu").shape == (16, 16, 1)


def test_a_wide_border_and_a_tight_crop_give_the_model_the_same_picture(scans, tmp_path):
    original = Image.open(scans[0]).convert("L")
    left, top, right, bottom = head_box(np.asarray(original))
    wide = Image.new("L", (original.width * 2, original.height * 2))
    wide.paste(original, (original.width // 3, original.height // 2))
    tight = original.crop((left + 8, top + 8, right - 8, bottom - 8))  # (inside the margin: still whole)
    wide.save(tmp_path / "wide.png")
    tight.save(tmp_path / "tight.png")
    cropped = [gray(tmp_path / name, 64, "head").ravel() for name in ("wide.png", "tight.png")]
    as_stored = [gray(tmp_path / name, 64).ravel() for name in ("wide.png", "tight.png")]
    assert correlation(*cropped) > 0.95
    assert correlation(*as_stored) < 0.6


def test_bmp_and_tiff_decode_like_their_source(scans, tmp_path):
    source = read_gray(scans[0])
    for suffix in (".bmp", ".tif", ".tiff"):
        path = tmp_path / f"scan{suffix}"
        Image.fromarray(source).save(path)
        assert is_scan_file(path)
        assert np.array_equal(gray(path), gray(scans[0]))
    rgb = tmp_path / "rgb.tif"
    Image.fromarray(np.dstack([source] * 3)).save(rgb)
    assert decode_scan(rgb, SIZE, 3).shape == (SIZE, SIZE, 3)


@pytest.mark.parametrize("bits", [16, 12])
def test_16bit_png_keeps_the_picture_instead_of_clipping(scans, tmp_path, bits):
    for index, source in enumerate(scans):
        png = scan_to_png16(source, tmp_path / f"scan{index}.png", bits)
        with Image.open(png) as image:
            assert image.mode.startswith("I")
        decoded = gray(png)
        assert decoded.max() >= 250 and decoded.std() > 20
        assert correlation(decoded, gray(source)) > 0.99


def test_float_tiff_is_windowed(scans, tmp_path):
    values = read_gray(scans[0]).astype(np.float32) / 255.0 * 3.5 - 1.0
    path = tmp_path / "float.tiff"
    Image.fromarray(values, "F").save(path)
    assert correlation(gray(path), gray(scans[0])) > 0.99


def test_percentile_window_handles_flat_and_non_finite_values():
    assert not window_to_uint8(np.full((4, 4), 7.0)).any()
    values = np.arange(16, dtype=np.float64).reshape(4, 4)
    values[0, 0] = np.nan
    out = window_to_uint8(values)
    assert out[0, 0] == 0 and out[-1, -1] == 255
    assert np.array_equal(window_to_uint8(np.array([-5.0, 20.0, 100.0, 120.0]), 0, 100), [0, 51, 255, 255])


def test_pydicom_ct_without_window_uses_rescale_and_the_percentile_window():
    path = bundled("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert "WindowCenter" not in ds and float(ds.RescaleIntercept) == -1024
    expected = window_to_uint8(apply_modality_lut(ds.pixel_array, ds))
    assert np.abs(gray(path, ds.Rows).astype(int) - expected).max() <= 1


def test_pydicom_mr_uses_its_window_tags():
    path = bundled("MR_small.dcm")
    ds = pydicom.dcmread(path)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    expected = window_to_uint8(apply_modality_lut(ds.pixel_array, ds), low, high)
    assert np.abs(gray(path, ds.Rows).astype(int) - expected).max() <= 1
    assert decode_scan(path, 32, 3).shape == (32, 32, 3)


@pytest.mark.parametrize("window", [True, False])
def test_real_scans_written_as_12bit_dicom_decode_to_the_same_picture(scans, tmp_path, window):
    for index, source in enumerate(scans):
        path = scan_to_dicom(source, tmp_path / f"scan{index}.dcm", window=window)
        ds = pydicom.dcmread(path)
        assert ds.BitsStored == 12 and ds.pixel_array.max() > 255
        assert correlation(gray(path), gray(source)) > 0.99


def test_monochrome1_is_inverted(scans, tmp_path):
    source = scans[0]
    mono1 = scan_to_dicom(source, tmp_path / "mono1.dcm", monochrome1=True)
    assert pydicom.dcmread(mono1).PhotometricInterpretation == "MONOCHROME1"
    assert correlation(gray(mono1), gray(source)) > 0.99
    # The same stored values read as MONOCHROME2 are the negative.
    stored = pydicom.dcmread(mono1).pixel_array
    mono2 = write_dicom(tmp_path / "mono2.dcm", read_gray(source), stored=stored)
    assert correlation(gray(mono2), gray(source)) < -0.99


def test_dicom_without_extension_is_found_by_its_bytes(scans, tmp_path):
    for name in ("IM000001", "1.2.840.113619.2.55.3.1"):
        path = scan_to_dicom(scans[0], tmp_path / name)
        assert reader_for(path).name == "dicom" and is_scan_file(path)
        assert correlation(gray(path), gray(scans[0])) > 0.99
    (tmp_path / "README").write_text("not a scan\n")
    (tmp_path / "notes.txt").write_text("x" * 300)
    scan_to_dicom(scans[0], tmp_path / "DICOMDIR")
    assert not any(is_scan_file(tmp_path / n) for n in ("README", "notes.txt", "DICOMDIR"))


def test_multi_frame_dicom_is_refused_naming_the_file(tmp_path):
    path = bundled("rtdose.dcm")
    assert one_line_error(decode_scan, path, 32, 1) == f"multi-frame DICOM (15 frames) not supported: {path}"
    written = write_dicom(tmp_path / "frames.dcm", np.zeros((3, 16, 16), dtype=np.uint8))
    assert "multi-frame DICOM (3 frames)" in one_line_error(decode_scan, written, 32, 1)


def test_multi_page_tiff_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "stack.tif"
    pages = [Image.fromarray(np.full((16, 16), v, dtype=np.uint8)) for v in (0, 100, 200)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert one_line_error(decode_scan, path, 32, 1) == f"multi-frame TIFF (3 frames) not supported: {path}"


def test_compressed_dicom_without_a_handler_names_file_and_transfer_syntax():
    path = bundled("JPEG-lossy.dcm")
    message = one_line_error(decode_scan, path, 32, 1)
    assert message.startswith(f"cannot decode DICOM {path}: compressed transfer syntax JPEG Extended")
    assert "1.2.840.10008.1.2.4.51" in message


def test_compressed_dicom_pydicom_can_decode_is_read():
    assert decode_scan(bundled("MR_small_RLE.dcm"), 64, 1).shape == (64, 64, 1)
    assert decode_scan(bundled("SC_rgb_jpeg_dcmtk.dcm"), 32, 3).shape == (32, 32, 3)


def test_broken_dicom_and_broken_image_raise_one_line(tmp_path):
    for name in ("broken.dcm", "broken.png", "broken.tif"):
        (tmp_path / name).write_bytes(b"\x00not an image" * 20)
        assert str(tmp_path / name) in one_line_error(decode_scan, tmp_path / name, 32, 1)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("limit", [1000, 3000])  # over twice the limit (Pillow's error), and just over
def test_decompression_bomb_limit_is_one_line_naming_the_file(scans, tmp_path, monkeypatch, limit):
    png = tmp_path / "big.png"
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(png)
    dicom = write_dicom(tmp_path / "big.dcm", np.zeros((64, 64), dtype=np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    for path in (png, dicom):
        message = one_line_error(decode_scan, path, 32, 1)
        assert message.startswith("image too large") and message.endswith(f": {path}")


def test_open_scan_gives_the_full_size_8bit_picture(scans, tmp_path):
    path = scan_to_dicom(scans[0], tmp_path / "scan.dcm")
    image = open_scan(path)
    assert image.mode == "L" and image.size == Image.open(scans[0]).size
    assert open_scan(scans[0], "RGB").mode == "RGB"


def test_skip_unreadable_skips_refused_dicom_and_lists_every_format(scans, tmp_path):
    root = tmp_path / "site"
    for label, name in enumerate(CLASSES):
        folder = root / "Training" / name
        source = scans[2 * label]
        scan_to_dicom(source, folder / "a.dcm")
        scan_to_png16(source, folder / "b.png")
        Image.open(source).save(folder / "c.bmp")
        Image.open(source).save(folder / "d.tif")
    write_dicom(root / "Training" / CLASSES[0] / "e.dicom", np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(BrainFLError, match=r"multi-frame DICOM .*e\.dicom.*skip-unreadable"):
        data_loader.load_split(root, "Training", 32, 1)
    loaded = data_loader.load_split(root, "Training", 32, 1, skip_unreadable=True)
    assert loaded.class_counts() == [4, 4, 4, 4]
    assert "Training/glioma/e.dicom" not in loaded.files


@pytest.mark.parametrize("keyword", ["NumberOfFrames", "Rows", "Columns"])
def test_a_dicom_header_number_that_is_not_a_number_is_one_line(tmp_path, keyword):
    path = write_dicom(tmp_path / "odd.dcm", np.zeros((16, 16), dtype=np.uint8))
    ds = pydicom.dcmread(path)
    ds[pydicom.datadict.tag_for_keyword(keyword)] = pydicom.DataElement(
        pydicom.datadict.tag_for_keyword(keyword), "LO", "abc"
    )
    ds.save_as(path)
    with pytest.raises(
        BrainFLError, match=rf"cannot decode DICOM {path}: its {keyword} is not a whole number"
    ):
        open_scan(path)
    assert is_scan_file(path)  # still a scan: refused, or skipped with skip-unreadable, like a broken file
