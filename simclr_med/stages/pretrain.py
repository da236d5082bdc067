"""Contrastive pretraining (SimCLR, or MICLe with `use_micle`) of a ResNet and projection head.

Both views of every pair go through the network as one batch of 2B images (so batch-norm
statistics cover both), the NT-Xent loss takes negatives from every replica, and, where the data
has labels, a linear probe on stop-gradient features tracks representation quality.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import tensorflow as tf

from simclr_med.checkpoints import native
from simclr_med.training import contrastive_loss, supervised_loss
from simclr_med.config import (AugmentConfig, ModelConfig, OptimConfig, PretrainConfig,
                               TrainConfig)
from simclr_med.data.integrity import names_damaged_shards
from simclr_med.data.pretrain_input import PairSpec, finished_views, pair_dataset
from simclr_med.data.reader import Source
from simclr_med.models.simclr import SimCLRModel
from simclr_med.training.loop import distributed_input
from simclr_med.training.optimizers import weight_decay_loss
from simclr_med.training.stage import build_stage

SAMPLE_VIEWS = 8  # pairs shown in TensorBoard


def _both_views(batch: dict, key: str) -> tf.Tensor:
    """[B, 2, ...] -> [2B, ...]: view 1 of every pair, then view 2 (the order of the images)."""
    return tf.concat([batch[key][:, 0], batch[key][:, 1]], axis=0)


def contrastive_gradients(model: SimCLRModel, optimizer, pairs: dict, temperature: float,
                          global_batch: int, task: str = "",
                          optim: Optional[OptimConfig] = None) -> tuple[tf.Tensor, list, dict]:
    """Loss of this replica's pairs, scaled for the global batch, and its gradients.

    Summed over replicas (as the optimizer's all-reduce does), the gradients equal those of one
    device holding the whole global batch. `task` ("" = none) adds the linear probe's loss, `optim`
    its weight decay's L2 term (`optimizers.weight_decay_loss`).
    """
    images = _both_views(pairs, "views")
    outputs = {}
    with tf.GradientTape() as tape:
        model_outputs = model(images, training=True)
        z1, z2 = tf.split(model_outputs["proj_head_output"], 2)
        contrast = contrastive_loss.nt_xent(z1, z2, temperature)
        loss = tf.reduce_sum(contrast.per_pair_loss) / global_batch
        if task:
            labels = {k: _both_views(pairs, k) for k in ("class_id", "labels", "label_mask")
                      if k in pairs}
            sup_loss, weights = supervised_loss.task_loss(model_outputs["logits_sup"], labels, task)
            loss += supervised_loss.global_mean(sup_loss, weights, 2 * global_batch)  # 2B images
            outputs.update(supervised_loss=sup_loss, weights=weights, labels=labels,
                           logits_sup=model_outputs["logits_sup"])
        if optim is not None:
            loss += weight_decay_loss(optim, model)
        scaled = optimizer.scale_loss(loss)
    outputs["contrast"] = contrast
    return loss, tape.gradient(scaled, model.trainable_variables), outputs


@names_damaged_shards
def pretrain(model_config: ModelConfig, optim: OptimConfig, augment: AugmentConfig,
             source: Source, train: TrainConfig, pretrain_config: PretrainConfig,
             strategy: tf.distribute.Strategy, split: str = "train",
             monitor: Optional[Callable[[SimCLRModel], Callable[[int], dict]]] = None,
             flag_values: Optional[dict] = None) -> dict:
    """Pretrains in `train.model_dir` (resuming if it holds checkpoints); returns the summary.

    `monitor(model)`, e.g. a `linear_eval.KnnMonitor`, gives a hook run at every checkpoint whose
    scores are logged with the training metrics. `flag_values` (the command line's flags) are
    recorded in `flags.json` and `flags_history.jsonl` once the run is known to train. A run
    already at its last step writes nothing and returns `Trainer.nothing_to_do()`.
    """
    unit = "cases" if pretrain_config.use_micle else "images"
    num_examples = source.num_examples(split, unit)
    batch = train.train_batch_size
    num_classes = source.info.num_classes if pretrain_config.lineareval_while_pretraining else 0
    task = source.info.task if num_classes else ""  # the linear probe's task, if any
    names = ["loss", "contrast_accuracy", "contrast_entropy"]
    stage = build_stage("pretrain", model_config, optim, train, strategy, num_examples,
                        num_classes, names + (["supervised_loss", "supervised_accuracy"]
                                              if num_classes else []),
                        stop_gradient_to_head=True, images_per_example=2)
    model, optimizer, metrics = stage.model, stage.optimizer, stage.metrics
    spec = PairSpec(use_micle=pretrain_config.use_micle, augment=augment,
                    image_size=model_config.image_size, seed=train.seed,
                    shuffle_buffer=train.shuffle_buffer, threads=train.input_threads,
                    augment_on=pretrain_config.augment_on)

    def step_fn(pairs: dict) -> None:
        pairs = {**pairs, "views": finished_views(pairs, spec)}
        _, grads, outputs = contrastive_gradients(
            model, optimizer, pairs, pretrain_config.temperature, batch, task, optim)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        contrast = outputs["contrast"]
        metrics.update("loss", contrast.per_pair_loss)
        metrics.update("contrast_accuracy", contrastive_loss.contrastive_accuracy(contrast))
        metrics.update("contrast_entropy", contrastive_loss.contrastive_entropy(contrast))
        if num_classes:
            metrics.update("supervised_loss", outputs["supervised_loss"], outputs["weights"])
            metrics.update("supervised_accuracy", *supervised_loss.task_accuracy(
                outputs["logits_sup"], outputs["labels"], task))

    record = native.ModelRecord(model_config, num_classes, task,
                                tuple(source.info.names) if num_classes else (),
                                source="pretrain")
    trainer = stage.trainer(step_fn, record, train.init_checkpoint)
    if trainer.finished:
        return trainer.nothing_to_do()
    trainer.begin(record, flag_values)

    make_dataset = distributed_input(strategy, batch,
                                     functools.partial(pair_dataset, source, split, spec))
    if trainer.step == 0:
        _write_sample_views(trainer.writer, source, split, spec)
    summary = trainer.train(make_dataset, on_checkpoint=monitor(model) if monitor else None)
    summary.update({"use_micle": pretrain_config.use_micle, "num_train_examples": num_examples,
                    "example_unit": "case" if pretrain_config.use_micle else "image"})
    trainer.write_summary(summary)
    return summary


def _write_sample_views(writer, source: Source, split: str, spec: PairSpec) -> None:
    """TensorBoard image `augmented_pairs`: the two views of a few pairs side by side."""
    views = finished_views(next(iter(pair_dataset(source, split, spec, SAMPLE_VIEWS))), spec)
    side_by_side = tf.concat([views[:, 0], views[:, 1]], axis=2)
    with writer.as_default(step=0):
        tf.summary.image("augmented_pairs", side_by_side, max_outputs=SAMPLE_VIEWS)
