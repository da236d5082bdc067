"""`--export_dir`: where `run.py --mode=export` writes its SavedModels and `simclr_med.predict`
reads them."""

from __future__ import annotations

from absl import app, flags

FLAGS = flags.FLAGS

flags.DEFINE_string("export_dir", "", "Folder of the exported SavedModels (serving/, features/). "
                    "run.py --mode=export: default <model_dir>/export.")


def export_dir(model_dir: str = "") -> str:
    """`--export_dir`, else `<model_dir>/export` when a model folder is given."""
    if FLAGS.export_dir:
        return FLAGS.export_dir
    if not model_dir:
        raise app.UsageError("--export_dir is required")
    return f"{model_dir.rstrip('/')}/export"
