"""Evaluation without training: label matching across data sets, the files an evaluation writes,
checkpoint choice. (Evaluations of trained models on real data: tests/stages/test_finetune.py.)"""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from matplotlib import image as mpimg
from scipy import special
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression

from data_prep.formats import CHEXPERT_OBSERVATIONS, HAM10000_CLASSES, NIH_FINDINGS
from simclr_med.checkpoints import trained_model
from simclr_med.data import schema
from simclr_med.data.finetune_input import evaluation_dataset
from simclr_med.data.reader import open_build
from simclr_med.errors import UserError
from simclr_med.evaluation import label_mapping, metrics, plots, report, saliency
from simclr_med.models.simclr import SimCLRModel
from simclr_med.stages import evaluate
from tests import tiny


def test_nih_and_chexpert_share_seven_findings_through_the_table():
    matches = label_mapping.match_labels(NIH_FINDINGS, CHEXPERT_OBSERVATIONS)
    assert {m.data_name: m.model_name for m in matches} == {
        "Cardiomegaly": "Cardiomegaly", "Edema": "Edema", "Consolidation": "Consolidation",
        "Pneumonia": "Pneumonia", "Atelectasis": "Atelectasis", "Pneumothorax": "Pneumothorax",
        "Pleural Effusion": "Effusion"}
    for m in matches:  # indices point at the names
        assert NIH_FINDINGS[m.model_index] == m.model_name
        assert CHEXPERT_OBSERVATIONS[m.data_index] == m.data_name
    # Not the same finding: not matched.
    assert not label_mapping.match_labels(["Pleural_Thickening", "Nodule", "Mass"],
                                          ["Pleural Other", "Lung Lesion"])
    assert label_mapping.canonical("pleural-thickening") == label_mapping.canonical(
        "Pleural_Thickening")


def _info(task: str, names, **kwargs) -> schema.DatasetInfo:
    return schema.DatasetInfo(task=task, names=list(names), **kwargs)


def test_multiclass_alignment_reorders_renamed_classes_and_refuses_unknown_ones():
    data = _info("multiclass", ["melanoma", "nv", "bcc"])
    alignment = evaluate.align("multiclass", HAM10000_CLASSES, data)
    assert alignment.names == HAM10000_CLASSES
    assert [HAM10000_CLASSES[i] for i in alignment.data_columns] == ["mel", "nv", "bcc"]
    assert alignment.renamed == {"melanoma": "mel"}
    predicted = evaluate.ImageOutputs(
        image_id=np.array(["a", "b", "c", "d"]), patient_id=np.array(["p", "p", "q", "r"]),
        outputs={"logits_sup": np.zeros((4, 7), np.float32)},
        truth={"class_id": np.array([0, 2, -1, 1])})
    targets, probs = evaluate.aligned(predicted, alignment)
    assert targets.class_id.tolist() == [HAM10000_CLASSES.index(c) for c in ("mel", "bcc")] + [
        -1, HAM10000_CLASSES.index("nv")]
    assert probs.shape == (4, 7) and np.allclose(probs.sum(axis=1), 1)

    with pytest.raises(UserError, match=r"\['SCC'\] are not among the model's classes"):
        evaluate.align("multiclass", HAM10000_CLASSES, _info("multiclass", ["nv", "SCC"]))
    with pytest.raises(UserError, match="the model is multilabel .* the data set is multiclass"):
        evaluate.align("multilabel", NIH_FINDINGS, _info("multiclass", HAM10000_CLASSES))
    with pytest.raises(UserError, match="share none"):
        evaluate.align("multilabel", NIH_FINDINGS, _info("multilabel", ["Fracture"]))


def _fabricated(task: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = 90
    patients = np.array([f"p{i // 3:03d}" for i in range(n)])
    if task == "multiclass":
        names = ("disc", "ring", "bar", "cross")
        class_id = rng.integers(-1, 4, n)
        probs = rng.dirichlet(np.ones(4), n)
        return metrics.Targets(task, names, class_id=class_id), probs, patients
    names = ("Effusion", "Hernia", "Mass")
    labels = (rng.random((n, 3)) < 0.3).astype(float)
    mask = (rng.random((n, 3)) < 0.8).astype(float)
    return (metrics.Targets(task, names, labels=labels, label_mask=mask), rng.random((n, 3)),
            patients)


def _read_predictions(path, names, task):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    probs = np.array([[float(r[f"prob/{n}"]) for n in names] for r in rows])
    if task == "multiclass":
        class_id = np.array([names.index(r["label"]) if r["label"] else -1 for r in rows])
        targets = metrics.Targets(task, names, class_id=class_id)
    else:
        cells = [[r[f"label/{n}"] for n in names] for r in rows]
        targets = metrics.Targets(task, names,
                                  labels=np.array([[float(c or 0) for c in r] for r in cells]),
                                  label_mask=np.array([[float(c != "") for c in r]
                                                       for r in cells]))
    return rows, targets, probs


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_predictions_csv_recomputes_every_figure_of_the_eval_json(task, tmp_path):
    targets, probs, patients = _fabricated(task)
    image_ids = np.array([f"img{i}" for i in range(len(probs))])
    result = evaluate.report(targets, probs, patients, evaluate.EvalConfig(bootstrap_samples=200),
                             split="test", data_dir="somewhere", global_step=7, checkpoint="ck")
    path = tmp_path / "predictions_test.csv"
    evaluate.write_predictions(str(path), image_ids, patients, targets, probs)

    rows, read_targets, read_probs = _read_predictions(path, targets.names, task)
    assert list(rows[0])[:2] == ["image_id", "patient_id"]
    assert np.array_equal(read_probs, probs)  # full precision
    read_patients = np.array([r["patient_id"] for r in rows])
    assert result == evaluate.report(read_targets, read_probs, read_patients,
                                     evaluate.EvalConfig(bootstrap_samples=200), split="test",
                                     data_dir="somewhere", global_step=7, checkpoint="ck")
    assert result["num_images"] == 90 and result["num_patients"] == 30
    if task == "multiclass":
        counted = targets.class_id >= 0
        assert result["metrics"]["top1_accuracy"]["value"] == skm.accuracy_score(
            targets.class_id[counted], probs[counted].argmax(axis=1))
        assert result["num_labelled_images"] == int(counted.sum())
    else:
        assert set(rows[0]) >= {"label/Effusion", "prob/Mass"}
        assert {r["label/Hernia"] for r in rows} == {"0", "1", ""}
    calibration_names = (["ece"] if task == "multiclass"
                         else ["mean_ece"] + [f"ece/{n}" for n in targets.names])
    for name in calibration_names:  # calibration, with its interval, in every evaluation
        entry = result["metrics"][name]
        assert 0 <= entry["ci95"][0] <= entry["value"] <= entry["ci95"][1] <= 1, name
        assert entry["bootstrap_defined"] == 200
    json.dumps(result, allow_nan=False)  # strict JSON: no NaN anywhere
    table = evaluate.format_metrics_table(result)
    assert table.splitlines()[2].startswith(metrics.main_metric(task))
    assert any(line.startswith(calibration_names[0] + " ") for line in table.splitlines())


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_plots_are_written_as_png(task, tmp_path):
    targets, probs, _ = _fabricated(task)
    paths = plots.write_all(str(tmp_path), "test", targets, probs, "test split of fabricated")
    assert [p.rsplit("/", 1)[1] for p in paths] == (
        ["roc_test.png", "confusion_matrix_test.png"] if task == "multiclass" else ["roc_test.png"]
    ) + ["reliability_test.png"]
    for path in paths:
        height, width, _ = mpimg.imread(path).shape
        assert height > 400 and width > 400
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.rsplit("/", 1)[1] for p in paths)


def _save_checkpoint(directory, step: int) -> str:
    checkpoint = tf.train.Checkpoint(v=tf.Variable(float(step)))
    return tf.train.CheckpointManager(checkpoint, str(directory), 2).save(checkpoint_number=step)


def test_evaluation_uses_the_best_checkpoint_when_fine_tuning_kept_one(tmp_path):
    latest = _save_checkpoint(tmp_path, 10)
    assert trained_model.inference_checkpoint(str(tmp_path)) == latest
    best = _save_checkpoint(tmp_path / trained_model.BEST_DIR, 4)
    assert trained_model.inference_checkpoint(str(tmp_path)) == best
    assert trained_model.inference_checkpoint(str(tmp_path), "best") == best
    assert trained_model.inference_checkpoint(str(tmp_path), "latest") == latest
    assert trained_model.inference_checkpoint(str(tmp_path), latest) == latest
    with pytest.raises(UserError, match="no 'best' checkpoint"):
        trained_model.inference_checkpoint(str(tmp_path / "empty"), "best")


SYNTHETIC_CLASSES = ("disc", "ring", "bar", "cross")


def _over_fitted_model(source, step: int, directory) -> str:
    """A tiny random backbone with a head fitted to its training features by a weakly
    regularised logistic regression: right on 70% of the training images, on about 40% of the
    others, and sure of itself on both (an over-confident model, as a fine-tuned one can be)."""
    keras.utils.set_random_seed(0)
    model = SimCLRModel(tiny.TINY, len(SYNTHETIC_CLASSES))
    model.build_for_image_size()
    train = evaluate.Predictor(model, ("final_avg_pool",))(evaluation_dataset(
        source, "train", tiny.TINY.image_size, tiny.TINY.eval_crop_proportion, 256))
    features = train.outputs["final_avg_pool"]
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    probe = LogisticRegression(C=100.0, max_iter=3000).fit((features - mean) / std,
                                                             train.truth["class_id"])
    kernel = probe.coef_.T / std[:, None]
    model.supervised_head.dense.kernel.assign(kernel)
    model.supervised_head.dense.bias.assign(probe.intercept_ - mean @ kernel)
    return tiny.save_model_folder(directory, model, SYNTHETIC_CLASSES, step=step)


def test_calibrated_evaluation(synthetic_build, tmp_path):
    """An over-confident model evaluated with --calibrate: the temperature is fitted on the
    validation split, written into the model folder, and the test split's calibrated ECE is the
    ECE of softmax(log p / T) of predictions_test.csv; the plots and the report are written."""
    source = open_build(str(synthetic_build))
    model_dir = _over_fitted_model(source, 7, tmp_path / "model")
    output = tmp_path / "out"
    config = evaluate.EvalConfig(bootstrap_samples=50, calibrate=True, output_dir=str(output))
    result = evaluate.evaluate(model_dir, source, "test", config)

    with open(f"{model_dir}/calibration.json") as f:
        calibration = json.load(f)
    assert result["calibration"] == calibration
    assert calibration["fitted_on"] == "validation" and calibration["global_step"] == 7
    assert 1.5 < calibration["temperature"] < 50  # over-confident (about 16)
    assert calibration["ece_after"] < calibration["ece_before"]
    assert calibration["nll_after"] < calibration["nll_before"]
    rows, targets, probs = _read_predictions(output / "predictions_test.csv", SYNTHETIC_CLASSES,
                                             "multiclass")
    scaled = special.softmax(np.log(probs) / calibration["temperature"], axis=1)
    entry = result["metrics"]["ece_calibrated"]
    assert entry["value"] == pytest.approx(metrics.compute(targets, scaled)["ece"], abs=1e-9)
    assert entry["ci95"][0] <= entry["value"] <= entry["ci95"][1]
    assert entry["value"] < result["metrics"]["ece"]["value"]  # better on the test split too
    assert result["metrics"]["ece"]["value"] == pytest.approx(  # the raw one is still the raw one
        metrics.compute(targets, probs)["ece"], abs=1e-9)
    assert sorted(p.name for p in output.iterdir()) == sorted(
        ["eval_test.json", "predictions_test.csv", "roc_test.png", "confusion_matrix_test.png",
         "reliability_test.png", "reliability_test_calibrated.png", "report_test.html"])


def test_report_error_grid_shows_grad_cam_of_the_wrong_prediction(synthetic_build, tmp_path):
    """Each picture of the report's error grid is the image evaluation saw with the Grad-CAM map
    of the class the model wrongly predicted overlaid (not of the true class), captioned so."""
    source = open_build(str(synthetic_build))
    model_dir = _over_fitted_model(source, 3, tmp_path / "model")
    loaded = evaluate.load_classifier(model_dir)
    alignment = evaluate.align(loaded.record.task, SYNTHETIC_CLASSES, source.info)
    config = evaluate.EvalConfig()
    predicted = evaluate.Predictor(loaded.model)(evaluate._dataset(source, "test", loaded.record,
                                                                   config))
    targets, probs = evaluate.aligned(predicted, alignment)
    errors = report.confident_errors(targets, probs, predicted.image_id, count=4)
    assert len(errors) == 4
    pictures = evaluate.error_pictures(source, "test", loaded.model, loaded.record, alignment,
                                       config, errors)
    pixels = evaluate.evaluation_pixels(source, "test", loaded.record, config,
                                        [e.image_id for e in errors])
    for error, picture in zip(errors, pictures):
        image = pixels[error.image_id][None]
        shown = tf.io.decode_png(picture.png).numpy()
        wrong, true = (saliency.grad_cam(loaded.model, image, tf.constant([c], tf.int32))[0]
                       for c in (error.column, int(targets.class_id[error.index])))
        np.testing.assert_allclose(shown, saliency.overlay(image[0], wrong.numpy()), atol=1)
        assert np.abs(shown.astype(int) - saliency.overlay(image[0], true.numpy())).max() > 10
        assert picture.caption.endswith(f"Grad-CAM of {error.predicted}")
