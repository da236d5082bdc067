"""A trained model for inference, loaded from a model folder: the one loader that evaluation,
export and linear evaluation share.

The network is rebuilt from the folder's `model_config.json` and restored from the checkpoint
`inference_checkpoint` chooses. Optimizer state is ignored, so a fine-tuning run, a pretraining run
and a `convert_checkpoint` output all load the same way.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import tensorflow as tf

from simclr_med.checkpoints import native
from simclr_med.errors import UserError
from simclr_med.models import precision
from simclr_med.models.simclr import SimCLRModel

BEST_DIR = "best"  # where fine-tuning keeps its best checkpoint (a complete model folder)
CHECKPOINT_CHOICES = ("auto", "best", "latest")
STEP_KEY = "global_step/.ATTRIBUTES/VARIABLE_VALUE"  # native.make_checkpoint's step


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    model: SimCLRModel
    record: native.ModelRecord
    checkpoint: str  # the prefix restored
    step: int  # its global step, 0 for a checkpoint without one


def inference_checkpoint(model_dir: str, which: str = "auto") -> str:
    """The checkpoint prefix evaluation (and export) should use.

    `auto`: the best checkpoint of a fine-tuning run (`<model_dir>/best/`) when it kept one,
    else the latest checkpoint in `model_dir`. `best`, `latest`, or a checkpoint prefix / folder.
    """
    if which in CHECKPOINT_CHOICES:
        best = tf.train.latest_checkpoint(os.path.join(model_dir, BEST_DIR))
        latest = tf.train.latest_checkpoint(model_dir)
        chosen = {"auto": best or latest, "best": best, "latest": latest}[which]
    else:
        chosen = native.resolve_checkpoint(which)
    if chosen is None:
        raise UserError(f"no {which!r} checkpoint in {model_dir!r}")
    return chosen


def load(model_dir: str, checkpoint: str = "auto",
         num_classes: Optional[int] = None) -> TrainedModel:
    """The model of `model_dir`, restored from `checkpoint` (see `inference_checkpoint`), with
    `num_classes` supervised outputs (None: the record's head; 0: no head, the encoder alone),
    computing in float32 whatever precision it was trained in."""
    record = native.ModelRecord.load(model_dir)
    outputs = record.num_classes if num_classes is None else num_classes
    with precision.inference_policy():
        model = SimCLRModel(record.model, outputs, stop_gradient_to_head=False)
        model.build_for_image_size()
    prefix = inference_checkpoint(model_dir, checkpoint)
    return TrainedModel(model, record, prefix, restore(model, prefix))


def save(model_dir: str, model: SimCLRModel, class_names: tuple[str, ...], task: str,
         step: int, source: str = "finetune") -> str:
    """Writes `model` (with a head for `class_names`) as a model folder that `load` reads:
    model_config.json and one checkpoint at `step`."""
    native.ModelRecord(model.config, len(class_names), task, class_names, source).save(model_dir)
    checkpoint = native.make_checkpoint(model, global_step=tf.Variable(step, dtype=tf.int64))
    tf.train.CheckpointManager(checkpoint, model_dir, 1).save(checkpoint_number=step)
    return model_dir


def restore(model: SimCLRModel, prefix: str) -> int:
    """Restores every variable of `model` (optimizer state is ignored); returns the step, 0 for a
    checkpoint without one (a convert_checkpoint output).

    A damaged checkpoint is an error naming its file: evaluation and export never fall back to
    an older checkpoint on their own (resuming training sets a damaged one aside). A checkpoint
    that does not fit the model is a UserError too.
    """
    try:
        status = native.make_checkpoint(model).restore(prefix)
    except native.READ_ERRORS as error:
        raise UserError(f"{native.damage_report(prefix, error)}. Choose another checkpoint "
                        "with --eval_checkpoint (best, latest or a ckpt-N prefix), or resume "
                        "the training run, which sets it aside and continues from the one "
                        "before") from error
    except ValueError as error:  # a variable of another shape
        raise _does_not_fit(prefix, error) from error
    try:
        status.expect_partial()
        status.assert_existing_objects_matched()
        reader = tf.train.load_checkpoint(prefix)
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise _does_not_fit(prefix, error) from error
    return int(reader.get_tensor(STEP_KEY)) if reader.has_tensor(STEP_KEY) else 0


def _does_not_fit(prefix: str, error: Exception) -> UserError:
    return UserError(f"checkpoint {prefix} cannot be restored into the model that "
                     f"{native.MODEL_CONFIG_FILE} describes: {error}")
