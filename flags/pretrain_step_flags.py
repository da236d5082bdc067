"""Flags of bench/pretrain_step.py."""

from __future__ import annotations

from absl import flags

flags.DEFINE_multi_string(
    "setting", ["depth=50,size=224,batch=32,precision=float32,fused_bn=0",
                "depth=50,size=224,batch=32,precision=float32",
                "depth=50,size=224,batch=32,precision=mixed_bfloat16,fused_bn=0",
                "depth=50,size=224,batch=32,precision=mixed_bfloat16"],
    "A setting to measure (repeat the flag for several; the first is the baseline of the "
    "ratios): comma-separated key=value of depth, width, size, batch, precision, micle (0/1), "
    "replicas (> 1: mirrored over that many logical CPUs), augment (a preset), blur (0/1), jit "
    "(0/1: --jit_compile), fused_bn (0/1: --fused_batch_norm), input_threads (--input_threads), "
    "intra and inter (TensorFlow's op thread pools; 0: its defaults), augment_on (host/device: "
    "--augment_on). The default: the README's table.")
flags.DEFINE_integer("rounds", 2, "Rounds: each runs every setting once, in order.")
flags.DEFINE_integer("steps", 8, "Timed steps per measurement (after one traced loop).")
flags.DEFINE_integer("steps_per_loop", 4, "Steps per tf.function call.")
flags.DEFINE_boolean("yardstick", True, "Also time keras.applications.ResNet<depth> trained "
                     "supervised on as many images per step, at the same precision (depths 50, "
                     "101, 152).")
flags.DEFINE_string("data_dir", "", "A data_prep build to read; default: the synthetic set.")
flags.DEFINE_string("output", "", "Also write the results as JSON here.")
flags.DEFINE_string("child", "", "Internal: one measurement, as JSON, in this process.")
