"""The exported serving SavedModel as a client sees it: the names of its parts and a classifier.

`simclr_med.stages.export` writes the SavedModel under these names; `python -m simclr_med.predict`
and any other client read it through them. Needs nothing but TensorFlow: no model code is loaded.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from simclr_med.errors import UserError

SERVING_DIR = "serving"
SERVING_SIGNATURE = "serving_default"  # TensorFlow Serving's default signature key
IMAGES = "images"  # input of both serving signatures
PROBABILITIES = "probabilities"
EMBEDDING = "embedding"
CLASS_NAMES = "class_names"  # SavedModel attributes: a string vector and a string scalar
TASK = "task"
# Default of the largest image (height x width) serving decodes, the SavedModel variable
# `max_image_pixels`: twice a large digital mammogram (4096 x 5625 = 23 Mpx). Decoding takes about
# 8 (grayscale) to 16 (RGB) bytes of memory per pixel.
MAX_IMAGE_PIXELS = 50_000_000


def serving_path(export_dir: str) -> str:
    """The serving SavedModel: `export_dir/serving/`, or `export_dir` itself if it is one."""
    if tf.io.gfile.exists(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    path = os.path.join(export_dir, SERVING_DIR)
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        raise UserError(
            f"no serving SavedModel in {export_dir!r} (expected {path}/saved_model.pb): export a "
            "fine-tuned model with `python run.py --mode=export --model_dir=... --export_dir=...`")
    return path


@dataclasses.dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class or label name, probability), most probable first


class ServedClassifier:
    """The serving SavedModel, called through its `serving_default` signature."""

    def __init__(self, export_dir: str):
        self.path = serving_path(export_dir)
        loaded = tf.saved_model.load(self.path)
        self._serve = loaded.signatures[SERVING_SIGNATURE]
        self.class_names = [name.decode() for name in getattr(loaded, CLASS_NAMES).numpy()]
        self.task = getattr(loaded, TASK).numpy().decode()

    def probabilities(self, encoded: bytes) -> np.ndarray:
        """[classes] probabilities for one encoded PNG or JPEG image."""
        return self._serve(**{IMAGES: tf.constant([encoded])})[PROBABILITIES].numpy()[0]

    def predict_file(self, path: str, top_k: int) -> Prediction:
        with tf.io.gfile.GFile(path, "rb") as f:
            probs = self.probabilities(f.read())
        order = np.argsort(-probs, kind="stable")[:top_k]
        return Prediction(path, [(self.class_names[i], float(probs[i])) for i in order])
