"""`--export_dir`: where `run.py --mode=export` writes its SavedModels and `simclr_med.predict`
reads them; `--max_image_pixels`: the largest image the serving SavedModel decodes."""

from __future__ import annotations

from absl import app, flags

from simclr_med.serving import MAX_IMAGE_PIXELS

FLAGS = flags.FLAGS

flags.DEFINE_string("export_dir", "", "Folder of the exported SavedModels (serving/, features/). "
                    "run.py --mode=export: default <model_dir>/export.")
flags.DEFINE_integer("max_image_pixels", MAX_IMAGE_PIXELS, "run.py --mode=export: the "
                     "serving SavedModel refuses images of more pixels (height x width, read from "
                     "the PNG or JPEG header before decoding) with an InvalidArgumentError; "
                     "decoding takes 8-16 bytes of memory per pixel.", lower_bound=1)


def export_dir(model_dir: str = "") -> str:
    """`--export_dir`, else `<model_dir>/export` when a model folder is given."""
    if FLAGS.export_dir:
        return FLAGS.export_dir
    if not model_dir:
        raise app.UsageError("--export_dir is required")
    return f"{model_dir.rstrip('/')}/export"


def max_image_pixels() -> int:
    return FLAGS.max_image_pixels
