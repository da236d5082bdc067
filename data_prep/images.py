"""Reading, validating and storing one image file (runs in the build's worker processes).

Storage policy, which decides what the reader later decodes:
- Every file is decoded completely before it is accepted, so a truncated or corrupt file is caught
  here (`corrupt_image`), never in training.
- PNG and JPEG files that are already 8-bit grayscale (L), RGB, or 16-bit grayscale are stored
  byte for byte. Nothing else is re-encoded unless it must change; a change is written as PNG.
- Grayscale content is stored as one channel: a losslessly stored RGB/RGBA/palette image whose three
  channels are equal in every pixel (the NIH 64 px PNGs are such RGB files) becomes an 8-bit L PNG,
  pixel for pixel. JPEGs are not checked: their colour is lossy, and re-encoding would either lose
  quality again or grow the file; readers turn any channel count into what the model needs.
- Alpha is dropped (RGBA -> RGB, LA -> L); palettes are expanded; CMYK becomes RGB; 1-bit becomes L;
  other formats PIL reads (TIFF, BMP, ...) are re-encoded. A 16-bit colour PNG is kept as it is;
  if it must change (alpha, resize) it becomes 8-bit RGB, as PIL holds colour in 8 bits.
- DICOM (pydicom, the `dicom` extra): single-frame MONOCHROME1/2 or RGB. Grey values go through
  the modality LUT (rescale slope and intercept), then the file's VOI window or LUT when it has one
  (else the image's own minimum and maximum), are scaled to the full range of a 16-bit PNG (8-bit
  when BitsStored <= 8), and MONOCHROME1 is inverted so that bright means dense in every image.
- `image_size` > 0 shrinks images whose shorter side is longer than that (Lanczos); smaller images
  are kept as they are rather than blown up.
- A file with more than `max_pixels` pixels is refused (`too_large`) from its header, not decoded.
- A path whose real location (symbolic links followed) is outside the image root is refused
  (`outside_root`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import struct
import warnings
import zlib
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

MISSING_FILE = "missing_file"
UNREADABLE_FILE = "unreadable_file"
OUTSIDE_ROOT = "outside_root"
CORRUPT_IMAGE = "corrupt_image"
TOO_LARGE = "too_large"
UNSUPPORTED_IMAGE = "unsupported_image"

_STORED_AS_IS = ("PNG", "JPEG")
_TO_RGB = ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr")
_WIDE_GRAY = ("I", "I;16B", "I;16L", "I;16N")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    image_root: str  # a real path (os.path.realpath)
    image_size: int = 0
    max_pixels: int = 100_000_000


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a worker sends back for one file: the bytes to store, or why there are none."""

    encoded: bytes = b""
    reason: str = ""
    detail: str = ""


class ImageRejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def is_url(path: str) -> bool:
    """Whether `path` names a file system by its scheme (gs://, s3://, hdfs://, ...)."""
    return "://" in path


def is_inside(path: str, root: str) -> bool:
    """Whether `path` is `root` or below it (both absolute and normalised)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def load_image(path: str, options: ImageOptions) -> Outcome:
    """The worker's task: the bytes to store for the file at `path`, or the reason to skip it."""
    try:
        return Outcome(encoded=prepare_file(path, options))
    except ImageRejected as rejected:
        return Outcome(reason=rejected.reason, detail=rejected.detail)


def prepare_file(path: str, options: ImageOptions) -> bytes:
    if is_url(path):
        return prepare_image(_read_url(path), options, name=path)
    real = os.path.realpath(path)
    if not is_inside(real, options.image_root):
        raise ImageRejected(OUTSIDE_ROOT, f"{path} resolves to {real}")
    try:
        with open(real, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ImageRejected(MISSING_FILE, f"{path}: no such file") from None
    except OSError as error:
        raise ImageRejected(UNREADABLE_FILE, f"{path}: {error}") from None
    return prepare_image(data, options, name=path)


def _read_url(path: str) -> bytes:
    """A file of a bucket, through TensorFlow's file systems (object stores have no links to
    follow out of the root; the build checked the path). Only Beam workers read URLs, never the
    local runner's forked processes, which must not use TensorFlow."""
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError:
        raise ImageRejected(MISSING_FILE, f"{path}: no such file") from None
    except tf.errors.OpError as error:
        raise ImageRejected(UNREADABLE_FILE, f"{path}: {error.message}") from None


def prepare_image(data: bytes, options: ImageOptions, name: str = "") -> bytes:
    """The bytes to store for one encoded image (the same bytes when nothing must change)."""
    if data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom")):
        image, keep = _decode_dicom(data, options.max_pixels, name), False
    else:
        image, keep = _decode(data, options.max_pixels, name)
    shrunk = _shrink(image, options.image_size)
    if keep and shrunk is image:
        return data
    buffer = io.BytesIO()
    shrunk.save(buffer, format="PNG")
    return buffer.getvalue()


def _check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    if width * height > max_pixels:
        raise ImageRejected(TOO_LARGE, f"{name}: {width}x{height} = {width * height} pixels, "
                                       f"more than the limit of {max_pixels}")


@contextlib.contextmanager
def _pil_pixel_limit(max_pixels: int) -> Iterator[None]:
    """PIL's own decompression-bomb guard, set to our limit while a header is read."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _decode(data: bytes, max_pixels: int, name: str) -> tuple[Image.Image, bool]:
    """Decodes completely; returns the image in a stored mode and whether `data` can be kept."""
    try:
        with _pil_pixel_limit(max_pixels):
            image = Image.open(io.BytesIO(data))
        _check_pixels(image.width, image.height, max_pixels, name)
        wide_colour = image.mode in _TO_RGB and any(";16" in str(tile[3]) for tile in image.tile)
        image.load()
    except Image.DecompressionBombError as error:
        raise ImageRejected(TOO_LARGE, f"{name}: {error}") from None
    except UnidentifiedImageError:
        raise ImageRejected(CORRUPT_IMAGE, f"{name}: not an image format PIL can read") from None
    except _DECODE_ERRORS as error:
        raise ImageRejected(CORRUPT_IMAGE, f"{name}: {error}") from None
    if wide_colour and image.mode == "RGB":
        return image, image.format in _STORED_AS_IS
    lossless = image.format != "JPEG" and not wide_colour
    stored = _stored_mode(image, lossless, name)
    return stored, stored is image and image.format in _STORED_AS_IS


def _stored_mode(image: Image.Image, lossless: bool, name: str) -> Image.Image:
    """The image in L, RGB or I;16 (the same object when it already is and needs no change)."""
    if image.mode in ("L", "I;16"):
        return image
    if image.mode in ("1", "LA", "La"):
        return image.convert("L")
    if image.mode in _WIDE_GRAY:
        pixels = np.asarray(image)
        if pixels.min() < 0 or pixels.max() > 65535:
            raise ImageRejected(UNSUPPORTED_IMAGE, f"{name}: {image.mode} values outside 16 bits")
        return Image.fromarray(pixels.astype(np.uint16))
    if image.mode not in _TO_RGB:
        raise ImageRejected(UNSUPPORTED_IMAGE, f"{name}: pixel mode {image.mode!r}")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if lossless and _channels_equal(np.asarray(rgb)):
        return rgb.getchannel("R")
    return rgb


def _channels_equal(pixels: np.ndarray) -> bool:
    return bool(np.all(pixels[..., 0] == pixels[..., 1]) and np.all(pixels[..., 1] == pixels[..., 2]))


def _shrink(image: Image.Image, image_size: int) -> Image.Image:
    """Resized so that the shorter side is `image_size` (the same object if already small)."""
    width, height = image.size
    shorter = min(width, height)
    if not image_size or shorter <= image_size:
        return image
    size = (max(1, round(width * image_size / shorter)), max(1, round(height * image_size / shorter)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _decode_dicom(data: bytes, max_pixels: int, name: str) -> Image.Image:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise ImageRejected(UNSUPPORTED_IMAGE, f"{name}: DICOM needs pydicom: "
                                               f"pip install 'simclr-med[dicom]'") from None
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        frames = int(dataset.get("NumberOfFrames") or 1)
        if "PixelData" not in dataset or frames != 1:
            raise ImageRejected(UNSUPPORTED_IMAGE, f"{name}: DICOM with {frames} frames or no "
                                                   f"PixelData; one frame is supported")
        _check_pixels(int(dataset.Columns), int(dataset.Rows), max_pixels, name)
        pixels = dataset.pixel_array
        interpretation = dataset.PhotometricInterpretation
    except (NotImplementedError, RuntimeError, ImportError) as error:
        raise ImageRejected(UNSUPPORTED_IMAGE, f"{name}: {error}") from None
    except (InvalidDicomError, AttributeError, KeyError, TypeError, *_DECODE_ERRORS) as error:
        raise ImageRejected(CORRUPT_IMAGE, f"{name}: {error}") from None
    if interpretation in ("MONOCHROME1", "MONOCHROME2"):
        return _dicom_grayscale(dataset, pixels)
    if interpretation == "RGB" and pixels.dtype == np.uint8:
        return Image.fromarray(pixels, "RGB")
    raise ImageRejected(UNSUPPORTED_IMAGE, f"{name}: DICOM PhotometricInterpretation "
                                           f"{interpretation} with {pixels.dtype} pixels")


def _dicom_grayscale(dataset, pixels: np.ndarray) -> Image.Image:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
    if "WindowCenter" in dataset or "VOILUTSequence" in dataset:
        values = apply_voi_lut(values, dataset, index=0)
        # The window maps onto a fixed output range: find its ends by windowing two extremes.
        low, high = apply_voi_lut(np.array([-1e12, 1e12]), dataset, index=0)
    else:
        low, high = values.min(), values.max()
    unit = np.clip((values - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(values)
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        unit = 1.0 - unit
    if int(dataset.BitsStored) > 8:
        return Image.fromarray(np.round(unit * 65535).astype(np.uint16))
    return Image.fromarray(np.round(unit * 255).astype(np.uint8))
