"""Flags of `python -m simclr_med.make_synthetic` (`cli/make_synthetic.py`: writes the synthetic
image folder)."""

from __future__ import annotations

from absl import flags

FLAGS = flags.FLAGS

flags.DEFINE_string("output_dir", None, "Folder for images/*.png and metadata.csv.")
flags.DEFINE_integer("num_cases", 240, "Cases (each a bag of 1-4 images).")
flags.DEFINE_integer("image_size", 64, "Image side in pixels.")
flags.DEFINE_integer("seed", 0, "Generator seed: the same seed gives the same files.")
flags.mark_flag_as_required("output_dir")


def args() -> dict:
    return {"output_dir": FLAGS.output_dir, "num_cases": FLAGS.num_cases,
            "image_size": FLAGS.image_size, "seed": FLAGS.seed}
