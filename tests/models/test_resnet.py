"""The ResNet family and heads: parameter counts, shapes and initialisation as the reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_med.config import ModelConfig
from simclr_med.models.resnet import BLOCKS_PER_GROUP, ResNet
from simclr_med.models.simclr import SimCLRModel
from tests.tiny import TINY, tiny


def _trainable_count(layer) -> int:
    return sum(int(np.prod(v.shape)) for v in layer.trainable_weights)


@pytest.mark.parametrize("depth,image_size,expected", [
    (18, 32, 11_173_056),  # CIFAR stem, as the reference's ResNet-18 on CIFAR
    (50, 64, 23_508_032),  # ImageNet stem (the count does not depend on the image size)
])
def test_backbone_parameter_counts_match_the_reference(depth, image_size, expected):
    model = SimCLRModel(ModelConfig(resnet_depth=depth, image_size=image_size, global_bn=False))
    model.resnet(tf.zeros([1, image_size, image_size, 3]))
    assert _trainable_count(model.resnet) == expected


@pytest.mark.parametrize("depth", sorted(BLOCKS_PER_GROUP))
def test_every_depth_has_the_reference_blocks_per_group(depth):
    resnet = ResNet(depth)  # layers only: no variables are created before the first call
    assert [len(group.blocks) for group in resnet.block_groups] == list(BLOCKS_PER_GROUP[depth])
    assert resnet.output_dim == (2048 if depth >= 50 else 512)


@pytest.mark.parametrize("depth", [18, 50])
def test_basic_and_bottleneck_nets_return_the_reference_endpoints(depth):
    resnet = ResNet(depth, width_multiplier=0.125)
    out = resnet(tf.zeros([2, 64, 64, 3]))
    expansion = 4 if depth >= 50 else 1
    assert out["initial_conv"].shape == (2, 32, 32, 8)
    assert out["initial_max_pool"].shape == (2, 16, 16, 8)
    for g, (size, width) in enumerate([(16, 8), (8, 16), (4, 32), (2, 64)]):
        assert out[f"block_group{g + 1}"].shape == (2, size, size, width * expansion)
    assert out["final_avg_pool"].shape == (2, 64 * expansion) == (2, resnet.output_dim)


def test_convolutions_have_no_bias_and_residual_branches_start_at_zero():
    model = SimCLRModel(ModelConfig(resnet_depth=50, width_multiplier=0.25, image_size=64))
    model.build_for_image_size()
    convs = [l for l in model.resnet._flatten_layers() if isinstance(l, keras.layers.Conv2D)]
    assert convs and not any(conv.use_bias for conv in convs)
    for group in model.resnet.block_groups:
        for block in group.blocks:
            np.testing.assert_array_equal(block.bn3.bn.gamma.numpy(), 0.0)
            np.testing.assert_array_equal(block.bn1.bn.gamma.numpy(), 1.0)
        assert group.blocks[0].shortcut is not None  # projection in every group, group 1 too
        assert all(block.shortcut is None for block in group.blocks[1:])


def test_zero_initialised_blocks_are_identity_plus_relu_at_start():
    resnet = ResNet(18, width_multiplier=0.25, cifar_stem=True)
    x = tf.random.uniform([2, 32, 32, 3])
    resnet(x)
    block = resnet.block_groups[1].blocks[1]  # no projection: output = relu(input)
    h = tf.random.normal([2, 16, 16, 32])
    np.testing.assert_allclose(block(h).numpy(), tf.nn.relu(h).numpy(), atol=1e-6)


def test_cifar_stem_keeps_resolution_and_sk_uses_resnet_d_stem():
    cifar = SimCLRModel(TINY)
    out = cifar(tf.zeros([1, 32, 32, 3]))
    assert out["initial_max_pool"].shape == (1, 32, 32, 16)
    sk = SimCLRModel(ModelConfig(resnet_depth=50, width_multiplier=0.25, image_size=64,
                                 sk_ratio=0.0625))
    sk.build_for_image_size()
    assert [c.conv.kernel.shape[:2] for c in sk.resnet.stem.convs] == [(3, 3)] * 3
    assert sk.resnet.block_groups[0].blocks[0].shortcut.resnet_d


@pytest.mark.parametrize("mode,layers,expected_dense", [
    ("nonlinear", 3, 3), ("nonlinear", 2, 2), ("linear", 3, 1), ("none", 3, 0)])
def test_projection_head_layouts(mode, layers, expected_dense):
    # proj_out_dim 64 differs from the backbone's 128 features (ResNet-18 at width 0.25).
    model = SimCLRModel(tiny(proj_head_mode=mode, num_proj_layers=layers, proj_out_dim=64), num_classes=5)
    out = model(tf.random.stateless_uniform([2, 32, 32, 3], seed=[0, 1]))
    assert len(model.projection_head.linear_layers) == expected_dense
    assert out["final_avg_pool"].shape == (2, 128)
    assert out["proj_head_output"].shape == (2, 64 if expected_dense else 128)
    assert out["logits_sup"].shape == (2, 5)
    if expected_dense:
        last = model.projection_head.linear_layers[-1]
        assert not last.dense.use_bias and not last.bn.bn.center  # no bias, no beta
    else:  # no head: the projection is the backbone's output itself
        assert np.abs(out["final_avg_pool"].numpy()).max() > 0
        np.testing.assert_array_equal(out["proj_head_output"].numpy(),
                                      out["final_avg_pool"].numpy())
