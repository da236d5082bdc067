"""Flags of bench/inference.py."""

from __future__ import annotations

from absl import flags

flags.DEFINE_multi_string(
    "setting", ["depth=18,width=1,size=64", "depth=50,width=1,size=224"],
    "A model to measure (repeat for several; the first is the baseline of the ratios): "
    "comma-separated key=value of depth, width, size (px), batch, cores (CPUs it may use).")
flags.DEFINE_integer("rounds", 2, "Rounds: each runs every setting once, in order.")
flags.DEFINE_integer("images", 256, "Images timed per measurement and path (after a warm-up "
                     "batch).")
flags.DEFINE_string("output", "", "Also write the results as JSON here.")
flags.DEFINE_string("child", "", "Internal: one measurement, as JSON, in this process.")
