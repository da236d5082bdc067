"""`--init_checkpoint`: starting a network from an earlier run, in this package's checkpoint
format (`native`) or an official SimCLR TF2 release (`official`)."""

from __future__ import annotations

import os
from typing import Optional

import tensorflow as tf

from simclr_med.checkpoints import native, official
from simclr_med.errors import UserError


def load_init_weights(model, path: str, projection_layers: Optional[int] = None) -> str:
    """Starts `model` from another run's backbone and the first `projection_layers` layers of its
    projection head (None: all of them; 0: none). Optimizer, step and supervised head stay fresh.

    `path` is a model folder of this package (a --model_dir or a convert_checkpoint output), a
    checkpoint prefix inside one, or an official SimCLR TF2 checkpoint or SavedModel. Returns a
    description of what was loaded.
    """
    if official.is_reference_checkpoint(path):
        return str(official.load_reference_weights(
            model, path, projection_layers=projection_layers, include_supervised_head=False))
    prefix = native.resolve_checkpoint(path)
    if prefix is None:
        raise UserError(f"--init_checkpoint {path!r}: no checkpoint found there")
    folder = path if tf.io.gfile.isdir(path) else os.path.dirname(prefix)
    source = native.ModelRecord.load(folder).model
    differences = native.architecture_differences(model.config, source)
    if differences:
        raise UserError(f"--init_checkpoint {path!r} does not fit the requested model: "
                        + "; ".join(differences))
    head_layers = model.projection_head.linear_layers
    head_layers = head_layers if projection_layers is None else head_layers[:projection_layers]
    head = tf.train.Checkpoint(**{f"layer{j}": layer for j, layer in enumerate(head_layers)})
    status = tf.train.Checkpoint(model=tf.train.Checkpoint(
        resnet=model.resnet, projection_head=head)).restore(prefix)
    status.expect_partial()
    status.assert_existing_objects_matched()
    return (f"initialised backbone and {len(head_layers)} projection-head layer(s) from {prefix}")
