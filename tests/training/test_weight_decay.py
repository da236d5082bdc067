"""Weight decay as google-research/simclr applies it, for LARS, momentum and Adam.

The expectations come from the reference's own rules (tf2/model.py), which go by variable name:
- LARS (`build_optimizer`) excludes names containing 'batch_normalization', 'bias' or
  'head_supervised' from its decay and trust ratio, and `add_weight_decay` adds
  `weight_decay * l2_loss(v)` to the loss for 'head_supervised' variables without 'bias';
- momentum and Adam decay nothing themselves, and `add_weight_decay` adds the L2 term of every
  trainable variable whose name lacks 'batch_normalization'.
Keras 3 paths keep those names (the supervised head is named `head_supervised`, as there), so the
tests apply the reference's rules to paths while the code decides by layer type and role.
"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_med.checkpoints import native
from simclr_med.config import OptimConfig, TrainConfig
from simclr_med.data import augment
from simclr_med.data.reader import open_build
from simclr_med.models.simclr import SimCLRModel, no_decay_variables
from simclr_med.stages import evaluate
from simclr_med.stages.finetune import FinetuneConfig, finetune
from simclr_med.training.optimizers import OPTIMIZERS, build_optimizer, weight_decay_loss
from tests.tiny import TINY, tiny

LR, MOMENTUM, DECAY, ETA = 0.1, 0.9, 0.05, 0.001
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7  # Keras Adam's defaults, as the reference's
REFERENCE_LARS_EXCLUDED = ("batch_normalization", "bias", "head_supervised")


def reference_lars_exempt(path: str) -> bool:
    return any(re.search(pattern, path) for pattern in REFERENCE_LARS_EXCLUDED)


def reference_l2(path: str, optimizer: str) -> bool:
    if optimizer == "lars":
        return "head_supervised" in path and "bias" not in path
    return "batch_normalization" not in path


@pytest.fixture(scope="module")
def built_model() -> SimCLRModel:
    """A model with a supervised head and a frozen stem (frozen weights are never decayed)."""
    model = SimCLRModel(tiny(num_proj_layers=2), num_classes=3)
    model.build_for_image_size()
    model.resnet.stem.trainable = False
    return model


@pytest.fixture
def model(built_model) -> SimCLRModel:
    """`built_model` with fresh random weights (biases and BN parameters non-zero)."""
    rng = np.random.default_rng(0)
    for variable in built_model.trainable_variables:
        variable.assign(rng.normal(size=variable.shape).astype(np.float32))
    return built_model


def _ids(variables) -> set[int]:
    return {id(v) for v in variables}


def _l2_gradients(config: OptimConfig, model: keras.Model) -> tuple[tf.Tensor, list]:
    with tf.GradientTape() as tape:
        penalty = weight_decay_loss(config, model)
    gradients = tape.gradient(penalty, model.trainable_variables)
    return penalty, [np.zeros(v.shape, np.float32) if g is None else g.numpy()
                     for g, v in zip(gradients, model.trainable_variables)]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_exempt_and_penalised_variables_follow_the_reference_rule(model, name):
    config = OptimConfig(optimizer=name, weight_decay=DECAY)
    variables = model.trainable_variables
    assert not _ids(model.resnet.stem.weights) & _ids(variables)
    if name == "lars":
        expected = {id(v) for v in variables if reference_lars_exempt(v.path)}
        assert _ids(no_decay_variables(model)) == expected
        assert id(model.supervised_head.dense.kernel) in expected

    penalised = [v for v in variables if reference_l2(v.path, name)]
    # LARS: the head's kernel; else 20 convolutions (the stem's is frozen), 2 projection kernels,
    # the head's kernel and bias.
    assert len(penalised) == (1 if name == "lars" else 20 + 2 + 2)
    penalty, gradients = _l2_gradients(config, model)
    expected_penalty = DECAY * sum(np.sum(v.numpy().astype(np.float64) ** 2) / 2
                                   for v in penalised)
    np.testing.assert_allclose(float(penalty), expected_penalty, rtol=1e-5)
    for variable, gradient in zip(variables, gradients):
        expected = DECAY * variable.numpy() if reference_l2(variable.path, name) else 0.0
        np.testing.assert_allclose(gradient, expected, rtol=1e-6, err_msg=variable.path)


def numpy_update(name: str, path: str, w: np.ndarray, g: np.ndarray, slots: list,
                 step: int) -> np.ndarray:
    """One step of the reference's optimizer on the gradient of loss + its L2 term."""
    if reference_l2(path, name):
        g = g + DECAY * w
    if name == "lars":  # tf2/lars_optimizer.py, classic momentum
        trust = 1.0
        if not reference_lars_exempt(path):
            g = g + DECAY * w
            trust = ETA * np.linalg.norm(w) / np.linalg.norm(g)
        slots[0] = MOMENTUM * slots[0] + LR * trust * g
        return w - slots[0]
    if name == "momentum":  # Keras SGD with momentum: no decay of its own
        slots[0] = MOMENTUM * slots[0] - LR * g
        return w + slots[0]
    slots[0] += (g - slots[0]) * (1 - BETA_1)  # Adam: no decay of its own (not AdamW)
    slots[1] += (g * g - slots[1]) * (1 - BETA_2)
    alpha = LR * np.sqrt(1 - BETA_2 ** step) / (1 - BETA_1 ** step)
    return w - alpha * slots[0] / (np.sqrt(slots[1]) + EPSILON)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_two_steps_match_the_reference_update(model, name):
    config = OptimConfig(optimizer=name, momentum=MOMENTUM, weight_decay=DECAY,
                         lars_trust_coefficient=ETA)
    optimizer = build_optimizer(config, LR, no_decay_variables(model))
    variables = model.trainable_variables
    expected = [v.numpy().astype(np.float64) for v in variables]
    slots = [[np.zeros(v.shape), np.zeros(v.shape)] for v in variables]
    rng = np.random.default_rng(1)
    for step in (1, 2):
        task = [rng.normal(size=v.shape).astype(np.float32) for v in variables]
        _, l2 = _l2_gradients(config, model)
        optimizer.apply_gradients(zip([t + g for t, g in zip(task, l2)], variables))
        expected = [numpy_update(name, v.path, w, t, s, step)
                    for v, w, t, s in zip(variables, expected, task, slots)]
    for variable, value in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), value, rtol=2e-5, atol=2e-6,
                                   err_msg=variable.path)


def test_each_replica_adds_its_share_of_the_penalty(two_cpu_strategy):
    """Summed over 2 replicas (as the gradient all-reduce sums them), the L2 gradients are
    weight_decay * w once, not twice."""
    with two_cpu_strategy.scope():
        layer = keras.layers.Dense(3)
        layer.build((None, 4))
    layer.kernel.assign(np.arange(12, dtype=np.float32).reshape(4, 3) - 5)
    layer.bias.assign([1.0, -2.0, 3.0])
    config = OptimConfig(optimizer="momentum", weight_decay=DECAY)

    def replica_gradients():
        with tf.GradientTape() as tape:
            penalty = weight_decay_loss(config, layer)
        return tape.gradient(penalty, layer.trainable_variables)

    @tf.function
    def summed():
        return [two_cpu_strategy.reduce("SUM", g, axis=None)
                for g in two_cpu_strategy.run(replica_gradients)]

    for gradient, variable in zip(summed(), layer.trainable_variables):
        np.testing.assert_allclose(gradient.numpy(), DECAY * variable.numpy(), rtol=1e-6)



def test_fine_tuning_adds_the_l2_term_to_its_loss(synthetic_build, tmp_path):
    """Fine-tuning a zero backbone (frozen) gives the head zero features, so its kernel's only
    gradient is the L2 term's, decay * w: plain SGD scales the kernel by 1 - lr * decay at each
    step (the cosine schedule halves lr at the second of two steps)."""
    config = TINY
    zero = SimCLRModel(config)
    zero.build_for_image_size()
    for variable in zero.variables:
        variable.assign(tf.zeros_like(variable))
    native.ModelRecord(config, source="pretrain").save(str(tmp_path / "zero"))
    tf.train.Checkpoint(model=zero).save(str(tmp_path / "zero" / "ckpt"))

    decay, lr = 0.5, 1.0 * 8 / 256
    finetune(config, OptimConfig(optimizer="momentum", momentum=0.0, learning_rate=1.0,
                                 learning_rate_scaling="linear", warmup_epochs=0,
                                 weight_decay=decay),
             augment.preset("finetune"), open_build(str(synthetic_build)),
             TrainConfig(model_dir=str(tmp_path / "tuned"), train_batch_size=8, train_steps=2,
                         steps_per_loop=1, checkpoint_steps=1,
                         init_checkpoint=str(tmp_path / "zero")),
             FinetuneConfig(fine_tune_after_block=4, validation_split=""),
             tf.distribute.get_strategy())
    kernels = []
    for step in (1, 2):
        model = evaluate.load_classifier(str(tmp_path / "tuned"),
                                         str(tmp_path / "tuned" / f"ckpt-{step}")).model
        kernels.append(model.supervised_head.dense.kernel.numpy())
    assert np.abs(kernels[0]).min() > 0
    np.testing.assert_allclose(kernels[1], (1 - lr / 2 * decay) * kernels[0], rtol=1e-6)
