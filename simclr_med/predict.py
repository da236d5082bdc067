"""`python -m simclr_med.predict --export_dir=DIR [--top_k=3] IMAGE...`: the top labels and their
probabilities for each image file, for a person to read.

Needs nothing but TensorFlow and an export of `run.py --mode=export`: each file's bytes go to the
`serving/` SavedModel's `serving_default` signature, which decodes and crops them exactly as
evaluation does. This module also names the parts of that SavedModel a client relies on; the
exporter (`simclr_med.export`) writes them under these names. Flags: flags/predict_flags.py.
"""

from __future__ import annotations

if __name__ == "__main__":  # the command: hide TensorFlow's start-up notices before it loads
    from flags import entry_point

    entry_point.import_tensorflow_quietly()

import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl import flags

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
MULTILABEL = "multilabel"


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


def format_prediction(prediction: Prediction) -> str:
    width = max(len(name) for name, _ in prediction.top)
    lines = [prediction.path]
    lines += [f"  {rank}. {name:<{width}}  {prob:7.2%}"
              for rank, (name, prob) in enumerate(prediction.top, 1)]
    return "\n".join(lines)


def reason(error: tf.errors.OpError) -> str:
    """The line of a TensorFlow error that says what was wrong, without graph and node context."""
    context = ("Graph execution error", "Detected at node", "<stack traces", "[[")
    lines = [line.strip() for line in error.message.splitlines()]
    useful = [line for line in lines if line and not line.startswith(context)]
    return useful[-1] if useful else error.message


def run(export_dir: str, images: list[str], top_k: int) -> int:
    """Prints the top `top_k` predictions of each image file; returns how many could not be read."""
    classifier = ServedClassifier(export_dir)
    kind = ("independent per-label probabilities" if classifier.task == MULTILABEL
            else "class probabilities")
    print(f"{classifier.path}: {classifier.task}, {len(classifier.class_names)} outputs "
          f"({kind})")
    failed = 0
    for path in images:
        try:
            prediction = classifier.predict_file(path, top_k)
        except tf.errors.OpError as error:  # a missing file, bytes that are not an image, ...
            failed += 1
            print(f"{path}\n  could not be read: {reason(error)}")
        else:
            print(format_prediction(prediction))
    return failed


def main(images: list[str]) -> None:
    if not images:
        raise UserError("name one or more image files (PNG or JPEG) after the flags")
    failed = run(predict_flags.export_dir(), images, predict_flags.top_k())
    if failed:
        raise SystemExit(f"predict: {failed} of {len(images)} image(s) could not be read")


if __name__ == "__main__":
    # Imported here rather than at the top: `simclr_med.export` imports this module for the
    # names above, and the processes that export must not get predict's flags.
    from flags import predict_flags

    flags.adopt_module_key_flags(predict_flags)
    entry_point.run(main, takes_args=True)
