"""SimCLR's projection head g(.) and the linear layer it and the supervised head are made of.

`nonlinear` with `num_layers` layers: (num_layers - 1) x [dense d->d, BN, ReLU], then dense d->out_dim
with BN (no ReLU). The paper's two fully connected layers to 128-d are `num_layers=2`; SimCLRv2 uses 3.
`linear`: one dense d->out_dim with BN. `none`: the backbone output itself.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from simclr_med.models.resnet import BatchNormRelu, BatchNormSettings, track_layers

MODES = ("none", "linear", "nonlinear")


class LinearLayer(keras.layers.Layer):
    """Dense layer, optionally followed by BN; with BN the dense has no bias (BN's beta is the bias)."""

    def __init__(self, units: int, use_bias: bool = True, use_bn: bool = False,
                 bn: BatchNormSettings = BatchNormSettings(), **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(
            units, use_bias=use_bias and not use_bn,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))
        self.bn = BatchNormRelu(bn, relu=False, center=use_bias) if use_bn else None

    def build(self, input_shape):
        self.dense.build(input_shape)
        if self.bn:
            self.bn.build(tuple(input_shape[:-1]) + (self.units,))

    def call(self, inputs, training=False):
        outputs = self.dense(inputs)
        return self.bn(outputs, training=training) if self.bn else outputs


class ProjectionHead(keras.layers.Layer):
    """Returns the list of hidden representations: [head input, layer 1 output, ..., head output]."""

    def __init__(self, mode: str, num_layers: int, out_dim: int, input_dim: int,
                 bn: BatchNormSettings = BatchNormSettings(), **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"proj_head_mode must be one of {MODES}, got {mode!r}")
        num_layers = {"none": 0, "linear": 1, "nonlinear": num_layers}[mode]
        # Hidden layers keep the input width and have a bias (BN beta); the last has neither.
        self.linear_layers = track_layers(self, "layer", [
            LinearLayer(input_dim, use_bias=True, use_bn=True, bn=bn) if j < num_layers - 1
            else LinearLayer(out_dim, use_bias=False, use_bn=True, bn=bn)
            for j in range(num_layers)])

    def build(self, input_shape):
        for layer in self.linear_layers:
            layer.build(input_shape)
            input_shape = tuple(input_shape[:-1]) + (layer.units,)

    def call(self, inputs, training=False):
        hiddens = [inputs]
        for j, layer in enumerate(self.linear_layers):
            x = layer(hiddens[-1], training=training)
            if j < len(self.linear_layers) - 1:
                x = tf.nn.relu(x)
            hiddens.append(x)
        return hiddens
