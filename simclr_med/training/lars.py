"""LARS (You et al., 2017) as a Keras 3 optimizer, as SimCLR uses it.

For each variable w with gradient g (both flattened):
    g <- g + weight_decay * w                                   (unless exempt)
    trust = trust_coefficient * |w| / |g|  if |w| > 0 and |g| > 0 else 1   (unless exempt: 1)
    v <- momentum * v + learning_rate * trust * g
    w <- w - v            (Nesterov: w <- w - (momentum * v + learning_rate * trust * g))
Exempt variables get neither the decay nor the trust ratio: pass them to
`exclude_from_weight_decay(var_list=...)` before the optimizer is built. SimCLR exempts BN
parameters, biases and the supervised head (`simclr_med.models.simclr.no_decay_variables`), whose kernel is
decayed through an L2 loss term instead (`simclr_med.training.optimizers.weight_decay_loss`).
"""

from __future__ import annotations

import keras
import tensorflow as tf


class LARS(keras.optimizers.Optimizer):
    def __init__(self, learning_rate=0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, nesterov: bool = False, name: str = "lars",
                 **kwargs):
        # The base class's decoupled weight decay stays off: LARS adds the decay to the gradient
        # before the trust ratio. Its exclusion list is reused to mark exempt variables.
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = momentum
        self.lars_weight_decay = weight_decay
        self.trust_coefficient = trust_coefficient
        self.nesterov = nesterov

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, name="momentum") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = tf.cast(learning_rate, variable.dtype)
        gradient = tf.cast(gradient, variable.dtype)
        if self._use_weight_decay(variable):
            weights = tf.convert_to_tensor(variable)
            if self.lars_weight_decay:
                gradient = gradient + self.lars_weight_decay * weights
            w_norm = tf.norm(weights)
            g_norm = tf.norm(gradient)
            trust = tf.where(w_norm > 0,
                             tf.where(g_norm > 0, self.trust_coefficient * w_norm / g_norm, 1.0),
                             1.0)
            learning_rate = learning_rate * tf.cast(trust, variable.dtype)
        velocity = self.momentums[self._get_variable_index(variable)]
        step = learning_rate * gradient
        new_velocity = self.momentum * velocity + step
        self.assign(velocity, new_velocity)
        self.assign_sub(variable, self.momentum * new_velocity + step if self.nesterov
                        else new_velocity)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "weight_decay": self.lars_weight_decay,
                       "trust_coefficient": self.trust_coefficient, "nesterov": self.nesterov})
        return config
