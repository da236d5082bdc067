"""Evaluation metrics against scikit-learn, masking, and the patient bootstrap's intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from simclr_med.evaluation import metrics

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Hernia")


def _multiclass(n: int = 300, seed: int = 0) -> tuple[metrics.Targets, np.ndarray]:
    rng = np.random.default_rng(seed)
    class_id = rng.integers(0, len(CLASSES), n)
    logits = rng.normal(size=(n, len(CLASSES)))
    logits[np.arange(n), class_id] += 1.0  # informative but imperfect
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return metrics.Targets("multiclass", CLASSES, class_id=class_id), probs


def _multilabel(n: int = 300, seed: int = 0) -> tuple[metrics.Targets, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(LABELS))) < [0.3, 0.2, 0.4, 0.1]).astype(float)
    mask = (rng.random((n, len(LABELS))) > 0.2).astype(float)
    probs = np.clip(0.3 * labels + rng.random((n, len(LABELS))) * 0.7, 0, 1)
    return metrics.Targets("multilabel", LABELS, labels=labels, label_mask=mask), probs


def test_multiclass_metrics_equal_scikit_learn():
    targets, probs = _multiclass()
    y = targets.class_id
    result = metrics.compute(targets, probs)
    assert result["top1_accuracy"] == skm.accuracy_score(y, probs.argmax(axis=1))
    assert result["top3_accuracy"] == skm.top_k_accuracy_score(y, probs, k=3)
    assert result["auc_macro"] == pytest.approx(
        skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-12)
    for c, name in enumerate(CLASSES):
        assert result[f"auc/{name}"] == skm.roc_auc_score(y == c, probs[:, c])
    assert list(result) == metrics.metric_names("multiclass", CLASSES)


def test_multilabel_metrics_equal_scikit_learn_on_unmasked_entries():
    targets, probs = _multilabel()
    result = metrics.compute(targets, probs)
    aucs = []
    for j, name in enumerate(LABELS):
        counted = targets.label_mask[:, j] > 0
        aucs.append(skm.roc_auc_score(targets.labels[counted, j], probs[counted, j]))
        assert result[f"auc/{name}"] == aucs[-1]
    assert result["mean_auc"] == pytest.approx(np.mean(aucs), abs=1e-15)


def test_masked_and_unlabelled_entries_never_count():
    targets, probs = _multilabel()
    masked = targets.label_mask == 0
    rng = np.random.default_rng(1)
    scrambled_labels = np.where(masked, rng.integers(0, 2, masked.shape), targets.labels)
    scrambled_probs = np.where(masked, rng.random(masked.shape), probs)
    scrambled = metrics.Targets("multilabel", LABELS, labels=scrambled_labels,
                                label_mask=targets.label_mask)
    patients = np.arange(len(probs)) // 3
    assert (metrics.with_intervals(targets, probs, patients, 200)
            == metrics.with_intervals(scrambled, scrambled_probs, patients, 200))

    mc_targets, mc_probs = _multiclass()
    unlabelled = metrics.Targets("multiclass", CLASSES,
                                 class_id=np.r_[mc_targets.class_id, [-1] * 50])
    extra = rng.dirichlet(np.ones(len(CLASSES)), 50)
    assert metrics.compute(unlabelled, np.r_[mc_probs, extra]) == metrics.compute(mc_targets,
                                                                                  mc_probs)


@pytest.mark.parametrize("make", [_multiclass, _multilabel])
def test_resampled_metrics_equal_scikit_learn_with_sample_weights(make):
    """The vectorised bootstrap path gives scikit-learn's values for the same multiplicities,
    also with tied scores and images left out (weight 0)."""
    targets, probs = make(n=120, seed=3)
    probs = np.round(probs, 1)  # many ties
    if targets.task == "multiclass":
        probs = probs + np.arange(len(CLASSES)) * 1e-6  # no ties within a row: top-k is unique
    weights = np.random.default_rng(4).integers(0, 4, (5, len(probs))).astype(float)
    resampled = metrics.resampled(targets, probs, weights)
    for row, weight in enumerate(weights):
        expected = metrics.compute(targets, probs, weight)
        for name, value in expected.items():
            assert resampled[name][row] == pytest.approx(value, abs=1e-12), name


def test_a_patients_images_move_together():
    """Two images per patient, one classified right and one wrong: every patient resample has
    top-1 accuracy exactly 0.5, so the interval has zero width; resampling images instead (each
    image its own patient) gives a wide one."""
    n_patients = 100
    class_id = np.zeros(2 * n_patients, int)
    probs = np.tile([[0.9, 0.1], [0.1, 0.9]], (n_patients, 1))  # image 0 right, image 1 wrong
    targets = metrics.Targets("multiclass", ("a", "b"), class_id=class_id)
    by_patient = np.repeat(np.arange(n_patients), 2)

    weights = metrics.resample_weights(by_patient, n_patients, np.random.default_rng(0), 50)
    assert np.array_equal(weights[:, 0::2], weights[:, 1::2])  # a patient's images together
    assert weights.sum(axis=1).tolist() == [2 * n_patients] * 50

    grouped = metrics.with_intervals(targets, probs, by_patient, 500)["top1_accuracy"]
    assert grouped["value"] == 0.5 and grouped["ci95"] == [0.5, 0.5]
    by_image = metrics.with_intervals(targets, probs, np.arange(2 * n_patients), 500)
    low, high = by_image["top1_accuracy"]["ci95"]
    assert high - low > 0.1


@pytest.mark.parametrize("images_per_patient", [1, 2])
def test_interval_width_matches_the_binomial_standard_error(images_per_patient):
    """Accuracy p over n patients whose images are all right or all wrong: the bootstrap
    distribution is binomial(n, p)/n, so the 95% interval is about 2 * 1.96 * sqrt(p(1-p)/n),
    however many images a patient has."""
    n_patients, p = 400, 0.7
    correct = np.arange(n_patients) < p * n_patients
    class_id = np.repeat(np.where(correct, 0, 1), images_per_patient)
    probs = np.tile([0.8, 0.2], (len(class_id), 1))
    targets = metrics.Targets("multiclass", ("a", "b"), class_id=class_id)
    patients = np.repeat(np.arange(n_patients), images_per_patient)
    result = metrics.with_intervals(targets, probs, patients, 4000, seed=1)["top1_accuracy"]
    low, high = result["ci95"]
    expected = 2 * 1.959964 * math.sqrt(p * (1 - p) / n_patients)
    assert result["value"] == pytest.approx(p)
    assert high - low == pytest.approx(expected, rel=0.1)
    assert low < p < high


@pytest.mark.parametrize("make", [_multiclass, _multilabel])
def test_interval_contains_the_point_estimate_and_is_seeded(make):
    targets, probs = make()
    patients = np.arange(len(probs)) // 4
    result = metrics.with_intervals(targets, probs, patients, 300, seed=7)
    assert set(result) == set(metrics.metric_names(targets.task, targets.names))
    for name, entry in result.items():
        low, high = entry["ci95"]
        assert low <= entry["value"] <= high, name
        assert entry["bootstrap_defined"] == 300
    assert result == metrics.with_intervals(targets, probs, patients, 300, seed=7)
    assert result != metrics.with_intervals(targets, probs, patients, 300, seed=8)


def test_an_auc_without_positives_is_reported_undefined_and_left_out_of_the_mean():
    targets, probs = _multilabel()
    labels = targets.labels.copy()
    labels[:, 3] = 0.0  # Hernia: no positive
    no_hernia = metrics.Targets("multilabel", LABELS, labels=labels,
                                label_mask=targets.label_mask)
    result = metrics.compute(no_hernia, probs)
    assert math.isnan(result["auc/Hernia"])
    assert result["mean_auc"] == pytest.approx(np.mean([result[f"auc/{n}"] for n in LABELS[:3]]))
    assert "auc/Hernia" in metrics.undefined_metrics(no_hernia, probs)
    assert "auc/Hernia" not in metrics.with_intervals(no_hernia, probs, np.arange(300), 50)


def test_a_rare_label_counts_only_resamples_where_it_is_defined():
    """One positive patient: resamples that miss it leave the AUC undefined and are counted."""
    labels = np.zeros((40, 1))
    labels[0, 0] = 1.0
    targets = metrics.Targets("multilabel", ("Hernia",), labels=labels, label_mask=np.ones_like(
        labels))
    probs = np.linspace(1, 0, 40)[:, None]
    entry = metrics.with_intervals(targets, probs, np.arange(40), 1000)["auc/Hernia"]
    # P(patient 0 drawn at least once) = 1 - (39/40)^40, about 0.64.
    assert 560 < entry["bootstrap_defined"] < 720
    assert entry["value"] == 1.0 and entry["ci95"] == [1.0, 1.0]
