"""Linear evaluation and k-NN on frozen features, and the k-NN monitor of pretraining."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from sklearn.neighbors import KNeighborsClassifier

from simclr_med.config import OptimConfig, PretrainConfig, TrainConfig
from simclr_med.data import augment, schema
from simclr_med.data.reader import open_build
from simclr_med.stages import evaluate, linear_eval
from simclr_med.stages.pretrain import pretrain
from tests.tiny import TINY

ENDPOINT = "final_avg_pool"


def _outputs(features: np.ndarray, **truth) -> evaluate.ImageOutputs:
    n = len(features)
    return evaluate.ImageOutputs(image_id=np.arange(n).astype(str),
                                 patient_id=np.arange(n).astype(str),
                                 outputs={ENDPOINT: features}, truth=truth)


def _clusters(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features near one of `num_classes` directions, the class being the direction."""
    rng = np.random.default_rng(seed)
    class_id = rng.integers(0, num_classes, n)
    centres = rng.normal(size=(num_classes, 16)) * 3
    return (centres[class_id] + rng.normal(size=(n, 16))).astype(np.float32), class_id


def test_probe_and_knn_separate_clustered_classes_and_knn_equals_scikit_learn():
    info = schema.DatasetInfo(task="multiclass", names=["a", "b", "c", "d"])
    x, y = _clusters(300, 4, seed=0)
    train, test = _outputs(x[:200], class_id=y[:200]), _outputs(x[200:], class_id=y[200:])
    probe = linear_eval.logistic_probe(train, test, info, ENDPOINT, regularization=1.0)
    assert (probe.argmax(axis=1) == y[200:]).mean() > 0.9
    assert np.allclose(probe.sum(axis=1), 1.0)
    knn = linear_eval.knn_probabilities(train, test, info, ENDPOINT, k=7)
    reference = KNeighborsClassifier(7, metric="cosine", algorithm="brute").fit(x[:200], y[:200])
    assert np.allclose(knn, reference.predict_proba(x[200:]))
    assert (knn.argmax(axis=1) == y[200:]).mean() > 0.9


def test_unlabelled_training_images_and_masked_labels_are_ignored():
    x, y = _clusters(240, 2, seed=1)
    info = schema.DatasetInfo(task="multilabel", names=["finding", "noise"])
    labels = np.stack([y, np.zeros_like(y)], axis=1).astype(np.float32)
    mask = np.ones_like(labels)
    # Half the training images carry the wrong finding label, masked: counted, they would make
    # the label independent of the features.
    wrong = np.arange(160) % 2 == 0
    labels[:160][wrong, 0] = 1 - labels[:160][wrong, 0]
    mask[:160][wrong, 0] = 0
    train = _outputs(x[:160], labels=labels[:160], label_mask=mask[:160])
    test = _outputs(x[160:], labels=labels[160:], label_mask=mask[160:])
    probe = linear_eval.logistic_probe(train, test, info, ENDPOINT, 1.0)
    knn = linear_eval.knn_probabilities(train, test, info, ENDPOINT, k=5)
    for probs in (probe, knn):
        assert ((probs[:, 0] > 0.5) == y[160:]).mean() > 0.9
    assert np.all(knn[:, 1] == 0) and np.all(probe[:, 1] == 0)  # never positive in training

    # Images with every label masked are unlabelled: as if they were not there.
    mask[:160][wrong] = 0
    train = _outputs(x[:160], labels=labels[:160], label_mask=mask[:160])
    clean = _outputs(x[:160][~wrong], labels=labels[:160][~wrong], label_mask=mask[:160][~wrong])
    assert np.array_equal(linear_eval.logistic_probe(train, test, info, ENDPOINT, 1.0),
                          linear_eval.logistic_probe(clean, test, info, ENDPOINT, 1.0))
    assert np.array_equal(linear_eval.knn_probabilities(train, test, info, ENDPOINT, 5),
                          linear_eval.knn_probabilities(clean, test, info, ENDPOINT, 5))

    mc_info = schema.DatasetInfo(task="multiclass", names=["a", "b"])
    unlabelled = _outputs(np.r_[x[:160], -x[:40]], class_id=np.r_[y[:160], [-1] * 40])
    assert np.allclose(
        linear_eval.knn_probabilities(unlabelled, test, mc_info, ENDPOINT, 5),
        linear_eval.knn_probabilities(_outputs(x[:160], class_id=y[:160]), test, mc_info,
                                      ENDPOINT, 5))




@pytest.fixture(scope="module")
def monitored_pretraining(synthetic_build, tmp_path_factory):
    """A 4-step pretraining run with the k-NN monitor at steps 2 and 4."""
    model_dir = tmp_path_factory.mktemp("pretrain_knn")
    source = open_build(str(synthetic_build))
    monitor = linear_eval.KnnMonitor(source, linear_eval.LinearEvalConfig(max_images=64, knn_k=5))
    summary = pretrain(TINY, OptimConfig(optimizer="adam", learning_rate=1e-3,
                                         learning_rate_scaling="sqrt"),
                       augment.preset("simclr"), source,
                       TrainConfig(model_dir=str(model_dir), train_batch_size=8, train_steps=4,
                                   steps_per_loop=2, checkpoint_steps=2),
                       PretrainConfig(temperature=0.5), tf.distribute.get_strategy(),
                       monitor=monitor)
    return model_dir, summary


def _scalar_tags(model_dir) -> dict[str, list[int]]:
    steps: dict[str, list[int]] = {}
    for path in model_dir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    return steps


def test_knn_monitor_logs_to_tensorboard_at_every_checkpoint(monitored_pretraining):
    model_dir, summary = monitored_pretraining
    tags = _scalar_tags(model_dir)
    for name in ("knn/top1_accuracy", "knn/top3_accuracy", "knn/auc_macro"):
        assert sorted(tags[name]) == [2, 4], name
        assert 0.0 <= summary[name] <= 1.0


def test_linear_eval_of_a_pretraining_run_writes_metrics_with_intervals(monitored_pretraining,
                                                                         synthetic_build):
    model_dir, summary = monitored_pretraining
    model, weights, step = linear_eval.load_encoder(str(model_dir), "", TINY)
    assert step == 4 and weights.endswith("ckpt-4")
    config = linear_eval.LinearEvalConfig(eval_split="test", knn_k=5)
    result = linear_eval.linear_eval(model, open_build(str(synthetic_build)), config,
                                     evaluate.EvalConfig(bootstrap_samples=100), str(model_dir),
                                     checkpoint=weights, global_step=step)
    assert json.loads((model_dir / "linear_eval_test.json").read_text()) == json.loads(
        json.dumps(result))
    assert result["split"] == "test" and result["num_images"] == 142
    for name in ("top1_accuracy", "auc_macro", "knn/top1_accuracy", "knn/auc_macro"):
        low, high = result["metrics"][name]["ci95"]
        assert low <= result["metrics"][name]["value"] <= high, name
    # The same weights through --init_checkpoint give the same features, hence the same figures.
    same, _, _ = linear_eval.load_encoder("", str(model_dir), TINY)
    again = linear_eval.linear_eval(same, open_build(str(synthetic_build)), config,
                                    evaluate.EvalConfig(bootstrap_samples=100,
                                                        output_dir=str(model_dir / "again")),
                                    str(model_dir), checkpoint=weights, global_step=step)
    assert again["metrics"] == result["metrics"]
