"""The exported serving SavedModel as a client sees it: the names of its parts and a classifier.

`simclr_med.stages.export` writes the SavedModel under these names; `python -m simclr_med.predict`
and any other client read it through them. Needs nothing but TensorFlow: no model code is loaded.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from simclr_med.errors import UserError

SERVING_DIR = "serving"
SERVING_SIGNATURE = "serving_default"  # TensorFlow Serving's default signature key
IMAGES = "images"  # input of every serving signature
PROBABILITIES = "probabilities"
EMBEDDING = "embedding"
# Grad-CAM: `images` and `class_index` (int32 [batch], -1: the predicted class) -> `heatmap`
# [batch, size, size] in [0, 1], `image` (the preprocessed pixels it refers to) and `probabilities`.
SALIENCY_SIGNATURE = "saliency"
CLASS_INDEX = "class_index"
PREDICTED_CLASS = -1
HEATMAP = "heatmap"
IMAGE = "image"
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


@dataclasses.dataclass(frozen=True)
class Saliency:
    """One image's Grad-CAM map, as the `saliency` signature returns it."""

    heatmap: np.ndarray  # [size, size] in [0, 1]
    image: np.ndarray  # [size, size, 3] in [0, 1]: the preprocessed pixels the map refers to
    probabilities: np.ndarray  # [classes]
    class_index: int  # the class or label explained

    @property
    def probability(self) -> float:
        return float(self.probabilities[self.class_index])


class ServedClassifier:
    """The serving SavedModel, called through its `serving_default` (and `saliency`) signature."""

    def __init__(self, export_dir: str):
        self.path = serving_path(export_dir)
        loaded = tf.saved_model.load(self.path)
        self._serve = loaded.signatures[SERVING_SIGNATURE]
        self._saliency = loaded.signatures.get(SALIENCY_SIGNATURE)
        self.class_names = [name.decode() for name in getattr(loaded, CLASS_NAMES).numpy()]
        self.task = getattr(loaded, TASK).numpy().decode()

    def probabilities(self, encoded: bytes) -> np.ndarray:
        """[classes] probabilities for one encoded PNG or JPEG image."""
        return self.batch_probabilities([encoded])[0]

    def batch_probabilities(self, encoded: Sequence[bytes]) -> np.ndarray:
        """[images, classes] probabilities for encoded PNG or JPEG images, in one call."""
        return self._serve(**{IMAGES: tf.constant(list(encoded))})[PROBABILITIES].numpy()

    def saliency(self, encoded: bytes, class_index: int = PREDICTED_CLASS) -> Saliency:
        """The Grad-CAM map of one encoded PNG or JPEG image for `class_index` (-1: the
        predicted class, or the most probable label)."""
        if self._saliency is None:
            raise UserError(f"the SavedModel {self.path} has no {SALIENCY_SIGNATURE!r} signature: "
                            "export the model again with this version")
        outputs = self._saliency(**{IMAGES: tf.constant([encoded]),
                                    CLASS_INDEX: tf.constant([class_index], tf.int32)})
        probabilities = outputs[PROBABILITIES].numpy()[0]
        explained = class_index if class_index >= 0 else int(np.argmax(probabilities))
        return Saliency(outputs[HEATMAP].numpy()[0], outputs[IMAGE].numpy()[0], probabilities,
                        explained)

    def predict_file(self, path: str, top_k: int) -> Prediction:
        with tf.io.gfile.GFile(path, "rb") as f:
            probs = self.probabilities(f.read())
        order = np.argsort(-probs, kind="stable")[:top_k]
        return Prediction(path, [(self.class_names[i], float(probs[i])) for i in order])
