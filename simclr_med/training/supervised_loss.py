"""Losses and accuracy of the supervised head, per task type.

- multi-class (dermatology): softmax cross-entropy; images with class id -1 (unlabelled) are skipped;
- multi-label (chest X-ray): sigmoid cross-entropy per label; masked entries (uncertain labels under
  the `ignore` policy, or missing ones) are skipped.
Each function returns per-entry values and weights, so callers can average over the global batch
(`global_mean`).
"""

from __future__ import annotations

import tensorflow as tf

from simclr_med.data import schema


def task_loss(logits: tf.Tensor, batch: dict, task: str) -> tuple[tf.Tensor, tf.Tensor]:
    """(per-entry loss, weight) for `logits` [n, classes] and the batch's labels."""
    logits = tf.cast(logits, tf.float32)
    if task == schema.MULTICLASS:
        class_id = batch["class_id"]
        weights = tf.cast(class_id >= 0, tf.float32)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.maximum(class_id, 0), logits=logits)
        return loss, weights
    if task == schema.MULTILABEL:
        loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=batch["labels"], logits=logits)
        return loss, batch["label_mask"]
    raise ValueError(f"unknown task {task!r}")


def global_mean(per_entry: tf.Tensor, weights: tf.Tensor, global_images: int) -> tf.Tensor:
    """This replica's share of the mean of `per_entry * weights` over the `global_images` images of
    the global batch and, multi-label, all their label slots (a masked slot adds nothing but still
    counts): summed over replicas, the mean over the global batch."""
    entries_per_image = 1 if per_entry.shape.rank == 1 else per_entry.shape[-1]
    return tf.reduce_sum(per_entry * weights) / float(global_images * entries_per_image)


def task_accuracy(logits: tf.Tensor, batch: dict, task: str) -> tuple[tf.Tensor, tf.Tensor]:
    """(per-entry correctness, weight): top-1 for multi-class, per label at 0.5 for multi-label."""
    if task == schema.MULTICLASS:
        predicted = tf.argmax(logits, axis=1, output_type=tf.int32)
        correct = tf.cast(tf.equal(predicted, batch["class_id"]), tf.float32)
        return correct, tf.cast(batch["class_id"] >= 0, tf.float32)
    if task == schema.MULTILABEL:
        correct = tf.cast(tf.equal(tf.cast(logits > 0, tf.float32), batch["labels"]), tf.float32)
        return correct, batch["label_mask"]
    raise ValueError(f"unknown task {task!r}")
