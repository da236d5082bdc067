"""The input of fine-tuning and evaluation: labelled single images.

Training: the images of the selected label fraction of the training patients (unlabelled ones
dropped), each augmented once (`augment.augment_view` with the fine-tuning `AugmentConfig`), with
a stateless seed from the element's position in the seeded, shuffled, repeated stream: a resumed
run sees exactly the images an uninterrupted one would have.

Evaluation: every image of a split once, in file order, through `preprocess.preprocess_for_eval`
(the centre crop that serving uses too), with its image and patient id. A TFDS data set has
neither: an image's position is its id, and each image counts as its own patient.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from simclr_med.config import AugmentConfig
from simclr_med.data import augment, preprocess, schema
from simclr_med.data.reader import (AUTOTUNE, Source, epoch_reader, finish, read_images,
                                    shuffled_epochs)
from simclr_med.errors import UserError

LABEL_FIELDS = ("class_id", "labels", "label_mask")
LABEL_FRACTIONS_FILE = schema.LABEL_FRACTIONS_FILE  # written by data_prep beside dataset_info.json


@dataclasses.dataclass(frozen=True)
class LabelledSpec:
    """How training images are drawn and augmented."""

    augment: AugmentConfig
    image_size: int
    label_fraction: float = 1.0
    seed: int = 0
    shuffle_buffer: int = 2048
    threads: int = 0  # the pipeline's private thread pool (0: tf.data's shared one)
    keep_ids: bool = False  # keep image and patient ids (strings) in the batches, for inspection


def is_labelled(image: dict) -> tf.Tensor:
    """Whether any loss term counts this image (a class id >= 0, or an unmasked label)."""
    if "label_mask" in image:
        return tf.reduce_any(image["label_mask"] > 0)
    return image["class_id"] >= 0


def _pixels(image: dict) -> tf.Tensor:
    """Encoded bytes (data_prep builds) or a decoded uint8 image (TFDS)."""
    return image["encoded"] if "encoded" in image else image["image"]


def _decoded(image: dict) -> tf.Tensor:
    if "encoded" in image:
        return preprocess.decode_image(image["encoded"])
    return tf.image.convert_image_dtype(image["image"], tf.float32)


def _check_label_fraction(source: Source, label_fraction: float) -> None:
    if label_fraction < 1.0 and source.tfds_name:
        raise UserError("--label_fraction needs the patient subsets stored by data_prep; "
                        f"the TFDS data set {source.tfds_name!r} has none")


def _read_selected(source: Source, split: str, label_fraction: float, **kwargs) -> tf.data.Dataset:
    _check_label_fraction(source, label_fraction)
    return read_images(source, split, label_fraction=label_fraction, **kwargs).filter(is_labelled)


def training_dataset(source: Source, split: str, spec: LabelledSpec, batch_size: int, *,
                     start_example: int = 0,
                     input_context: Optional[tf.distribute.InputContext] = None
                     ) -> tf.data.Dataset:
    """Endless batches: `image` [B, S, S, 3] and the labels (`class_id` [B]; multi-label
    `labels`, `label_mask` [B, L]), with `spec.keep_ids` also `image_id` and `patient_id` [B]
    (data_prep builds only). `start_example` skips that many images of this pipeline
    (resuming; see `shuffled_epochs`)."""
    pipeline = input_context.input_pipeline_id if input_context else 0
    _check_label_fraction(source, spec.label_fraction)
    read = epoch_reader(source, split, seed=spec.seed, input_context=input_context,
                        label_fraction=spec.label_fraction)
    images = shuffled_epochs(lambda epoch_seed: read(epoch_seed).filter(is_labelled),
                             seed=spec.seed, shuffle_buffer=spec.shuffle_buffer,
                             start_example=start_example)

    def to_example(index, image):
        seed = tf.stack([tf.constant(spec.seed * 1000 + pipeline, tf.int64), index])
        example = {"image": augment.augment_view(_decoded(image), seed, spec.augment,
                                                 spec.image_size)}
        example.update({k: image[k] for k in LABEL_FIELDS if k in image})
        if spec.keep_ids:
            example.update({k: image[k] for k in ("image_id", "patient_id")})
        return example

    examples = images.map(to_example, num_parallel_calls=AUTOTUNE, deterministic=True)
    return finish(examples, batch_size, spec.threads)


def _identified(source: Source, split: str, label_fraction: float) -> tf.data.Dataset:
    """The images of `split` (of the label fraction's patients), not decoded, each with an
    `image_id` and a `patient_id` (TFDS: its position, and each image its own patient)."""
    images = (_read_selected(source, split, label_fraction) if label_fraction < 1.0
              else read_images(source, split))

    def with_ids(index, image):
        image = dict(image)
        image["image_id"] = image.get("image_id", tf.strings.as_string(index))
        image["patient_id"] = image.get("patient_id", image["image_id"])
        return image

    return images.enumerate().map(with_ids, num_parallel_calls=AUTOTUNE, deterministic=True)


def evaluation_dataset(source: Source, split: str, image_size: int, crop_proportion: float,
                       batch_size: int, max_images: int = 0, label_fraction: float = 1.0,
                       patients: Optional[Sequence[str]] = None) -> tf.data.Dataset:
    """Finite batches of every image of `split` (the first `max_images` when > 0; only those of
    `patients` when given): `image`, `image_id`, `patient_id` and the labels. Unlabelled images
    are kept (predictions are written for them); the metrics skip them."""
    images = _identified(source, split, label_fraction)
    if max_images:
        images = images.take(max_images)
    if patients is not None:
        chosen = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(patients), tf.string), tf.ones([len(patients)], tf.int32)), 0)
        images = images.filter(lambda image: chosen.lookup(image["patient_id"]) > 0)

    def to_example(image):
        example = {"image": preprocess.preprocess_for_eval(_pixels(image), image_size,
                                                           crop_proportion)}
        example.update({k: image[k] for k in (*LABEL_FIELDS, "image_id", "patient_id")
                        if k in image})
        return example

    examples = images.map(to_example, num_parallel_calls=AUTOTUNE, deterministic=True)
    return examples.batch(batch_size).prefetch(AUTOTUNE)


def image_ids(source: Source, split: str) -> dict[str, np.ndarray]:
    """`image_id`, `patient_id` and, for a data_prep build, `case_id` (str arrays) of every image
    of `split`, in the order `evaluation_dataset` reads them; no image is decoded."""
    fields = ("image_id", "patient_id", "case_id")
    ids = _identified(source, split, 1.0).map(
        lambda image: {k: image[k] for k in fields if k in image})
    collected: dict[str, list[bytes]] = {}
    for batch in ids.batch(4096):
        for key, value in batch.items():
            collected.setdefault(key, []).extend(value.numpy().tolist())
    return {k: np.asarray([v.decode() for v in values], dtype=str)
            for k, values in collected.items()}


def unlabelled_reason(source: Source, split: str) -> str:
    """Why `split` cannot be scored ("" when it can): it holds no image, or none of its images
    has a label that losses and metrics count (read up to the first one, nothing decoded)."""
    images = source.info.split_counts.get(split, {}).get("images", 0)
    if not images:
        return f"split {split!r} holds no image"
    first = read_images(source, split).filter(is_labelled).take(1)
    if not first.reduce(0, lambda count, _: count + 1).numpy():
        return f"split {split!r} has {images} images but none of them has a label"
    return ""


def count_training_images(source: Source, split: str, label_fraction: float) -> int:
    """Images of the selected patients (what one fine-tuning epoch sees, give or take the rare
    unlabelled image): the build's count for the whole split, data_prep's
    `label_fractions.json` for a standard fraction, otherwise counted from the records."""
    if label_fraction == 1.0:
        return source.num_examples(split)
    stored = _stored_fraction_images(source, split, label_fraction)
    if stored is not None:
        return stored
    logging.info("counting the images of label fraction %s in split %r", label_fraction, split)
    images = _read_selected(source, split, label_fraction)
    return int(images.reduce(0, lambda count, _: count + 1).numpy())


def _stored_fraction_images(source: Source, split: str, fraction: float) -> Optional[int]:
    path = os.path.join(source.data_dir, LABEL_FRACTIONS_FILE)
    if not source.data_dir or not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        stored = json.load(f)
    entry = stored.get("fractions", {}).get(str(fraction))
    if stored.get("split") != split or entry is None:
        return None
    return int(entry["images"])
