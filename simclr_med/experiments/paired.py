"""Paired differences between two arms on the same test patients, with a paired bootstrap.

Both arms predict the same test images. Every bootstrap resample draws the patients once and
scores both arms on that same resampled set, so patient-to-patient variation (which both arms
share) cancels from the difference. With several seeds, the difference is averaged over the seeds
(seed s of one arm against seed s of the other) inside every resample, and the interval is the
percentile interval of that average. An arm against itself gives 0 with the interval [0, 0].
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from simclr_med.evaluation import metrics


@dataclasses.dataclass(frozen=True)
class Predictions:
    """One cell's test predictions: ground truth, probabilities and ids, one row per image."""

    targets: metrics.Targets
    probs: np.ndarray
    image_id: np.ndarray
    patient_id: np.ndarray

    def in_order(self, image_id: np.ndarray) -> "Predictions":
        """The same predictions with the images in the order of `image_id` (the same set)."""
        if len(image_id) != len(self.image_id) or set(image_id) != set(self.image_id):
            raise ValueError("the two predictions are not of the same test images")
        position = {name: i for i, name in enumerate(self.image_id)}
        order = np.array([position[name] for name in image_id])
        t = self.targets
        targets = metrics.Targets(
            t.task, t.names, class_id=None if t.class_id is None else t.class_id[order],
            labels=None if t.labels is None else t.labels[order],
            label_mask=None if t.label_mask is None else t.label_mask[order])
        return Predictions(targets, self.probs[order], self.image_id[order],
                           self.patient_id[order])


@dataclasses.dataclass(frozen=True)
class Difference:
    value: float  # mean over the seeds of metric(a) - metric(b)
    ci95: tuple[float, float]
    seeds: int
    bootstrap_defined: int  # resamples in which the difference was defined


def paired_difference(a: Sequence[Predictions], b: Sequence[Predictions], metric: str,
                      samples: int, seed: int = 0) -> Difference:
    """metric(a) - metric(b), averaged over the seed pairs (a[i], b[i]), with its paired
    percentile bootstrap interval over the test patients."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need as many predictions of each arm, got {len(a)} and {len(b)}")
    reference = b[0]
    a = [p.in_order(reference.image_id) for p in a]
    b = [p.in_order(reference.image_id) for p in b]
    value = float(np.mean([metrics.compute(x.targets, x.probs)[metric]
                           - metrics.compute(y.targets, y.probs)[metric] for x, y in zip(a, b)]))
    index, num_patients = metrics.patient_index(reference.patient_id)
    weights = metrics.resample_weights(index, num_patients, np.random.default_rng(seed), samples)
    resampled = np.mean([metrics.resampled(x.targets, x.probs, weights)[metric]
                         - metrics.resampled(y.targets, y.probs, weights)[metric]
                         for x, y in zip(a, b)], axis=0)
    (low, high), defined = metrics.percentile_interval(resampled)
    return Difference(value, (low, high), len(a), defined)
