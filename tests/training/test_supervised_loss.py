"""The supervised losses against NumPy, the uncertainty mask, and the fine-tuning step's mean.

Multi-label: per-entry sigmoid cross-entropy, weighted by `label_mask` (0 for an uncertain label
under CheXpert's `--uncertainty=ignore`, or a missing one); multi-class: softmax cross-entropy,
weight 0 for an image with class id -1. The fine-tuning loss is the mean over the global batch's
images and (multi-label) all their label slots.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_med.data import schema
from simclr_med.stages.finetune import supervised_gradients
from simclr_med.training import supervised_loss

RNG = np.random.default_rng(0)
IMAGES, LABELS = 8, 5
# Extreme logits too: a naive log(sigmoid) overflows there.
LOGITS = np.concatenate([RNG.normal(0, 3, [IMAGES - 1, LABELS]),
                         [[-60.0, -5.0, 0.0, 5.0, 60.0]]]).astype(np.float32)
TARGETS = RNG.integers(0, 2, [IMAGES, LABELS]).astype(np.float32)
MASK = (RNG.random([IMAGES, LABELS]) < 0.7).astype(np.float32)
MASK[2] = 0.0  # an image all of whose labels are uncertain
CLASS_ID = np.array([0, 4, -1, 2, 3, -1, 1, 4], np.int32)


def _sigmoid_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-y log(sigmoid(z)) - (1 - y) log(1 - sigmoid(z)), in float64, stable for large |z|."""
    z = logits.astype(np.float64)
    return np.logaddexp(0.0, z) - targets * z


def _softmax_cross_entropy(logits: np.ndarray, class_id: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    log_probs = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
    return -log_probs[np.arange(len(z)), np.maximum(class_id, 0)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _loss_and_logit_gradient(logits: np.ndarray, batch: dict, task: str):
    """(per-entry loss, weights, gradient of sum(loss * weights) with respect to the logits)."""
    logits = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        per_entry, weights = supervised_loss.task_loss(logits, batch, task)
        total = tf.reduce_sum(per_entry * weights)
    return per_entry.numpy(), weights.numpy(), tape.gradient(total, logits).numpy()


def _multilabel(targets=TARGETS, mask=MASK) -> dict:
    return {"labels": tf.constant(targets), "label_mask": tf.constant(mask)}


def test_multilabel_loss_and_gradient_are_numpys_sigmoid_cross_entropy():
    per_entry, weights, gradient = _loss_and_logit_gradient(LOGITS, _multilabel(),
                                                            schema.MULTILABEL)
    np.testing.assert_allclose(per_entry, _sigmoid_cross_entropy(LOGITS, TARGETS),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(weights, MASK)
    expected = MASK * (1 / (1 + np.exp(-LOGITS.astype(np.float64))) - TARGETS)
    np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-7)


def test_multiclass_loss_and_gradient_are_numpys_softmax_cross_entropy():
    logits = LOGITS[:, :5]
    per_entry, weights, gradient = _loss_and_logit_gradient(
        logits, {"class_id": tf.constant(CLASS_ID)}, schema.MULTICLASS)
    np.testing.assert_array_equal(weights, CLASS_ID >= 0)
    labelled = CLASS_ID >= 0
    np.testing.assert_allclose(per_entry[labelled],
                               _softmax_cross_entropy(logits, CLASS_ID)[labelled], rtol=1e-5,
                               atol=1e-5)
    expected = (_softmax(logits) - np.eye(5)[np.maximum(CLASS_ID, 0)]) * labelled[:, None]
    np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-7)


def test_masked_entries_change_nothing():
    """Other labels and logits where the mask is 0 (what `--uncertainty=ignore` stores there is
    a 0 label): the same weighted loss and logit gradients, bit for bit; those entries get no
    gradient at all."""
    masked = MASK == 0
    targets = np.where(masked, 1.0 - TARGETS, TARGETS).astype(np.float32)
    logits = np.where(masked, RNG.normal(0, 10, LOGITS.shape), LOGITS).astype(np.float32)
    base = _loss_and_logit_gradient(LOGITS, _multilabel(), schema.MULTILABEL)
    changed = _loss_and_logit_gradient(logits, _multilabel(targets), schema.MULTILABEL)
    np.testing.assert_array_equal(base[0] * base[1], changed[0] * changed[1])
    np.testing.assert_array_equal(base[2], changed[2])
    assert not base[2][masked].any()


def test_unlabelled_images_change_nothing():
    """Multi-class images with class id -1: other logits leave the weighted loss and the other
    images' gradients bit for bit the same, and they get no gradient."""
    unlabelled = CLASS_ID < 0
    logits = LOGITS[:, :5]
    other = np.where(unlabelled[:, None], RNG.normal(0, 10, logits.shape), logits)
    batch = {"class_id": tf.constant(CLASS_ID)}
    base = _loss_and_logit_gradient(logits, batch, schema.MULTICLASS)
    changed = _loss_and_logit_gradient(other.astype(np.float32), batch, schema.MULTICLASS)
    np.testing.assert_array_equal(base[0] * base[1], changed[0] * changed[1])
    np.testing.assert_array_equal(base[2], changed[2])
    assert not base[2][unlabelled].any() and base[2][~unlabelled].any(axis=1).all()


# --- The fine-tuning step -----------------------------------------------------------------------

PIXELS = 4


class LinearModel(keras.Model):
    """logits = flattened image @ kernel + bias, so every gradient has a closed form."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.head = keras.layers.Dense(num_classes)

    def build(self, input_shape):
        self.head.build((None, int(np.prod(input_shape[1:]))))

    def call(self, images, training=False):
        return {"logits_sup": self.head(tf.reshape(images, [tf.shape(images)[0], -1]))}


def _examples(task: str, targets: np.ndarray = TARGETS) -> dict:
    images = np.random.default_rng(1).uniform(0, 1, [IMAGES, PIXELS, PIXELS, 3])
    examples = {"image": images.astype(np.float32)}
    if task == schema.MULTILABEL:
        examples.update(labels=targets, label_mask=MASK)
    else:
        examples["class_id"] = CLASS_ID
    return examples


def _by_hand(examples: dict, model: LinearModel, task: str) -> tuple[float, list]:
    """The mean over the 8 images and (multi-label) their 5 label slots, and its gradients for
    the kernel and the bias, in float64."""
    features = examples["image"].reshape(IMAGES, -1).astype(np.float64)
    kernel, bias = (v.numpy().astype(np.float64) for v in (model.head.kernel, model.head.bias))
    logits = features @ kernel + bias
    if task == schema.MULTILABEL:
        slots = IMAGES * LABELS
        loss = (MASK * _sigmoid_cross_entropy(logits, TARGETS)).sum() / slots
        dlogits = MASK * (1 / (1 + np.exp(-logits)) - TARGETS) / slots
    else:
        labelled = (CLASS_ID >= 0)[:, None]
        loss = (labelled[:, 0] * _softmax_cross_entropy(logits, CLASS_ID)).sum() / IMAGES
        dlogits = labelled * (_softmax(logits) - np.eye(LABELS)[np.maximum(CLASS_ID, 0)]) / IMAGES
    return loss, [features.T @ dlogits, dlogits.sum(axis=0)]


@pytest.mark.parametrize("task", [schema.MULTILABEL, schema.MULTICLASS])
@pytest.mark.parametrize("replicas", [1, 2])
def test_finetuning_loss_is_the_mean_over_the_global_batch_by_hand(task, replicas,
                                                                   two_cpu_strategy):
    """`supervised_gradients` on 8 images, alone or 4 per replica: loss and gradients summed
    over replicas (as the all-reduce does) equal the hand computation over the global batch,
    so dividing by the replica's batch, by the unmasked entries only, or without the label
    slots fails. Other labels in masked entries: the same numbers, bit for bit."""
    strategy = two_cpu_strategy if replicas == 2 else tf.distribute.get_strategy()
    with strategy.scope():
        keras.utils.set_random_seed(3)
        model = LinearModel(LABELS)
        model.build((None, PIXELS, PIXELS, 3))
        optimizer = keras.optimizers.SGD(0.1)
    share = IMAGES // replicas

    @tf.function
    def step(batch):
        def replica_step(replica_batch):
            return supervised_gradients(model, optimizer, replica_batch, task, IMAGES)[:2]
        loss, grads = strategy.run(replica_step, args=(batch,))
        return strategy.reduce("SUM", loss, axis=None), [
            strategy.reduce("SUM", g, axis=None) for g in grads]

    def run(examples: dict):
        return step(strategy.experimental_distribute_values_from_function(
            lambda context: {k: v[context.replica_id_in_sync_group * share:][:share]
                             for k, v in examples.items()}))

    examples = _examples(task)
    loss, grads = run(examples)
    expected_loss, expected_grads = _by_hand(examples, model, task)
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)
    assert [v.path for v in model.trainable_variables] == [model.head.kernel.path,
                                                           model.head.bias.path]
    for grad, expected in zip(grads, expected_grads):
        np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-4, atol=1e-7)
    if task == schema.MULTILABEL:
        other_loss, other_grads = run(_examples(task, np.where(MASK == 0, 1 - TARGETS, TARGETS)))
        assert float(other_loss) == float(loss)
        for grad, other in zip(grads, other_grads):
            np.testing.assert_array_equal(grad.numpy(), other.numpy())
