"""Learning rate: batch-size scaling, linear warm-up, then cosine decay to zero (as SimCLR)."""

from __future__ import annotations

import math

import keras
import tensorflow as tf


def scaled_learning_rate(base_learning_rate: float, batch_size: int, scaling: str) -> float:
    """`linear`: lr * B / 256 (SimCLR's LARS recipe); `sqrt`: lr * sqrt(B) (small batches)."""
    if scaling == "linear":
        return base_learning_rate * batch_size / 256.0
    if scaling == "sqrt":
        return base_learning_rate * math.sqrt(batch_size)
    raise ValueError(f"learning_rate_scaling must be linear or sqrt, got {scaling!r}")


def warmup_steps(warmup_epochs: float, num_examples: int, batch_size: int) -> int:
    return int(round(warmup_epochs * num_examples / batch_size))


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """0 -> peak linearly over `warmup` steps, then peak * (1 + cos(pi * t)) / 2 down to 0 at `total`."""

    def __init__(self, peak: float, warmup: int, total: int):
        if total <= 0:
            raise ValueError(f"the schedule needs a positive number of steps, got {total}")
        self.peak = peak
        self.warmup = min(warmup, total)
        self.total = total

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * step / max(self.warmup, 1)
        progress = tf.clip_by_value((step - self.warmup) / max(self.total - self.warmup, 1), 0., 1.)
        cosine = self.peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "warmup": self.warmup, "total": self.total}
