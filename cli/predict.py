"""`python -m simclr_med.predict --export_dir=DIR [--top_k=3] IMAGE...`: the top labels and their
probabilities for each image file, for a person to read.

Needs nothing but TensorFlow and an export of `run.py --mode=export`: each file's bytes go to the
`serving/` SavedModel's `serving_default` signature, which decodes and crops them exactly as
evaluation does (the names it relies on: `simclr_med.serving`). Flags: flags/predict_flags.py.
"""

from __future__ import annotations

if __name__ == "__main__":  # the command: hide TensorFlow's start-up notices before it loads
    from flags import entry_point

    entry_point.import_tensorflow_quietly()

import tensorflow as tf
from absl import flags

from flags import predict_flags
from simclr_med.data.schema import MULTILABEL
from simclr_med.errors import UserError
from simclr_med.serving import Prediction, ServedClassifier


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
    flags.adopt_module_key_flags(predict_flags)
    entry_point.run(main, takes_args=True)
