"""The optimizer of a training run, from `OptimConfig`, with its weight-decay exemptions."""

from __future__ import annotations

from typing import Sequence

import keras

from simclr_med.config import OptimConfig
from simclr_med.lars import LARS

OPTIMIZERS = ("lars", "momentum", "adam")


def build_optimizer(config: OptimConfig, learning_rate, exempt: Sequence,
                    loss_scaling: bool = False) -> keras.optimizers.Optimizer:
    """Builds (but does not `build`) the optimizer; call it under the strategy scope.

    `exempt` variables (BN parameters, biases) get no weight decay (and no LARS trust ratio).
    For `momentum` and `adam` the decay is Keras' decoupled form, w <- w - lr * wd * w.
    `loss_scaling` wraps it for float16 mixed precision.
    """
    if config.optimizer == "lars":
        optimizer = LARS(learning_rate, momentum=config.momentum, weight_decay=config.weight_decay,
                         trust_coefficient=config.lars_trust_coefficient)
    elif config.optimizer == "momentum":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=config.momentum,
                                         weight_decay=config.weight_decay or None)
    elif config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, weight_decay=config.weight_decay or None)
    else:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")
    if exempt:
        optimizer.exclude_from_weight_decay(var_list=list(exempt))
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
