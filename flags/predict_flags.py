"""Flags of `python -m simclr_med.predict` (the image files are its positional arguments)."""

from __future__ import annotations

from absl import flags

from flags import export_flags

FLAGS = flags.FLAGS
flags.declare_key_flag("export_dir")  # export_flags' other flag is the exporter's

flags.DEFINE_integer("top_k", 3, "Labels to print per image, most probable first.", lower_bound=1)


def export_dir() -> str:
    return export_flags.export_dir()


def top_k() -> int:
    return FLAGS.top_k
