"""Augmentation on the device (simclr_med.data.device_augment): the same views as the host path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from simclr_med.config import AugmentConfig
from simclr_med.data import augment, device_augment
from simclr_med.data.pretrain_input import PairSpec, finished_views, pair_dataset
from simclr_med.data.reader import open_build
from tests.data.test_augment import IMAGE

SIZE = 32
VIEWS = 64
SEEDS = tf.stack([tf.range(VIEWS, dtype=tf.int64), tf.fill([VIEWS], tf.constant(11, tf.int64))],
                 axis=1)
CONFIGS = {"simclr": augment.preset("simclr"), "cxr": augment.preset("cxr"),
           # every photometric step on every view: each transform at each jitter position
           "always": dataclasses.replace(augment.preset("simclr"), color_jitter_prob=1.0,
                                         blur_prob=1.0, grayscale_prob=0.5)}


def _per_view(fn, config: AugmentConfig) -> np.ndarray:
    """fn(seed) of every seed, in graph mode (as tf.data runs the host path)."""
    mapped = tf.data.Dataset.from_tensor_slices(SEEDS).map(lambda seed: fn(seed, config))
    return np.stack(list(mapped.as_numpy_iterator()))


def _draws(config: AugmentConfig) -> dict[str, tf.Tensor]:
    """The host's `photometric_draws` of every seed, stacked, as the input pipeline ships them."""
    mapped = tf.data.Dataset.from_tensor_slices(SEEDS).map(
        lambda seed: augment.photometric_draws(seed, config, SIZE))
    return next(iter(mapped.batch(VIEWS)))


def _crops(config: AugmentConfig) -> np.ndarray:
    return _per_view(lambda seed, c: device_augment.to_uint8(
        augment.geometric_view(tf.constant(IMAGE), seed, c, SIZE)), config)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_device_finishes_each_crop_as_the_host_path_would(name):
    """Same uint8 crops and draws in: host `photometric_view` one by one and the device's batch
    agree to float rounding, whichever transforms the seeds draw."""
    config = CONFIGS[name]
    crops = _crops(config)
    host = np.stack([augment.photometric_view(tf.constant(c / 255.0, tf.float32), seed, config,
                                              SIZE).numpy()
                     for c, seed in zip(crops, SEEDS)])
    device = device_augment.photometric_batch(tf.constant(crops), _draws(config), SIZE).numpy()
    assert device.shape == host.shape == (VIEWS, SIZE, SIZE, 3)
    np.testing.assert_allclose(device, host, atol=2e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_device_views_follow_the_host_views_distribution(name):
    """The views of the whole split path (uint8 crop, then the device) against host views of the
    same seeds: the same views but for the crop's rounding, hence the same statistics."""
    config = CONFIGS[name]
    host = _per_view(lambda seed, c: augment.augment_view(tf.constant(IMAGE), seed, c, SIZE),
                     config)
    device = device_augment.photometric_batch(tf.constant(_crops(config)), _draws(config),
                                              SIZE).numpy()
    difference = np.abs(device - host)
    assert difference.mean() < 1.5e-3 and np.quantile(difference, 0.999) < 0.012
    for statistic in (np.mean, np.std):
        np.testing.assert_allclose(statistic(device, axis=(1, 2)), statistic(host, axis=(1, 2)),
                                   atol=3e-3)


def test_the_seeds_draw_every_branch_of_every_step():
    """The views above cover each step applied and skipped, and every jitter order position."""
    draws = _draws(CONFIGS["simclr"])
    for step in ("flip", "color_jitter", "grayscale", "blur"):
        assert 0 < int(tf.reduce_sum(tf.cast(draws[step], tf.int32))) < VIEWS, step
    first = draws["order"].numpy()[:, 0]
    assert set(first) == set(range(len(augment.JITTER_TRANSFORMS)))


def test_the_blur_of_a_batch_is_each_view_blurred_with_its_own_sigma():
    images = tf.constant(np.stack([IMAGE[:SIZE, :SIZE], IMAGE[:SIZE, -SIZE:]]))
    sigmas = tf.constant([0.5, 2.0])
    batch = device_augment.gaussian_blur_batch(images, sigmas, 7, SIZE).numpy()
    for image, sigma, blurred in zip(images, sigmas, batch):
        np.testing.assert_allclose(blurred, augment.gaussian_blur(image, sigma, 7).numpy(),
                                   atol=1e-6)


def test_to_uint8_rounds_to_the_nearest_level():
    levels = device_augment.to_uint8(tf.constant([0.0, 0.499 / 255, 0.501 / 255, 1.0, 1.2, -0.1]))
    assert levels.numpy().tolist() == [0, 0, 1, 255, 255, 0]


def test_device_pairs_ship_uint8_crops_and_draws_that_make_the_host_pairs(synthetic_build):
    """pair_dataset with augment_on=device, finished by `finished_views`: the host pipeline's
    pairs (the draws travel with the crops), at a quarter of the bytes."""
    source = open_build(str(synthetic_build))
    spec = PairSpec(use_micle=True, augment=augment.preset("simclr"), image_size=SIZE, seed=5)
    device_spec = dataclasses.replace(spec, augment_on="device")
    host = next(iter(pair_dataset(source, "train", spec, 8)))
    shipped = next(iter(pair_dataset(source, "train", device_spec, 8)))
    assert shipped["views"].dtype == tf.uint8 and shipped["view_draws"]["order"].shape == (8, 2, 4)
    np.testing.assert_array_equal(shipped["image_index"], host["image_index"])
    views = finished_views(shipped, device_spec).numpy()
    assert views.shape == host["views"].shape
    assert np.abs(views - host["views"].numpy()).mean() < 2e-3
    assert finished_views(host, spec) is host["views"]


def test_a_config_without_photometric_steps_ships_the_crops_alone(synthetic_build):
    config = dataclasses.replace(augment.preset("simclr"), flip=False, color_jitter_prob=0.0,
                                 grayscale_prob=0.0, blur_prob=0.0)
    spec = PairSpec(use_micle=False, augment=config, image_size=SIZE, augment_on="device")
    shipped = next(iter(pair_dataset(open_build(str(synthetic_build)), "train", spec, 4)))
    assert "view_draws" not in shipped
    np.testing.assert_allclose(finished_views(shipped, spec), shipped["views"].numpy() / 255.0,
                               atol=1e-7)


def test_an_unknown_augment_on_is_refused():
    with pytest.raises(ValueError, match="augment_on"):
        PairSpec(use_micle=False, augment=augment.preset("simclr"), image_size=SIZE,
                 augment_on="devce")
