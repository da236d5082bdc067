"""SavedModel export: a classifier that serves with nothing but TensorFlow, and a feature extractor.

`export(model_dir, export_dir)` writes, from a model folder's checkpoint:
- `serving/` (models with a task head, i.e. not pretraining runs): signature `serving_default`
  maps `images`, a 1-D string tensor of encoded PNG or JPEG bytes of any size, to `probabilities`
  [batch, classes] (softmax for multi-class, sigmoid for multi-label) and `embedding` [batch, dim]
  (the backbone's `final_avg_pool`). Decoding and the centre crop are
  `preprocess.preprocess_for_eval` itself, traced into the graph, so serving sees the pixels
  evaluation sees. Signature
  `serving_preprocessed` takes float images [batch, image_size, image_size, 3] in [0, 1] instead.
  Signature `saliency` takes the same `images` and `class_index` (int32 [batch], -1: the predicted
  class) and returns Grad-CAM's `heatmap` [batch, image_size, image_size] in [0, 1] (of
  `block_group4`, `simclr_med.evaluation.saliency`), the pixels `image` it refers to and
  `probabilities`.
  Class names and task are assets (`assets/labels.txt`, one name a line; `assets/task.txt`) and the
  string variables `class_names` and `task`. Images of more than `max_image_pixels` pixels (a
  variable of the export, read from each PNG's IHDR or JPEG's frame header before anything is
  decoded) are refused, so a small file that claims a huge image cannot exhaust the server.
- `features/`: the reference SimCLR SavedModel's interface. `m(images, trainable=False)` on float
  images [batch, H, W, 3] in [0, 1] returns the dict of endpoints (`initial_conv`,
  `initial_max_pool`, `block_group1`..`block_group4`, `final_avg_pool`, `proj_head_input`,
  `proj_head_output`), deterministically (batch norm in inference mode, no augmentation);
  `m.image_size` is the size the model was trained at.
  `trainable=True` runs batch norm in training mode (batch statistics; the moving averages are
  updated) for fine-tuning through `m.trainable_variables` with a GradientTape. Its
  `serving_default` signature is the `trainable=False` call.

Both are plain TensorFlow objects holding the Keras variables (as `keras.export.ExportArchive`
does), not Keras models: `tf.saved_model.load` needs neither Keras nor this package. Neither runs
the network on an empty batch (`simclr.unless_empty`): it returns empty outputs of the right shapes.

An export is written beside the earlier one (`<export_dir>/.incomplete/`) and moved into place only
once complete, so a failed export leaves the earlier one as it was.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile

import tensorflow as tf
from absl import logging

from simclr_med.checkpoints import native, trained_model
from simclr_med.data import preprocess, schema
from simclr_med.errors import UserError
from simclr_med.evaluation import saliency
from simclr_med.models.simclr import OutputShape, SimCLRModel, output_shapes, unless_empty
from simclr_med.serving import (CLASS_INDEX, CLASS_NAMES, EMBEDDING, HEATMAP, IMAGE, IMAGES,
                                MAX_IMAGE_PIXELS, PROBABILITIES, SALIENCY_SIGNATURE, SERVING_DIR,
                                SERVING_SIGNATURE, TASK)

FEATURES_DIR = "features"
STAGING_DIR = ".incomplete"  # inside export_dir, where an export is written before it is moved
PREPROCESSED_SIGNATURE = "serving_preprocessed"
LABELS_ASSET = "labels.txt"
TASK_ASSET = "task.txt"
# Leading bytes of the two formats serving accepts (tf.io.is_jpeg checks the same three).
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# PNG: the IHDR chunk comes first; its type at bytes 12-15, width and height (big-endian) at 16-23.
PNG_IHDR = b"IHDR"
PNG_HEADER_BYTES = 24

_AutoTrackable = tf.__internal__.tracking.AutoTrackable


@dataclasses.dataclass(frozen=True)
class ExportResult:
    checkpoint: str
    global_step: int
    paths: dict[str, str]  # "serving" and/or "features" -> SavedModel folder


def has_task_head(record: native.ModelRecord) -> bool:
    """Whether the model's supervised head is a task classifier worth serving.

    A pretraining run's head is the linear-evaluation probe on stop-gradient features: such a
    run exports only its features.
    """
    return record.num_classes > 0 and record.source != "pretrain"


class FeatureExtractor(_AutoTrackable):
    """`__call__(images, trainable=False)` -> endpoint dict, with `variables` and
    `trainable_variables` (the names TF Hub's reusable SavedModels use) and `image_size`."""

    def __init__(self, model: SimCLRModel):
        super().__init__()
        if model.supervised_head is not None:
            raise ValueError("the feature extractor is built from a model without supervised head")
        self._forward = model.__call__  # a bound method: not tracked, only its variables are
        self._shapes = tuple(output_shapes(model).items())  # a tuple: not a tracked dict
        self.variables = list(model.variables)
        self.trainable_variables = list(model.trainable_variables)
        # The input size the model was trained at (any size runs).
        self.image_size = tf.Variable(model.config.image_size, trainable=False)

    @tf.function
    def __call__(self, images: tf.Tensor, trainable: bool = False) -> dict[str, tf.Tensor]:
        def forward(batch: tf.Tensor) -> dict[str, tf.Tensor]:
            return _float32(self._forward(batch, training=trainable))

        return unless_empty(images, forward, dict(self._shapes))


class Classifier(_AutoTrackable):
    """Encoded images (or preprocessed float images) -> probabilities and embedding."""

    def __init__(self, model: SimCLRModel, record: native.ModelRecord, assets_dir: str,
                 max_image_pixels: int = MAX_IMAGE_PIXELS):
        super().__init__()
        check_servable(record, max_image_pixels)
        config = record.model
        # A converted official checkpoint's head has classes but no names: number them.
        names = record.class_names or tuple(str(i) for i in range(record.num_classes))
        self._forward = model.__call__
        self._task = record.task
        self._image_size = config.image_size
        self._crop_proportion = config.eval_crop_proportion
        self._shapes = ((PROBABILITIES, OutputShape(record.num_classes)),
                        (EMBEDDING, output_shapes(model)["final_avg_pool"]))
        self.variables = list(model.variables)
        self.max_image_pixels = tf.Variable(max_image_pixels, dtype=tf.int64, trainable=False)
        setattr(self, CLASS_NAMES, tf.Variable(list(names), trainable=False))
        setattr(self, TASK, tf.Variable(record.task, trainable=False))
        self.labels_file = tf.saved_model.Asset(
            _write_text(assets_dir, LABELS_ASSET, "".join(f"{name}\n" for name in names)))
        self.task_file = tf.saved_model.Asset(
            _write_text(assets_dir, TASK_ASSET, f"{record.task}\n"))
        size = config.image_size
        self.serve_encoded = tf.function(self._serve_encoded, input_signature=[
            tf.TensorSpec([None], tf.string, name=IMAGES)])
        self.serve_preprocessed = tf.function(self._predict, input_signature=[
            tf.TensorSpec([None, size, size, 3], tf.float32, name=IMAGES)])
        self._grad_cam = functools.partial(saliency.grad_cam_with_logits, model)  # not tracked
        self.serve_saliency = tf.function(self._saliency, input_signature=[
            tf.TensorSpec([None], tf.string, name=IMAGES),
            tf.TensorSpec([None], tf.int32, name=CLASS_INDEX)])

    def _decode(self, images: tf.Tensor) -> tf.Tensor:
        """Encoded images -> the evaluation's pixels [batch, size, size, 3], after the checks."""
        size = self._image_size
        return tf.map_fn(
            lambda encoded: preprocess.preprocess_for_eval(encoded, size, self._crop_proportion),
            require_pixels_at_most(require_png_or_jpeg(images), self.max_image_pixels),
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))

    def _serve_encoded(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._predict(self._decode(images))

    def _predict(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return unless_empty(images, self._probabilities, dict(self._shapes))

    def _probabilities(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = self._forward(images, training=False)
        logits = tf.cast(outputs["logits_sup"], tf.float32)
        return {PROBABILITIES: self._probabilities_of(logits),
                EMBEDDING: tf.cast(outputs["final_avg_pool"], tf.float32)}

    def _probabilities_of(self, logits: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(logits) if self._task == schema.MULTICLASS else tf.sigmoid(logits)

    def _saliency(self, images: tf.Tensor, class_index: tf.Tensor) -> dict[str, tf.Tensor]:
        """Grad-CAM maps (`saliency.grad_cam`, of the last block group) of `class_index` (-1: the
        predicted class) on the pixels serving_default sees, with those pixels."""
        check = tf.debugging.assert_equal(
            tf.size(class_index), tf.size(images),
            message=f"{CLASS_INDEX} must hold one class index (or -1) per image")
        with tf.control_dependencies([check]):
            pixels = self._decode(images)

        def explain(batch: tf.Tensor) -> dict[str, tf.Tensor]:
            heatmap, logits = self._grad_cam(batch, class_index)
            return {HEATMAP: heatmap[..., None], PROBABILITIES: self._probabilities_of(logits)}

        # The heat map gets a channel axis only to go through unless_empty's feature-map shape.
        outputs = unless_empty(pixels, explain, {HEATMAP: OutputShape(1, stride=1),
                                                 PROBABILITIES: dict(self._shapes)[PROBABILITIES]})
        size = self._image_size
        return {HEATMAP: tf.ensure_shape(outputs[HEATMAP][..., 0], [None, size, size]),
                IMAGE: pixels, PROBABILITIES: outputs[PROBABILITIES]}


def check_servable(record: native.ModelRecord, max_image_pixels: int) -> None:
    if record.task not in (schema.MULTICLASS, schema.MULTILABEL):
        raise UserError(f"cannot serve task {record.task!r}: expected {schema.MULTICLASS} or "
                        f"{schema.MULTILABEL}")
    if max_image_pixels < 1:
        raise UserError(f"the pixel limit of served images must be positive, got "
                        f"{max_image_pixels}")


def _float32(outputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {name: tf.cast(value, tf.float32) for name, value in outputs.items()}


def require_png_or_jpeg(images: tf.Tensor) -> tf.Tensor:
    """`images`, after checking each is PNG or JPEG bytes; raises InvalidArgumentError naming the
    batch positions of those that are not (empty strings included)."""
    known = tf.logical_or(tf.equal(tf.strings.substr(images, 0, len(PNG_SIGNATURE)), PNG_SIGNATURE),
                          tf.equal(tf.strings.substr(images, 0, len(JPEG_SIGNATURE)),
                                   JPEG_SIGNATURE))
    check = tf.debugging.Assert(
        tf.reduce_all(known),
        ["images must be PNG or JPEG bytes; these batch positions are not:",
         tf.reshape(tf.where(tf.logical_not(known)), [-1])], summarize=32)
    with tf.control_dependencies([check]):
        return tf.identity(images)


def image_sizes(images: tf.Tensor) -> tf.Tensor:
    """[batch, 2] int64 (height, width) of PNG or JPEG bytes, read from their headers without
    decoding: a PNG's IHDR chunk, a JPEG's frame (SOFn) header (`tf.io.extract_jpeg_shape`).
    Bytes without an IHDR chunk where a PNG has it give 0 x 0 (their decoding fails later)."""
    def png_size(encoded: tf.Tensor) -> tf.Tensor:
        header = tf.io.decode_raw(tf.strings.substr(encoded, 0, PNG_HEADER_BYTES), tf.uint8,
                                  fixed_length=PNG_HEADER_BYTES)
        is_ihdr = tf.reduce_all(tf.equal(header[12:16], tf.constant(list(PNG_IHDR), tf.uint8)))
        big_endian = tf.constant([2 ** 24, 2 ** 16, 2 ** 8, 1], tf.int64)
        width_height = tf.reduce_sum(tf.reshape(tf.cast(header[16:24], tf.int64), [2, 4])
                                     * big_endian, axis=1)
        return tf.where(is_ihdr, tf.reverse(width_height, [0]), tf.zeros([2], tf.int64))

    def size(encoded: tf.Tensor) -> tf.Tensor:
        return tf.cond(tf.io.is_jpeg(encoded),
                       lambda: tf.cast(tf.io.extract_jpeg_shape(encoded)[:2], tf.int64),
                       lambda: png_size(encoded))

    return tf.map_fn(size, images, fn_output_signature=tf.TensorSpec([2], tf.int64))


def require_pixels_at_most(images: tf.Tensor, max_pixels: tf.Tensor) -> tf.Tensor:
    """`images`, after checking from their headers that none has more than `max_pixels` pixels;
    raises InvalidArgumentError naming the batch positions (and sizes) of those that have."""
    sizes = image_sizes(images)
    too_large = tf.reduce_prod(sizes, axis=1) > max_pixels
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(too_large)),
        ["images may have at most", max_pixels, "pixels (the export's max_image_pixels); these "
         "batch positions have more:", tf.reshape(tf.where(too_large), [-1]),
         "their height and width:", tf.boolean_mask(sizes, too_large)], summarize=32)
    with tf.control_dependencies([check]):
        return tf.identity(images)


def _write_text(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def save_features(model: SimCLRModel, path: str) -> None:
    module = FeatureExtractor(model)
    images = tf.TensorSpec([None, None, None, 3], tf.float32, name=IMAGES)
    inference = module.__call__.get_concrete_function(images, trainable=False)
    module.__call__.get_concrete_function(images, trainable=True)
    tf.saved_model.save(module, path, signatures={SERVING_SIGNATURE: inference})


def save_serving(model: SimCLRModel, record: native.ModelRecord, path: str,
                 max_image_pixels: int = MAX_IMAGE_PIXELS) -> None:
    with tempfile.TemporaryDirectory() as assets_dir:
        module = Classifier(model, record, assets_dir, max_image_pixels)
        # Functions with input signatures, traced once by the save itself.
        tf.saved_model.save(module, path, signatures={
            SERVING_SIGNATURE: module.serve_encoded,
            PREPROCESSED_SIGNATURE: module.serve_preprocessed,
            SALIENCY_SIGNATURE: module.serve_saliency})


def export(model_dir: str, export_dir: str, checkpoint: str = "auto",
           max_image_pixels: int = MAX_IMAGE_PIXELS) -> ExportResult:
    """Writes `export_dir/features/` and, for models with a task head, `export_dir/serving/`
    (refusing images of more than `max_image_pixels`), replacing earlier exports there once the new
    one is complete. `checkpoint`: auto (fine-tuning's best if kept, else the latest), best,
    latest, or a checkpoint prefix or folder."""
    record = native.ModelRecord.load(model_dir)
    names = (FEATURES_DIR, SERVING_DIR) if has_task_head(record) else (FEATURES_DIR,)
    if SERVING_DIR in names:
        check_servable(record, max_image_pixels)
    staging = os.path.join(export_dir, STAGING_DIR)
    _remove(staging)  # left by an export that did not finish
    try:
        features = trained_model.load(model_dir, checkpoint, num_classes=0)
        prefix, step = features.checkpoint, features.step
        save_features(features.model, os.path.join(staging, FEATURES_DIR))
        if SERVING_DIR in names:
            classifier = trained_model.load(model_dir, prefix).model
            save_serving(classifier, record, os.path.join(staging, SERVING_DIR), max_image_pixels)
        _move_into_place(staging, export_dir)
    finally:
        _remove(staging)
    return ExportResult(prefix, step, {name: os.path.join(export_dir, name) for name in names})


def _move_into_place(staging: str, export_dir: str) -> None:
    """Replaces `export_dir`'s earlier export by the complete one in `staging`: every earlier
    SavedModel goes (a stale serving/ must not outlive its features/), then the new ones come."""
    for name in (FEATURES_DIR, SERVING_DIR):
        earlier = os.path.join(export_dir, name)
        if tf.io.gfile.exists(earlier):
            logging.info("replacing the earlier export %s", earlier)
            tf.io.gfile.rename(earlier, os.path.join(staging, f"earlier_{name}"))
    for name in (FEATURES_DIR, SERVING_DIR):
        if tf.io.gfile.exists(os.path.join(staging, name)):
            tf.io.gfile.rename(os.path.join(staging, name), os.path.join(export_dir, name))


def _remove(path: str) -> None:
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
