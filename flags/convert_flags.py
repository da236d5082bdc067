"""Flags of `python -m simclr_med.convert_checkpoint` and their conversion into plain arguments."""

from __future__ import annotations

import dataclasses
from typing import Optional

from absl import flags

from flags.entry_point import ConfigFlags

FLAGS = flags.FLAGS

flags.DEFINE_string("source", None, "An official SimCLR TF2 checkpoint: a SavedModel folder "
                    "(saved_model/ or saved_model/<n>/), a model_dir holding a `checkpoint` file, "
                    "or a ckpt-N prefix.")
flags.DEFINE_string("output_dir", None, "Empty folder for the converted model (this package's "
                    "checkpoint and model_config.json).")
flags.DEFINE_integer("image_size", 0, "Image size to record in model_config.json; 0: 224 for "
                     "ImageNet stems, 32 for the CIFAR stem. Sizes up to 32 px need the CIFAR "
                     "stem.")
flags.mark_flags_as_required(["source", "output_dir"])


@dataclasses.dataclass(frozen=True)
class ConvertArgs:
    source: str
    output_dir: str
    image_size: Optional[int]  # None: the stem's default


CONVERT = ConfigFlags(ConvertArgs)


def convert_args() -> ConvertArgs:
    return CONVERT.build(image_size=FLAGS.image_size or None)
