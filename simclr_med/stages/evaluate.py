"""Evaluation of a trained model on any split of any data set: predictions, metrics with patient
bootstrap intervals, plots.

The model comes from a model folder (`model_config.json` + checkpoints: a fine-tuning run, or a
pretraining run with its linear probe). The data set may be another one than the model was trained
on (distribution shift): multi-label outputs are matched to the data set's labels through
`simclr_med.evaluation.label_mapping` and only the shared labels are evaluated; multi-class data must use
(a subset of) the model's classes.

Files written to the output folder (INTERFACE.md): `eval_<split>.json`, `predictions_<split>.csv`,
`roc_<split>.png` and, multi-class, `confusion_matrix_<split>.png`, `reliability_<split>.png` and
`report_<split>.html` (all of them one page, `evaluation.report`). With `calibrate`, a temperature
fitted on another split goes into the model folder's `calibration.json`
(`evaluation.temperature`), the eval json gains the calibrated ECE and the plots
`reliability_<split>_calibrated.png`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from scipy import special

from simclr_med.checkpoints import native, trained_model
from simclr_med.config import EvalConfig
from simclr_med.data import schema
from simclr_med.data.finetune_input import LABEL_FIELDS, evaluation_dataset
from simclr_med.data.integrity import names_damaged_shards
from simclr_med.data.reader import Source
from simclr_med.errors import UserError
from simclr_med.evaluation import label_mapping, metrics, plots, saliency, temperature
from simclr_med.evaluation import report as html_report
from simclr_med.models.simclr import SimCLRModel, output_shapes, unless_empty
from simclr_med.training.loop import write_json



@dataclasses.dataclass
class ImageOutputs:
    """Per-image model outputs of one split, in reading order, with ids and ground truth."""

    image_id: np.ndarray
    patient_id: np.ndarray
    outputs: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]  # class_id [N]; or labels, label_mask [N, L]

    @property
    def num_images(self) -> int:
        return len(self.image_id)


class Predictor:
    """Runs a model in inference mode over evaluation batches (one trace, reused). An empty batch
    gives empty outputs without running the model (`simclr.unless_empty`)."""

    def __init__(self, model: SimCLRModel, endpoints: Sequence[str] = ("logits_sup",)):
        size = model.config.image_size
        self.endpoints = tuple(endpoints)
        shapes = output_shapes(model)

        def forward(images):
            outputs = model(images, training=False)
            return {k: tf.cast(outputs[k], tf.float32) for k in self.endpoints}

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        def run(images):
            return unless_empty(images, forward, {k: shapes[k] for k in self.endpoints})

        self._run = run

    def __call__(self, dataset: tf.data.Dataset) -> ImageOutputs:
        collected: dict[str, list] = {}
        for batch in dataset:
            values = {k: v.numpy() for k, v in self._run(batch["image"]).items()}
            values.update({k: batch[k].numpy() for k in ("image_id", "patient_id", *LABEL_FIELDS)
                           if k in batch})
            for key, value in values.items():
                collected.setdefault(key, []).append(value)
        joined = {k: np.concatenate(v) for k, v in collected.items()}
        if not joined:
            raise UserError("the evaluation split holds no images")
        return ImageOutputs(
            image_id=np.char.decode(joined["image_id"].astype(bytes)),
            patient_id=np.char.decode(joined["patient_id"].astype(bytes)),
            outputs={k: joined[k] for k in self.endpoints},
            truth={k: joined[k] for k in LABEL_FIELDS if k in joined})


def probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    """Softmax (multi-class) or sigmoid (multi-label), in float64."""
    logits = logits.astype(np.float64)
    return special.softmax(logits, axis=1) if task == schema.MULTICLASS else special.expit(logits)


@dataclasses.dataclass(frozen=True)
class Alignment:
    """How a model's outputs meet a data set's labels."""

    task: str
    names: tuple[str, ...]  # evaluated classes (the model's) or labels (the data set's names)
    model_columns: tuple[int, ...]  # the model outputs used, one per name
    data_columns: tuple[int, ...]  # multi-class: data class id -> model class id; else label columns
    renamed: dict[str, str]  # data set name -> model name, where they differ
    not_evaluated: dict[str, list[str]]  # {"model": [...], "data": [...]}


def align(model_task: str, model_names: Sequence[str], data: schema.DatasetInfo) -> Alignment:
    """Matches a model's classes or labels to a data set's; raises when nothing can be compared."""
    if model_task != data.task:
        raise UserError(f"the model is {model_task} ({', '.join(model_names)}) but the data set "
                        f"is {data.task} ({', '.join(data.names)}): they cannot be compared")
    matches = label_mapping.match_labels(model_names, data.names)
    renamed = {m.data_name: m.model_name for m in matches if m.data_name != m.model_name}
    unmatched_data = [n for n in data.names if n not in {m.data_name for m in matches}]
    unmatched_model = [n for n in model_names if n not in {m.model_name for m in matches}]
    if model_task == schema.MULTICLASS:
        if unmatched_data:
            raise UserError(f"data set classes {unmatched_data} are not among the model's "
                            f"classes {list(model_names)} (matched through "
                            "simclr_med.evaluation.label_mapping): multi-class evaluation needs them all")
        return Alignment(model_task, tuple(model_names), tuple(range(len(model_names))),
                         tuple(m.model_index for m in matches), renamed,
                         {"model": unmatched_model, "data": []})
    if not matches:
        raise UserError(f"the model's labels {list(model_names)} and the data set's "
                        f"{list(data.names)} share none (see simclr_med.evaluation.label_mapping)")
    return Alignment(model_task, tuple(m.data_name for m in matches),
                     tuple(m.model_index for m in matches), tuple(m.data_index for m in matches),
                     renamed, {"model": unmatched_model, "data": unmatched_data})


def class_names(record: native.ModelRecord, data: schema.DatasetInfo) -> tuple[str, ...]:
    """The model's class names. A head without names (a converted official checkpoint's, e.g.
    ImageNet's) takes the data set's by position, if the task and the number of classes agree."""
    if record.class_names:
        return record.class_names
    if (record.task, record.num_classes) != (data.task, len(data.names)):
        raise UserError(
            f"the model's {record.num_classes} {record.task} classes have no names (weights from "
            f"{record.source or 'an unnamed source'}), so they can only be evaluated as the data "
            f"set's classes in order, but the data set has {len(data.names)} {data.task} classes")
    logging.warning("the model's classes have no names: evaluating output i as the data set's "
                    "class i (%s)", ", ".join(data.names))
    return tuple(data.names)


def aligned(predicted: ImageOutputs, alignment: Alignment,
            logits_key: str = "logits_sup") -> tuple[metrics.Targets, np.ndarray]:
    """(targets, probabilities [N, names]) of the evaluated classes or labels."""
    probs = probabilities(predicted.outputs[logits_key], alignment.task)
    probs = probs[:, list(alignment.model_columns)]
    if alignment.task == schema.MULTICLASS:
        class_id = predicted.truth["class_id"]
        remap = np.asarray(alignment.data_columns + (-1,))  # index -1 keeps unlabelled at -1
        return metrics.Targets(alignment.task, alignment.names, class_id=remap[class_id]), probs
    columns = list(alignment.data_columns)
    return metrics.Targets(alignment.task, alignment.names,
                           labels=predicted.truth["labels"][:, columns],
                           label_mask=predicted.truth["label_mask"][:, columns]), probs


def load_classifier(model_dir: str, checkpoint: str = "auto") -> trained_model.TrainedModel:
    """The model of `model_dir` with its supervised head (UserError for one without)."""
    record = native.ModelRecord.load(model_dir)
    if not record.num_classes:
        raise UserError(f"{model_dir!r} holds a model without a supervised head (a pretraining "
                        "run without labels): fine-tune it first, or use --mode=linear_eval")
    return trained_model.load(model_dir, checkpoint)


@names_damaged_shards
def evaluate(model_dir: str, source: Source, split: str,
             config: EvalConfig = EvalConfig()) -> dict:
    """Evaluates the model of `model_dir` on `split` of `source`; writes the files (into
    `config.output_dir`, default `model_dir`) and returns the eval json."""
    output_dir = config.output_dir or model_dir
    if not source.num_examples(split):
        raise UserError(f"split {split!r} of {source.data_dir or source.tfds_name} holds no "
                        "images")
    loaded = load_classifier(model_dir, config.checkpoint)
    model, record, prefix, step = loaded.model, loaded.record, loaded.checkpoint, loaded.step
    names = class_names(record, source.info)
    alignment = align(record.task, names, source.info)
    predictor = Predictor(model)
    predicted = predictor(_dataset(source, split, record, config))
    targets, probs = aligned(predicted, alignment)
    result = report(targets, probs, predicted.patient_id, config, split=split,
                    data_dir=source.data_dir or f"tfds:{source.tfds_name}", global_step=step,
                    checkpoint=prefix, alignment=alignment)
    calibrated = None
    if config.calibrate:
        result["calibration"] = calibrate(predictor, source, split, loaded, alignment, config,
                                          model_dir)
        calibrated = aligned(scaled(predicted, result["calibration"], alignment, names),
                             alignment)[1]
        result["metrics"].update(calibrated_metrics(targets, calibrated, predicted.patient_id,
                                                    config))
    write_json(output_dir, f"eval_{split}.json", result)
    write_predictions(os.path.join(output_dir, f"predictions_{split}.csv"), predicted.image_id,
                      predicted.patient_id, targets, probs)
    if config.plots:
        title = data_title(source, split)
        paths = plots.write_all(output_dir, split, targets, probs, title)
        if calibrated is not None:
            paths.append(plots.write_calibrated(output_dir, split, targets, calibrated, title))
        errors = html_report.confident_errors(targets, probs, predicted.image_id)
        write_report(output_dir, model_dir, result, paths,
                     error_pictures(source, split, model, record, alignment, config, errors))
    if alignment.renamed or any(alignment.not_evaluated.values()):
        logging.info("evaluated the labels shared by model and data set: %s (renamed: %s; not "
                     "evaluated: %s)", ", ".join(alignment.names), alignment.renamed,
                     alignment.not_evaluated)
    return result


def _dataset(source: Source, split: str, record: native.ModelRecord,
             config: EvalConfig) -> tf.data.Dataset:
    return evaluation_dataset(source, split, record.model.image_size,
                              record.model.eval_crop_proportion, config.batch_size)


def calibrate(predictor: Predictor, source: Source, split: str,
              loaded: trained_model.TrainedModel, alignment: Alignment, config: EvalConfig,
              model_dir: str) -> dict:
    """Fits the temperature on `config.calibration_split` (never the evaluated `split`) and
    writes it into the model folder's calibration.json, which a calibrated export reads."""
    fitted_on = config.calibration_split
    if fitted_on == split:
        raise UserError(f"--calibration_split={fitted_on} is the evaluated split: a temperature "
                        "fitted on the images it is judged on would flatter it; fit it on "
                        "another split (e.g. --calibration_split=validation --eval_split=test)")
    if not source.num_examples(fitted_on):
        raise UserError(f"calibration split {fitted_on!r} of "
                        f"{source.data_dir or source.tfds_name} holds no images")
    held_out = predictor(_dataset(source, fitted_on, loaded.record, config))
    targets, _ = aligned(held_out, alignment)
    logits = held_out.outputs["logits_sup"][:, list(alignment.model_columns)]
    names = class_names(loaded.record, source.info)
    fit = temperature.record(targets, logits, lambda z: probabilities(z, alignment.task),
                             fitted_on=fitted_on, global_step=loaded.step,
                             model_names=[names[c] for c in alignment.model_columns])
    write_json(model_dir, temperature.CALIBRATION_FILE, fit)
    logging.info("temperature scaling on %s: %s (ECE %.4f -> %.4f)", fitted_on,
                 fit["temperature"], fit["ece_before"], fit["ece_after"])
    return fit


def scaled(predicted: ImageOutputs, calibration: dict, alignment: Alignment,
           model_names: Sequence[str]) -> ImageOutputs:
    """`predicted` with its logits divided by the fitted temperatures (outputs that were not
    evaluated are left as they are)."""
    logits = predicted.outputs["logits_sup"].astype(np.float64)
    divisor = np.ones(logits.shape[1])
    columns = list(alignment.model_columns)
    divisor[columns] = temperature.temperatures(calibration, [model_names[c] for c in columns])
    return dataclasses.replace(predicted, outputs={**predicted.outputs,
                                                   "logits_sup": logits / divisor})


def calibrated_metrics(targets: metrics.Targets, probs: np.ndarray, patient_id: np.ndarray,
                       config: EvalConfig) -> dict[str, dict]:
    """The calibration errors of temperature-scaled probabilities with their intervals, named
    `ece_calibrated`, `mean_ece_calibrated`, `ece_calibrated/<label>`. (Accuracy and AUCs are
    not repeated: see `evaluation.temperature` for why a temperature keeps them.)"""
    values = metrics.with_intervals(targets, probs, patient_id, config.bootstrap_samples,
                                    config.bootstrap_seed)
    return {"{}_calibrated{}{}".format(*name.partition("/")): entry
            for name, entry in values.items() if metrics.is_calibration(name)}


# The error grid's thumbnails: the evaluation pixels, at most this many pixels on a side.
THUMBNAIL_SIZE = 96


def evaluation_pixels(source: Source, split: str, record: native.ModelRecord, config: EvalConfig,
                      image_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """{image id: the [size, size, 3] float pixels evaluation feeds the model} of some images."""
    if not image_ids:
        return {}
    wanted = tf.constant(list(image_ids))
    dataset = _dataset(source, split, record, config).unbatch().filter(
        lambda example: tf.reduce_any(tf.equal(example["image_id"], wanted)))
    return {example["image_id"].numpy().decode(): example["image"].numpy()
            for example in dataset}


def error_pictures(source: Source, split: str, model: SimCLRModel, record: native.ModelRecord,
                   alignment: Alignment, config: EvalConfig,
                   errors: Sequence[html_report.ConfidentError]) -> list[html_report.Picture]:
    """The report's error grid: each error's evaluation pixels (what the model saw) with the
    Grad-CAM map of the wrong class or label it predicted overlaid, as a PNG thumbnail captioned
    with its id, truth and prediction."""
    if not errors:
        return []
    pixels = evaluation_pixels(source, split, record, config, [error.image_id for error in errors])
    images = tf.constant(np.stack([pixels[error.image_id] for error in errors]))
    targets = tf.constant([alignment.model_columns[error.column] for error in errors], tf.int32)
    heatmaps = saliency.grad_cam(model, images, targets).numpy()
    pictures = []
    for error, heatmap in zip(errors, heatmaps):
        image = tf.constant(saliency.overlay(pixels[error.image_id], heatmap))
        if max(image.shape[:2]) > THUMBNAIL_SIZE:
            image = tf.cast(tf.round(tf.image.resize(image, [THUMBNAIL_SIZE, THUMBNAIL_SIZE],
                                                     antialias=True)), tf.uint8)
        pictures.append(html_report.Picture(tf.io.encode_png(image).numpy(),
                                            f"{error.caption}; Grad-CAM of {error.predicted}"))
    return pictures


def write_report(output_dir: str, model_dir: str, result: dict, figure_paths: Sequence[str],
                 errors: Sequence[html_report.Picture]) -> str:
    """`report_<split>.html` of an evaluation, with its figures and, when `--mode=embed` has
    drawn one for the split, the embedding map `embedding_map_<split>.png` of the model folder."""
    def picture(path: str) -> html_report.Picture:
        with tf.io.gfile.GFile(path, "rb") as f:
            return html_report.Picture(f.read(), os.path.basename(path))

    embedding_map = os.path.join(model_dir, f"embedding_map_{result['split']}.png")
    page = html_report.render(
        result, model_dir=model_dir, created=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        figures=[picture(path) for path in figure_paths], errors=errors,
        embedding_map=picture(embedding_map) if tf.io.gfile.exists(embedding_map) else None)
    path = os.path.join(output_dir, f"report_{result['split']}.html")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(page)
    return path


def data_title(source: Source, split: str) -> str:
    """`<split> split of <parent>/<folder>` of the data set, for plot titles."""
    if source.tfds_name:
        return f"{split} split of TFDS {source.tfds_name}"
    parts = os.path.normpath(source.data_dir).split(os.sep)
    return f"{split} split of {'/'.join(parts[-2:])}"


def report(targets: metrics.Targets, probs: np.ndarray, patient_id: np.ndarray,
           config: EvalConfig, *, split: str, data_dir: str, global_step: int,
           checkpoint: str, alignment: Optional[Alignment] = None) -> dict:
    """The eval json: INTERFACE.md's fields, then how the figures were obtained."""
    labelled = targets.labelled()
    result = {
        "split": split, "data_dir": data_dir, "global_step": global_step,
        "num_images": int(targets.num_images),
        "num_patients": int(len(np.unique(patient_id))),
        "metrics": metrics.with_intervals(targets, probs, patient_id, config.bootstrap_samples,
                                          config.bootstrap_seed),
        "task": targets.task, "checkpoint": checkpoint,
        "num_labelled_images": int(labelled.sum()),
        "num_labelled_patients": int(len(np.unique(patient_id[labelled]))),
        "undefined_metrics": metrics.undefined_metrics(targets, probs),
        "bootstrap": {"samples": config.bootstrap_samples, "seed": config.bootstrap_seed,
                      "unit": "patient", "interval": "percentile", "level": metrics.CI_LEVEL},
    }
    if alignment is not None:
        result.update({"evaluated": list(alignment.names), "renamed": alignment.renamed,
                       "not_evaluated": alignment.not_evaluated})
    return result


def write_predictions(path: str, image_id: np.ndarray, patient_id: np.ndarray,
                      targets: metrics.Targets, probs: np.ndarray) -> None:
    """`predictions_<split>.csv`: ids, ground truth and probabilities at full precision."""
    names = targets.names
    if targets.task == schema.MULTICLASS:
        header = ["label"]
        truth = [[names[c] if c >= 0 else ""] for c in targets.class_id]
    else:
        header = [f"label/{n}" for n in names]
        truth = [[(str(int(v)) if m > 0 else "") for v, m in zip(values, mask)]
                 for values, mask in zip(targets.labels, targets.label_mask)]
    with tf.io.gfile.GFile(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "patient_id", *header, *(f"prob/{n}" for n in names)])
        for i in range(len(image_id)):
            writer.writerow([image_id[i], patient_id[i], *truth[i], *map(repr, probs[i].tolist())])


def format_metrics_table(result: dict) -> str:
    """The metrics of an eval json as a table with their 95% intervals, headline metrics first."""
    head = (f"{result['split']} of {result['data_dir']}: {result['num_images']} images, "
            f"{result['num_patients']} patients, step {result['global_step']}")
    rows = html_report.metric_rows(result)
    width = max([len("metric")] + [len(name) for name, _, _ in rows])
    lines = [head, f"{'metric':<{width}}  value   95% CI"]
    lines += [f"{name:<{width}}  {value:<5}   {interval}" for name, value, interval in rows]
    note = html_report.alignment_note(result)
    return "\n".join(lines + ([note] if note else []))
