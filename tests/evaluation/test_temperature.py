"""Temperature scaling against a NumPy grid search of the NLL; an over-confident model gets T > 1
and a lower ECE; masked multi-label entries never count; the evaluation refuses to fit on the split
it evaluates."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special
from sklearn import metrics as skm

from simclr_med.data import schema
from simclr_med.errors import UserError
from simclr_med.evaluation import metrics, temperature
from simclr_med.stages import evaluate

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
LABELS = ("Atelectasis", "Cardiomegaly", "Effusion")
GRID = np.linspace(np.log(0.05), np.log(20.0), 40001)  # log T, steps of 0.0002
TOLERANCE = 2e-3  # relative, on T (the grid's step plus the optimiser's tolerance)


def _over_confident_multiclass(n=600, seed=0, sharpness=4.0):
    """Logits whose softmax is right about 60% of the time but sure of itself: the true class gets
    a bonus, then everything is scaled up by `sharpness`."""
    rng = np.random.default_rng(seed)
    class_id = rng.integers(0, len(CLASSES), n)
    logits = rng.normal(size=(n, len(CLASSES)))
    logits[np.arange(n), class_id] += 1.2
    class_id[::9] = -1  # unlabelled: must not count
    return class_id, sharpness * logits


def _multilabel(n=500, seed=0):
    """Per label another miscalibration: over-confident, under-confident, over-confident; about a
    quarter of the entries masked, with logits there that would pull T elsewhere."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(LABELS))) < [0.3, 0.2, 0.5]).astype(float)
    signal = (2 * labels - 1) + rng.normal(size=labels.shape) * 1.3
    logits = signal * np.array([3.0, 0.3, 6.0])
    mask = (rng.random(labels.shape) > 0.25).astype(float)
    logits[mask == 0] = -20.0 * (2 * labels[mask == 0] - 1)  # confidently wrong: T up
    return labels, mask, logits


def _grid_argmin(nll) -> float:
    return float(np.exp(GRID[np.argmin([nll(np.exp(g)) for g in GRID])]))


def _softmax_nll(logits, class_id, t):
    """NLL written out: -mean log(exp(z_y / T) / sum_j exp(z_j / T)) over labelled images."""
    keep = class_id >= 0
    z = logits[keep] / t
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_p[np.arange(keep.sum()), class_id[keep]].mean()


def _sigmoid_nll(logits, positive, t):
    p = 1 / (1 + np.exp(-logits / t))
    p = np.clip(p, 1e-300, 1 - 1e-16)
    return -np.mean(np.where(positive, np.log(p), np.log(1 - p)))


def test_multiclass_temperature_is_the_nll_minimum_and_exceeds_one_when_over_confident():
    class_id, logits = _over_confident_multiclass()
    fitted = temperature.fit_multiclass(logits, class_id)
    reference = _grid_argmin(lambda t: _softmax_nll(logits, class_id, t))
    assert fitted == pytest.approx(reference, rel=TOLERANCE)
    assert fitted > 2.0  # over-confident: the temperature softens the probabilities
    assert temperature.multiclass_nll(logits, class_id, fitted) == pytest.approx(
        _softmax_nll(logits, class_id, fitted), rel=1e-9)


def test_multilabel_temperatures_are_per_label_minima_over_unmasked_entries():
    labels, mask, logits = _multilabel()
    fitted = temperature.fit_multilabel(logits, labels, mask)
    for j in range(len(LABELS)):
        counted = mask[:, j] > 0
        reference = _grid_argmin(
            lambda t: _sigmoid_nll(logits[counted, j], labels[counted, j] > 0.5, t))
        assert fitted[j] == pytest.approx(reference, rel=TOLERANCE), LABELS[j]
    assert fitted[0] > 1 and fitted[1] < 1 and fitted[2] > fitted[0]


def test_fit_lowers_the_ece_keeps_accuracy_and_multilabel_aucs():
    class_id, logits = _over_confident_multiclass(seed=3)
    targets = metrics.Targets("multiclass", CLASSES, class_id=class_id)
    fit = temperature.record(targets, logits, lambda z: special.softmax(z, axis=1),
                             fitted_on="validation", global_step=5, model_names=CLASSES)
    assert fit["temperature"] > 1 and fit["ece_after"] < fit["ece_before"] / 2
    assert fit["nll_after"] < fit["nll_before"]
    assert fit["num_images"] == int((class_id >= 0).sum()) and fit["global_step"] == 5
    before = metrics.compute(targets, special.softmax(logits, axis=1))
    after = metrics.compute(targets, special.softmax(logits / fit["temperature"], axis=1))
    assert after["top1_accuracy"] == before["top1_accuracy"]
    assert after["top3_accuracy"] == before["top3_accuracy"]

    labels, mask, logits = _multilabel(seed=1)
    targets = metrics.Targets("multilabel", LABELS, labels=labels, label_mask=mask)
    fit = temperature.record(targets, logits, special.expit, fitted_on="validation",
                             global_step=5, model_names=LABELS)
    assert list(fit["temperature"]) == list(LABELS) and fit["not_fitted"] == []
    assert fit["ece_after"] < fit["ece_before"]
    scaled = special.expit(logits / temperature.temperatures(fit, LABELS))
    for j in range(len(LABELS)):  # a per-label temperature keeps each label's AUC
        counted = mask[:, j] > 0
        assert skm.roc_auc_score(labels[counted, j], scaled[counted, j]) == skm.roc_auc_score(
            labels[counted, j], logits[counted, j])


def test_a_label_without_counted_entries_keeps_temperature_one():
    labels, mask, logits = _multilabel()
    mask[:, 1] = 0
    targets = metrics.Targets("multilabel", LABELS, labels=labels, label_mask=mask)
    fit = temperature.record(targets, logits, special.expit, fitted_on="validation",
                             global_step=0, model_names=LABELS)
    assert fit["temperature"]["Cardiomegaly"] == 1.0 and fit["not_fitted"] == ["Cardiomegaly"]
    with pytest.raises(UserError, match=r"no temperature for the labels \['Hernia'\]"):
        temperature.temperatures(fit, LABELS + ("Hernia",))


def test_calibration_on_the_evaluated_split_is_refused():
    config = evaluate.EvalConfig(calibrate=True, calibration_split="test")
    with pytest.raises(UserError, match="--calibration_split=test is the evaluated split"):
        evaluate.calibrate(None, None, "test", None, None, config, "model")


def test_calibrated_metric_names():
    class_id, logits = _over_confident_multiclass(n=90)
    targets = metrics.Targets("multiclass", CLASSES, class_id=class_id)
    patients = np.array([f"p{i // 3}" for i in range(90)])
    values = evaluate.calibrated_metrics(targets, special.softmax(logits, axis=1), patients,
                                         evaluate.EvalConfig(bootstrap_samples=20))
    assert list(values) == ["ece_calibrated"]
    labels, mask, logits = _multilabel(n=90)
    targets = metrics.Targets("multilabel", LABELS, labels=labels, label_mask=mask)
    values = evaluate.calibrated_metrics(targets, special.expit(logits), patients,
                                         evaluate.EvalConfig(bootstrap_samples=20))
    assert sorted(values) == ["ece_calibrated/" + n for n in LABELS] + ["mean_ece_calibrated"]


def test_missing_calibration_names_the_command(tmp_path):
    with pytest.raises(UserError, match="run.py --mode=eval --calibrate"):
        temperature.load(str(tmp_path))


def test_a_temperature_at_the_end_of_its_range_is_told(caplog):
    """A label the model separates perfectly drives T to 0.01; chance-level logits drive it to
    100: both are said, naming the label."""
    row = np.arange(40)
    labels = np.stack([row % 2, row % 2], axis=1).astype(float)
    # Edema: the logit's sign is always right; Mass: +5 and -5 each half right, half wrong
    logits = np.stack([4 * labels[:, 0] - 2, np.where(row % 4 < 2, 5.0, -5.0)], axis=1)
    targets = metrics.Targets("multilabel", ("Edema", "Mass"), labels=labels,
                              label_mask=np.ones_like(labels))
    fitted = temperature.fit(targets, logits)
    np.testing.assert_allclose(fitted, [0.01, 100], rtol=1e-3)
    assert "T = 0.01, the end of its range, for Edema on the calibration split" in caplog.text
    assert "T = 100, the end of its range, for Mass on the calibration split" in caplog.text


def test_scaled_divides_each_evaluated_output_by_its_labels_temperature():
    """A model of four labels evaluated on a data set of two (one renamed): their outputs are
    divided by their temperatures, the others are left alone."""
    model_names = ("Atelectasis", "Cardiomegaly", "Effusion", "Hernia")
    data = schema.DatasetInfo(task="multilabel", names=["Pleural Effusion", "Atelectasis"])
    alignment = evaluate.align("multilabel", model_names, data)
    logits = np.random.default_rng(0).normal(size=(5, 4))
    predicted = evaluate.ImageOutputs(
        image_id=np.arange(5).astype(str), patient_id=np.arange(5).astype(str),
        outputs={"logits_sup": logits},
        truth={"labels": np.zeros((5, 2)), "label_mask": np.ones((5, 2))})
    calibration = {"temperature": {"Effusion": 2.0, "Atelectasis": 0.5}, "fitted_on": "val"}
    scaled = evaluate.scaled(predicted, calibration, alignment, model_names)
    np.testing.assert_array_equal(scaled.outputs["logits_sup"], logits / [0.5, 1.0, 2.0, 1.0])
    _, probs = evaluate.aligned(scaled, alignment)  # data order: Pleural Effusion, Atelectasis
    np.testing.assert_allclose(probs, special.expit(logits[:, [2, 0]] / [2.0, 0.5]))
