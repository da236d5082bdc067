"""Flags of bench/train_throughput.py."""

from __future__ import annotations

from absl import flags

FLAGS = flags.FLAGS

flags.DEFINE_list("configs", ["18:32:64", "50:224:32"],
                  "depth:image_size:batch settings to measure (ResNet width 1).")
flags.DEFINE_integer("steps", 12, "Timed steps per setting (after one warm-up loop).")
flags.DEFINE_integer("steps_per_loop", 4, "Steps per tf.function call.")
flags.DEFINE_string("data_dir", "", "A data_prep build to read; default: the synthetic set.")
flags.DEFINE_boolean("use_micle", False, "Measure MICLe pretraining instead of SimCLR.")
flags.DEFINE_string("output", "", "Also write the results as JSON here.")


def settings() -> list[tuple[int, int, int]]:
    """(depth, image_size, batch) of each --configs entry."""
    return [tuple(int(v) for v in entry.split(":")) for entry in FLAGS.configs]


def options() -> dict:
    return {"steps": FLAGS.steps, "steps_per_loop": FLAGS.steps_per_loop,
            "data_dir": FLAGS.data_dir, "use_micle": FLAGS.use_micle, "output": FLAGS.output}
