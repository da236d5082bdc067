"""SimCLR and chest X-ray augmentations (simclr_med.data.augment)."""

from __future__ import annotations

import colorsys
import dataclasses
import itertools
import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage, stats

from simclr_med.config import AugmentConfig
from simclr_med.data import augment

SIZE = 32


def _pattern(height: int = 40, width: int = 48, channels: int = 3) -> np.ndarray:
    """A smooth, colourful, asymmetric test image in [0, 1]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [0.5 + 0.3 * np.sin(x / 5.0) * np.cos(y / 7.0),
              0.2 + 0.6 * x / width,
              0.7 * np.exp(-((x - 0.7 * width) ** 2 + (y - 0.3 * height) ** 2) / 40.0)]
    return np.stack(planes[:channels], -1).astype(np.float32)


IMAGE = _pattern()


def _views(config: AugmentConfig, n: int, image: np.ndarray = IMAGE, size: int = SIZE,
           first_seed: int = 0) -> np.ndarray:
    """n views of one image with seeds [first_seed + i, 7], through tf.data (graph mode)."""
    seeds = tf.stack([tf.range(first_seed, first_seed + n, dtype=tf.int64),
                      tf.fill([n], tf.constant(7, tf.int64))], axis=1)
    dataset = tf.data.Dataset.from_tensor_slices(seeds).map(
        lambda seed: augment.augment_view(tf.constant(image), seed, config, size))
    return np.stack(list(dataset.as_numpy_iterator()))


def _none(**overrides) -> AugmentConfig:
    return augment.preset("none", **overrides)


# Presets -----------------------------------------------------------------------------------

def test_simclr_preset_is_the_reference_set_and_the_config_default():
    config = augment.preset("simclr")
    assert config == AugmentConfig()
    assert (config.crop, config.crop_area_min, config.crop_area_max) == (True, 0.08, 1.0)
    assert (config.crop_aspect_min, config.crop_aspect_max) == (3 / 4, 4 / 3)
    assert config.flip and config.color_jitter_strength == 1.0
    assert (config.color_jitter_prob, config.grayscale_prob, config.blur_prob) == (0.8, 0.2, 0.5)
    assert (config.blur_sigma_min, config.blur_sigma_max) == (0.1, 2.0)
    assert config.rotation_degrees == 0.0


def test_cxr_preset_is_the_papers_chest_xray_set():
    config = augment.preset("cxr")
    assert config.crop and config.flip
    assert config.color_jitter_strength == 0.5
    assert config.rotation_degrees == 45.0 and config.rotation_fill_mode == "reflect"
    assert config.blur_prob == 0.0


def test_finetune_and_none_presets():
    finetune = augment.preset("finetune")
    assert finetune.crop and finetune.flip
    assert finetune.color_jitter_strength == finetune.grayscale_prob == finetune.blur_prob == 0
    assert finetune.rotation_degrees == 0
    none = augment.preset("none")
    assert not none.crop and not none.flip
    assert none.color_jitter_strength == none.grayscale_prob == none.blur_prob == 0
    assert none.rotation_degrees == 0


def test_every_preset_names_every_field():
    fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    for name, values in augment.PRESETS.items():
        assert set(values) == fields, name


def test_preset_overrides_and_errors():
    assert augment.preset("cxr", rotation_degrees=10.0).rotation_degrees == 10.0
    with pytest.raises(ValueError, match="simclr, cxr, finetune, none"):
        augment.preset("imagenet")
    with pytest.raises(ValueError, match="rotation_degree"):
        augment.preset("cxr", rotation_degree=10.0)


@pytest.mark.parametrize("field, value", [
    ("grayscale_prob", 1.5), ("crop_area_min", 0.0), ("crop_aspect_max", 0.5),
    ("blur_sigma_min", 0.0), ("color_jitter_strength", -1.0), ("rotation_degrees", 200.0),
    ("rotation_fill_mode", "mirror")])
def test_invalid_config_is_rejected(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        augment.augment_view(tf.constant(IMAGE), tf.constant([0, 0]),
                             augment.preset("simclr", **{field: value}), SIZE)


# Shape, range, determinism --------------------------------------------------------------

@pytest.mark.parametrize("name", list(augment.PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_dtype_range(name, channels):
    views = _views(augment.preset(name), 6, image=_pattern(channels=channels))
    assert views.shape == (6, SIZE, SIZE, 3) and views.dtype == np.float32
    assert views.min() >= 0.0 and views.max() <= 1.0


def test_fixed_seed_is_reproducible_and_seeds_differ():
    config = augment.preset("simclr", color_jitter_prob=1.0)
    first = _views(config, 4)
    np.testing.assert_array_equal(first, _views(config, 4))
    eager = augment.augment_view(tf.constant(IMAGE), tf.constant([2, 7], tf.int32), config, SIZE)
    np.testing.assert_array_equal(eager.numpy(), first[2])
    for i in range(4):
        for j in range(i):
            assert np.abs(first[i] - first[j]).max() > 1e-3


def test_views_do_not_depend_on_tf_data_parallelism():
    config = augment.preset("cxr")
    seeds = tf.stack([tf.range(12, dtype=tf.int64), tf.range(12, dtype=tf.int64) * 3], 1)
    dataset = tf.data.Dataset.from_tensor_slices(seeds).map(
        lambda seed: (seed, augment.augment_view(tf.constant(IMAGE), seed, config, SIZE)),
        num_parallel_calls=2, deterministic=False)
    for seed, view in dataset.as_numpy_iterator():
        expected = augment.augment_view(tf.constant(IMAGE), tf.constant(seed), config, SIZE)
        np.testing.assert_array_equal(view, expected.numpy())


# Every field takes effect -----------------------------------------------------------------

# (base config, field, other value): the outputs for the same seeds must differ.
FIELD_CHANGES = [
    (_none(), "crop", True),
    (_none(crop=True), "crop_area_min", 0.8),
    (_none(crop=True), "crop_area_max", 0.2),
    (_none(crop=True), "crop_aspect_min", 1.2),
    (_none(crop=True), "crop_aspect_max", 0.9),
    (_none(), "flip", True),
    (_none(color_jitter_prob=1.0), "color_jitter_strength", 0.5),
    (_none(color_jitter_strength=0.5), "color_jitter_prob", 1.0),
    (_none(), "grayscale_prob", 1.0),
    (_none(), "blur_prob", 1.0),
    (_none(blur_prob=1.0), "blur_sigma_min", 1.5),
    (_none(blur_prob=1.0), "blur_sigma_max", 0.2),
    (_none(), "rotation_degrees", 30.0),
    (_none(rotation_degrees=45.0), "rotation_fill_mode", "constant"),
]


def test_field_changes_cover_every_field():
    assert {field for _, field, _ in FIELD_CHANGES} == {
        f.name for f in dataclasses.fields(AugmentConfig)}


@pytest.mark.parametrize("base, field, value", FIELD_CHANGES,
                         ids=[field for _, field, _ in FIELD_CHANGES])
def test_every_field_has_an_effect(base, field, value):
    changed = dataclasses.replace(base, **{field: value})
    assert np.abs(_views(base, 6) - _views(changed, 6)).max() > 1e-3


def test_none_preset_is_the_resized_central_square():
    square = _pattern(SIZE, SIZE)
    np.testing.assert_allclose(_views(_none(), 2, image=square)[0], square, atol=1e-5)


def test_flip_is_identity_or_mirror_both_seen():
    base = _views(_none(), 1)[0]
    flipped = [np.array_equal(view, base[:, ::-1]) for view in _views(_none(flip=True), 40)]
    unflipped = [np.array_equal(view, base) for view in _views(_none(flip=True), 40)]
    assert all(f or u for f, u in zip(flipped, unflipped))
    assert 8 <= sum(flipped) <= 32  # binomial(40, 0.5): outside this range p < 1e-4


def test_color_jitter_prob_is_the_fraction_of_jittered_views():
    base = _views(_none(), 1)[0]
    views = _views(_none(color_jitter_strength=1.0, color_jitter_prob=0.5), 200)
    changed = sum(np.abs(view - base).max() > 1e-4 for view in views)
    assert 70 <= changed <= 130  # binomial(200, 0.5): outside this range p < 1e-4


def test_brightness_factor_spans_the_strength_range():
    # On a constant gray image contrast, saturation and hue are no-ops: only the brightness
    # factor in [1 - 0.8 s, 1 + 0.8 s] moves the value 0.5.
    gray = np.full((SIZE, SIZE, 1), 0.5, np.float32)
    views = _views(_none(color_jitter_strength=0.5, color_jitter_prob=1.0), 200, image=gray)
    values = views[:, 0, 0, 0]
    np.testing.assert_allclose(views, values[:, None, None, None] * np.ones_like(views),
                               atol=1e-5)
    assert values.min() >= 0.5 * 0.6 - 1e-5 and values.max() <= 0.5 * 1.4 + 1e-5
    assert values.min() < 0.5 * 0.65 and values.max() > 0.5 * 1.35


def _jitter_by_hand(image: np.ndarray, parameters: dict) -> np.ndarray:
    """Colour jitter in float64: brightness x * f; contrast (x - mean) * f + mean per channel
    over the image; saturation and hue in colorsys' HSV (s * f capped at 1, h + delta mod 1
    turns); in the drawn order, clipped to [0, 1] after each."""
    def hsv_map(x, change):
        return np.array([colorsys.hsv_to_rgb(*change(*colorsys.rgb_to_hsv(*pixel)))
                         for pixel in x.reshape(-1, 3)]).reshape(x.shape)

    transforms = {
        "brightness": lambda x, f: x * f,
        "contrast": lambda x, f: (x - x.mean(axis=(0, 1))) * f + x.mean(axis=(0, 1)),
        "saturation": lambda x, f: hsv_map(x, lambda h, s, v: (h, min(s * f, 1.0), v)),
        "hue": lambda x, delta: hsv_map(x, lambda h, s, v: ((h + delta) % 1.0, s, v)),
    }
    x = image.astype(np.float64)
    for index in parameters["order"]:
        name = augment.JITTER_TRANSFORMS[index]
        x = np.clip(transforms[name](x, float(parameters[name])), 0.0, 1.0)
    return x


@pytest.mark.parametrize("strength", [0.5, 1.0, 2.0])
def test_color_jitter_matches_a_colorsys_reference(strength):
    """Contrast, saturation and hue (and brightness) with the drawn factors and order, against
    NumPy and colorsys; 2.0 reaches the floored lower bounds and large hue shifts."""
    image = IMAGE[::3, ::3]
    for i in range(12):
        seed = tf.constant([i, 11], tf.int64)
        drawn = augment.jitter_parameters(seed, strength)
        parameters = {k: v.numpy() for k, v in drawn.items()}
        jittered = augment.apply_color_jitter(tf.constant(image), drawn).numpy()
        np.testing.assert_allclose(jittered, _jitter_by_hand(image, parameters), atol=2e-5,
                                   err_msg=str(parameters))


def test_jitter_parameters_are_uniform_over_their_ranges_in_every_order():
    strength = 0.5  # factors in [0.6, 1.4], hue in +-0.1 of a turn
    draw = tf.function(lambda seed: augment.jitter_parameters(seed, strength))
    draws = [{k: v.numpy() for k, v in draw(tf.constant([i, 5], tf.int64)).items()}
             for i in range(400)]
    ranges = {"brightness": (0.6, 1.4), "contrast": (0.6, 1.4), "saturation": (0.6, 1.4),
              "hue": (-0.1, 0.1)}
    for name, (low, high) in ranges.items():
        values = np.array([d[name] for d in draws])
        assert values.min() >= low and values.max() <= high, name
        assert stats.kstest(values, stats.uniform(low, high - low).cdf).pvalue > 1e-3, name
    # 400 draws of 24 orders: that some order is missing has probability < 1e-6.
    assert {tuple(d["order"]) for d in draws} == set(itertools.permutations(range(4)))


def test_grayscale_views_have_equal_channels_equal_to_luma():
    views = _views(_none(grayscale_prob=1.0), 2)
    luma = tf.image.rgb_to_grayscale(_views(_none(), 1)[0]).numpy()
    np.testing.assert_allclose(views[0], np.repeat(luma, 3, -1), atol=1e-6)
    colour = _views(_none(), 1)[0]
    assert np.abs(colour[..., 0] - colour[..., 1]).max() > 0.1


def test_grayscale_input_stays_gray_through_colour_jitter():
    views = _views(augment.preset("cxr"), 8, image=_pattern(channels=1))
    np.testing.assert_allclose(views[..., 0], views[..., 1], atol=1e-6)
    np.testing.assert_allclose(views[..., 0], views[..., 2], atol=1e-6)


def test_blur_view_is_gaussian_blur_with_the_configured_sigma():
    square = _pattern(SIZE, SIZE)
    view = _views(_none(blur_prob=1.0, blur_sigma_min=1.5, blur_sigma_max=1.5), 1,
                  image=square)[0]
    expected = augment.gaussian_blur(square, 1.5, augment.blur_kernel_size(SIZE)).numpy()
    np.testing.assert_allclose(view, np.clip(expected, 0, 1), atol=1e-5)


# Crop geometry ----------------------------------------------------------------------------

def _crop_shapes(config: AugmentConfig, n: int, height: int = 120,
                 width: int = 120) -> np.ndarray:
    image = tf.zeros([height, width, 1])
    crop = tf.function(lambda seed: tf.shape(augment.random_crop(image, seed, config))[:2])
    return np.array([crop(tf.constant([i, 1], tf.int64)).numpy() for i in range(n)])


@pytest.mark.parametrize("area, aspect", [((0.08, 1.0), (3 / 4, 4 / 3)),
                                          ((0.3, 0.5), (1.5, 2.0))])
def test_crop_area_and_aspect_within_bounds(area, aspect):
    config = _none(crop=True, crop_area_min=area[0], crop_area_max=area[1],
                   crop_aspect_min=aspect[0], crop_aspect_max=aspect[1])
    shapes = _crop_shapes(config, 300)
    heights, widths = shapes[:, 0].astype(float), shapes[:, 1].astype(float)
    full = (heights == 120) & (widths == 120)  # the fall-back after 100 failed attempts
    assert full.mean() < 0.05
    fractions = heights * widths / 120 ** 2
    ratios = widths / heights
    # Boxes are rounded to whole pixels, hence the small tolerances.
    assert np.all(fractions[~full] >= area[0] * 0.95) and np.all(fractions[~full] <= area[1] + 1e-9)
    assert np.all(ratios[~full] >= aspect[0] * 0.95) and np.all(ratios[~full] <= aspect[1] * 1.05)
    # The draws spread over the ranges rather than sticking to one end.
    assert np.ptp(fractions[~full]) > 0.5 * (area[1] - area[0])
    assert np.ptp(ratios[~full]) > 0.5 * (aspect[1] - aspect[0])


def test_crop_view_is_a_resized_window_of_the_image():
    config = _none(crop=True)
    seeds = augment.step_seeds(tf.constant([3, 7]))
    window = augment.random_crop(tf.constant(IMAGE), seeds["crop"], config)
    expected = np.clip(tf.image.resize(window, [SIZE, SIZE], method="bicubic").numpy(), 0, 1)
    np.testing.assert_allclose(_views(config, 1, first_seed=3)[0], expected, atol=1e-6)


# Rotation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fill_mode", ["reflect", "nearest"])
@pytest.mark.parametrize("degrees", [30.0, -45.0, 90.0])
def test_rotate_matches_scipy(fill_mode, degrees):
    image = IMAGE[..., :2]
    rotated = augment.rotate(image, math.radians(degrees), fill_mode).numpy()
    expected = ndimage.rotate(image, degrees, axes=(1, 0), reshape=False, order=1,
                              mode=fill_mode)
    np.testing.assert_allclose(rotated, expected, atol=1e-5)


@pytest.mark.parametrize("degrees", [0.0, 30.0, -60.0, 135.0])
def test_rotate_moves_a_point_counter_clockwise(degrees):
    image = np.zeros((41, 41, 1), np.float32)
    image[19:22, 31:34] = 1.0  # a 3x3 dot 12 px right of the centre (20, 20)
    rotated = augment.rotate(image, math.radians(degrees), "constant").numpy()[..., 0]
    rows, cols = np.indices(rotated.shape)
    centroid = np.array([(rows * rotated).sum(), (cols * rotated).sum()]) / rotated.sum()
    angle = math.radians(degrees)
    expected = [20 - 12 * math.sin(angle), 20 + 12 * math.cos(angle)]  # rows grow downwards
    np.testing.assert_allclose(centroid, expected, atol=0.3)


def test_reflect_fill_leaves_no_black_corners():
    ones = np.ones((24, 24, 1), np.float32)
    angle = math.radians(45)
    np.testing.assert_allclose(augment.rotate(ones, angle, "reflect").numpy(), 1.0, atol=1e-6)
    constant = augment.rotate(ones, angle, "constant").numpy()
    assert constant[0, 0, 0] == 0.0 and constant[12, 12, 0] == 1.0


def test_random_rotation_uses_the_drawn_angle_uniform_within_bounds():
    image = tf.constant(IMAGE)
    for i in range(5):
        seed = tf.constant([i, 5], tf.int64)
        angle = augment.rotation_angle(seed, 45.0)
        np.testing.assert_array_equal(augment.random_rotate(image, seed, 45.0, "reflect"),
                                      augment.rotate(image, angle, "reflect"))
    draw = tf.function(lambda seed: augment.rotation_angle(seed, 45.0))
    angles = np.degrees([draw(tf.constant([i, 9], tf.int64)).numpy() for i in range(400)])
    assert angles.min() >= -45.0 and angles.max() <= 45.0
    assert stats.kstest(angles, stats.uniform(-45, 90).cdf).pvalue > 1e-3


def test_rotation_comes_before_the_crop():
    config = _none(crop=True, rotation_degrees=45.0)
    seeds = augment.step_seeds(tf.constant([4, 7]))
    angle = augment.rotation_angle(seeds["rotation"], 45.0)
    rotated = augment.rotate(tf.constant(IMAGE), angle, "reflect")
    window = augment.random_crop(rotated, seeds["crop"], config)
    expected = np.clip(tf.image.resize(window, [SIZE, SIZE], method="bicubic").numpy(), 0, 1)
    view = _views(config, 1, first_seed=4)[0]
    np.testing.assert_allclose(view, expected, atol=1e-5)


# Blur -------------------------------------------------------------------------------------

def test_blur_kernel_size_is_about_a_tenth_and_odd():
    assert [augment.blur_kernel_size(s) for s in (32, 64, 224)] == [3, 7, 23]


@pytest.mark.parametrize("sigma, size", [(0.1, 3), (1.0, 7), (2.0, 23)])
def test_gaussian_kernel_matches_numpy(sigma, size):
    offsets = np.arange(size) - size // 2
    expected = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    np.testing.assert_allclose(augment.gaussian_kernel(sigma, size).numpy(),
                               expected / expected.sum(), rtol=1e-5, atol=1e-7)


def test_gaussian_blur_matches_numpy_separable_convolution():
    image = np.random.default_rng(1).random((20, 17, 3)).astype(np.float32)
    kernel = augment.gaussian_kernel(1.3, 7).numpy()
    blur_rows = np.apply_along_axis(np.convolve, 1, image, kernel, mode="same")
    expected = np.apply_along_axis(np.convolve, 0, blur_rows, kernel, mode="same")
    np.testing.assert_allclose(augment.gaussian_blur(image, 1.3, 7).numpy(), expected,
                               atol=1e-5)
