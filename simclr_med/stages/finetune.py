"""Fine-tuning (stage 3 of the paper): a supervised head trained through the backbone.

Starts from `--init_checkpoint` (a pretraining run of this package, or an official SimCLR
checkpoint) or from random weights. The supervised head is new and sits on layer
`ft_proj_selector` of the projection head (0: the backbone output, i.e. the head dropped), as
SimCLRv2; the projection layers above it take no part and stay frozen. With
`fine_tune_after_block = k >= 0` the stem and the first k block groups are frozen, batch-norm
statistics included: a frozen layer runs its batch norm in inference mode (Keras 3 semantics of
`trainable = False`), so its moving averages do not drift, unlike the reference.

At every checkpoint the model is evaluated on the validation split; the checkpoint with the best
validation metric is kept in `<model_dir>/best/`, a complete model folder (`model_config.json` and
the checkpoint, with `best.json` saying which step and value), which evaluation and export use.
A resumed run keeps it and the value to beat. A validation split whose images have no labels
selects nothing (warning; the last checkpoint is the result), and a `best.json` of another
`best_metric` stops the run: it cannot be compared with this run's metric.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
from typing import Optional

import tensorflow as tf
from absl import logging

from simclr_med.checkpoints import native, trained_model
from simclr_med.config import (AugmentConfig, FinetuneConfig, ModelConfig, OptimConfig,
                               TrainConfig)
from simclr_med.data.integrity import names_damaged_shards
from simclr_med.data.reader import Source
from simclr_med.errors import UserError
from simclr_med.evaluation import metrics
from simclr_med.stages import evaluate
from simclr_med.training import supervised_loss
from simclr_med.data.finetune_input import (LabelledSpec, count_training_images, evaluation_dataset,
                                       training_dataset, unlabelled_reason)
from simclr_med.models.simclr import SimCLRModel
from simclr_med.training.loop import distributed_input, write_json
from simclr_med.training.optimizers import weight_decay_loss
from simclr_med.training.stage import build_stage

BEST_STATE_FILE = "best.json"
NUM_BLOCK_GROUPS = 4
SAMPLE_IMAGES = 8  # augmented training images shown in TensorBoard


def freeze_blocks(model: SimCLRModel, fine_tune_after_block: int) -> None:
    """Freezes the stem and the first `fine_tune_after_block` block groups (-1: nothing;
    4: the whole backbone, which leaves a linear classifier on fixed features)."""
    if not -1 <= fine_tune_after_block <= NUM_BLOCK_GROUPS:
        raise UserError(f"fine_tune_after_block must be in [-1, {NUM_BLOCK_GROUPS}], got "
                        f"{fine_tune_after_block}")
    if fine_tune_after_block >= 0:
        model.resnet.stem.trainable = False
    for group in model.resnet.block_groups[:max(fine_tune_after_block, 0)]:
        group.trainable = False


def freeze_unused_projection_layers(model: SimCLRModel) -> None:
    """The projection layers above the one feeding the supervised head get no gradient: freeze
    them so that they are not updated (nor their batch-norm statistics)."""
    layers = model.projection_head.linear_layers
    selector = model.config.ft_proj_selector
    if not 0 <= selector <= len(layers):
        raise UserError(f"ft_proj_selector={selector}, but the projection head has "
                        f"{len(layers)} layer(s)")
    for layer in layers[selector:]:
        layer.trainable = False


def supervised_gradients(model: SimCLRModel, optimizer, examples: dict, task: str,
                         global_batch: int, optim: Optional[OptimConfig] = None
                         ) -> tuple[tf.Tensor, list, dict]:
    """This replica's share of the fine-tuning loss, and its gradients for the trainable variables.

    The loss is the masked task loss averaged over the global batch's images and, multi-label,
    their label slots (`supervised_loss.global_mean`): summed over replicas, as the optimizer's
    all-reduce does, loss and gradients are those of one device holding the global batch.
    `optim` adds its weight decay's L2 term (`optimizers.weight_decay_loss`).
    """
    with tf.GradientTape() as tape:
        logits = model(examples["image"], training=True)["logits_sup"]
        per_entry, weights = supervised_loss.task_loss(logits, examples, task)
        loss = supervised_loss.global_mean(per_entry, weights, global_batch)
        if optim is not None:
            loss += weight_decay_loss(optim, model)
        scaled = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, model.trainable_variables)
    return loss, grads, {"logits": logits, "per_entry": per_entry, "weights": weights}


class BestCheckpoint:
    """The checkpoint of the best validation value so far, in its own model folder.

    Survives resumption: `best.json` holds the step and value to beat.
    """

    def __init__(self, model: SimCLRModel, step: tf.Variable, directory: str, metric: str):
        self.directory = directory
        self.metric = metric
        self.manager = tf.train.CheckpointManager(
            native.make_checkpoint(model, global_step=step), directory, max_to_keep=1)
        self.state = self.load_state(directory, metric)

    @staticmethod
    def load_state(directory: str, metric: str) -> dict:
        """`best.json` of `directory` ({} when absent); UserError if another metric chose it, as
        its value cannot be compared with `metric`'s (and replacing it would lose it)."""
        path = os.path.join(directory, BEST_STATE_FILE)
        if not tf.io.gfile.exists(path):
            return {}
        with tf.io.gfile.GFile(path) as f:
            state = json.load(f)
        if state.get("metric") != metric:
            raise UserError(
                f"{path} holds the best checkpoint by {state.get('metric')!r} (step "
                f"{state.get('step')}), but this run selects by {metric!r}: resume with "
                f"--best_metric={state.get('metric')}, or move {directory} away to start a new "
                "selection")
        return state

    def offer(self, step: int, value: float) -> bool:
        """Saves the model if `value` beats the best so far; returns whether it did."""
        if math.isnan(value) or (self.state and value <= self.state["value"]):
            return False
        prefix = self.manager.save(checkpoint_number=step)
        self.state = {"metric": self.metric, "value": value, "step": step, "checkpoint": prefix}
        write_json(self.directory, BEST_STATE_FILE, self.state)
        return True


@names_damaged_shards
def finetune(model_config: ModelConfig, optim: OptimConfig, augment: AugmentConfig,
             source: Source, train: TrainConfig, config: FinetuneConfig,
             strategy: tf.distribute.Strategy, split: str = "train",
             flag_values: Optional[dict] = None) -> dict:
    """Fine-tunes in `train.model_dir` (resuming if it holds checkpoints); returns the summary.

    `flag_values` are recorded as `pretrain` records them; a run already at its last step
    writes nothing and returns `Trainer.nothing_to_do()`.
    """
    task, names = source.info.task, tuple(source.info.names)
    best_metric = config.best_metric or metrics.main_metric(task)
    if best_metric not in metrics.best_metric_choices(task, names):
        raise UserError(f"best_metric {best_metric!r} is not one of "
                        f"{metrics.best_metric_choices(task, names)}")
    num_examples = count_training_images(source, split, config.label_fraction)
    if not num_examples:
        raise UserError(f"label fraction {config.label_fraction} of split {split!r} holds no "
                        "image")
    batch = train.train_batch_size

    def prepare(model: SimCLRModel) -> None:
        freeze_blocks(model, config.fine_tune_after_block)
        freeze_unused_projection_layers(model)

    stage = build_stage("finetune", model_config, optim, train, strategy, num_examples,
                        len(names), ["loss", "supervised_accuracy"],
                        stop_gradient_to_head=False, prepare_model=prepare)
    model, optimizer, running = stage.model, stage.optimizer, stage.metrics

    def step_fn(examples: dict) -> None:
        _, grads, outputs = supervised_gradients(model, optimizer, examples, task, batch,
                                                 optim)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        running.update("loss", outputs["per_entry"], outputs["weights"])
        running.update("supervised_accuracy",
                       *supervised_loss.task_accuracy(outputs["logits"], examples, task))

    record = native.ModelRecord(model_config, len(names), task, names, source="finetune")
    no_best_reason = ("no validation split (--validation_split='')" if not config.validation_split
                      else unlabelled_reason(source, config.validation_split))
    best_dir = os.path.join(train.model_dir, trained_model.BEST_DIR)
    if not no_best_reason:
        BestCheckpoint.load_state(best_dir, best_metric)  # before anything is written
    trainer = stage.trainer(step_fn, record, train.init_checkpoint,
                            projection_layers=model_config.ft_proj_selector)
    if trainer.finished:
        return trainer.nothing_to_do()
    trainer.begin(record, flag_values)

    spec = LabelledSpec(augment, model_config.image_size, config.label_fraction, train.seed,
                        train.shuffle_buffer, threads=train.input_threads)

    make_dataset = distributed_input(strategy, batch,
                                     functools.partial(training_dataset, source, split, spec))
    best = None
    validate = None
    if not no_best_reason:
        if trainer.chief:
            record.save(best_dir)
        best = BestCheckpoint(model, optimizer.iterations,
                              best_dir if trainer.chief else tempfile.mkdtemp(prefix="best_"),
                              best_metric)
        validate = _validation(model, source, config, best)
    else:
        logging.warning("fine-tuning: %s, so no best checkpoint is selected: the last checkpoint "
                        "is the result", no_best_reason)

    if trainer.step == 0:
        _write_sample_images(trainer.writer, source, split, spec)
    summary = trainer.train(make_dataset, on_checkpoint=validate)
    summary.update({
        "label_fraction": config.label_fraction, "num_train_examples": num_examples,
        "example_unit": "image", "fine_tune_after_block": config.fine_tune_after_block,
        "ft_proj_selector": model_config.ft_proj_selector,
        "init_checkpoint": train.init_checkpoint, "validation_split": config.validation_split,
        "best_metric": best_metric, "no_best_reason": no_best_reason or None,
        # Where the best checkpoint is now (best.json's path is where it was saved).
        "best_checkpoint": best.manager.latest_checkpoint if best else None,
        "best_step": best.state.get("step") if best else None,
        "best_value": best.state.get("value") if best else None,
        "inference_checkpoint": trained_model.inference_checkpoint(train.model_dir),
    })
    trainer.write_summary(summary)
    if best and not trainer.chief:
        shutil.rmtree(best.directory, ignore_errors=True)
    return summary


def _validation(model: SimCLRModel, source: Source, config: FinetuneConfig,
                best: BestCheckpoint):
    """The `on_checkpoint` hook: validation metrics (logged) and the best-checkpoint update."""
    predictor = evaluate.Predictor(model)
    alignment = evaluate.align(source.info.task, source.info.names, source.info)
    dataset = evaluation_dataset(source, config.validation_split, model.config.image_size,
                                 model.config.eval_crop_proportion, config.eval_batch_size)

    def validate(step: int) -> dict:
        targets, probs = evaluate.aligned(predictor(dataset), alignment)
        values = metrics.compute(targets, probs)
        if best.offer(step, values[best.metric]):
            logging.info("best %s so far: %.4f at step %d", best.metric, values[best.metric], step)
        return {f"validation/{name}": value for name, value in values.items()
                if not name.startswith("auc/") or name == best.metric}

    return validate


def _write_sample_images(writer, source: Source, split: str, spec: LabelledSpec) -> None:
    """TensorBoard image `augmented_images`: a few training inputs as the model sees them."""
    examples = next(iter(training_dataset(source, split, spec, SAMPLE_IMAGES)))
    with writer.as_default(step=0):
        tf.summary.image("augmented_images", examples["image"], max_outputs=SAMPLE_IMAGES)
