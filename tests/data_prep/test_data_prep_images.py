"""data_prep.images: what is stored for each kind of input file, and why files are refused."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from data_prep import images
from data_prep.images import ImageOptions, prepare_file, prepare_image


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _pixels(data: bytes) -> tuple[str, np.ndarray]:
    image = Image.open(io.BytesIO(data))
    return image.mode, np.asarray(image)


def _rejected(data: bytes, reason: str, **options) -> None:
    with pytest.raises(images.ImageRejected) as caught:
        prepare_image(data, ImageOptions("/", **options), name="x.png")
    assert caught.value.reason == reason


OPTIONS = ImageOptions("/")
RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (12, 17), dtype=np.uint8)
COLOUR = RNG.integers(0, 256, (12, 17, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode, pixels, fmt", [
    ("L", GRAY, "PNG"), ("RGB", COLOUR, "PNG"), ("L", GRAY, "JPEG"), ("RGB", COLOUR, "JPEG"),
    (None, GRAY.astype(np.uint16) * 257, "PNG")])
def test_stored_modes_keep_the_original_bytes(mode, pixels, fmt):
    data = _encode(Image.fromarray(pixels, mode), fmt)
    assert prepare_image(data, OPTIONS) == data


def test_grayscale_jpeg_stored_as_rgb_keeps_its_bytes():
    data = _encode(Image.fromarray(np.stack([GRAY] * 3, -1)), "JPEG")
    assert prepare_image(data, OPTIONS) == data


def test_16bit_colour_png_keeps_its_bytes():
    import tensorflow as tf

    wide = np.stack([GRAY.astype(np.uint16) * 257] * 3, -1)
    data = tf.io.encode_png(wide).numpy()
    assert prepare_image(data, OPTIONS) == data


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_grayscale_content_is_stored_as_one_channel(mode):
    rgb = np.stack([GRAY] * 3, -1)
    pixels = np.dstack([rgb, np.full_like(GRAY, 255)]) if mode == "RGBA" else rgb
    stored_mode, stored = _pixels(prepare_image(_encode(Image.fromarray(pixels, mode)), OPTIONS))
    assert stored_mode == "L"
    np.testing.assert_array_equal(stored, GRAY)


def test_alpha_dropped_from_colour():
    rgba = np.dstack([COLOUR, RNG.integers(0, 256, GRAY.shape, dtype=np.uint8)])
    stored_mode, stored = _pixels(prepare_image(_encode(Image.fromarray(rgba, "RGBA")), OPTIONS))
    assert stored_mode == "RGB"
    np.testing.assert_array_equal(stored, COLOUR)


def test_la_becomes_l_and_palette_is_expanded():
    la = Image.fromarray(np.dstack([GRAY, np.full_like(GRAY, 7)]), "LA")
    assert _pixels(prepare_image(_encode(la), OPTIONS))[0] == "L"
    np.testing.assert_array_equal(_pixels(prepare_image(_encode(la), OPTIONS))[1], GRAY)
    palette = Image.fromarray(COLOUR).quantize(16)
    stored_mode, stored = _pixels(prepare_image(_encode(palette), OPTIONS))
    assert stored_mode == "RGB"
    np.testing.assert_array_equal(stored, np.asarray(palette.convert("RGB")))


def test_cmyk_jpeg_becomes_rgb_png():
    cmyk = Image.fromarray(COLOUR).convert("CMYK")
    data = _encode(cmyk, "JPEG")
    stored = prepare_image(data, OPTIONS)
    assert stored[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(_pixels(stored)[1], np.asarray(Image.open(io.BytesIO(data))
                                                                   .convert("RGB")))


def test_other_formats_are_re_encoded_as_png():
    stored = prepare_image(_encode(Image.fromarray(COLOUR), "BMP"), OPTIONS)
    np.testing.assert_array_equal(_pixels(stored)[1], COLOUR)


@pytest.mark.parametrize("size, expected", [((40, 30), (20, 15)), ((30, 40), (15, 20))])
def test_image_size_shrinks_the_shorter_side(size, expected):
    image = Image.fromarray(RNG.integers(0, 256, size[::-1], dtype=np.uint8))
    stored = Image.open(io.BytesIO(prepare_image(_encode(image, "JPEG"), ImageOptions(
        "/", image_size=15))))
    assert (stored.format, stored.mode, stored.size) == ("PNG", "L", expected)


def test_image_size_keeps_16_bits_and_leaves_small_images_alone():
    wide = _encode(Image.fromarray(RNG.integers(0, 65536, (30, 40), dtype=np.uint16)))
    mode, pixels = _pixels(prepare_image(wide, ImageOptions("/", image_size=10)))
    assert (mode, pixels.shape, pixels.dtype) == ("I;16", (10, 13), np.uint16)
    assert prepare_image(wide, ImageOptions("/", image_size=30)) == wide


def test_too_many_pixels_refused_from_the_header():
    _rejected(_encode(Image.fromarray(COLOUR)), images.TOO_LARGE, max_pixels=12 * 17 - 1)
    assert prepare_image(_encode(Image.fromarray(COLOUR)), ImageOptions("/", max_pixels=12 * 17))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_and_garbage_files_are_corrupt(fmt):
    data = _encode(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)), fmt)
    _rejected(data[: len(data) // 2], images.CORRUPT_IMAGE)
    _rejected(b"not an image at all", images.CORRUPT_IMAGE)
    _rejected(b"", images.CORRUPT_IMAGE)


def test_files_missing_or_resolving_outside_the_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(_encode(Image.fromarray(GRAY)))
    os.symlink(outside, root / "link.png")
    (root / "ok.png").write_bytes(outside.read_bytes())
    options = ImageOptions(os.path.realpath(root))
    assert images.load_image(str(root / "ok.png"), options).encoded == outside.read_bytes()
    assert images.load_image(str(root / "link.png"), options).reason == images.OUTSIDE_ROOT
    assert images.load_image(str(root / "gone.png"), options).reason == images.MISSING_FILE
    with pytest.raises(images.ImageRejected):
        prepare_file(str(root / "gone.png"), options)


# DICOM -------------------------------------------------------------------------------------------

def dicom_bytes(pixels: np.ndarray, interpretation: str = "MONOCHROME2", bits_stored: int = 12,
                **attributes) -> bytes:
    """A single-frame DICOM file (explicit VR little endian) holding `pixels`."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.set_pixel_data(pixels, interpretation, bits_stored)
    for name, value in attributes.items():
        setattr(dataset, name, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


RAW = (np.arange(20 * 30).reshape(20, 30) * 6).astype(np.uint16)  # 0 .. 3594 in 12 bits


def _linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1, the LINEAR VOI function, as a fraction of the output range."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def test_dicom_rescale_then_window_to_16_bits():
    data = dicom_bytes(RAW, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000,
                       WindowWidth=2000)
    mode, stored = _pixels(prepare_image(data, OPTIONS))
    expected = np.round(_linear_window(RAW * 2.0 - 1000, 1000, 2000) * 65535)
    assert mode == "I;16"
    np.testing.assert_allclose(stored, expected, atol=1)


def test_dicom_monochrome1_is_inverted_and_without_window_uses_the_range():
    stored = _pixels(prepare_image(dicom_bytes(RAW, "MONOCHROME1"), OPTIONS))[1]
    np.testing.assert_allclose(stored, np.round((1 - RAW / RAW.max()) * 65535), atol=1)


def test_dicom_monochrome1_is_windowed_then_inverted():
    """MONOCHROME1 shows low values bright: the window applies to the (rescaled) values as
    stored, then the result is inverted, so values below the window are white and those above
    black. Inverting first, or not at all when there is a window, fails."""
    data = dicom_bytes(RAW, "MONOCHROME1", RescaleSlope=2, RescaleIntercept=-1000,
                       WindowCenter=1500, WindowWidth=2000)
    mode, stored = _pixels(prepare_image(data, OPTIONS))
    values = RAW * 2.0 - 1000  # -1000 .. 6188: both ends outside the window [500, 2500]
    expected = np.round((1 - _linear_window(values, 1500, 2000)) * 65535)
    assert mode == "I;16"
    np.testing.assert_allclose(stored, expected, atol=1)
    assert stored[values < 500].min() == 65535 and stored[values > 2500].max() == 0


def test_dicom_8_bit_becomes_l():
    mode, stored = _pixels(prepare_image(dicom_bytes(GRAY, bits_stored=8), OPTIONS))
    assert mode == "L"
    np.testing.assert_allclose(stored, np.round((GRAY - GRAY.min()) / np.ptp(GRAY) * 255), atol=1)


def test_dicom_recognised_by_extension_or_preamble_and_refused_when_broken():
    data = dicom_bytes(RAW)
    assert _pixels(prepare_image(data, OPTIONS, name="a.bin"))[0] == "I;16"
    _rejected(data[: len(data) - 100], images.CORRUPT_IMAGE)
    _rejected(data, images.TOO_LARGE, max_pixels=RAW.size - 1)
    with pytest.raises(images.ImageRejected) as caught:
        prepare_image(b"garbage" * 50, OPTIONS, name="scan.dcm")
    assert caught.value.reason == images.CORRUPT_IMAGE


def test_multiframe_dicom_is_unsupported():
    _rejected(dicom_bytes(np.stack([RAW, RAW])), images.UNSUPPORTED_IMAGE)


def test_dicom_case_through_the_build(tmp_path):
    """A generic build of DICOM files: stored as 16-bit PNGs the reader's decoder reads."""
    import tensorflow as tf

    from data_prep.build import build_dataset
    from data_prep.config import BuildConfig
    from simclr_med.data import preprocess, schema

    (tmp_path / "scans").mkdir()
    lines = ["path,study,finding"]
    for index in range(4):
        (tmp_path / "scans" / f"{index}.dcm").write_bytes(
            dicom_bytes(RAW + index, RescaleSlope=1, RescaleIntercept=0))
        lines.append(f"scans/{index}.dcm,study{index // 2},{index % 2}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    report = build_dataset(BuildConfig(
        format="generic", manifests=(str(tmp_path / "m.csv"),), image_root=str(tmp_path),
        output_dir=str(tmp_path / "out"), case_column="study", label_columns=("finding",),
        val_fraction=0.0, test_fraction=0.0, num_workers=1, progress=False))
    assert report["images_written"] == 4
    for record in tf.data.TFRecordDataset(tf.io.gfile.glob(str(tmp_path / "out/train-*"))):
        case = schema.parse_case(record, num_labels=1)
        for encoded in case["encoded"]:
            image = preprocess.decode_image(encoded)
            assert image.shape == (20, 30, 1)
            np.testing.assert_allclose(image[..., 0], RAW / RAW.max(), atol=1e-4)
