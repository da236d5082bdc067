"""Running means of training metrics that replicas update inside `strategy.run`.

Each metric is a (total, count) pair of on-read, sum-aggregated variables: replicas add to their own
copies without communication, and reading in the cross-replica context sums them, so the mean is
over every example of the global batch.
"""

from __future__ import annotations

from typing import Iterable

import tensorflow as tf


class RunningMeans:
    """Create under `strategy.scope()`; `update` in a replica context; `result` outside."""

    def __init__(self, names: Iterable[str]):
        self._totals, self._counts = {}, {}
        for name in names:
            self._totals[name] = self._variable(f"{name}_total")
            self._counts[name] = self._variable(f"{name}_count")

    @staticmethod
    def _variable(name: str) -> tf.Variable:
        return tf.Variable(0.0, trainable=False, name=name,
                           synchronization=tf.VariableSynchronization.ON_READ,
                           aggregation=tf.VariableAggregation.SUM)

    def update(self, name: str, values: tf.Tensor, weights: tf.Tensor | None = None) -> None:
        """Adds per-example `values` (optionally weighted, e.g. by a label mask)."""
        values = tf.cast(tf.reshape(values, [-1]), tf.float32)
        if weights is None:
            weights = tf.ones_like(values)
        weights = tf.cast(tf.reshape(weights, [-1]), tf.float32)
        self._totals[name].assign_add(tf.reduce_sum(values * weights))
        self._counts[name].assign_add(tf.reduce_sum(weights))

    def result(self) -> dict[str, float]:
        """Means since the last reset (NaN for a metric that saw no example)."""
        out = {}
        for name, total in self._totals.items():
            count = float(self._counts[name].read_value())
            out[name] = float(total.read_value()) / count if count else float("nan")
        return out

    def reset(self) -> None:
        for variable in list(self._totals.values()) + list(self._counts.values()):
            variable.assign(0.0)
