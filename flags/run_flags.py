"""Flags of `run.py` and their conversion into the plain config objects the library takes.

Augmentation parameters default to None: the `--augmentation` preset decides them unless a flag
sets one explicitly (e.g. `--augmentation=cxr --rotation_degrees=20`).
"""

from __future__ import annotations

import dataclasses

from absl import flags

from flags.entry_point import from_flags
from simclr_med.data import augment
from simclr_med.config import (AugmentConfig, DataConfig, ModelConfig, OptimConfig,
                               PretrainConfig, StrategyConfig, TrainConfig)

FLAGS = flags.FLAGS

MODES = ["pretrain", "finetune", "eval", "linear_eval", "train_then_eval", "export"]

flags.DEFINE_enum("mode", "pretrain", MODES, "What to run.")
flags.DEFINE_string("model_dir", None, "Folder of checkpoints, summaries and results.")

# Data.
flags.DEFINE_string("data_dir", "", "A data_prep output folder. Without it and without "
                    "--tfds_dataset, --mode=pretrain uses the built-in synthetic data set; the "
                    "other modes stop with an error.")
flags.DEFINE_string("train_split", "train", "Split to train on.")
flags.DEFINE_string("eval_split", "validation", "Split to evaluate on.")
flags.DEFINE_string("tfds_dataset", "", "A TFDS image-classification data set (e.g. cifar10).")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data folder.")
flags.DEFINE_integer("shuffle_buffer", 2048, "Shuffle buffer of training examples.")
flags.DEFINE_boolean("verify_data", False, "Check the SHA-256 of every shard of --data_dir "
                     "against its dataset_info.json before starting (reads the whole build); "
                     "without it only the shard sizes are checked.")

# Model.
flags.DEFINE_integer("resnet_depth", 50, "ResNet depth: 18, 34, 50, 101, 152 or 200.")
flags.DEFINE_float("width_multiplier", 1.0, "Channel width multiplier (1-4; fractions for tests).")
flags.DEFINE_float("sk_ratio", 0.0, "Selective-kernel ratio (SimCLRv2 uses 0.0625); 0 = off.")
flags.DEFINE_integer("image_size", 224, "Input size; up to 32 px uses the CIFAR stem.")
flags.DEFINE_float("batch_norm_decay", 0.9, "Batch-norm moving-average momentum.")
flags.DEFINE_float("batch_norm_epsilon", 1e-5, "Batch-norm epsilon.")
flags.DEFINE_boolean("global_bn", True, "Synchronise batch-norm statistics across replicas.")
flags.DEFINE_enum("proj_head_mode", "nonlinear", ["none", "linear", "nonlinear"],
                  "Projection head type.")
flags.DEFINE_integer("num_proj_layers", 3, "Layers of a nonlinear projection head (paper: 2).")
flags.DEFINE_integer("proj_out_dim", 128, "Output dimension of the projection head.")
flags.DEFINE_float("eval_crop_proportion", 0.875, "Evaluation/serving input: central crop of "
                   "this proportion of the shorter side, resized to --image_size.")
flags.DEFINE_integer("ft_proj_selector", 0,
                     "Projection-head layer feeding the supervised head (0 = backbone output).")

# Optimisation.
flags.DEFINE_integer("train_batch_size", 256, "Global batch size (pairs for pretraining).")
flags.DEFINE_integer("train_steps", 0, "Training steps; 0 derives them from --train_epochs.")
flags.DEFINE_float("train_epochs", 100, "Training epochs when --train_steps is 0.")
flags.DEFINE_float("learning_rate", 0.3, "Base learning rate, scaled by --learning_rate_scaling.")
flags.DEFINE_enum("learning_rate_scaling", "linear", ["linear", "sqrt"],
                  "linear: lr * batch / 256; sqrt: lr * sqrt(batch).")
flags.DEFINE_float("warmup_epochs", 10, "Linear warm-up epochs before cosine decay.")
flags.DEFINE_enum("optimizer", "lars", ["lars", "momentum", "adam"], "Optimizer.")
flags.DEFINE_float("momentum", 0.9, "Momentum of LARS and momentum SGD.")
flags.DEFINE_float("weight_decay", 1e-6, "Weight decay, as the reference: LARS decays all but BN "
                   "parameters, biases and the supervised head; an L2 loss term covers the head's "
                   "kernel (momentum, adam: every weight but BN parameters).")
flags.DEFINE_float("lars_trust_coefficient", 0.001, "LARS trust coefficient (eta).")
flags.DEFINE_float("temperature", 0.1, "NT-Xent temperature.")

# MICLe and augmentation.
flags.DEFINE_boolean("use_micle", False, "MICLe: positive pairs from two different images of a "
                     "case bag (SimCLR for single-image cases).")
flags.DEFINE_enum("augmentation", "simclr", sorted(augment.PRESETS),
                  "Augmentation preset: simclr (dermatology), cxr (chest X-ray), ...")
flags.DEFINE_boolean("crop", None, "Random resized crop.")
flags.DEFINE_float("crop_area_min", None, "Smallest crop area fraction.")
flags.DEFINE_float("crop_area_max", None, "Largest crop area fraction.")
flags.DEFINE_float("crop_aspect_min", None, "Smallest crop aspect ratio.")
flags.DEFINE_float("crop_aspect_max", None, "Largest crop aspect ratio.")
flags.DEFINE_boolean("flip", None, "Random horizontal flip.")
flags.DEFINE_float("color_jitter_strength", None, "Colour jitter strength s (0 = off).")
flags.DEFINE_float("color_jitter_prob", None, "Probability of colour jitter.")
flags.DEFINE_float("grayscale_prob", None, "Probability of grayscale conversion.")
flags.DEFINE_float("blur_prob", None, "Probability of Gaussian blur (0 = off).")
flags.DEFINE_float("blur_sigma_min", None, "Smallest blur sigma.")
flags.DEFINE_float("blur_sigma_max", None, "Largest blur sigma.")
flags.DEFINE_float("rotation_degrees", None, "Random rotation within +-degrees (0 = off).")
flags.DEFINE_enum("rotation_fill_mode", None, ["reflect", "constant", "nearest", "wrap"],
                  "How rotation fills the corners.")
flags.DEFINE_boolean("lineareval_while_pretraining", True,
                     "Train a linear probe on stop-gradient features while pretraining.")

# Loop, checkpoints, transfer.
flags.DEFINE_integer("steps_per_loop", 10, "Steps per tf.function call (between log lines).")
flags.DEFINE_integer("checkpoint_steps", 0, "Checkpoint every N steps; 0 = once per epoch.")
flags.DEFINE_integer("keep_checkpoint_max", 5, "Checkpoints to keep.")
flags.DEFINE_integer("run_steps", 0, "Stop this invocation after N steps (for time-limited "
                     "jobs; run again to continue); 0 = run to the end.")
flags.DEFINE_string("init_checkpoint", "", "Start from these weights: a model folder of this "
                    "package, or an official SimCLR TF2 checkpoint.")
flags.DEFINE_integer("seed", 0, "Seed of initialisation, shuffling and augmentation.")
flags.DEFINE_boolean("deterministic", False, "Deterministic TF ops (bit-reproducible, slower).")

# Scale.
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
                  "Distribution strategy.")
flags.DEFINE_string("tpu", "", "TPU address or name for --strategy=tpu.")
flags.DEFINE_integer("num_cpu_devices", 0, "mirrored: replicate over N logical CPU devices (even "
                     "where there are GPUs).")
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
                  "Computation precision.")


def _fields(config_class) -> dict:
    return {f.name: FLAGS[f.name].value for f in dataclasses.fields(config_class)
            if f.name in FLAGS}


def _config(config_class):
    """The `config_class` of the flags named like its fields."""
    return from_flags(config_class, **_fields(config_class))


def model_config() -> ModelConfig:
    return _config(ModelConfig)


def optim_config() -> OptimConfig:
    return _config(OptimConfig)


def augment_config(preset: str = "") -> AugmentConfig:
    """The `preset` (default: --augmentation) with the augmentation flags that are set."""
    overrides = {k: v for k, v in _fields(AugmentConfig).items() if v is not None}
    return from_flags(augment.preset, preset or FLAGS.augmentation, **overrides)


def strategy_config() -> StrategyConfig:
    return _config(StrategyConfig)


def data_config() -> DataConfig:
    return _config(DataConfig)


def train_config() -> TrainConfig:
    return _config(TrainConfig)


def pretrain_config() -> PretrainConfig:
    return _config(PretrainConfig)
