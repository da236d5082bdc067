"""Expected calibration error (ECE) and the reliability table it is computed from.

Confidences fall into `bins` equal-width bins over [0, 1] (bin i holds (i/bins, (i+1)/bins], the
first one also holds 0). With n_b the (weighted) number of entries in bin b, acc_b the share of
them that are right and conf_b their mean confidence,

    ECE = sum over bins of |acc_b - conf_b| * n_b / n,

which equals sum over bins of |sum_{i in b} w_i (correct_i - conf_i)| / sum_i w_i: the form used
here, vectorised over bootstrap weightings. Multi-class: the confidence is the top probability and
"right" means the top class is the true one. Multi-label: per label, the confidence is the label's
probability and "right" its 0/1 truth (a reliability diagram of a binary probability).
"""

from __future__ import annotations

import dataclasses

import numpy as np

BINS = 15


def bin_index(confidence: np.ndarray, bins: int = BINS) -> np.ndarray:
    """[n] bin of each confidence: i such that i/bins < confidence <= (i+1)/bins (0 in bin 0)."""
    inner = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    return np.searchsorted(inner, np.asarray(confidence, float), side="left")


def weighted_ece(correct: np.ndarray, confidence: np.ndarray, weights: np.ndarray,
                 bins: int = BINS) -> np.ndarray:
    """[B] ECE of n entries under B weightings [B, n] (NaN where the weights sum to 0)."""
    weights = np.atleast_2d(np.asarray(weights, float))
    gap = np.asarray(correct, float) - np.asarray(confidence, float)  # [n]
    onehot = np.zeros((len(gap), bins))
    onehot[np.arange(len(gap)), bin_index(confidence, bins)] = 1.0
    per_bin = weights @ (onehot * gap[:, None])  # [B, bins]
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.abs(per_bin).sum(axis=1) / total, np.nan)


def ece(correct: np.ndarray, confidence: np.ndarray, weight=None, bins: int = BINS) -> float:
    """ECE of one set of entries, `weight` [n] their multiplicities (NaN without any)."""
    weight = np.ones(len(correct)) if weight is None else np.asarray(weight, float)
    return float(weighted_ece(correct, confidence, weight[None], bins)[0])


def multiclass_outcome(class_id: np.ndarray, probabilities: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(correct [n], confidence [n]): is the top class the true one, and its probability."""
    return probabilities.argmax(axis=1) == class_id, probabilities.max(axis=1)


@dataclasses.dataclass(frozen=True)
class Reliability:
    """Per bin: number of entries, share right, mean confidence (NaN for empty bins)."""

    edges: np.ndarray  # [bins + 1]
    count: np.ndarray  # [bins]
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def ece(self) -> float:
        n = self.count.sum()
        filled = self.count > 0
        return float((np.abs(self.accuracy - self.confidence)[filled] * self.count[filled]).sum()
                     / n) if n else float("nan")


def reliability(correct: np.ndarray, confidence: np.ndarray, bins: int = BINS) -> Reliability:
    """The reliability table of entries (unweighted), for the diagram."""
    index = bin_index(confidence, bins)
    count = np.bincount(index, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, np.asarray(correct, float), bins) / count
        mean_conf = np.bincount(index, np.asarray(confidence, float), bins) / count
    return Reliability(np.linspace(0.0, 1.0, bins + 1), count, accuracy, mean_conf)
