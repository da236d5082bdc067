"""Representation quality on frozen features: a logistic-regression probe and k-NN.

Features are an endpoint of the encoder (default `final_avg_pool`) on evaluation-preprocessed
images (no augmentation). The probe is scikit-learn's `LogisticRegression` on standardised
features: multinomial for multi-class, one binary model per label for multi-label (fitted on the
label's unmasked entries). k-NN takes the k nearest training images by cosine distance and predicts
their vote: the fraction of neighbours of each class, or, per label, the mean of the neighbours'
unmasked labels. Both are scored with the evaluation metrics (`simclr_med.evaluation.metrics`); k-NN metrics
carry the prefix `knn/`.

`KnnMonitor` runs the k-NN part at every checkpoint of pretraining (`--monitor=knn`) and returns
its scores for the training loop to log to TensorBoard.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from absl import logging
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from simclr_med.checkpoints import initial_weights, trained_model
from simclr_med.config import LinearEvalConfig, ModelConfig
from simclr_med.data import schema
from simclr_med.data.finetune_input import evaluation_dataset, unlabelled_reason
from simclr_med.data.integrity import names_damaged_shards
from simclr_med.data.reader import Source
from simclr_med.errors import UserError
from simclr_med.evaluation import metrics
from simclr_med.models import precision
from simclr_med.models.simclr import SimCLRModel
from simclr_med.stages import evaluate
from simclr_med.training.loop import write_json

def features(predictor: evaluate.Predictor, source: Source, split: str, image_size: int,
             crop_proportion: float, config: LinearEvalConfig,
             label_fraction: float = 1.0) -> evaluate.ImageOutputs:
    dataset = evaluation_dataset(source, split, image_size, crop_proportion, config.batch_size,
                                 max_images=config.max_images, label_fraction=label_fraction)
    return predictor(dataset)


def _targets(outputs: evaluate.ImageOutputs, info: schema.DatasetInfo) -> metrics.Targets:
    return metrics.Targets(info.task, tuple(info.names), **outputs.truth)


def _labelled_rows(train: evaluate.ImageOutputs, info: schema.DatasetInfo,
                   endpoint: str) -> tuple[np.ndarray, metrics.Targets]:
    """Training features and targets of the labelled images only."""
    keep = _targets(train, info).labelled()
    if not keep.any():
        raise UserError("the training split holds no labelled image to fit on")
    truth = {k: v[keep] for k, v in train.truth.items()}
    return train.outputs[endpoint][keep], metrics.Targets(info.task, tuple(info.names), **truth)


def logistic_probe(train: evaluate.ImageOutputs, test: evaluate.ImageOutputs,
                   info: schema.DatasetInfo, endpoint: str, regularization: float) -> np.ndarray:
    """[N_test, C] probabilities of a logistic regression fitted on the training features."""
    x, targets = _labelled_rows(train, info, endpoint)
    scaler = StandardScaler().fit(x)
    x, x_test = scaler.transform(x), scaler.transform(test.outputs[endpoint])
    probs = np.zeros((len(x_test), len(info.names)))
    if info.task == schema.MULTICLASS:
        model = LogisticRegression(C=regularization, max_iter=2000).fit(x, targets.class_id)
        probs[:, model.classes_] = model.predict_proba(x_test)  # classes absent in training: 0
        return probs
    for j in range(len(info.names)):
        counted = targets.label_mask[:, j] > 0
        y = targets.labels[counted, j] > 0.5
        if y.all() or not y.any():  # nothing to separate: predict the training outcome
            probs[:, j] = float(y.mean()) if len(y) else 0.5
            continue
        model = LogisticRegression(C=regularization, max_iter=2000).fit(x[counted], y)
        probs[:, j] = model.predict_proba(x_test)[:, 1]
    return probs


def knn_probabilities(train: evaluate.ImageOutputs, test: evaluate.ImageOutputs,
                      info: schema.DatasetInfo, endpoint: str, k: int) -> np.ndarray:
    """[N_test, C] vote of the k nearest training images (cosine distance)."""
    x, targets = _labelled_rows(train, info, endpoint)
    neighbours = NearestNeighbors(n_neighbors=min(k, len(x)), metric="cosine").fit(x)
    _, index = neighbours.kneighbors(test.outputs[endpoint])
    if info.task == schema.MULTICLASS:
        one_hot = np.eye(len(info.names))[targets.class_id]
        return one_hot[index].mean(axis=1)
    known = targets.label_mask[index]  # [N_test, k, L]
    positive = (targets.labels[index] * known).sum(axis=1)
    counted = known.sum(axis=1)
    prevalence = (targets.labels * targets.label_mask).sum(0) / np.maximum(
        targets.label_mask.sum(0), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, positive / counted, prevalence)


def load_encoder(model_dir: str, init_checkpoint: str, model_config: ModelConfig,
                 checkpoint: str = "auto") -> tuple[SimCLRModel, str, int]:
    """(encoder, where its weights came from, global step): `init_checkpoint` (any checkpoint
    `load_init_weights` takes, into `model_config`'s network) or else `model_dir`'s own."""
    if init_checkpoint:
        with precision.inference_policy():
            model = SimCLRModel(model_config)
            model.build_for_image_size()
        logging.info(initial_weights.load_init_weights(model, init_checkpoint))
        return model, init_checkpoint, 0
    loaded = trained_model.load(model_dir, checkpoint, num_classes=0)
    return loaded.model, loaded.checkpoint, loaded.step


def require_labels(source: Source, split: str, purpose: str) -> None:
    """UserError unless `split` has labelled images: without them there is nothing to fit or
    score (multi-class metrics would hold only an undefined top-1)."""
    reason = unlabelled_reason(source, split)
    if reason:
        raise UserError(f"{purpose} needs labelled images, but {reason} (data set "
                        f"{source.data_dir or source.tfds_name})")


@dataclasses.dataclass
class Probes:
    """What the probes predict for the images of the evaluation split."""

    test: evaluate.ImageOutputs  # features and ground truth, in reading order
    targets: metrics.Targets
    linear: np.ndarray  # [N, C] probabilities of the logistic regression
    knn: np.ndarray  # [N, C] k-NN votes
    num_train_images: int


def fit_probes(model: SimCLRModel, source: Source, config: LinearEvalConfig) -> Probes:
    """Fits both probes on the frozen features of `config.train_split` (its label fraction) and
    predicts `config.eval_split`."""
    for split in (config.train_split, config.eval_split):
        require_labels(source, split, "linear evaluation")
    predictor = evaluate.Predictor(model, (config.endpoint,))
    size, crop = model.config.image_size, model.config.eval_crop_proportion
    train = features(predictor, source, config.train_split, size, crop, config,
                     config.label_fraction)
    test = features(predictor, source, config.eval_split, size, crop, config)
    return Probes(test, _targets(test, source.info),
                  logistic_probe(train, test, source.info, config.endpoint, config.regularization),
                  knn_probabilities(train, test, source.info, config.endpoint, config.knn_k),
                  int(train.num_images))


@names_damaged_shards
def linear_eval(model: SimCLRModel, source: Source, config: LinearEvalConfig,
                eval_config: evaluate.EvalConfig, model_dir: str, *, checkpoint: str,
                global_step: int) -> dict:
    """Probe and k-NN on frozen features; writes `linear_eval_<split>.json` (into
    `eval_config.output_dir`, default `model_dir`) and returns it."""
    probes = fit_probes(model, source, config)
    common = dict(split=config.eval_split, data_dir=source.data_dir or f"tfds:{source.tfds_name}",
                  global_step=global_step, checkpoint=checkpoint)
    result = evaluate.report(probes.targets, probes.linear, probes.test.patient_id, eval_config,
                             **common)
    knn_result = evaluate.report(probes.targets, probes.knn, probes.test.patient_id, eval_config,
                                 **common)
    result["metrics"].update({f"knn/{k}": v for k, v in knn_result["metrics"].items()})
    result.update({"endpoint": config.endpoint, "knn_k": config.knn_k,
                   "regularization": config.regularization, "train_split": config.train_split,
                   "label_fraction": config.label_fraction,
                   "num_train_images": probes.num_train_images})
    write_json(eval_config.output_dir or model_dir, f"linear_eval_{config.eval_split}.json",
               result)
    return result


class KnnMonitor:
    """k-NN scores of the encoder at pretraining checkpoints: `monitor(model)` gives the
    `on_checkpoint(step)` hook of `Trainer.train`."""

    def __init__(self, source: Source, config: LinearEvalConfig):
        for split in (config.train_split, config.eval_split):
            require_labels(source, split, "--monitor=knn")
        self.source = source
        self.config = config

    def __call__(self, model: SimCLRModel) -> Callable[[int], dict]:
        predictor = evaluate.Predictor(model, (self.config.endpoint,))
        size, crop = model.config.image_size, model.config.eval_crop_proportion
        info = self.source.info

        def on_checkpoint(step: int) -> dict:
            train = features(predictor, self.source, self.config.train_split, size, crop,
                             self.config, self.config.label_fraction)
            test = features(predictor, self.source, self.config.eval_split, size, crop,
                            self.config)
            probs = knn_probabilities(train, test, info, self.config.endpoint, self.config.knn_k)
            values = metrics.compute(_targets(test, info), probs)
            return {f"knn/{name}": values[name] for name in metrics.metric_names(
                info.task, tuple(info.names))
                    if not name.startswith("auc/") and not metrics.is_calibration(name)}

        return on_checkpoint
