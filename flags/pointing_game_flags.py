"""Flags of bench/pointing_game.py."""

from __future__ import annotations

from absl import flags

from flags import export_flags

FLAGS = flags.FLAGS
flags.declare_key_flag("export_dir")  # export_flags' other flag is the exporter's

flags.DEFINE_string("data_dir", None, "The data_prep build whose images are scored.")
flags.DEFINE_string("split", "test", "Its split to score.")
flags.DEFINE_string("manifest", None, "CSV with a row per image: its id and its mask file "
                    "(e.g. the data set's metadata.csv).")
flags.DEFINE_string("image_id_column", "image_id", "Manifest column of the image id (the build's "
                    "image_id, i.e. data_prep's --image_id_column).")
flags.DEFINE_string("mask_column", "mask", "Manifest column of the mask file (a PNG or JPEG, "
                    "nonzero inside the region; empty: the image has none and is skipped).")
flags.DEFINE_string("mask_root", "", "Folder the mask paths are relative to (default: the "
                    "manifest's folder).")
flags.DEFINE_integer("bootstrap_samples", 1000, "Patient bootstrap resamples of the intervals.",
                     lower_bound=1)
flags.DEFINE_string("output", "pointing_game.json", "Where the JSON results go.")
flags.DEFINE_string("example_png", "", "Also draw one image, its heat map and the mask outline "
                    "here.")
flags.DEFINE_string("example_image_id", "", "The image of --example_png (default: the split's "
                    "first scored image).")

flags.mark_flags_as_required(["data_dir", "manifest"])


def export_dir() -> str:
    return export_flags.export_dir()


def options() -> dict:
    return {name: FLAGS[name].value for name in (
        "data_dir", "split", "manifest", "image_id_column", "mask_column", "mask_root",
        "bootstrap_samples", "output", "example_png", "example_image_id")}
