"""The optimizer of a training run, from `OptimConfig`, and its weight decay, as the reference.

google-research/simclr (tf2/model.py `build_optimizer`, `add_weight_decay`) splits the decay:
- `lars`: LARS decays every weight itself (inside its trust ratio) except batch-norm parameters,
  biases and the supervised head, which it neither decays nor adapts; the head's kernel gets an
  L2 term `weight_decay * |w|^2 / 2` in the loss instead.
- `momentum`, `adam`: no decay in the optimizer; the loss gets the L2 term of every weight except
  batch-norm parameters (biases and the supervised head included), i.e. coupled L2, not AdamW.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from simclr_med.config import OPTIMIZERS, OptimConfig
from simclr_med.models.simclr import batch_norm_variables
from simclr_med.training.lars import LARS


def build_optimizer(config: OptimConfig, learning_rate, exempt: Sequence,
                    loss_scaling: bool = False) -> keras.optimizers.Optimizer:
    """Builds (but does not `build`) the optimizer; call it under the strategy scope.

    `exempt` variables (`simclr.no_decay_variables`) get neither LARS's decay nor its trust ratio;
    momentum and Adam decay nothing themselves (see `weight_decay_loss`). `loss_scaling` wraps the
    optimizer for float16 mixed precision.
    """
    if config.optimizer == "lars":
        optimizer = LARS(learning_rate, momentum=config.momentum, weight_decay=config.weight_decay,
                         trust_coefficient=config.lars_trust_coefficient)
        if exempt:
            optimizer.exclude_from_weight_decay(var_list=list(exempt))
    elif config.optimizer == "momentum":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=config.momentum)
    elif config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate)
    else:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def l2_variables(config: OptimConfig, model: keras.Model) -> list:
    """The trainable variables whose L2 penalty goes into the loss (see the module docstring)."""
    if config.optimizer == "lars":
        head = getattr(model, "supervised_head", None)
        return [head.dense.kernel] if head is not None and head.dense.trainable else []
    batch_norm = {id(v) for v in batch_norm_variables(model)}
    return [v for v in model.trainable_variables if id(v) not in batch_norm]


def weight_decay_loss(config: OptimConfig, model: keras.Model) -> tf.Tensor:
    """This replica's share of `weight_decay * sum(|w|^2) / 2` over `l2_variables`.

    Call it in replica context: a step's per-replica losses are summed by the gradient all-reduce,
    so each replica adds 1 / num_replicas of the penalty (the reference divides its whole loss by
    the replica count).
    """
    variables = l2_variables(config, model) if config.weight_decay else []
    if not variables:
        return tf.constant(0.0)
    context = tf.distribute.get_replica_context()  # None in cross-replica context: all of it
    replicas = context.num_replicas_in_sync if context else 1
    penalty = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])
    return config.weight_decay * penalty / replicas
