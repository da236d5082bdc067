"""Image decoding and the evaluation path: the one preprocessing every non-training image gets.

Evaluation, fine-tuning's validation, and the exported serving signature all call these functions,
so a model sees the same pixels whether it is evaluated here or served from a SavedModel.
Everything is graph-safe (usable inside `tf.data` map functions and `tf.function`).
Images are float32 in [0, 1] with no mean/std normalisation, as SimCLR.
"""

from __future__ import annotations

import tensorflow as tf

from simclr_med.config import ModelConfig

# SimCLR's (and ImageNet's) standard evaluation crop: keep 87.5% of the shorter side.
CROP_PROPORTION = ModelConfig.eval_crop_proportion


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """PNG (8- or 16-bit) or JPEG bytes -> float32 [H, W, C] in [0, 1], C in {1, 3}.

    Integer pixels are scaled by their type's maximum (255 or 65535). An alpha channel is dropped
    (RGBA -> RGB, LA -> L); one-channel images stay one channel (`to_rgb` tiles them when needed).
    Invalid or empty bytes raise `tf.errors.InvalidArgumentError` ("Unknown image file format",
    "Input is empty", "Invalid PNG", ...); the caller names the file or row.

    JPEGs use libjpeg's accurate integer IDCT, which gives the same pixels as PIL (data_prep's
    decoder); TensorFlow's default fast IDCT differs from it by up to a dozen grey levels.
    """
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.image.convert_image_dtype(
            tf.io.decode_jpeg(encoded, dct_method="INTEGER_ACCURATE"), tf.float32),
        lambda: tf.io.decode_image(encoded, dtype=tf.float32, expand_animations=False))
    image = tf.ensure_shape(image, [None, None, None])
    channels = tf.shape(image)[-1]
    # 2 (LA) and 4 (RGBA) channels end in alpha: keep the colour channels before it.
    has_alpha = tf.logical_or(tf.equal(channels, 2), tf.equal(channels, 4))
    return image[:, :, : tf.where(has_alpha, channels - 1, channels)]


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """[H, W, 1 or 3] -> [H, W, 3]; a grayscale image is tiled into three equal channels."""
    shape = tf.shape(image)
    return tf.ensure_shape(tf.broadcast_to(image, [shape[0], shape[1], 3]), [None, None, 3])


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Bicubic resize to [image_size, image_size], clipped back to [0, 1] (bicubic overshoots).

    No anti-aliasing, as the SimCLR reference, so that inputs match the official checkpoints'.
    """
    image = tf.image.resize(image, [image_size, image_size], method=tf.image.ResizeMethod.BICUBIC)
    return tf.clip_by_value(image, 0.0, 1.0)


def center_crop_and_resize(image: tf.Tensor, image_size: int,
                           crop_proportion: float = CROP_PROPORTION) -> tf.Tensor:
    """Evaluation crop, as SimCLR: a central square whose side is `crop_proportion` of the
    shorter side (1.0: the largest central square), bicubic-resized to
    [image_size, image_size, 3] and clipped to [0, 1].

    The crop is square and the output is square, so the aspect ratio is preserved.
    """
    if not 0.0 < crop_proportion <= 1.0:
        raise ValueError(f"crop_proportion must be in (0, 1], got {crop_proportion}")
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    shorter = tf.cast(tf.minimum(height, width), tf.float32)
    side = tf.maximum(tf.cast(tf.math.rint(crop_proportion * shorter), tf.int32), 1)
    top = (height - side + 1) // 2
    left = (width - side + 1) // 2
    crop = image[top:top + side, left:left + side]
    return tf.ensure_shape(to_rgb(resize(crop, image_size)), [image_size, image_size, 3])


def preprocess_for_eval(encoded_or_image: tf.Tensor, image_size: int,
                        crop_proportion: float = CROP_PROPORTION) -> tf.Tensor:
    """Encoded bytes, an integer image or a float image in [0, 1] -> the evaluation input
    [image_size, image_size, 3] float32 in [0, 1]."""
    image = tf.convert_to_tensor(encoded_or_image)
    if image.dtype == tf.string:
        image = decode_image(image)
    else:
        image = tf.image.convert_image_dtype(image, tf.float32)
    return center_crop_and_resize(image, image_size, crop_proportion)
