"""LARS against a NumPy computation of its update rule (which variables a SimCLR model exempts, and
the supervised head's treatment, are in tests/training/test_weight_decay.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_med.models.simclr import no_decay_variables
from simclr_med.training.lars import LARS

LR, MOMENTUM, DECAY, ETA = 0.5, 0.9, 0.01, 0.001


def numpy_lars(w, grads, exempt: bool, nesterov=False):
    v = np.zeros_like(w)
    for g in grads:
        lr = LR
        if not exempt:
            g = g + DECAY * w
            lr = LR * ETA * np.linalg.norm(w) / np.linalg.norm(g)
        v = MOMENTUM * v + lr * g
        w = w - (MOMENTUM * v + lr * g if nesterov else v)
    return w


class Tiny(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(4)
        self.bn = keras.layers.BatchNormalization()

    def call(self, x, training=False):
        return self.bn(self.dense(x), training=training)


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_matches_numpy_and_exempts_bn_and_bias(nesterov):
    model = Tiny()
    model(tf.zeros([1, 3]))
    rng = np.random.RandomState(0)
    for v in model.trainable_variables:
        v.assign(rng.randn(*v.shape).astype(np.float32))
    exempt = no_decay_variables(model)
    assert {id(v) for v in exempt} == {id(model.dense.bias), id(model.bn.gamma), id(model.bn.beta)}

    optimizer = LARS(LR, momentum=MOMENTUM, weight_decay=DECAY, trust_coefficient=ETA,
                     nesterov=nesterov)
    optimizer.exclude_from_weight_decay(var_list=exempt)
    initial = [v.numpy().copy() for v in model.trainable_variables]
    grads = [[rng.randn(*v.shape).astype(np.float32) for v in model.trainable_variables]
             for _ in range(3)]
    for step_grads in grads:
        optimizer.apply_gradients(zip([tf.constant(g) for g in step_grads],
                                      model.trainable_variables))
    exempt_ids = {id(v) for v in exempt}
    for i, v in enumerate(model.trainable_variables):
        expected = numpy_lars(initial[i], [g[i] for g in grads], id(v) in exempt_ids, nesterov)
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=v.path)


def test_zero_gradient_or_weights_use_trust_ratio_one():
    var = keras.Variable(np.zeros(3, np.float32))
    optimizer = LARS(0.1, momentum=0.0, weight_decay=0.0)
    optimizer.apply_gradients([(tf.constant([1.0, 2.0, 3.0]), var)])
    np.testing.assert_allclose(var.numpy(), [-0.1, -0.2, -0.3], rtol=1e-6)

