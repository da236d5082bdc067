"""BatchNormRelu's fused training path against Keras 3's layer and a NumPy computation."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_med.models import precision
from simclr_med.models.resnet import BatchNormRelu, BatchNormSettings

SHAPE = (6, 5, 5, 4)
MOMENTUM = 0.9


def _layer(fused: bool, center: bool = True, synchronized: bool = True) -> BatchNormRelu:
    layer = BatchNormRelu(BatchNormSettings(momentum=MOMENTUM, synchronized=synchronized,
                                            fused=fused), center=center)
    layer.build(SHAPE)
    rng = np.random.default_rng(0)
    for variable in layer.bn.weights:  # the same, not the initial, values in every layer
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    return layer


def _train_step(layer: BatchNormRelu, images: np.ndarray):
    """(outputs, d sum(outputs^2)/d images, d .../d gamma) of one training call."""
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(outputs, tf.float32) ** 2)
    dx, dgamma = tape.gradient(loss, [x, layer.bn.gamma.value])
    return outputs, dx, dgamma


def _op_types(layer: BatchNormRelu, training: bool) -> set[str]:
    function = tf.function(lambda x: layer(x, training=training))
    graph = function.get_concrete_function(tf.TensorSpec(SHAPE, tf.float32)).graph
    return {op.type for op in graph.get_operations()}


def _images() -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.normal(size=SHAPE) * 3 + 2).astype("float32")  # far from zero mean, unit var


@pytest.mark.parametrize("center", [True, False])
def test_fused_training_matches_keras_and_numpy(center):
    fused, plain = _layer(True, center), _layer(False, center)
    images = _images()
    initial_mean = fused.bn.moving_mean.numpy().copy()
    initial_variance = fused.bn.moving_variance.numpy().copy()
    found = [np.asarray(t) for t in _train_step(fused, images)]
    expected = [np.asarray(t) for t in _train_step(plain, images)]
    for ours, theirs in zip(found, expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    flat = images.reshape(-1, SHAPE[-1]).astype("float64")
    np.testing.assert_allclose(fused.bn.moving_mean.numpy(),
                               MOMENTUM * initial_mean + (1 - MOMENTUM) * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(fused.bn.moving_variance.numpy(),
                               MOMENTUM * initial_variance + (1 - MOMENTUM) * flat.var(0),
                               rtol=1e-5)  # the biased variance, as Keras averages it
    np.testing.assert_allclose(fused.bn.moving_variance.numpy(),
                               plain.bn.moving_variance.numpy(), rtol=1e-5)


def test_fused_kernel_runs_in_training_only():
    assert "FusedBatchNormV3" in _op_types(_layer(True), training=True)
    assert "FusedBatchNormV3" not in _op_types(_layer(False), training=True)
    assert "FusedBatchNormV3" not in _op_types(_layer(True), training=False)


def test_bfloat16_activations_stay_bfloat16_with_float32_statistics():
    with precision.policy("mixed_bfloat16"):
        fused, plain = _layer(True), _layer(False)
    images = _images()
    outputs, dx, dgamma = _train_step(fused, images)
    assert outputs.dtype == tf.bfloat16 and dx.dtype == tf.float32
    assert fused.bn.moving_mean.dtype == "float32" and dgamma.dtype == tf.float32
    expected, _, expected_dgamma = _train_step(plain, images)
    np.testing.assert_allclose(np.asarray(tf.cast(outputs, tf.float32)),
                               np.asarray(tf.cast(expected, tf.float32)), atol=0.05)
    np.testing.assert_allclose(dgamma.numpy(), expected_dgamma.numpy(), rtol=0.03)
    np.testing.assert_allclose(fused.bn.moving_mean.numpy(), plain.bn.moving_mean.numpy(),
                               rtol=1e-4)
    np.testing.assert_allclose(fused.bn.moving_variance.numpy(),
                               plain.bn.moving_variance.numpy(), rtol=1e-3)


def test_synchronised_statistics_across_replicas_take_the_keras_layer(two_cpu_strategy):
    """With two replicas, per-replica statistics would differ from the global batch's: the fused
    kernel only runs when the statistics are not synchronised."""
    with two_cpu_strategy.scope():
        synchronised, local = _layer(True), _layer(True, synchronized=False)

    def types(layer: BatchNormRelu) -> set[str]:
        step = tf.function(lambda x: two_cpu_strategy.run(
            lambda x: layer(x, training=True), args=(x,)))
        graph = step.get_concrete_function(tf.TensorSpec(SHAPE, tf.float32)).graph
        return {op.type for op in graph.get_operations()}

    assert "FusedBatchNormV3" not in types(synchronised)
    assert "FusedBatchNormV3" in types(local)


def test_a_frozen_layer_normalises_with_its_moving_statistics():
    fused = _layer(True)
    fused.trainable = False
    before = fused.bn.moving_mean.numpy().copy()
    outputs = fused(tf.constant(_images()), training=True)
    np.testing.assert_array_equal(fused.bn.moving_mean.numpy(), before)
    np.testing.assert_allclose(np.asarray(outputs),
                               np.asarray(fused(tf.constant(_images()), training=False)))
    assert keras.ops.convert_to_numpy(outputs).shape == SHAPE
