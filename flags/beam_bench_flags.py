"""Flags of bench/beam_build_throughput.py."""

from __future__ import annotations

from absl import flags

flags.DEFINE_integer("image_size", 112, "Side the HAM10000 images are resized to (work per "
                     "image the workers share).", lower_bound=1)


def image_size() -> int:
    return flags.FLAGS.image_size
