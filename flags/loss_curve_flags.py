"""Flags of bench/loss_curve.py."""

from __future__ import annotations

from absl import flags

flags.DEFINE_string(
    "setting", "depth=18,size=32,batch=64,blur=0",
    "The pretraining setting (comma-separated key=value as in bench/pretrain_step.py); its "
    "precision is replaced by each of --precisions.")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"],
                  "Precisions to compare; the first is the reference.")
flags.DEFINE_integer("seeds", 3, "Runs per precision, seeds 0..N-1 (the same seeds for each).")
flags.DEFINE_integer("steps", 200, "Pretraining steps per run.")
flags.DEFINE_integer("steps_per_loop", 10, "Steps per logged point (the loss is their mean).")
flags.DEFINE_float("tail", 0.5, "The fraction of logged points, from the end, whose mean loss "
                   "is compared.")
flags.DEFINE_string("data_dir", "", "A data_prep build to read; default: the synthetic set.")
flags.DEFINE_string("output", "", "Also write the curves and the comparison as JSON here.")
flags.DEFINE_string("plot", "", "Also draw the curves into this PNG.")
flags.DEFINE_string("child", "", "Internal: one run, as JSON, in this process.")
