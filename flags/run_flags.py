"""Flags of `run.py` and their conversion into the plain config objects the library takes.

Every default and every enum's choices come from `simclr_med.config` (the dataclass field's
default, the choice tuple next to the field); the help texts are here.

Augmentation parameters default to None: the `--augmentation` preset decides them unless a flag
sets one explicitly (e.g. `--augmentation=cxr --rotation_degrees=20`).
"""

from __future__ import annotations

from absl import flags

from flags.entry_point import ConfigFlags, from_flags
from flags import strategy_flags  # noqa: F401  (defines the scale flags: run.py reads them)
from simclr_med.config import (AUGMENT_ON, AUGMENT_PRESETS, LEARNING_RATE_SCALINGS, OPTIMIZERS,
                               PROJ_HEAD_MODES, ROTATION_FILL_MODES, AugmentConfig, DataConfig,
                               ModelConfig, OptimConfig, PretrainConfig, TrainConfig,
                               augment_preset)

FLAGS = flags.FLAGS

MODES = ["pretrain", "finetune", "eval", "linear_eval", "train_then_eval", "export", "embed"]
DEFAULT_AUGMENTATION = "simclr"

MODEL = ConfigFlags(ModelConfig)
OPTIM = ConfigFlags(OptimConfig)
AUGMENT = ConfigFlags(AugmentConfig, preset_defaults=True)
DATA = ConfigFlags(DataConfig)
TRAIN = ConfigFlags(TrainConfig)
PRETRAIN = ConfigFlags(PretrainConfig)

flags.DEFINE_enum("mode", "pretrain", MODES, "What to run.")
flags.DEFINE_string("model_dir", None, "Folder of checkpoints, summaries and results.")

# Data.
flags.DEFINE_string("data_dir", DataConfig.data_dir, "A data_prep output folder. Without it and "
                    "without --tfds_dataset, --mode=pretrain uses the built-in synthetic data "
                    "set; the other modes stop with an error.")
flags.DEFINE_string("train_split", DataConfig.train_split, "Split to train on.")
flags.DEFINE_string("eval_split", DataConfig.eval_split, "Split to evaluate on.")
flags.DEFINE_string("tfds_dataset", DataConfig.tfds_dataset,
                    "A TFDS image-classification data set (e.g. cifar10).")
flags.DEFINE_string("tfds_data_dir", DataConfig.tfds_data_dir, "TFDS data folder.")
flags.DEFINE_integer("shuffle_buffer", TrainConfig.shuffle_buffer,
                     "Shuffle buffer of training examples.")
flags.DEFINE_integer("input_threads", TrainConfig.input_threads, "> 0: the training input "
                     "pipeline runs on a private pool of this many threads; 0: on tf.data's "
                     "shared pool, one thread per core (see the README's Performance).",
                     lower_bound=0)
flags.DEFINE_boolean("verify_data", DataConfig.verify_data, "Check the SHA-256 of every shard of "
                     "--data_dir against its dataset_info.json before starting (reads the "
                     "whole build); without it only the shard sizes are checked.")

# Model.
flags.DEFINE_integer("resnet_depth", ModelConfig.resnet_depth,
                     "ResNet depth: 18, 34, 50, 101, 152 or 200.")
flags.DEFINE_float("width_multiplier", ModelConfig.width_multiplier,
                   "Channel width multiplier (1-4; fractions for tests).")
flags.DEFINE_float("sk_ratio", ModelConfig.sk_ratio,
                   "Selective-kernel ratio (SimCLRv2 uses 0.0625); 0 = off.")
flags.DEFINE_integer("image_size", ModelConfig.image_size,
                     "Input size; up to 32 px uses the CIFAR stem.")
flags.DEFINE_float("batch_norm_decay", ModelConfig.batch_norm_decay,
                   "Batch-norm moving-average momentum.")
flags.DEFINE_float("batch_norm_epsilon", ModelConfig.batch_norm_epsilon, "Batch-norm epsilon.")
flags.DEFINE_boolean("global_bn", ModelConfig.global_bn,
                     "Synchronise batch-norm statistics across replicas.")
flags.DEFINE_boolean("fused_batch_norm", ModelConfig.fused_batch_norm,
                     "Train batch norm with TensorFlow's fused kernel where the statistics are "
                     "one replica's (faster; bfloat16 activations stay bfloat16); "
                     "--nofused_batch_norm: Keras 3's layer throughout.")
flags.DEFINE_enum("proj_head_mode", ModelConfig.proj_head_mode, list(PROJ_HEAD_MODES),
                  "Projection head type.")
flags.DEFINE_integer("num_proj_layers", ModelConfig.num_proj_layers,
                     "Layers of a nonlinear projection head (paper: 2).")
flags.DEFINE_integer("proj_out_dim", ModelConfig.proj_out_dim,
                     "Output dimension of the projection head.")
flags.DEFINE_float("eval_crop_proportion", ModelConfig.eval_crop_proportion, "Evaluation/serving "
                   "input: central crop of this proportion of the shorter side, resized to "
                   "--image_size.")
flags.DEFINE_integer("ft_proj_selector", ModelConfig.ft_proj_selector,
                     "Projection-head layer feeding the supervised head (0 = backbone output).")

# Optimisation.
flags.DEFINE_integer("train_batch_size", TrainConfig.train_batch_size,
                     "Global batch size (pairs for pretraining).")
flags.DEFINE_integer("train_steps", TrainConfig.train_steps,
                     "Training steps; 0 derives them from --train_epochs.")
flags.DEFINE_float("train_epochs", TrainConfig.train_epochs,
                   "Training epochs when --train_steps is 0.")
flags.DEFINE_float("learning_rate", OptimConfig.learning_rate,
                   "Base learning rate, scaled by --learning_rate_scaling.")
flags.DEFINE_enum("learning_rate_scaling", OptimConfig.learning_rate_scaling,
                  list(LEARNING_RATE_SCALINGS), "linear: lr * batch / 256; sqrt: lr * sqrt(batch).")
flags.DEFINE_float("warmup_epochs", OptimConfig.warmup_epochs,
                   "Linear warm-up epochs before cosine decay.")
flags.DEFINE_enum("optimizer", OptimConfig.optimizer, list(OPTIMIZERS), "Optimizer.")
flags.DEFINE_float("momentum", OptimConfig.momentum, "Momentum of LARS and momentum SGD.")
flags.DEFINE_float("weight_decay", OptimConfig.weight_decay, "Weight decay, as the reference: "
                   "LARS decays all but BN parameters, biases and the supervised head; an L2 loss "
                   "term covers the head's kernel (momentum, adam: every weight but BN "
                   "parameters).")
flags.DEFINE_float("lars_trust_coefficient", OptimConfig.lars_trust_coefficient,
                   "LARS trust coefficient (eta).")
flags.DEFINE_float("temperature", PretrainConfig.temperature, "NT-Xent temperature.")

# MICLe and augmentation.
flags.DEFINE_enum("augment_on", PretrainConfig.augment_on, AUGMENT_ON, "Pretraining: where a "
                  "view's flip, colour jitter, grayscale and blur run. host: in the input "
                  "pipeline; device: inside the training step, on batches of uint8 crops, for "
                  "accelerators whose host cores cannot keep up (see the README's Performance).")
flags.DEFINE_boolean("use_micle", PretrainConfig.use_micle, "MICLe: positive pairs from two "
                     "different images of a case bag (SimCLR for single-image cases).")
flags.DEFINE_enum("augmentation", DEFAULT_AUGMENTATION, sorted(AUGMENT_PRESETS),
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
flags.DEFINE_enum("rotation_fill_mode", None, list(ROTATION_FILL_MODES),
                  "How rotation fills the corners.")
flags.DEFINE_boolean("lineareval_while_pretraining", PretrainConfig.lineareval_while_pretraining,
                     "Train a linear probe on stop-gradient features while pretraining.")

# Loop, checkpoints, transfer.
flags.DEFINE_integer("steps_per_loop", TrainConfig.steps_per_loop,
                     "Steps per tf.function call (between log lines).")
flags.DEFINE_integer("checkpoint_steps", TrainConfig.checkpoint_steps,
                     "Checkpoint every N steps; 0 = once per epoch.")
flags.DEFINE_integer("keep_checkpoint_max", TrainConfig.keep_checkpoint_max,
                     "Checkpoints to keep.")
flags.DEFINE_integer("run_steps", TrainConfig.run_steps, "Stop this invocation after N steps (for "
                     "time-limited jobs; run again to continue); 0 = run to the end.")
flags.DEFINE_string("init_checkpoint", TrainConfig.init_checkpoint, "Start from these weights: a "
                    "model folder of this package, or an official SimCLR TF2 checkpoint.")
flags.DEFINE_integer("seed", TrainConfig.seed,
                     "Seed of initialisation, shuffling and augmentation.")
flags.DEFINE_boolean("deterministic", TrainConfig.deterministic,
                     "Deterministic TF ops (bit-reproducible, slower).")
flags.DEFINE_boolean("jit_compile", TrainConfig.jit_compile, "Compile the training step with XLA "
                     "(off by default: slower on the CPUs measured, see the README's Performance).")



def model_config() -> ModelConfig:
    return MODEL.build()


def optim_config() -> OptimConfig:
    return OPTIM.build()


def augment_config(preset: str = "") -> AugmentConfig:
    """The `preset` (default: --augmentation) with the augmentation flags that are set."""
    overrides = {k: v for k, v in AUGMENT.values().items() if v is not None}
    return from_flags(augment_preset, preset or FLAGS.augmentation, **overrides)


def data_config() -> DataConfig:
    return DATA.build()


def train_config() -> TrainConfig:
    return TRAIN.build()


def pretrain_config() -> PretrainConfig:
    return PRETRAIN.build()
