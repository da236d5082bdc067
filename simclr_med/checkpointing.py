"""This package's checkpoint format and the architecture record that travels with it.

A model folder (a `--model_dir`, or a `convert_checkpoint` output) holds
- `tf.train.CheckpointManager` checkpoints of `tf.train.Checkpoint(model=..., optimizer=...,
  global_step=...)` (the optimizer and step only for training runs), and
- `model_config.json`: the `ModelConfig` and the supervised head's classes, so a later stage
  (fine-tuning, evaluation, export) rebuilds the same network without repeating its flags.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import tensorflow as tf

from simclr_med import reference_checkpoint
from simclr_med.config import ModelConfig
from simclr_med.errors import UserError

MODEL_CONFIG_FILE = "model_config.json"


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """What `model_config.json` holds."""

    model: ModelConfig
    num_classes: int = 0
    task: str = ""  # multiclass | multilabel | "" (no supervised task)
    class_names: tuple[str, ...] = ()
    source: str = ""  # where the weights came from (a training mode, or a converted checkpoint)

    def save(self, directory: str) -> None:
        tf.io.gfile.makedirs(directory)
        data = dataclasses.asdict(self)
        data["class_names"] = list(self.class_names)
        with tf.io.gfile.GFile(os.path.join(directory, MODEL_CONFIG_FILE), "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, directory: str) -> "ModelRecord":
        path = os.path.join(directory, MODEL_CONFIG_FILE)
        if not tf.io.gfile.exists(path):
            raise UserError(f"{path} not found: {directory!r} is not a simclr-med model "
                            "folder (a --model_dir or a convert_checkpoint output)")
        with tf.io.gfile.GFile(path) as f:
            data: dict[str, Any] = json.load(f)
        known = {field.name for field in dataclasses.fields(ModelConfig)}
        model = ModelConfig(**{k: v for k, v in data.pop("model").items() if k in known})
        data["class_names"] = tuple(data.get("class_names", ()))
        return cls(model=model, **data)


def make_checkpoint(model: tf.Module, optimizer: Optional[Any] = None,
                    global_step: Optional[tf.Variable] = None) -> tf.train.Checkpoint:
    """The object graph every checkpoint of this package uses: `model`, `optimizer`, `global_step`."""
    parts: dict[str, Any] = {"model": model}
    if optimizer is not None:
        parts["optimizer"] = optimizer
    if global_step is not None:
        parts["global_step"] = global_step
    return tf.train.Checkpoint(**parts)


def resolve_checkpoint(path: str) -> Optional[str]:
    """A checkpoint prefix from a prefix or from a folder holding a `checkpoint` state file."""
    if tf.io.gfile.isdir(path):
        return tf.train.latest_checkpoint(path)
    if tf.io.gfile.exists(path + ".index"):
        return path
    return None


# ModelConfig fields that decide which variables exist and their shapes.
ARCHITECTURE_FIELDS = ("resnet_depth", "width_multiplier", "sk_ratio", "proj_head_mode",
                       "num_proj_layers", "proj_out_dim")


def architecture_differences(wanted: ModelConfig, found: ModelConfig) -> list[str]:
    """Human-readable differences, e.g. `resnet_depth: checkpoint 50, requested 18`."""
    diffs = [f"{name}: checkpoint {getattr(found, name)}, requested {getattr(wanted, name)}"
             for name in ARCHITECTURE_FIELDS if getattr(found, name) != getattr(wanted, name)]
    if (found.image_size <= 32) != (wanted.image_size <= 32):
        diffs.append(f"stem: checkpoint trained at image_size {found.image_size}, requested "
                     f"{wanted.image_size} (the CIFAR stem is used up to 32 px)")
    return diffs


def load_init_weights(model, path: str, projection_layers: Optional[int] = None) -> str:
    """Starts `model` from another run's backbone and the first `projection_layers` layers of its
    projection head (None: all of them; 0: none). Optimizer, step and supervised head stay fresh.

    `path` is a model folder of this package (a --model_dir or a convert_checkpoint output), a
    checkpoint prefix inside one, or an official SimCLR TF2 checkpoint or SavedModel. Returns a
    description of what was loaded.
    """
    if reference_checkpoint.is_reference_checkpoint(path):
        return str(reference_checkpoint.load_reference_weights(
            model, path, projection_layers=projection_layers, include_supervised_head=False))
    prefix = resolve_checkpoint(path)
    if prefix is None:
        raise UserError(f"--init_checkpoint {path!r}: no checkpoint found there")
    folder = path if tf.io.gfile.isdir(path) else os.path.dirname(prefix)
    source = ModelRecord.load(folder).model
    differences = architecture_differences(model.config, source)
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
