"""Flags of bench/micle_throughput.py."""

from __future__ import annotations

from absl import flags

from simclr_med.config import AUGMENT_PRESETS

flags.DEFINE_string("data_dir", "", "A data_prep build; default: build the NIH subset found "
                    "through SIMCLR_MED_DATA into a temporary folder.")
flags.DEFINE_enum("augmentation", "cxr", sorted(AUGMENT_PRESETS), "Augmentation preset.")
flags.DEFINE_boolean("use_micle", True, "MICLe pairs (--nouse_micle: SimCLR).")
flags.DEFINE_integer("resnet_depth", 18, "ResNet depth.")
flags.DEFINE_integer("image_size", 64, "Input size.")
flags.DEFINE_integer("batch", 64, "Pairs per batch.")
flags.DEFINE_integer("pipeline_batches", 60, "Timed batches of the input pipeline.")
flags.DEFINE_integer("train_steps", 12, "Timed training steps.")
flags.DEFINE_integer("steps_per_loop", 4, "Steps per tf.function call.")
flags.DEFINE_string("output", "", "Also write the results as JSON here.")
