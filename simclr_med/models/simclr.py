"""The SimCLR model: ResNet backbone f(.), projection head g(.), optional supervised head.

During pretraining the supervised head is the linear-evaluation probe: it sees stop-gradient
features, so labels (where a data set has them) never shape the representation. During fine-tuning it
is the task head, trained through the backbone.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import keras
import tensorflow as tf

from simclr_med.config import ModelConfig
from simclr_med.models.projection_head import LinearLayer, ProjectionHead
from simclr_med.models.resnet import CIFAR_STEM_MAX_SIZE, BatchNormSettings, ResNet


class SimCLRModel(keras.Model):
    """Maps float images in [0, 1] to a dict of endpoints, projections and (optional) logits."""

    def __init__(self, config: ModelConfig, num_classes: int = 0,
                 stop_gradient_to_head: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.num_classes = num_classes
        self.stop_gradient_to_head = stop_gradient_to_head
        bn = BatchNormSettings(config.batch_norm_decay, config.batch_norm_epsilon, config.global_bn,
                               config.fused_batch_norm)
        self.resnet = ResNet(config.resnet_depth, config.width_multiplier, config.sk_ratio,
                             cifar_stem=config.image_size <= CIFAR_STEM_MAX_SIZE, bn=bn)
        self.projection_head = ProjectionHead(config.proj_head_mode, config.num_proj_layers,
                                              config.proj_out_dim, self.resnet.output_dim, bn=bn)
        # Named as the reference's layer, whose weight-decay rules go by that name (ours by role).
        self.supervised_head = (LinearLayer(num_classes, name="head_supervised") if num_classes
                                else None)

    def call(self, images, training=False):
        outputs = self.resnet(images, training=training)
        hiddens = self.projection_head(outputs["final_avg_pool"], training=training)
        outputs["proj_head_input"] = hiddens[0]
        outputs["proj_head_output"] = hiddens[-1]
        if self.supervised_head is not None:
            features = hiddens[self.config.ft_proj_selector]
            if self.stop_gradient_to_head:
                features = tf.stop_gradient(features)
            outputs["logits_sup"] = self.supervised_head(features, training=training)
        return outputs

    def build(self, input_shape):
        self.resnet.build(input_shape)
        widths = [self.resnet.output_dim] + [l.units for l in self.projection_head.linear_layers]
        self.projection_head.build((input_shape[0], widths[0]))
        if self.supervised_head is not None:
            self.supervised_head.build((input_shape[0], widths[self.config.ft_proj_selector]))

    def build_for_image_size(self) -> None:
        """Creates every variable (their shapes do not depend on the image size)."""
        size = self.config.image_size
        self.build((None, size, size, 3))


# Side of the symbolic probe image `output_shapes` measures strides with: a multiple of the largest
# stride of any of the networks (32, with the ImageNet stem).
PROBE_SIZE = 64


@dataclasses.dataclass(frozen=True)
class OutputShape:
    """An output's shape for a batch of [H, W, 3] images: [batch, channels], or
    [batch, ceil(H / stride), ceil(W / stride), channels] for a feature map (every downsampling of
    the ResNet, padded explicitly or SAME, rounds up)."""

    channels: int
    stride: int = 0  # 0: not a feature map

    def empty(self, images: tf.Tensor) -> tf.Tensor:
        """A float32 output with zero rows for `images` (a batch of zero images)."""
        if not self.stride:
            return tf.zeros([0, self.channels])
        spatial = -(-tf.shape(images)[1:3] // self.stride)
        return tf.zeros(tf.concat([[0], spatial, [self.channels]], axis=0))


def output_shapes(model: SimCLRModel) -> dict[str, OutputShape]:
    """The shape of each of `model`'s outputs, from a symbolic call (no kernel runs)."""
    specs = model.compute_output_spec(keras.KerasTensor((1, PROBE_SIZE, PROBE_SIZE, 3)))
    return {name: OutputShape(spec.shape[-1], PROBE_SIZE // spec.shape[1] if len(spec.shape) == 4
                              else 0)
            for name, spec in specs.items()}


def unless_empty(images: tf.Tensor, forward: Callable[[tf.Tensor], dict[str, tf.Tensor]],
                 shapes: Mapping[str, OutputShape]) -> dict[str, tf.Tensor]:
    """`forward(images)`, except for a batch of zero images: then float32 outputs of `shapes` with
    zero rows, without running the network. Kernels may fail on an empty batch: on some CPUs
    oneDNN's rewrite of inference batch norm raises `Incompatible shapes: [16] vs. [0,32,32,3]`,
    and batch statistics of no images are NaN."""
    return tf.cond(tf.shape(images)[0] > 0, lambda: forward(images),
                   lambda: {name: shape.empty(images) for name, shape in shapes.items()})


def batch_norm_variables(model: keras.layers.Layer) -> list:
    """The trainable parameters (gamma, beta) of every batch-norm layer in `model`."""
    return [v for layer in model._flatten_layers(include_self=True, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization) for v in layer.trainable_weights]


def no_decay_variables(model: keras.layers.Layer) -> list:
    """Variables the optimizer itself never decays, and LARS never adapts: batch-norm parameters,
    biases and, as in the reference, the whole supervised head (its kernel gets an L2 term in the
    loss instead, see `optimizers.weight_decay_loss`).

    Decided by layer type and role, not by variable name: Keras 3 names are short (`kernel`).
    """
    exempt = batch_norm_variables(model)
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
            exempt.append(layer.bias)
    head = getattr(model, "supervised_head", None)
    if head is not None:
        known = {id(v) for v in exempt}
        exempt.extend(v for v in head.trainable_weights if id(v) not in known)
    return exempt
