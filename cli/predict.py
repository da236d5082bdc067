"""`python -m simclr_med.predict --export_dir=DIR [--top_k=3] [--saliency_dir=DIR
[--saliency_class=NAME]] IMAGE...`: the top labels and their probabilities for each image file, for
a person to read; with `--saliency_dir`, also `<image file stem>_saliency.png` per image: the
Grad-CAM heat map of the predicted class (or of `--saliency_class`) over the preprocessed image.

Needs nothing but TensorFlow (and matplotlib for the PNGs) and an export of `run.py --mode=export`:
each file's bytes go to the `serving/` SavedModel's `serving_default` (and `saliency`) signature,
which decodes and crops them exactly as evaluation does (the names it relies on:
`simclr_med.serving`). Flags: flags/predict_flags.py.
"""

from __future__ import annotations

if __name__ == "__main__":  # the command: hide TensorFlow's start-up notices before it loads
    from flags import entry_point

    entry_point.import_tensorflow_quietly()

import os
import pathlib
from typing import Optional

import tensorflow as tf
from absl import flags

from flags import predict_flags
from simclr_med.data.schema import MULTILABEL
from simclr_med.errors import UserError
from simclr_med.evaluation.saliency import write_saliency_png
from simclr_med.serving import PREDICTED_CLASS, Prediction, ServedClassifier

SALIENCY_SUFFIX = "_saliency.png"


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


def saliency_names(images: list[str]) -> list[str]:
    """`<file stem>_saliency.png` per image; a stem that repeats gets `-2`, `-3`, ... from its
    second image on (skipping names another image already has)."""
    stems = [pathlib.Path(path).stem for path in images]
    taken, seen, names = set(stems), set(), []
    for stem in stems:
        name, copy = stem, 2
        if stem in seen:
            while f"{stem}-{copy}" in taken:
                copy += 1
            name = f"{stem}-{copy}"
        seen.add(stem)
        taken.add(name)
        names.append(name + SALIENCY_SUFFIX)
    return names


def class_index(classifier: ServedClassifier, name: Optional[str]) -> int:
    """The index of class (or label) `name`; PREDICTED_CLASS for None."""
    if name is None:
        return PREDICTED_CLASS
    if name not in classifier.class_names:
        raise UserError(f"--saliency_class={name!r} is none of the model's "
                        f"{'labels' if classifier.task == MULTILABEL else 'classes'}: "
                        f"{', '.join(classifier.class_names)}")
    return classifier.class_names.index(name)


def write_saliency(classifier: ServedClassifier, path: str, output: str, explained: int) -> None:
    with tf.io.gfile.GFile(path, "rb") as f:
        saliency = classifier.saliency(f.read(), explained)
    name = classifier.class_names[saliency.class_index]
    kind = "predicted" if explained == PREDICTED_CLASS else "chosen"
    write_saliency_png(output, saliency.image, saliency.heatmap,
                       f"{os.path.basename(path)}: {name} ({kind}), p = {saliency.probability:.1%}")


def run(export_dir: str, images: list[str], top_k: int, saliency_dir: Optional[str] = None,
        saliency_class: Optional[str] = None) -> int:
    """Prints the top `top_k` predictions of each image file and, with `saliency_dir`, writes
    its Grad-CAM PNG there (of `saliency_class`, default the predicted class); returns how many
    images could not be read."""
    if saliency_class is not None and saliency_dir is None:
        raise UserError("--saliency_class names the class of the saliency maps: give "
                        "--saliency_dir too")
    classifier = ServedClassifier(export_dir)
    explained = class_index(classifier, saliency_class)
    if saliency_dir is not None:
        tf.io.gfile.makedirs(saliency_dir)
    kind = ("independent per-label probabilities" if classifier.task == MULTILABEL
            else "class probabilities")
    print(f"{classifier.path}: {classifier.task}, {len(classifier.class_names)} outputs "
          f"({kind})")
    failed = 0
    for path, name in zip(images, saliency_names(images)):
        try:
            prediction = classifier.predict_file(path, top_k)
            if saliency_dir is not None:
                write_saliency(classifier, path, os.path.join(saliency_dir, name), explained)
        except tf.errors.OpError as error:  # a missing file, bytes that are not an image, ...
            failed += 1
            print(f"{path}\n  could not be read: {reason(error)}")
        else:
            print(format_prediction(prediction))
            if saliency_dir is not None:
                print(f"  saliency map: {os.path.join(saliency_dir, name)}")
    return failed


def main(images: list[str]) -> None:
    if not images:
        raise UserError("name one or more image files (PNG or JPEG) after the flags")
    failed = run(predict_flags.export_dir(), images, predict_flags.top_k(),
                 predict_flags.saliency_dir(), predict_flags.saliency_class())
    if failed:
        raise SystemExit(f"predict: {failed} of {len(images)} image(s) could not be read")


if __name__ == "__main__":
    flags.adopt_module_key_flags(predict_flags)
    entry_point.run(main, takes_args=True)
