"""This package's checkpoint format and the architecture record that travels with it.

A model folder (a `--model_dir`, or a `convert_checkpoint` output) holds
- `tf.train.CheckpointManager` checkpoints of `tf.train.Checkpoint(model=..., optimizer=...,
  global_step=...)` (the optimizer and step only for training runs), and
- `model_config.json`: the `ModelConfig` and the supervised head's classes, so a later stage
  (fine-tuning, evaluation, export) rebuilds the same network without repeating its flags.

A checkpoint that cannot be read (checksum mismatch, truncated or missing file) is *set aside*
when training resumes: its files are renamed `*.damaged` (nothing is deleted) and the state file
stops listing it, so the newest intact checkpoint becomes the latest again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Iterable, Optional, Sequence

import tensorflow as tf
from google.protobuf import text_format

from simclr_med.config import ModelConfig
from simclr_med.errors import UserError

MODEL_CONFIG_FILE = "model_config.json"
STATE_FILE = "checkpoint"  # the CheckpointManager's list of checkpoints, newest last
DAMAGED_SUFFIX = ".damaged"
# What reading a damaged checkpoint raises: a checksum mismatch or corrupted bytes (DataLoss),
# a truncated file (OutOfRange), a missing file (NotFound).
READ_ERRORS = (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.NotFoundError)


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

    def fields(self) -> dict[str, Any]:
        """Every field by name, the model's flattened in (`resnet_depth`, ..., `num_classes`)."""
        return {**dataclasses.asdict(self.model), "num_classes": self.num_classes,
                "task": self.task, "class_names": tuple(self.class_names), "source": self.source}

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


def _differences(wanted: dict, found: dict, names: Iterable[str]) -> list[str]:
    """Human-readable differences, e.g. `resnet_depth: checkpoint 50, requested 18`."""
    return [f"{name}: checkpoint {found[name]}, requested {wanted[name]}" for name in names
            if found[name] != wanted[name]]


def architecture_differences(wanted: ModelConfig, found: ModelConfig) -> list[str]:
    """The differences that make one model's weights unusable in the other."""
    diffs = _differences(dataclasses.asdict(wanted), dataclasses.asdict(found),
                         ARCHITECTURE_FIELDS)
    if (found.image_size <= 32) != (wanted.image_size <= 32):
        diffs.append(f"stem: checkpoint trained at image_size {found.image_size}, requested "
                     f"{wanted.image_size} (the CIFAR stem is used up to 32 px)")
    return diffs


def check_same_model(directory: str, record: ModelRecord) -> None:
    """Before a run resumes in `directory`: raises UserError, naming every differing field, when
    the folder's checkpoints are of another model than `record` (its `model_config.json`), so
    that a mismatching run stops before it writes anything."""
    if (tf.train.get_checkpoint_state(directory) is None
            or not tf.io.gfile.exists(os.path.join(directory, MODEL_CONFIG_FILE))):
        return
    wanted, found = record.fields(), ModelRecord.load(directory).fields()
    differences = _differences(wanted, found, wanted)
    if differences:
        raise UserError(f"{directory} holds checkpoints of another model than this run asks for "
                        f"({'; '.join(differences)}): resume with the settings of its "
                        f"{MODEL_CONFIG_FILE}, or give another --model_dir")


def _first_line(error: Exception) -> str:
    """A TensorFlow error's message without the op-wrapper prefix and the stack."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"^\{\{[^}]*\}\}\s*", "", message)


def checkpoint_files(prefix: str) -> list[str]:
    """The index and data files of a checkpoint prefix (those that exist)."""
    return (tf.io.gfile.glob(prefix + ".index")
            + sorted(tf.io.gfile.glob(prefix + ".data-?????-of-?????")))


def damage_report(prefix: str, error: Exception) -> str:
    """Which file of an unreadable checkpoint is damaged, and TensorFlow's reason."""
    index = prefix + ".index"
    if not tf.io.gfile.exists(index):
        where = f"{index} is missing"
    else:
        try:
            tf.train.load_checkpoint(prefix)
            files = [f for f in checkpoint_files(prefix) if f != index]
            where = f"{', '.join(files) or prefix + '.data-*'} cannot be read"
        except READ_ERRORS + (tf.errors.InvalidArgumentError,):
            where = f"{index} cannot be read"
    return f"checkpoint {prefix} is damaged: {where} ({type(error).__name__}: {_first_line(error)})"


def set_aside(prefix: str) -> list[str]:
    """Renames the files of a damaged checkpoint to `<file>.damaged` (`.damaged-2`, ... when
    taken), keeping them for inspection; returns the new names."""
    renamed = []
    for path in checkpoint_files(prefix):
        target, n = path + DAMAGED_SUFFIX, 1
        while tf.io.gfile.exists(target):
            n += 1
            target = f"{path}{DAMAGED_SUFFIX}-{n}"
        tf.io.gfile.rename(path, target)
        renamed.append(target)
    return renamed


def forget_checkpoints(directory: str, prefixes: Sequence[str]) -> None:
    """Rewrites the state file of `directory` without `prefixes`; the newest checkpoint left
    becomes the latest. Paths stay relative, as the CheckpointManager writes them."""
    state = tf.train.get_checkpoint_state(directory)
    paths = list(state.all_model_checkpoint_paths)
    stamps = list(state.all_model_checkpoint_timestamps)
    kept = [i for i, path in enumerate(paths) if path not in prefixes]
    if not kept:
        raise ValueError(f"no checkpoint of {directory} would be left")

    def relative(path: str) -> str:
        return os.path.relpath(path, directory) if path.startswith(directory) else path

    fresh = type(state)(
        model_checkpoint_path=relative(paths[kept[-1]]),
        all_model_checkpoint_paths=[relative(paths[i]) for i in kept],
        all_model_checkpoint_timestamps=([stamps[i] for i in kept]
                                         if len(stamps) == len(paths) else []),
        last_preserved_timestamp=state.last_preserved_timestamp)
    path = os.path.join(directory, STATE_FILE)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(text_format.MessageToString(fresh))
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
