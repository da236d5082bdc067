"""Augmentation on the accelerator (`--augment_on=device`): the photometric half of every view
(flip, colour jitter, grayscale, blur) run on a whole batch inside the training step.

A SimCLR view costs the host far more in colour jitter and blur than in decoding and cropping; on
one GPU the host's cores often cannot feed the accelerator. With this option the input pipeline
ships each view's RGB crop as uint8 (`to_uint8`, a quarter of float32's bytes) with the view's
seed, and `photometric_batch` draws the same per-view parameters from that seed as the host path
(`augment.photometric_draws`), so a view differs from its host twin only by the crop's rounding
to 8 bits (at most half a grey level before the jitter). The batched transforms compute each
candidate for every view and select per view: branch-free, as accelerators want.
"""

from __future__ import annotations

import tensorflow as tf

from simclr_med.config import AugmentConfig
from simclr_med.data import augment


def to_uint8(view: tf.Tensor) -> tf.Tensor:
    """A float view in [0, 1] as uint8, rounded to the nearest level."""
    return tf.cast(tf.round(tf.clip_by_value(view, 0.0, 1.0) * 255.0), tf.uint8)


def photometric_batch(crops: tf.Tensor, seeds: tf.Tensor, config: AugmentConfig,
                      image_size: int) -> tf.Tensor:
    """`augment.photometric_view` of every crop: uint8 [N, S, S, 3] crops and their views'
    int64 [N, 2] seeds -> float32 [N, S, S, 3] views in [0, 1]."""
    draws = draws_batch(seeds, config, image_size)
    images = tf.cast(crops, tf.float32) / 255.0
    if "flip" in draws:
        images = _where(draws["flip"], tf.reverse(images, [2]), images)
    if "color_jitter" in draws:
        images = _where(draws["color_jitter"], color_jitter_batch(images, draws), images)
    if "grayscale" in draws:
        images = _where(draws["grayscale"], augment.to_grayscale(images), images)
    if "blur" in draws:
        blurred = gaussian_blur_batch(images, draws["blur_sigma"],
                                      augment.blur_kernel_size(image_size))
        images = _where(draws["blur"], blurred, images)
    return tf.ensure_shape(tf.clip_by_value(images, 0.0, 1.0), [None, image_size, image_size, 3])


def draws_batch(seeds: tf.Tensor, config: AugmentConfig, image_size: int) -> dict[str, tf.Tensor]:
    """`augment.photometric_draws` of each of N seeds [N, 2], stacked ([N] or [N, 4])."""
    draw = tf.function(lambda seed: augment.photometric_draws(seed, config, image_size))
    one = draw.get_concrete_function(tf.TensorSpec([2], tf.int64)).structured_outputs
    return tf.map_fn(draw, tf.cast(seeds, tf.int64), fn_output_signature=tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype), one))


def _where(per_image: tf.Tensor, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """a where the image's flag is set, else b ([N] flags, [N, H, W, C] images)."""
    return tf.where(per_image[:, tf.newaxis, tf.newaxis, tf.newaxis], a, b)


def color_jitter_batch(images: tf.Tensor, draws: dict[str, tf.Tensor]) -> tf.Tensor:
    """`augment.apply_color_jitter` of each image [N, H, W, 3] with its own draws ([N] factors,
    [N, 4] orders): at each of the four positions, every image takes the transform its order
    puts there, clipped to [0, 1] after each, as in the host path."""
    names = augment.JITTER_TRANSFORMS
    per_image = {k: draws[k][:, tf.newaxis, tf.newaxis] for k in names}  # [N, 1, 1]
    for position in range(len(names)):
        chosen = draws["order"][:, position]
        hue, saturation, value = tf.unstack(tf.image.rgb_to_hsv(images), axis=-1)
        # One HSV round trip serves both saturation and hue: an image takes at most one of them.
        saturation = tf.where((chosen == names.index("saturation"))[:, None, None],
                              tf.clip_by_value(saturation * per_image["saturation"], 0.0, 1.0),
                              saturation)
        hue = tf.where((chosen == names.index("hue"))[:, None, None],
                       tf.math.floormod(hue + per_image["hue"], 1.0), hue)
        in_hsv = tf.image.hsv_to_rgb(tf.stack([hue, saturation, value], axis=-1))
        mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
        transformed = {
            "brightness": images * per_image["brightness"][..., tf.newaxis],
            "contrast": (images - mean) * per_image["contrast"][..., tf.newaxis] + mean,
            "saturation": in_hsv,
            "hue": in_hsv,
        }
        result = transformed["brightness"]
        for name in names[1:]:
            result = _where(chosen == names.index(name), transformed[name], result)
        images = tf.clip_by_value(result, 0.0, 1.0)
    return images


def gaussian_blur_batch(images: tf.Tensor, sigmas: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """`augment.gaussian_blur` of each square image [N, S, S, C] with its own sigma [N]."""
    bands = augment.band_matrix(augment.gaussian_kernel(sigmas, kernel_size), tf.shape(images)[1])
    blurred = tf.einsum("nij,njwc->niwc", bands, images)
    return tf.einsum("nhjc,njw->nhwc", blurred, bands)
