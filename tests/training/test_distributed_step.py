"""A pretraining step's loss by hand, and on 2 replicas the loss and gradients of one device with
the same batch."""

import keras
import numpy as np
import tensorflow as tf

from simclr_med.config import OptimConfig
from simclr_med.models.simclr import SimCLRModel
from simclr_med.stages.pretrain import contrastive_gradients
from tests.tiny import tiny
from test_contrastive_loss import numpy_nt_xent

GLOBAL_BATCH = 8
CONFIG = tiny(global_bn=True)
# float32, summed in another order. Synchronised BN computes the variance as E[x^2] - E[x]^2 over
# replicas, which loses a few digits on uncentred inputs (the stem): measured relative L2 errors of
# the gradients are <= 2.3e-4 (stem, group 1) and ~1e-5 elsewhere.
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-3  # per variable: |g_2 - g_1| <= GRAD_RTOL * |g_1| (L2 norms)


def _pairs() -> dict:
    rng = np.random.RandomState(0)
    views = rng.uniform(0, 1, (GLOBAL_BATCH, 2, 32, 32, 3)).astype(np.float32)
    class_id = rng.randint(-1, 3, (GLOBAL_BATCH, 2)).astype(np.int32)
    return {"views": views, "class_id": class_id}


def _model(strategy) -> tuple[SimCLRModel, keras.optimizers.Optimizer]:
    with strategy.scope():
        model = SimCLRModel(CONFIG, num_classes=3)
        model.build_for_image_size()
        optimizer = keras.optimizers.SGD(0.1)
    return model, optimizer


def test_the_loss_is_the_mean_pair_loss_plus_the_mean_probe_loss_plus_the_l2_term():
    """By hand: NT-Xent (both directions summed) averaged over the B pairs, the probe's
    cross-entropy summed over the labelled images and divided by all 2B of them, and the
    reference's L2 term of every weight but batch-norm parameters (momentum optimizer)."""
    keras.utils.set_random_seed(1)
    model, optimizer = _model(tf.distribute.get_strategy())
    pairs = _pairs()
    decay = 1e-3
    loss, _, _ = contrastive_gradients(model, optimizer, pairs, 0.2, GLOBAL_BATCH, "multiclass",
                                       OptimConfig(optimizer="momentum", weight_decay=decay))

    images = np.concatenate([pairs["views"][:, 0], pairs["views"][:, 1]])
    outputs = {k: v.numpy().astype(np.float64) for k, v in model(images, training=True).items()}
    z1, z2 = np.split(outputs["proj_head_output"], 2)
    contrast = numpy_nt_xent(z1, z2, 0.2).sum() / GLOBAL_BATCH
    logits = outputs["logits_sup"]
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    class_id = np.concatenate([pairs["class_id"][:, 0], pairs["class_id"][:, 1]])
    labelled = np.flatnonzero(class_id >= 0)
    probe = -log_probs[labelled, class_id[labelled]].sum() / (2 * GLOBAL_BATCH)
    l2 = decay * sum(np.sum(v.numpy().astype(np.float64) ** 2) / 2
                     for v in model.trainable_variables if "batch_normalization" not in v.path)
    assert min(contrast, probe, l2) > 0.1 and 0 < len(labelled) < 2 * GLOBAL_BATCH
    np.testing.assert_allclose(float(loss), contrast + probe + l2, rtol=1e-5)


def test_mirrored_step_equals_single_device_step(two_cpu_strategy):
    keras.utils.set_random_seed(1)
    single, single_opt = _model(tf.distribute.get_strategy())
    pairs = _pairs()
    loss, grads, _ = contrastive_gradients(single, single_opt, pairs, 0.2, GLOBAL_BATCH,
                                           "multiclass")

    strategy = two_cpu_strategy
    mirrored, mirrored_opt = _model(strategy)
    mirrored.set_weights(single.get_weights())
    half = GLOBAL_BATCH // 2

    def replica_pairs(context):
        r = context.replica_id_in_sync_group
        return {k: v[r * half:(r + 1) * half] for k, v in pairs.items()}

    inputs = strategy.experimental_distribute_values_from_function(replica_pairs)

    @tf.function
    def step(batch):
        def fn(b):
            replica_loss, replica_grads, _ = contrastive_gradients(
                mirrored, mirrored_opt, b, 0.2, GLOBAL_BATCH, "multiclass")
            return replica_loss, replica_grads
        per_replica_loss, per_replica_grads = strategy.run(fn, args=(batch,))
        # The sum over replicas is what the optimizer's all-reduce applies.
        return (strategy.reduce("SUM", per_replica_loss, axis=None),
                [strategy.reduce("SUM", g, axis=None) for g in per_replica_grads])

    distributed_loss, distributed_grads = step(inputs)
    np.testing.assert_allclose(float(distributed_loss), float(loss), rtol=LOSS_RTOL)
    assert len(distributed_grads) == len(grads)
    for g_dist, g_single, var in zip(distributed_grads, grads, single.trainable_variables):
        error = np.linalg.norm(g_dist.numpy() - g_single.numpy())
        assert error <= GRAD_RTOL * np.linalg.norm(g_single.numpy()) + 1e-7, var.path

