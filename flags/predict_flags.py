"""Flags of `python -m simclr_med.predict` (the image files are its positional arguments)."""

from __future__ import annotations

from absl import flags

from flags import export_flags

FLAGS = flags.FLAGS
flags.declare_key_flag("export_dir")  # export_flags' other flag is the exporter's

flags.DEFINE_integer("top_k", 3, "Labels to print per image, most probable first.", lower_bound=1)
flags.DEFINE_string("saliency_dir", None, "Folder for one Grad-CAM PNG per image, "
                    "<image file stem>_saliency.png: the heat map over the preprocessed image.")
flags.DEFINE_string("saliency_class", None, "Class (or label) name the saliency maps explain "
                    "(default: each image's predicted class, or most probable label).")


def export_dir() -> str:
    return export_flags.export_dir()


def top_k() -> int:
    return FLAGS.top_k


def saliency_dir() -> str | None:
    return FLAGS.saliency_dir or None


def saliency_class() -> str | None:
    return FLAGS.saliency_class or None
