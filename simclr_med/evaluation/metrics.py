"""Evaluation metrics (scikit-learn) and their 95% confidence intervals by a bootstrap over patients.

Names, as ../shared/INTERFACE.md fixes them:
- multi-class: `top1_accuracy`, `top3_accuracy` (only with more than 3 classes: with 3 or fewer
  it is 1 by definition), `auc_macro` (the mean of the one-vs-rest AUCs) and `auc/<class>`;
  images with class id -1 (unlabelled) do not count;
- multi-label: `auc/<label>` over the label's unmasked entries, and `mean_auc`, their mean.
Calibration (`calibration.py`): `ece`, the expected calibration error of the top class
(multi-class, labelled images), or `ece/<label>` per label over its unmasked entries and
`mean_ece`, their mean (multi-label); lower is better, so they are not choices of the best
checkpoint (`best_metric_choices`).
An AUC needs a positive and a negative: a class or label without both is undefined (NaN here) and
left out of the macro / mean, which equals scikit-learn's one-vs-rest macro AUC whenever every
class is defined.

The bootstrap draws patients with replacement, as many as the evaluation set has, and gives each
image the number of times its patient was drawn as its sample weight, so a patient's images always
move together and the metric sees exactly the resampled set (scikit-learn treats weights as
multiplicities). The interval is the 2.5th and 97.5th percentile of the resampled values
(percentile bootstrap); resamples in which a metric is undefined are left out of its interval and
counted. Reported values come from scikit-learn (`compute`); the resamples, thousands of them, from
`resampled`, the same metrics vectorised over resamples and tested equal to scikit-learn's with
`sample_weight`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from sklearn import metrics as skm

from simclr_med.data import schema
from simclr_med.evaluation import calibration

TOP_K = 3
CI_LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Targets:
    """The ground truth of N images: `class_id` [N] (multi-class, -1 = unlabelled) or `labels`
    and `label_mask` [N, L] (multi-label, mask 0 = not to be counted)."""

    task: str
    names: tuple[str, ...]
    class_id: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    label_mask: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.task == schema.MULTICLASS and self.class_id is None:
            raise ValueError("multi-class targets need class_id")
        if self.task == schema.MULTILABEL and (self.labels is None or self.label_mask is None):
            raise ValueError("multi-label targets need labels and label_mask")
        if self.task not in (schema.MULTICLASS, schema.MULTILABEL):
            raise ValueError(f"unknown task {self.task!r}")

    @property
    def num_images(self) -> int:
        return len(self.class_id if self.task == schema.MULTICLASS else self.labels)

    def labelled(self) -> np.ndarray:
        """[N] bool: images that count for at least one metric."""
        if self.task == schema.MULTICLASS:
            return self.class_id >= 0
        return self.label_mask.max(axis=1, initial=0) > 0


def main_metric(task: str) -> str:
    """The headline metric of a task (also the default for choosing the best checkpoint)."""
    return "auc_macro" if task == schema.MULTICLASS else "mean_auc"


def metric_names(task: str, names: tuple[str, ...]) -> list[str]:
    """Every metric `compute` reports for a task with these classes or labels."""
    if task == schema.MULTICLASS:
        overall = ["top1_accuracy"] + (["top3_accuracy"] if len(names) > TOP_K else [])
        return overall + ["auc_macro", "ece"] + [f"auc/{name}" for name in names]
    return (["mean_auc", "mean_ece"] + [f"auc/{name}" for name in names]
            + [f"ece/{name}" for name in names])


def is_calibration(name: str) -> bool:
    """Whether a metric is a calibration error (lower is better)."""
    return name in ("ece", "mean_ece") or name.startswith("ece/")


def best_metric_choices(task: str, names: tuple[str, ...]) -> list[str]:
    """The metrics a best checkpoint can be chosen by (higher is better): all but calibration."""
    return [name for name in metric_names(task, names) if not is_calibration(name)]


def binary_auc(positive: np.ndarray, score: np.ndarray,
               weight: Optional[np.ndarray] = None) -> float:
    """ROC AUC, NaN unless both classes occur among the entries of positive weight."""
    if weight is not None:
        keep = weight > 0
        positive, score, weight = positive[keep], score[keep], weight[keep]
    if positive.all() or not positive.any():
        return float("nan")
    return float(skm.roc_auc_score(positive, score, sample_weight=weight))


def compute(targets: Targets, probabilities: np.ndarray,
            weight: Optional[np.ndarray] = None,
            bins: int = calibration.BINS) -> dict[str, float]:
    """Every metric of the task on [N, C] probabilities; `weight` [N] are image multiplicities,
    `bins` the calibration bins."""
    if probabilities.shape != (targets.num_images, len(targets.names)):
        raise ValueError(f"probabilities of shape {probabilities.shape} for "
                         f"{targets.num_images} images and {len(targets.names)} classes")
    weight = np.ones(targets.num_images) if weight is None else np.asarray(weight, float)
    if targets.task == schema.MULTICLASS:
        return _multiclass(targets, probabilities, weight, bins)
    return _multilabel(targets, probabilities, weight, bins)


def _multiclass(targets: Targets, probabilities: np.ndarray,
                weight: np.ndarray, bins: int) -> dict[str, float]:
    keep = (targets.class_id >= 0) & (weight > 0)
    class_id, probabilities, weight = targets.class_id[keep], probabilities[keep], weight[keep]
    if not len(class_id):
        return {"top1_accuracy": float("nan")}
    num_classes = len(targets.names)
    result = {"top1_accuracy": float(skm.accuracy_score(
        class_id, probabilities.argmax(axis=1), sample_weight=weight))}
    if num_classes > TOP_K:
        result["top3_accuracy"] = float(skm.top_k_accuracy_score(
            class_id, probabilities, k=TOP_K, labels=np.arange(num_classes),
            sample_weight=weight))
    aucs = {f"auc/{name}": binary_auc(class_id == c, probabilities[:, c], weight)
            for c, name in enumerate(targets.names)}
    result["auc_macro"] = _mean_defined(aucs.values())
    result["ece"] = calibration.ece(*calibration.multiclass_outcome(class_id, probabilities),
                                    weight, bins)
    result.update(aucs)
    return result


def _multilabel(targets: Targets, probabilities: np.ndarray,
                weight: np.ndarray, bins: int) -> dict[str, float]:
    aucs, eces = {}, {}
    for j, name in enumerate(targets.names):
        counted = weight * (targets.label_mask[:, j] > 0)
        aucs[f"auc/{name}"] = binary_auc(targets.labels[:, j] > 0.5, probabilities[:, j], counted)
        eces[f"ece/{name}"] = calibration.ece(targets.labels[:, j] > 0.5, probabilities[:, j],
                                              counted, bins)
    return {"mean_auc": _mean_defined(aucs.values()), "mean_ece": _mean_defined(eces.values()),
            **aucs, **eces}


def _mean_defined(values) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def patient_index(patient_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """([N] index of each image's patient, number of patients)."""
    unique, index = np.unique(np.asarray(patient_ids), return_inverse=True)
    return index, len(unique)


def resample_weights(index: np.ndarray, num_patients: int, rng: np.random.Generator,
                     samples: int) -> np.ndarray:
    """[samples, N] multiplicity of each image in bootstrap resamples of the patients."""
    drawn = rng.integers(0, num_patients, (samples, num_patients))
    counts = np.zeros((samples, num_patients))
    np.add.at(counts, (np.arange(samples)[:, None], drawn), 1.0)
    return counts[:, index]


def weighted_auc(positive: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[B] ROC AUCs of one set of scores under B weightings [B, n] (NaN without both classes).

    The Mann-Whitney form of the AUC (a tie between a positive and a negative counts one half),
    which is the area under scikit-learn's ROC curve; vectorised over the resamples because
    `roc_auc_score` spends ~5 ms per call validating its input. `tests/evaluation/test_metrics.py` checks it
    against `roc_auc_score(..., sample_weight=...)`.
    """
    order = np.argsort(score, kind="stable")
    sorted_score, positive, weights = score[order], positive[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    pos = np.add.reduceat(weights * positive, starts, axis=1)  # [B, tie groups]
    neg = np.add.reduceat(weights * ~positive, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each tie group
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def resampled(targets: Targets, probabilities: np.ndarray, weights: np.ndarray,
              bins: int = calibration.BINS) -> dict[str, np.ndarray]:
    """Every metric of `compute` under B image weightings [B, N] at once: {name: [B]}."""
    if targets.task == schema.MULTICLASS:
        keep = targets.class_id >= 0
        class_id, probabilities, weights = (targets.class_id[keep], probabilities[keep],
                                            weights[:, keep])
        ranked = np.argsort(probabilities, axis=1, kind="mergesort")[:, ::-1]
        total = weights.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            result = {"top1_accuracy": weights @ (ranked[:, 0] == class_id) / total}
            if len(targets.names) > TOP_K:
                hits = (ranked[:, :TOP_K] == class_id[:, None]).any(axis=1)
                result["top3_accuracy"] = weights @ hits / total
        aucs = {f"auc/{name}": weighted_auc(class_id == c, probabilities[:, c], weights)
                for c, name in enumerate(targets.names)}
        result["auc_macro"] = _mean_rows(aucs)
        result["ece"] = calibration.weighted_ece(
            *calibration.multiclass_outcome(class_id, probabilities), weights, bins)
        result.update(aucs)
    else:
        aucs, eces = {}, {}
        for j, name in enumerate(targets.names):
            counted = targets.label_mask[:, j] > 0
            positive = targets.labels[counted, j] > 0.5
            aucs[f"auc/{name}"] = weighted_auc(positive, probabilities[counted, j],
                                               weights[:, counted])
            eces[f"ece/{name}"] = calibration.weighted_ece(positive, probabilities[counted, j],
                                                           weights[:, counted], bins)
        result = {"mean_auc": _mean_rows(aucs), "mean_ece": _mean_rows(eces), **aucs, **eces}
    return result


def _mean_rows(values: dict[str, np.ndarray]) -> np.ndarray:
    """Per resample, the mean of the defined values (NaN when none is)."""
    stacked = np.stack(list(values.values()), axis=1)
    defined = ~np.isnan(stacked)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined, stacked, 0).sum(axis=1) / defined.sum(axis=1)


def percentile_interval(draws: np.ndarray) -> tuple[list[float], int]:
    """(the CI_LEVEL percentile interval of the defined (not NaN) bootstrap draws, how many were
    defined); [nan, nan] when none is."""
    defined = draws[~np.isnan(draws)]
    tail = 100 * (1 - CI_LEVEL) / 2
    interval = (np.percentile(defined, [tail, 100 - tail]).tolist() if len(defined)
                else [float("nan")] * 2)
    return interval, int(len(defined))


def with_intervals(targets: Targets, probabilities: np.ndarray, patient_ids: np.ndarray,
                   samples: int, seed: int = 0, chunk: int = 100,
                   bins: int = calibration.BINS) -> dict[str, dict]:
    """`{name: {"value", "ci95": [low, high], "bootstrap_defined": n}}` for every metric defined
    on the full set (undefined ones are left out: see `undefined_metrics`). `value` comes from
    scikit-learn; the interval from `samples` resamples of the patients, `chunk` at a time."""
    point = {k: v for k, v in compute(targets, probabilities, bins=bins).items()
             if not np.isnan(v)}
    index, num_patients = patient_index(patient_ids)
    rng = np.random.default_rng(seed)
    draws: dict[str, list] = {name: [] for name in point}
    for start in range(0, samples, chunk):
        weights = resample_weights(index, num_patients, rng, min(chunk, samples - start))
        values = resampled(targets, probabilities, weights, bins)
        for name in point:
            draws[name].append(values[name])
    result = {}
    for name, value in point.items():
        interval, defined = percentile_interval(
            np.concatenate(draws[name]) if draws[name] else np.array([]))
        result[name] = {"value": value, "ci95": interval, "bootstrap_defined": defined}
    return result


def undefined_metrics(targets: Targets, probabilities: np.ndarray) -> dict[str, str]:
    """Metrics left out of an evaluation, with the reason."""
    reasons = {}
    for name, value in compute(targets, probabilities).items():
        if np.isnan(value):
            reasons[name] = ("no labelled image" if not name.startswith("auc/")
                             else "needs at least one positive and one negative image")
    return reasons
