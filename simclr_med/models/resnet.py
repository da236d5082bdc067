"""The ResNet v1 family as SimCLR (v1 and v2) builds it, in Keras 3.

Layer for layer the reference's network, so the official checkpoints load into it
(`simclr_med.checkpoints.official`): convolutions without bias and explicit padding for strided
convolutions, zero-initialised gamma in the last BN of every residual branch, a projection shortcut in
the first block of every group (also group 1, where channel counts may already match), selective
kernels and the ResNet-D stem and shortcuts when `sk_ratio > 0` (SimCLRv2), and the CIFAR stem (3x3
stride-1 convolution, no max-pool) for images of at most 32 pixels.

`ResNet.call` returns the reference's named endpoints: `initial_conv`, `initial_max_pool`,
`block_group1`..`block_group4` and `final_avg_pool`.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

def _with_channels(shape, channels: int) -> tuple:
    return tuple(shape[:-1]) + (channels,)


# Blocks per group for each depth, and whether the depth uses bottleneck blocks.
BLOCKS_PER_GROUP = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
BOTTLENECK_MIN_DEPTH = 50
CIFAR_STEM_MAX_SIZE = 32
SK_MIN_DIM = 32


@dataclasses.dataclass(frozen=True)
class BatchNormSettings:
    momentum: float = 0.9
    epsilon: float = 1e-5
    synchronized: bool = True
    fused: bool = True  # TensorFlow's fused kernel in training where it applies (BatchNormRelu)


# cuDNN's smallest epsilon; tf.keras's fused batch norm (the reference's) raised it the same way.
FUSED_MIN_EPSILON = 1.001e-5


def fused_epsilon(epsilon: float) -> float:
    """The fused kernel's epsilon: the layer's own, raised to cuDNN's minimum where GPUs are
    visible (elsewhere training normalises exactly as inference and Keras's layer do)."""
    return max(epsilon, FUSED_MIN_EPSILON) if tf.config.list_logical_devices("GPU") else epsilon


def track_layers(owner: keras.layers.Layer, prefix: str, layers: list) -> list:
    """Gives each layer of a list its own attribute `<prefix><i>` and returns the list.

    Keras 3 keeps lists of layers in its own tracker, which `tf.train.Checkpoint` does not see;
    named attributes make every variable reachable at a stable, readable checkpoint path such as
    `model/resnet/block_group2/block0/conv1/conv/_kernel`.
    """
    for i, layer in enumerate(layers):
        setattr(owner, f"{prefix}{i}", layer)
    return layers


def conv_initializer() -> keras.initializers.Initializer:
    # The reference's tf.keras VarianceScaling() default: scale 1, fan_in, truncated normal.
    return keras.initializers.VarianceScaling(scale=1.0, mode="fan_in",
                                              distribution="truncated_normal")


class BatchNormRelu(keras.layers.Layer):
    """Batch normalisation, optionally followed by ReLU; gamma starts at zero when `init_zero`.

    With `bn.fused`, training on images (4-D inputs) whose statistics are this replica's own (one
    replica, or `synchronized=False`) runs TensorFlow's fused kernel (FusedBatchNormV3, what
    tf.keras's `fused=True` and the reference ran) on the Keras layer's own variables. Keras 3's
    layer instead upcasts the activations to float32 and normalises them in separate element-wise
    ops, each keeping a full float32 tensor for the backward pass: the fused kernel is faster and
    keeps bfloat16 activations in bfloat16 (statistics still in float32). The moving statistics
    are updated exactly as Keras updates them; inference and synchronised statistics across
    replicas take the Keras layer.
    """

    def __init__(self, bn: BatchNormSettings, relu: bool = True, init_zero: bool = False,
                 center: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.relu = relu
        self.fused = bn.fused
        self.bn = keras.layers.BatchNormalization(
            axis=-1, momentum=bn.momentum, epsilon=bn.epsilon, center=center, scale=True,
            gamma_initializer="zeros" if init_zero else "ones", synchronized=bn.synchronized)

    def build(self, input_shape):
        self.bn.build(input_shape)

    def call(self, inputs, training=False):
        if training and self.bn.trainable and self._fused_applies(inputs):
            outputs = self._fused_training(inputs)
        else:
            outputs = self.bn(inputs, training=training)
        return tf.nn.relu(outputs) if self.relu else outputs

    def _fused_applies(self, inputs) -> bool:
        local = (not self.bn.synchronized
                 or tf.distribute.get_strategy().num_replicas_in_sync == 1)
        return self.fused and local and len(inputs.shape) == 4

    def _fused_training(self, inputs):
        bn = self.bn
        gamma = tf.convert_to_tensor(bn.gamma)
        beta = tf.convert_to_tensor(bn.beta) if bn.center else tf.zeros_like(gamma)
        empty = tf.constant([], tf.float32)
        outputs, mean, variance = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=gamma, offset=beta, mean=empty, variance=empty,
            epsilon=fused_epsilon(bn.epsilon), exponential_avg_factor=1.0,
            data_format="NHWC", is_training=True)[:3]
        # The kernel returns the Bessel-corrected variance; Keras averages the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs, out_type=tf.int64)[:-1]), tf.float32)
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        for average, batch_value in ((bn.moving_mean, mean), (bn.moving_variance, variance)):
            average.assign(average * bn.momentum + batch_value * (1.0 - bn.momentum))
        return outputs


class FixedPaddingConv2D(keras.layers.Layer):
    """Bias-free convolution; strided ones pad explicitly so the output does not depend on size parity."""

    def __init__(self, filters: int, kernel_size: int, strides: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.conv = keras.layers.Conv2D(
            filters, kernel_size, strides=strides, padding="same" if strides == 1 else "valid",
            use_bias=False, kernel_initializer=conv_initializer())

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, inputs):
        if self.strides > 1:
            total = self.kernel_size - 1
            before = total // 2
            inputs = tf.pad(inputs, [[0, 0], [before, total - before], [before, total - before],
                                     [0, 0]])
        return self.conv(inputs)


class SelectiveKernel(keras.layers.Layer):
    """SimCLRv2's selective-kernel 3x3 convolution: two branches mixed by channel attention."""

    def __init__(self, filters: int, strides: int, sk_ratio: float, bn: BatchNormSettings,
                 **kwargs):
        super().__init__(**kwargs)
        mid_dim = max(int(filters * sk_ratio), SK_MIN_DIM)
        self.filters = filters
        self.branches_conv = FixedPaddingConv2D(2 * filters, 3, strides)
        self.branches_bn = BatchNormRelu(bn)
        self.squeeze_conv = keras.layers.Conv2D(mid_dim, 1, use_bias=False,
                                                kernel_initializer=conv_initializer())
        self.squeeze_bn = BatchNormRelu(bn)
        self.mixing_conv = keras.layers.Conv2D(2 * filters, 1, use_bias=False,
                                               kernel_initializer=conv_initializer())

    def build(self, input_shape):
        self.branches_conv.build(input_shape)
        self.branches_bn.build(_with_channels(input_shape, 2 * self.filters))
        summary_shape = (input_shape[0], 1, 1, self.filters)
        self.squeeze_conv.build(summary_shape)
        squeezed = _with_channels(summary_shape, self.squeeze_conv.filters)
        self.squeeze_bn.build(squeezed)
        self.mixing_conv.build(squeezed)

    def call(self, inputs, training=False):
        branches = self.branches_bn(self.branches_conv(inputs), training=training)
        branches = tf.stack(tf.split(branches, 2, axis=-1))  # [2, N, H, W, f]
        summary = tf.reduce_mean(tf.reduce_sum(branches, axis=0), axis=[1, 2], keepdims=True)
        summary = self.squeeze_bn(self.squeeze_conv(summary), training=training)
        mixing = tf.stack(tf.split(self.mixing_conv(summary), 2, axis=-1))
        return tf.reduce_sum(branches * tf.nn.softmax(mixing, axis=0), axis=0)


class Shortcut(keras.layers.Layer):
    """Projection shortcut of the first block of a group: 1x1 conv + BN.

    With `resnet_d` (sk_ratio > 0) the stride is taken by a 2x2 average pool before a stride-1
    convolution (ResNet-D), instead of a strided 1x1 convolution that drops 3/4 of the positions.
    """

    def __init__(self, filters: int, strides: int, resnet_d: bool, bn: BatchNormSettings,
                 **kwargs):
        super().__init__(**kwargs)
        self.strides = strides
        self.resnet_d = resnet_d
        conv_strides = 1 if resnet_d else strides
        self.conv = FixedPaddingConv2D(filters, 1, conv_strides)
        self.bn = BatchNormRelu(bn, relu=False)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(_with_channels(input_shape, self.conv.filters))

    def call(self, inputs, training=False):
        if self.resnet_d:
            if self.strides > 1:
                inputs = tf.pad(inputs, [[0, 0], [0, 1], [0, 1], [0, 0]])
                inputs = tf.nn.avg_pool2d(inputs, 2, self.strides, "VALID")
            else:
                inputs = tf.nn.avg_pool2d(inputs, 2, 1, "SAME")
        return self.bn(self.conv(inputs), training=training)


class BasicBlock(keras.layers.Layer):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, filters: int, strides: int, use_projection: bool, sk_ratio: float,
                 bn: BatchNormSettings, **kwargs):
        super().__init__(**kwargs)
        self.shortcut = (Shortcut(filters, strides, sk_ratio > 0, bn) if use_projection
                         else None)
        self.conv1 = FixedPaddingConv2D(filters, 3, strides)
        self.bn1 = BatchNormRelu(bn)
        self.conv2 = FixedPaddingConv2D(filters, 3, 1)
        self.bn2 = BatchNormRelu(bn, relu=False, init_zero=True)

    def build(self, input_shape):
        _build_chain(input_shape, [self.conv1, self.bn1, self.conv2, self.bn2])
        if self.shortcut:
            self.shortcut.build(input_shape)

    def call(self, inputs, training=False):
        shortcut = self.shortcut(inputs, training=training) if self.shortcut else inputs
        x = self.bn1(self.conv1(inputs), training=training)
        x = self.bn2(self.conv2(x), training=training)
        return tf.nn.relu(x + shortcut)


class BottleneckBlock(keras.layers.Layer):
    """1x1 reduce, 3x3 (or selective kernel), 1x1 expand by 4 (ResNet-50 and deeper)."""

    expansion = 4

    def __init__(self, filters: int, strides: int, use_projection: bool, sk_ratio: float,
                 bn: BatchNormSettings, **kwargs):
        super().__init__(**kwargs)
        self.shortcut = (Shortcut(4 * filters, strides, sk_ratio > 0, bn) if use_projection
                         else None)
        self.conv1 = FixedPaddingConv2D(filters, 1, 1)
        self.bn1 = BatchNormRelu(bn)
        if sk_ratio > 0:
            self.conv2 = SelectiveKernel(filters, strides, sk_ratio, bn)
            self.bn2 = None  # the selective kernel normalises its own branches
        else:
            self.conv2 = FixedPaddingConv2D(filters, 3, strides)
            self.bn2 = BatchNormRelu(bn)
        self.conv3 = FixedPaddingConv2D(4 * filters, 1, 1)
        self.bn3 = BatchNormRelu(bn, relu=False, init_zero=True)

    def build(self, input_shape):
        _build_chain(input_shape, [layer for layer in (self.conv1, self.bn1, self.conv2, self.bn2,
                                                       self.conv3, self.bn3) if layer is not None])
        if self.shortcut:
            self.shortcut.build(input_shape)

    def call(self, inputs, training=False):
        shortcut = self.shortcut(inputs, training=training) if self.shortcut else inputs
        x = self.bn1(self.conv1(inputs), training=training)
        if self.bn2 is None:
            x = self.conv2(x, training=training)
        else:
            x = self.bn2(self.conv2(x), training=training)
        x = self.bn3(self.conv3(x), training=training)
        return tf.nn.relu(x + shortcut)


class BlockGroup(keras.layers.Layer):
    """A group of blocks; the first one strides and projects its shortcut."""

    def __init__(self, block_class: type, filters: int, num_blocks: int, strides: int,
                 sk_ratio: float, bn: BatchNormSettings, **kwargs):
        super().__init__(**kwargs)
        self.blocks = track_layers(self, "block", [
            block_class(filters, strides if i == 0 else 1, i == 0, sk_ratio, bn)
            for i in range(num_blocks)])

    def build(self, input_shape):
        _build_chain(input_shape, self.blocks)

    def call(self, inputs, training=False):
        for block in self.blocks:
            inputs = block(inputs, training=training)
        return inputs


class Stem(keras.layers.Layer):
    """ImageNet stem (7x7/2 conv, or three 3x3 convs for ResNet-D, then 3x3/2 max-pool) or CIFAR
    stem (3x3/1 conv, no pooling). Returns the last convolution's output and the stem output."""

    def __init__(self, width_multiplier: float, sk_ratio: float, cifar: bool,
                 bn: BatchNormSettings, **kwargs):
        super().__init__(**kwargs)
        filters = int(64 * width_multiplier)
        self.cifar = cifar
        if cifar:
            specs = [(filters, 3, 1)]
        elif sk_ratio > 0:
            specs = [(filters // 2, 3, 2), (filters // 2, 3, 1), (filters, 3, 1)]
        else:
            specs = [(filters, 7, 2)]
        self.convs = track_layers(self, "conv", [FixedPaddingConv2D(*spec) for spec in specs])
        self.bns = track_layers(self, "bn", [BatchNormRelu(bn) for _ in specs])

    def build(self, input_shape):
        _build_chain(input_shape, [layer for pair in zip(self.convs, self.bns) for layer in pair])

    def call(self, inputs, training=False):
        x = inputs
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = conv(x)
            if i == len(self.convs) - 1:
                initial_conv = x
            x = bn(x, training=training)
        if not self.cifar:
            x = tf.nn.max_pool2d(x, 3, 2, "SAME")
        return initial_conv, x


class ResNet(keras.layers.Layer):
    """ResNet v1 backbone with a width multiplier; returns a dict of named endpoints."""

    def __init__(self, depth: int, width_multiplier: float = 1.0, sk_ratio: float = 0.0,
                 cifar_stem: bool = False, bn: BatchNormSettings = BatchNormSettings(),
                 **kwargs):
        super().__init__(**kwargs)
        if depth not in BLOCKS_PER_GROUP:
            raise ValueError(f"resnet_depth must be one of {sorted(BLOCKS_PER_GROUP)}, got {depth}")
        self.depth = depth
        self.width_multiplier = width_multiplier
        self.sk_ratio = sk_ratio
        self.cifar_stem = cifar_stem
        block_class = BottleneckBlock if depth >= BOTTLENECK_MIN_DEPTH else BasicBlock
        self.stem = Stem(width_multiplier, sk_ratio, cifar_stem, bn)
        self.block_groups = [
            BlockGroup(block_class, int(base * width_multiplier), num_blocks, strides,
                       sk_ratio, bn, name=f"block_group{g + 1}")
            for g, (base, num_blocks, strides) in enumerate(
                zip((64, 128, 256, 512), BLOCKS_PER_GROUP[depth], (1, 2, 2, 2)))]
        for group in self.block_groups:
            setattr(self, group.name, group)
        self.output_dim = int(512 * width_multiplier) * block_class.expansion

    def build(self, input_shape):
        _build_chain(input_shape, [self.stem] + self.block_groups)

    def call(self, inputs, training=False):
        endpoints = {}
        endpoints["initial_conv"], x = self.stem(inputs, training=training)
        endpoints["initial_max_pool"] = x
        for g, group in enumerate(self.block_groups):
            x = group(x, training=training)
            endpoints[f"block_group{g + 1}"] = x
        endpoints["final_avg_pool"] = tf.reduce_mean(x, axis=[1, 2])
        return endpoints


def output_channels(layer: keras.layers.Layer, input_channels: int) -> int:
    """Channels a layer of this module outputs (spatial sizes do not matter for building)."""
    if isinstance(layer, (FixedPaddingConv2D, SelectiveKernel)):
        return layer.filters
    if isinstance(layer, (BasicBlock, BottleneckBlock)):
        return layer.conv2.filters if isinstance(layer, BasicBlock) else layer.conv3.filters
    if isinstance(layer, BlockGroup):
        return output_channels(layer.blocks[-1], input_channels)
    if isinstance(layer, Stem):
        return layer.convs[-1].filters
    return input_channels  # batch norm and activations keep the channel count


def _build_chain(input_shape, layers: list) -> None:
    """Builds layers applied one after another from their shapes, without tracing `call`.

    Keras 3 builds a custom layer that has no `build` by running its `call` symbolically, which
    for a deep ResNet repeats the trace at every level of nesting: seconds per model.
    """
    shape = tuple(input_shape)
    for layer in layers:
        layer.build(shape)
        shape = _with_channels(shape, output_channels(layer, shape[-1]))
