"""The skeleton of a training stage, written once: seeding, step count and learning-rate schedule,
the model and its optimizer under the strategy's scope, the loop's settings, and resuming from
the model folder or else starting from `--init_checkpoint`.

A stage (`simclr_med.stages.pretrain`, `simclr_med.stages.finetune`, or a new one) adds only what
is its own: the step function, the input pipeline and the metrics it reports.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import keras
import tensorflow as tf
from absl import logging

from simclr_med.checkpoints import initial_weights, native
from simclr_med.config import ModelConfig, OptimConfig, TrainConfig
from simclr_med.models.simclr import SimCLRModel, no_decay_variables
from simclr_med.training import schedule
from simclr_med.training.loop import LoopSettings, Trainer
from simclr_med.training.optimizers import build_optimizer
from simclr_med.training.running_means import RunningMeans


def seed_everything(seed: int, deterministic: bool) -> None:
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def total_steps(train: TrainConfig, num_examples: int) -> int:
    return train.train_steps or math.ceil(train.train_epochs * num_examples / train.train_batch_size)


@dataclasses.dataclass(frozen=True)
class TrainingStage:
    """A stage's model, optimizer and running metrics (built under `strategy.scope()`) and the
    settings of its loop; `trainer()` joins them with the stage's step function."""

    strategy: tf.distribute.Strategy
    model: SimCLRModel
    optimizer: keras.optimizers.Optimizer
    metrics: RunningMeans
    settings: LoopSettings

    def trainer(self, step_fn: Callable[[Any], None], record: native.ModelRecord,
                init_checkpoint: str = "", projection_layers: Optional[int] = None) -> Trainer:
        """The loop over `step_fn`, resumed from the model folder's newest intact checkpoint, or
        else started from `init_checkpoint` (with its first `projection_layers` projection
        layers; None: all). Writes nothing to the folder (that is `Trainer.begin`)."""
        trainer = Trainer(self.strategy, self.model, self.optimizer, self.metrics, step_fn,
                          self.settings)
        if not trainer.resume(record) and init_checkpoint:
            logging.info(initial_weights.load_init_weights(
                self.model, init_checkpoint, projection_layers=projection_layers))
        return trainer


def build_stage(mode: str, model_config: ModelConfig, optim: OptimConfig, train: TrainConfig,
                strategy: tf.distribute.Strategy, num_examples: int, num_classes: int,
                metric_names: Sequence[str], stop_gradient_to_head: bool,
                images_per_example: int = 1,
                prepare_model: Optional[Callable[[SimCLRModel], None]] = None) -> TrainingStage:
    """Seeds, then builds the model (`num_classes` supervised outputs; `prepare_model(model)`,
    e.g. freezing layers, runs before the optimizer sees its variables) and an optimizer with
    the warm-up and cosine schedule of `num_examples` examples per epoch."""
    seed_everything(train.seed, train.deterministic)
    batch = train.train_batch_size
    steps = total_steps(train, num_examples)
    learning_rate = schedule.WarmupCosine(
        schedule.scaled_learning_rate(optim.learning_rate, batch, optim.learning_rate_scaling),
        schedule.warmup_steps(optim.warmup_epochs, num_examples, batch), steps)
    with strategy.scope():
        model = SimCLRModel(model_config, num_classes, stop_gradient_to_head=stop_gradient_to_head)
        model.build_for_image_size()
        if prepare_model is not None:
            prepare_model(model)
        optimizer = build_optimizer(optim, learning_rate, no_decay_variables(model),
                                    loss_scaling=keras.config.dtype_policy().name == "mixed_float16")
        optimizer.build(model.trainable_variables)
        metrics = RunningMeans(metric_names)
    settings = LoopSettings(
        mode=mode, model_dir=train.model_dir, total_steps=steps,
        steps_per_loop=train.steps_per_loop,
        checkpoint_steps=train.checkpoint_steps or math.ceil(num_examples / batch),
        keep_checkpoint_max=train.keep_checkpoint_max, examples_per_step=batch,
        images_per_example=images_per_example, run_steps=train.run_steps,
        jit_compile=train.jit_compile)
    return TrainingStage(strategy, model, optimizer, metrics, settings)
