"""The augmented views of contrastive pretraining: SimCLR's set and the paper's chest X-ray set.

One view, `augment_view`, applies in this order (each step only when its `AugmentConfig` field
asks for it):

1. rotation by an angle uniform in +-`rotation_degrees`, on the full decoded image;
2. random resized crop (area and aspect ranges from the config) then bicubic resize to
   `image_size`; with `crop=False`, the largest central square resized to `image_size` (for
   square inputs, a plain resize);
3. horizontal flip with p=0.5;
4. grayscale inputs become 3 channels;
5. colour jitter of strength s with p=`color_jitter_prob`, its four transforms in random order;
6. grayscale with p=`grayscale_prob` (kept as 3 equal channels);
7. Gaussian blur with p=`blur_prob`;
8. clip to [0, 1].

Rotation comes before the crop: the crop then samples the rotated frame, so a crop from the
interior of the image holds no filled-in pixels at all, whereas rotating the crop afterwards would
fill the corners of every rotated view. Geometry runs on the image's own channels (a chest X-ray's
one), which is three times cheaper than on tiled RGB.

Steps 1, 2 and 4 are the view's geometry (`geometric_view`), the others its photometry
(`photometric_view`, whose draws `photometric_draws` makes); `augment_view` is one after the other.
With `--augment_on=device` the input pipeline stops after the geometry and
`simclr_med.data.device_augment` runs the photometry on the batch, inside the training step.

All randomness is stateless: one [2] seed per view is split into one seed per step, so a fixed
seed gives the same view whatever the tf.data parallelism. Facts (ranges, probabilities, kernel
size) follow google-research/simclr (tf2/data_util.py); images are floats in [0, 1] with no
mean/std normalisation.
"""

from __future__ import annotations

import math
from typing import Callable

import tensorflow as tf

from simclr_med.config import AUGMENT_PRESETS as PRESETS  # noqa: F401 (this module's name for them)
from simclr_med.config import ROTATION_FILL_MODES, AugmentConfig
from simclr_med.config import augment_preset as preset  # noqa: F401
from simclr_med.data.preprocess import center_crop_and_resize, resize, to_rgb

FILL_MODES = ROTATION_FILL_MODES

# SimCLR's crop sampling: the crop must cover >= 10% of the image, 100 tries, else the full image.
_CROP_MIN_OBJECT_COVERED = 0.1
_CROP_MAX_ATTEMPTS = 100


def validate(config: AugmentConfig) -> None:
    """Raise ValueError for a config no view could be drawn from."""
    problems = []
    for name in ("color_jitter_prob", "grayscale_prob", "blur_prob"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            problems.append(f"{name}={getattr(config, name)} is not a probability")
    if not 0.0 < config.crop_area_min <= config.crop_area_max <= 1.0:
        problems.append(f"crop area range ({config.crop_area_min}, {config.crop_area_max}) "
                        "must satisfy 0 < min <= max <= 1")
    if not 0.0 < config.crop_aspect_min <= config.crop_aspect_max:
        problems.append(f"crop aspect range ({config.crop_aspect_min}, "
                        f"{config.crop_aspect_max}) must satisfy 0 < min <= max")
    if not 0.0 < config.blur_sigma_min <= config.blur_sigma_max:
        problems.append(f"blur sigma range ({config.blur_sigma_min}, {config.blur_sigma_max}) "
                        "must satisfy 0 < min <= max")
    if config.color_jitter_strength < 0:
        problems.append(f"color_jitter_strength={config.color_jitter_strength} is negative")
    if not 0.0 <= config.rotation_degrees <= 180.0:
        problems.append(f"rotation_degrees={config.rotation_degrees} is not in [0, 180]")
    if config.rotation_fill_mode not in FILL_MODES:
        problems.append(f"rotation_fill_mode={config.rotation_fill_mode!r} is not one of "
                        f"{FILL_MODES}")
    if problems:
        raise ValueError("invalid AugmentConfig: " + "; ".join(problems))


def augment_view(image: tf.Tensor, seed: tf.Tensor, config: AugmentConfig,
                 image_size: int) -> tf.Tensor:
    """One augmented view (the steps and their order are in the module docstring).

    image: float32 [H, W, C] in [0, 1], C in {1, 3}; seed: int32/int64 [2] stateless seed.
    Returns float32 [image_size, image_size, 3] in [0, 1].
    """
    return photometric_view(geometric_view(image, seed, config, image_size), seed, config,
                            image_size)


def geometric_view(image: tf.Tensor, seed: tf.Tensor, config: AugmentConfig,
                   image_size: int) -> tf.Tensor:
    """Steps 1, 2 and 4 of a view: rotation, crop and resize, three channels.

    float32 [image_size, image_size, 3] in [0, 1]; `photometric_view` of it with the same seed
    is `augment_view`. The flip (step 3) is photometric's: it commutes with `to_rgb`.
    """
    validate(config)
    seeds = step_seeds(seed)
    if config.rotation_degrees > 0:
        image = random_rotate(image, seeds["rotation"], config.rotation_degrees,
                              config.rotation_fill_mode)
    if config.crop:
        image = random_crop_and_resize(image, seeds["crop"], image_size, config)
    else:
        image = center_crop_and_resize(image, image_size, crop_proportion=1.0)
    return tf.ensure_shape(to_rgb(image), [image_size, image_size, 3])


def photometric_view(image: tf.Tensor, seed: tf.Tensor, config: AugmentConfig,
                     image_size: int) -> tf.Tensor:
    """Steps 3 and 5-8 of a view of seed `seed` (`photometric_draws`) on its RGB crop."""
    draws = photometric_draws(seed, config, image_size)

    def maybe(step: str, transform: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        return tf.cond(draws[step], lambda: transform(x), lambda: x) if step in draws else x

    image = maybe("flip", lambda x: tf.reverse(x, [1]), image)
    image = maybe("color_jitter", lambda x: apply_color_jitter(x, draws), image)
    image = maybe("grayscale", to_grayscale, image)
    image = maybe("blur", lambda x: gaussian_blur(x, draws["blur_sigma"],
                                                  blur_kernel_size(image_size)), image)
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), [image_size, image_size, 3])


def photometric_draws(seed: tf.Tensor, config: AugmentConfig,
                      image_size: int) -> dict[str, tf.Tensor]:
    """Every random draw of a view's photometric steps, from the view's seed.

    For each step the config enables, a boolean under the step's name (whether it applies), and
    the step's parameters: `jitter_parameters` for `color_jitter`, `blur_sigma` for `blur`.
    A disabled step has no entry. `photometric_view` applies them to one view and
    `device_augment.photometric_batch` to a batch (the input pipeline ships the draws), so both
    make the same views from one seed.
    """
    validate(config)
    seeds = step_seeds(seed)
    draws = {}
    if config.flip:  # as tf.image.stateless_random_flip_left_right draws it
        draws["flip"] = tf.random.stateless_uniform([], seeds["flip"]) < 0.5
    if config.color_jitter_strength > 0 and config.color_jitter_prob > 0:
        draws["color_jitter"], jitter_seed = _coin(seeds["color_jitter"], config.color_jitter_prob)
        draws.update(jitter_parameters(jitter_seed, config.color_jitter_strength))
    if config.grayscale_prob > 0:
        draws["grayscale"], _ = _coin(seeds["grayscale"], config.grayscale_prob)
    if config.blur_prob > 0 and blur_kernel_size(image_size) > 1:
        draws["blur"], blur_seed = _coin(seeds["blur"], config.blur_prob)
        draws["blur_sigma"] = tf.random.stateless_uniform(
            [], blur_seed, minval=config.blur_sigma_min, maxval=config.blur_sigma_max)
    return draws


VIEW_STEPS = ("rotation", "crop", "flip", "color_jitter", "grayscale", "blur")


def step_seeds(seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """One independent stateless seed per step of `augment_view`, from the view's seed.

    The seed is cast to int64 first, so equal seed values give equal views whichever integer
    type the caller uses. A step's seed does not depend on which other steps are enabled.
    """
    split = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=len(VIEW_STEPS))
    return dict(zip(VIEW_STEPS, tf.unstack(split)))


def _coin(seed: tf.Tensor, p: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Whether a step of probability p applies, and the seed of its own draws."""
    coin_seed, step_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    return tf.random.stateless_uniform([], coin_seed) < p, step_seed


def random_rotate(image: tf.Tensor, seed: tf.Tensor, max_degrees: float,
                  fill_mode: str) -> tf.Tensor:
    """Rotate by `rotation_angle(seed, max_degrees)`."""
    return rotate(image, rotation_angle(seed, max_degrees), fill_mode)


def rotation_angle(seed: tf.Tensor, max_degrees: float) -> tf.Tensor:
    """An angle in radians drawn uniformly in [-max_degrees, max_degrees]."""
    max_radians = math.radians(max_degrees)
    return tf.random.stateless_uniform([], seed, minval=-max_radians, maxval=max_radians)


def rotate(image: tf.Tensor, angle_radians: tf.Tensor | float, fill_mode: str) -> tf.Tensor:
    """Rotate [H, W, C] counter-clockwise (as displayed, rows going down) by angle_radians
    about the image centre, bilinear, same size.

    Pixels that come from outside the image are filled by `fill_mode`: "reflect" (the default of
    AugmentConfig) mirrors the image about its edge, so a rotated view has no black corners, a
    cue unrelated to the anatomy that the contrastive task could otherwise learn from (the
    corners' shape gives the angle away); "constant" fills with 0, "nearest" repeats the edge
    pixel, "wrap" tiles the image.
    """
    if fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    center_y = (tf.cast(height, tf.float32) - 1.0) / 2.0
    center_x = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cos = tf.math.cos(tf.cast(angle_radians, tf.float32))
    sin = tf.math.sin(tf.cast(angle_radians, tf.float32))
    # The op maps each *output* pixel to the input point it samples: the inverse rotation
    # (x, y) -> c + [[cos, -sin], [sin, cos]] (p - c), which is a counter-clockwise turn on screen.
    transform = tf.stack([cos, -sin, center_x - cos * center_x + sin * center_y,
                          sin, cos, center_y - sin * center_x - cos * center_y,
                          0.0, 0.0])
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=transform[tf.newaxis],
        output_shape=tf.stack([height, width]), fill_value=0.0, interpolation="BILINEAR",
        fill_mode=fill_mode.upper())
    return tf.ensure_shape(rotated[0], image.shape)


def random_crop_and_resize(image: tf.Tensor, seed: tf.Tensor, image_size: int,
                           config: AugmentConfig) -> tf.Tensor:
    """SimCLR's random resized crop: `random_crop`, bicubic-resized to [image_size, image_size]."""
    return resize(random_crop(image, seed, config), image_size)


def random_crop(image: tf.Tensor, seed: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """A box covering a fraction of the image's area in [crop_area_min, crop_area_max] with
    width/height in [crop_aspect_min, crop_aspect_max] (100 tries, else the whole image)."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=_CROP_MIN_OBJECT_COVERED,
        aspect_ratio_range=(config.crop_aspect_min, config.crop_aspect_max),
        area_range=(config.crop_area_min, config.crop_area_max),
        max_attempts=_CROP_MAX_ATTEMPTS, use_image_if_no_bounding_boxes=True)
    return tf.slice(image, begin, size)


JITTER_TRANSFORMS = ("brightness", "contrast", "saturation", "hue")


def jitter_parameters(seed: tf.Tensor, strength: float) -> dict[str, tf.Tensor]:
    """The draws of one colour jitter of strength s: multiplicative `brightness`, `contrast` and
    `saturation` factors, each uniform in [max(0, 1-0.8s), 1+0.8s], a `hue` shift uniform in
    +-min(0.2s, 0.5) of a turn, and `order`, the permutation of JITTER_TRANSFORMS applied.

    Beyond the reference: the contrast and saturation lower bounds are floored at 0 and the hue
    shift capped at 0.5 (a full turn), so strengths above 1.25 stay valid. The draws are those of
    `tf.image.stateless_random_contrast` etc. with the same seeds.
    """
    order_seed, *seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=5))
    spread = 0.8 * strength
    low, high = max(0.0, 1.0 - spread), 1.0 + spread
    hue_delta = min(0.2 * strength, 0.5)
    return {
        "brightness": tf.random.stateless_uniform([], seeds[0], minval=low, maxval=high),
        "contrast": tf.random.stateless_uniform([], seeds[1], minval=low, maxval=high),
        "saturation": tf.random.stateless_uniform([], seeds[2], minval=low, maxval=high),
        "hue": tf.random.stateless_uniform([], seeds[3], minval=-hue_delta, maxval=hue_delta),
        "order": tf.argsort(tf.random.stateless_uniform([len(JITTER_TRANSFORMS)], order_seed)),
    }


def apply_color_jitter(image: tf.Tensor, parameters: dict[str, tf.Tensor]) -> tf.Tensor:
    """SimCLR(v2) colour jitter of an RGB image with the draws of `jitter_parameters`:
    brightness, contrast, saturation and hue in the drawn order, clipping to [0, 1] after each.
    Contrast moves each channel away from its mean over the image, saturation scales HSV
    saturation, hue rotates HSV hue."""
    transforms = {
        "brightness": lambda x: x * parameters["brightness"],
        "contrast": lambda x: tf.image.adjust_contrast(x, parameters["contrast"]),
        "saturation": lambda x: tf.image.adjust_saturation(x, parameters["saturation"]),
        "hue": lambda x: tf.image.adjust_hue(x, parameters["hue"]),
    }
    for position in range(len(JITTER_TRANSFORMS)):
        image = tf.switch_case(parameters["order"][position],
                               [lambda f=transforms[name], x=image: f(x)
                                for name in JITTER_TRANSFORMS])
        image = tf.clip_by_value(image, 0.0, 1.0)
    return image


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
    """RGB [..., 3] -> luma (ITU-R 601), kept as three equal channels."""
    return tf.broadcast_to(tf.image.rgb_to_grayscale(image), tf.shape(image))


def blur_kernel_size(image_size: int) -> int:
    """SimCLR's blur kernel: about a tenth of the image size, made odd (64 -> 7, 224 -> 23)."""
    return 2 * ((image_size // 10) // 2) + 1


def gaussian_kernel(sigma: tf.Tensor | float, kernel_size: int) -> tf.Tensor:
    """Normalised 1-D Gaussian weights at offsets -(k//2)..k//2: [k], or [N, k] for N sigmas."""
    radius = kernel_size // 2
    offsets = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    sigma = tf.expand_dims(tf.cast(sigma, tf.float32), -1)
    weights = tf.exp(-tf.square(offsets) / (2.0 * tf.square(sigma)))
    return weights / tf.reduce_sum(weights, axis=-1, keepdims=True)


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor | float, kernel_size: int) -> tf.Tensor:
    """Separable Gaussian blur of [H, W, C] with zero padding at the borders, i.e. the
    reference's 'SAME' convolution.

    Each 1-D pass is a product with a banded (Toeplitz) matrix rather than a depthwise
    convolution: the same numbers, about 5x faster on CPU for the 23-tap kernel at 224 px.
    """
    kernel = gaussian_kernel(sigma, kernel_size)
    shape = tf.shape(image)
    blurred = tf.einsum("ij,jwc->iwc", band_matrix(kernel, shape[0]), image)
    blurred = tf.einsum("hjc,jw->hwc", blurred, band_matrix(kernel, shape[1]))
    return tf.ensure_shape(blurred, image.shape)


def band_matrix(kernel: tf.Tensor, size: int | tf.Tensor) -> tf.Tensor:
    """[size, size] matrix M with M[i, j] = kernel[j - i + radius] where |j - i| <= radius
    ([N, size, size] for N kernels [N, k]).

    For a symmetric kernel, M @ x convolves x with it, zero-padded at both ends."""
    radius = tf.shape(kernel)[-1] // 2
    index = tf.range(size)
    offset = index[tf.newaxis, :] - index[:, tf.newaxis] + radius
    inside = tf.abs(offset - radius) <= radius
    return tf.where(inside, tf.gather(kernel, tf.clip_by_value(offset, 0, 2 * radius), axis=-1),
                    0.0)
