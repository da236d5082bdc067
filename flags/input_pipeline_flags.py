"""Flags of bench/input_pipeline.py."""

from __future__ import annotations

from absl import flags

flags.DEFINE_multi_string(
    "setting", ["micle=0,augment=simclr,size=64", "micle=1,augment=simclr,size=64",
                "micle=0,augment=cxr,size=64", "micle=1,augment=cxr,size=64",
                "micle=0,augment=simclr,size=224", "micle=1,augment=simclr,size=224",
                "micle=0,augment=cxr,size=224", "micle=1,augment=cxr,size=224"],
    "A setting to measure (repeat for several; the first is the baseline of the ratios): "
    "comma-separated key=value of micle (0/1), augment (a preset), size (output px), batch "
    "(pairs), cores (CPUs the measurement may use), stored (px of the synthetic images; 0: "
    "64 for outputs up to 64 px, else 256), augment_on (host; device: only the host's share "
    "of --augment_on=device, the uint8 crops).")
flags.DEFINE_integer("rounds", 2, "Rounds: each runs every setting once, in order.")
flags.DEFINE_integer("batches", 20, "Timed batches per measurement (after the warm-up).")
flags.DEFINE_integer("warmup", 5, "Batches drawn before timing (tracing, filling the prefetch).")
flags.DEFINE_string("data_dir", "", "A data_prep build to read instead of the synthetic sets.")
flags.DEFINE_string("output", "", "Also write the results as JSON here.")
flags.DEFINE_string("child", "", "Internal: one measurement, as JSON, in this process.")
