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

from simclr_med.config import ModelConfig

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
            raise FileNotFoundError(f"{path} not found: {directory!r} is not a simclr-med model "
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
