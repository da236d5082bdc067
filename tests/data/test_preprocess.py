"""Decoding and the evaluation path (simclr_med.data.preprocess)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from simclr_med.data import preprocess

RNG = np.random.default_rng(0)


def _encode(array: np.ndarray, format: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format=format)
    return buffer.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return preprocess.decode_image(tf.constant(data)).numpy()


def test_decode_8bit_rgb_png_scales_by_255():
    array = RNG.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    image = _decode(_encode(array, "PNG"))
    assert image.dtype == np.float32 and image.shape == (9, 7, 3)
    np.testing.assert_allclose(image, array / 255.0, atol=1e-6)


def test_decode_16bit_grayscale_png_scales_by_65535():
    array = RNG.integers(0, 65536, (6, 5), dtype=np.uint16)
    data = _encode(array, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    image = _decode(data)
    assert image.shape == (6, 5, 1)
    np.testing.assert_allclose(image[..., 0], array / 65535.0, atol=1e-6)


def test_decode_8bit_grayscale_png_stays_one_channel():
    array = RNG.integers(0, 256, (5, 8), dtype=np.uint8)
    image = _decode(_encode(array, "PNG"))
    assert image.shape == (5, 8, 1)
    np.testing.assert_allclose(image[..., 0], array / 255.0, atol=1e-6)


def test_decode_rgba_png_drops_alpha():
    array = RNG.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    image = _decode(_encode(array, "PNG", mode="RGBA"))
    assert image.shape == (4, 6, 3)
    np.testing.assert_allclose(image, array[..., :3] / 255.0, atol=1e-6)


def test_decode_gray_alpha_png_drops_alpha():
    array = RNG.integers(0, 256, (4, 6, 2), dtype=np.uint8)
    image = _decode(_encode(array, "PNG", mode="LA"))
    assert image.shape == (4, 6, 1)
    np.testing.assert_allclose(image[..., 0], array[..., 0] / 255.0, atol=1e-6)


@pytest.mark.parametrize("shape", [(16, 24, 3), (16, 24)])
def test_decode_jpeg_matches_pil(shape):
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    smooth = (128 + 60 * np.sin(x / 5.0) * np.cos(y / 4.0)).astype(np.uint8)
    array = np.stack([smooth, smooth[::-1], 255 - smooth], -1) if len(shape) == 3 else smooth
    data = _encode(array, "JPEG")
    image = _decode(data)
    reference = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32) / 255.0
    assert image.shape == shape[:2] + ((3,) if len(shape) == 3 else (1,))
    # Both run libjpeg's accurate IDCT: the same pixels.
    np.testing.assert_allclose(image.reshape(reference.shape), reference, atol=1e-6)


def test_decode_in_graph_has_static_rank_3():
    data = tf.constant(_encode(np.zeros((3, 3, 3), np.uint8), "PNG"))
    concrete = tf.function(preprocess.decode_image).get_concrete_function(
        tf.TensorSpec([], tf.string))
    assert concrete.output_shapes.rank == 3
    assert concrete(data).shape == (3, 3, 3)


@pytest.mark.parametrize("data, message", [
    (b"not an image", "Unknown image file format"),
    (b"", "Input is empty"),
    (_encode(np.zeros((8, 8, 3), np.uint8), "PNG")[:40], "PNG"),
])
def test_decode_invalid_bytes_raise_invalid_argument(data, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _decode(data)


def test_to_rgb_tiles_grayscale_and_keeps_rgb():
    gray = RNG.random((4, 5, 1)).astype(np.float32)
    rgb = RNG.random((4, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(preprocess.to_rgb(gray).numpy(), np.repeat(gray, 3, axis=-1))
    np.testing.assert_array_equal(preprocess.to_rgb(rgb).numpy(), rgb)


@pytest.mark.parametrize("height, width", [(40, 60), (60, 40), (41, 60)])
def test_center_crop_full_proportion_is_the_central_square(height, width):
    image = RNG.random((height, width, 3)).astype(np.float32)
    side = min(height, width)
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    # Resizing to the crop's own size is the identity, so the crop itself is compared.
    out = preprocess.center_crop_and_resize(image, side, crop_proportion=1.0).numpy()
    np.testing.assert_allclose(out, image[top:top + side, left:left + side], atol=1e-5)


def test_center_crop_proportion_keeps_the_centre():
    image = RNG.random((64, 64, 1)).astype(np.float32)
    out = preprocess.center_crop_and_resize(image, 32, crop_proportion=0.5).numpy()
    assert out.shape == (32, 32, 3)
    np.testing.assert_allclose(out, np.repeat(image[16:48, 16:48], 3, -1), atol=1e-5)


def test_center_crop_default_proportion_and_range():
    # Checkerboard: bicubic overshoots past 0 and 1, the output is clipped.
    board = (np.indices((50, 70)).sum(0) % 2).astype(np.float32)[..., None]
    out = preprocess.center_crop_and_resize(board, 32).numpy()
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # 0.875 of the shorter side: a 44x44 window starting at (3, 13).
    square = RNG.random((50, 70, 1)).astype(np.float32)
    out = preprocess.center_crop_and_resize(square, 44).numpy()
    np.testing.assert_allclose(out[..., 0], square[3:47, 13:57, 0], atol=1e-5)


def test_center_crop_rejects_bad_proportion():
    with pytest.raises(ValueError, match="crop_proportion"):
        preprocess.center_crop_and_resize(tf.zeros([8, 8, 3]), 4, crop_proportion=1.5)


def test_preprocess_for_eval_same_from_bytes_integers_and_floats():
    array = RNG.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    from_bytes = preprocess.preprocess_for_eval(tf.constant(_encode(array, "PNG")), 16)
    from_uint8 = preprocess.preprocess_for_eval(array, 16)
    from_float = preprocess.preprocess_for_eval(array.astype(np.float32) / 255.0, 16)
    np.testing.assert_allclose(from_bytes, from_uint8, atol=1e-6)
    np.testing.assert_allclose(from_bytes, from_float, atol=1e-6)
    assert from_bytes.shape == (16, 16, 3)


def test_real_images_decode_and_evaluate(real_data):
    """NIH PNGs (RGB and RGBA, gray content) and HAM10000 JPEGs, as PIL reads them."""
    nih = real_data / "nih_cxr14_64px" / "images"
    ham = real_data / "ham10000_220px_subset" / "images"
    files = [nih / "00000004_000.png", nih / "00000001_000.png", sorted(ham.glob("*.jpg"))[0]]
    for path in files:
        data = path.read_bytes()
        image = _decode(data)
        reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32) / 255
        assert image.shape == reference.shape, path.name
        np.testing.assert_allclose(image, reference, atol=1e-6, err_msg=path.name)
        evaluated = preprocess.preprocess_for_eval(tf.constant(data), 32).numpy()
        assert evaluated.shape == (32, 32, 3), path.name
