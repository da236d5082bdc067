"""Expected calibration error against a NumPy computation written here with loops, on random and
hand-made cases; masked multi-label entries never count; the bootstrap interval covers it."""

from __future__ import annotations

import numpy as np
import pytest

from simclr_med.evaluation import calibration, metrics

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Hernia")


def _reference_ece(correct, confidence, weight=None, bins=15) -> float:
    """The textbook form: sum over bins of |acc_b - conf_b| * n_b / n, one bin at a time."""
    correct = [float(c) for c in correct]
    confidence = [float(c) for c in confidence]
    weight = [1.0] * len(correct) if weight is None else [float(w) for w in weight]
    n = sum(weight)
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        n_b = acc = conf = 0.0
        for c, p, w in zip(correct, confidence, weight):
            if (lo < p <= hi) or (b == 0 and p == 0.0):
                n_b += w
                acc += w * c
                conf += w * p
        if n_b > 0:
            total += abs(acc / n_b - conf / n_b) * n_b / n
    return total


def _multiclass(n=300, seed=0, sharpness=1.0):
    rng = np.random.default_rng(seed)
    class_id = rng.integers(0, len(CLASSES), n)
    logits = rng.normal(size=(n, len(CLASSES))) * sharpness
    logits[np.arange(n), class_id] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return metrics.Targets("multiclass", CLASSES, class_id=class_id), probs


def _multilabel(n=300, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(LABELS))) < [0.3, 0.2, 0.4, 0.1]).astype(float)
    mask = (rng.random((n, len(LABELS))) > 0.2).astype(float)
    probs = np.clip(0.3 * labels + rng.random((n, len(LABELS))) * 0.7, 0, 1)
    return metrics.Targets("multilabel", LABELS, labels=labels, label_mask=mask), probs


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bins", [15, 10, 3])
def test_multiclass_ece_equals_the_loop_computation(seed, bins):
    targets, probs = _multiclass(seed=seed, sharpness=1.0 + seed)
    targets = metrics.Targets("multiclass", CLASSES,
                              class_id=np.where(np.arange(300) % 10 == 0, -1, targets.class_id))
    labelled = targets.class_id >= 0
    top = [int(np.argmax(row)) for row in probs[labelled]]
    correct = [t == c for t, c in zip(top, targets.class_id[labelled])]
    confidence = [row[t] for row, t in zip(probs[labelled], top)]
    expected = _reference_ece(correct, confidence, bins=bins)
    assert expected > 0.01
    assert metrics.compute(targets, probs, bins=bins)["ece"] == pytest.approx(expected, abs=1e-12)


def test_multilabel_ece_per_label_and_mean_equal_the_loop_computation():
    targets, probs = _multilabel()
    result = metrics.compute(targets, probs)
    expected = []
    for j, name in enumerate(LABELS):
        rows = [i for i in range(len(probs)) if targets.label_mask[i, j] > 0]
        expected.append(_reference_ece([targets.labels[i, j] for i in rows],
                                       [probs[i, j] for i in rows]))
        assert result[f"ece/{name}"] == pytest.approx(expected[-1], abs=1e-12), name
    assert result["mean_ece"] == pytest.approx(np.mean(expected), abs=1e-12)


def test_weighted_ece_equals_the_loop_computation_with_multiplicities():
    rng = np.random.default_rng(5)
    correct = rng.random(200) < 0.6
    confidence = np.round(rng.random(200), 2)  # values on bin edges too
    weights = rng.integers(0, 4, (6, 200)).astype(float)
    values = calibration.weighted_ece(correct, confidence, weights, 10)
    for row, weight in zip(values, weights):
        assert row == pytest.approx(_reference_ece(correct, confidence, weight, 10), abs=1e-12)


def test_a_perfectly_calibrated_case_has_zero_ece():
    """In each bin of confidence p the top class is right for exactly a share p of the images."""
    correct, confidence = [], []
    for p, n in [(0.3, 10), (0.5, 20), (0.8, 50), (1.0, 7)]:
        hits = round(p * n)
        correct += [True] * hits + [False] * (n - hits)
        confidence += [p] * n
    assert calibration.ece(np.array(correct), np.array(confidence)) == pytest.approx(0, abs=1e-12)


def test_an_overconfident_case_has_the_known_ece():
    """Two-class images: 100 at confidence 0.9 with 60% right, 100 at 0.6 with 50% right:
    ECE = 0.5 * |0.6 - 0.9| + 0.5 * |0.5 - 0.6| = 0.2."""
    class_id = np.r_[np.zeros(60, int), np.ones(40, int), np.zeros(50, int), np.ones(50, int)]
    probs = np.r_[np.tile([0.9, 0.1], (100, 1)), np.tile([0.6, 0.4], (100, 1))]
    targets = metrics.Targets("multiclass", ("a", "b"), class_id=class_id)
    assert metrics.compute(targets, probs)["ece"] == pytest.approx(0.2, abs=1e-12)
    table = calibration.reliability(*calibration.multiclass_outcome(class_id, probs))
    assert table.ece == pytest.approx(0.2, abs=1e-12)
    assert table.count.sum() == 200 and sorted(table.count[table.count > 0]) == [100, 100]


def test_masked_multilabel_entries_change_no_calibration_figure():
    targets, probs = _multilabel()
    masked = targets.label_mask == 0
    rng = np.random.default_rng(1)
    scrambled = metrics.Targets(
        "multilabel", LABELS, label_mask=targets.label_mask,
        labels=np.where(masked, rng.integers(0, 2, masked.shape), targets.labels))
    scrambled_probs = np.where(masked, rng.random(masked.shape), probs)
    patients = np.arange(len(probs)) // 3
    original = metrics.with_intervals(targets, probs, patients, 200)
    assert original == metrics.with_intervals(scrambled, scrambled_probs, patients, 200)
    assert {"mean_ece", "ece/Hernia"} <= set(original)
    # Without the mask, the scrambled entries would count.
    unmasked = metrics.Targets("multilabel", LABELS, labels=scrambled.labels,
                               label_mask=np.ones_like(targets.label_mask))
    assert metrics.compute(unmasked, scrambled_probs)["ece/Hernia"] != pytest.approx(
        original["ece/Hernia"]["value"])


@pytest.mark.parametrize("make", [_multiclass, _multilabel])
def test_ece_gets_a_bootstrap_interval_and_is_no_best_metric_choice(make):
    targets, probs = make()
    result = metrics.with_intervals(targets, probs, np.arange(len(probs)) // 4, 300, seed=3)
    names = ["ece"] if targets.task == "multiclass" else ["mean_ece"] + [
        f"ece/{n}" for n in LABELS]
    for name in names:
        low, high = result[name]["ci95"]
        assert 0 <= low <= result[name]["value"] <= high <= 1, name
        assert high > low
        assert name not in metrics.best_metric_choices(targets.task, targets.names)
    assert metrics.main_metric(targets.task) in metrics.best_metric_choices(targets.task,
                                                                            targets.names)
