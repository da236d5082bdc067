"""Augmentation on the accelerator (`--augment_on=device`): the photometric half of every view
(flip, colour jitter, grayscale, blur) run on a whole batch inside the training step.

A SimCLR view costs the host far more in colour jitter and blur than in decoding and cropping; on
one GPU the host's cores often cannot feed the accelerator. With this option the input pipeline
ships each view's RGB crop as uint8 (`to_uint8`, a quarter of float32's bytes) with the view's
draws, the random parameters of its photometric steps (`augment.photometric_draws`, a dozen
scalars drawn on the host, so the same on every backend whatever its random-number kernels), and
`photometric_batch` applies them: a view differs from its host twin only by the crop's rounding
to 8 bits (at most half a grey level before the jitter; a 16-bit source loses its low 8 bits).
The batched transforms compute each candidate for every view and select per view: branch-free,
as accelerators want.
"""

from __future__ import annotations

import tensorflow as tf

from simclr_med.data import augment


def to_uint8(view: tf.Tensor) -> tf.Tensor:
    """A float view in [0, 1] as uint8, rounded to the nearest level."""
    return tf.cast(tf.round(tf.clip_by_value(view, 0.0, 1.0) * 255.0), tf.uint8)


def photometric_batch(crops: tf.Tensor, draws: dict[str, tf.Tensor],
                      image_size: int) -> tf.Tensor:
    """`augment.photometric_view` of every crop: uint8 [N, S, S, 3] crops and their views'
    `augment.photometric_draws`, stacked ([N], `order` [N, 4]) -> float32 [N, S, S, 3] views
    in [0, 1]."""
    images = tf.cast(crops, tf.float32) / 255.0
    if "flip" in draws:
        images = _where(draws["flip"], tf.reverse(images, [2]), images)
    if "color_jitter" in draws:
        images = _where(draws["color_jitter"], color_jitter_batch(images, draws), images)
    if "grayscale" in draws:
        images = _where(draws["grayscale"], augment.to_grayscale(images), images)
    if "blur" in draws:
        blurred = gaussian_blur_batch(images, draws["blur_sigma"],
                                      augment.blur_kernel_size(image_size), image_size)
        images = _where(draws["blur"], blurred, images)
    return tf.ensure_shape(tf.clip_by_value(images, 0.0, 1.0), [None, image_size, image_size, 3])


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
        result = _where(chosen == names.index("brightness"),
                        images * per_image["brightness"][..., tf.newaxis],
                        (images - mean) * per_image["contrast"][..., tf.newaxis] + mean)
        in_hsv_chosen = (chosen == names.index("saturation")) | (chosen == names.index("hue"))
        result = _where(in_hsv_chosen, in_hsv, result)
        images = tf.clip_by_value(result, 0.0, 1.0)
    return images


def gaussian_blur_batch(images: tf.Tensor, sigmas: tf.Tensor, kernel_size: int,
                        image_size: int) -> tf.Tensor:
    """`augment.gaussian_blur` of each square image [N, S, S, C] (S = `image_size`) with its
    own sigma [N]."""
    bands = augment.band_matrix(augment.gaussian_kernel(sigmas, kernel_size), image_size)
    blurred = tf.einsum("nij,njwc->niwc", bands, images)
    return tf.einsum("nhjc,njw->nhwc", blurred, bands)
