"""Grad-CAM saliency maps (Selvaraju et al., ICCV 2017): where in an image a class's logit comes
from, at the resolution of one of the backbone's block groups.

For a class c and a layer's feature maps A^k (block_group1..4 of `SimCLRModel`), each channel's
weight is the spatial mean of the gradient of the logit y^c (before softmax or sigmoid) with respect
to it, alpha_k = mean_ij dy^c / dA^k_ij; the map is ReLU(sum_k alpha_k A^k), upsampled bilinearly to
the image size and divided by its maximum (a map with no positive evidence stays zero).

`grad_cam` runs in eager mode and inside `tf.function` (the serving SavedModel's `saliency`
signature traces it, see `simclr_med.stages.export`); `overlay` and `write_saliency_png` draw a map
over its image with matplotlib (Agg, no pyplot state).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from matplotlib.figure import Figure

from simclr_med.errors import UserError
from simclr_med.evaluation import plots
from simclr_med.models.simclr import SimCLRModel

LAYERS = ("block_group1", "block_group2", "block_group3", "block_group4")
DEFAULT_LAYER = "block_group4"  # the last convolutional features: the coarsest, most semantic map
COLORMAP = "jet"
LOGITS = "logits_sup"


def grad_cam(model: SimCLRModel, images: tf.Tensor, target: Optional[tf.Tensor] = None,
             layer: str = DEFAULT_LAYER) -> tf.Tensor:
    """Heat maps float32 [B, H, W] in [0, 1] for float images [B, H, W, 3] in [0, 1] (the
    evaluation's preprocessed pixels). `target` int [B]: the class (multi-class) or label
    (multi-label) index per image; None, or an entry < 0, means the predicted one (the largest
    logit: the top class, or the most probable label)."""
    return grad_cam_with_logits(model, images, target, layer)[0]


def grad_cam_with_logits(model: SimCLRModel, images: tf.Tensor,
                         target: Optional[tf.Tensor] = None,
                         layer: str = DEFAULT_LAYER) -> tuple[tf.Tensor, tf.Tensor]:
    """(`grad_cam`'s heat maps, the logits [B, classes] of the same forward pass)."""
    check_explainable(model, layer)
    images = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(images)  # records every op, also of a model without trainable variables
        outputs = model(images, training=False)
        logits = tf.cast(outputs[LOGITS], tf.float32)
        chosen = target_classes(logits, target)
        # Batch norm in inference mode: each image's logit depends on that image alone, so the
        # gradient of the sum holds every image's own gradient.
        score = tf.reduce_sum(tf.gather(logits, chosen, batch_dims=1))
    feature_maps = outputs[layer]
    gradients = tf.cast(tape.gradient(score, feature_maps), tf.float32)
    weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(feature_maps, tf.float32), axis=-1,
                                   keepdims=True))
    cam = tf.image.resize(cam, tf.shape(images)[1:3], method=tf.image.ResizeMethod.BILINEAR)
    cam = cam[..., 0]
    return tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=[1, 2], keepdims=True)), logits


def check_explainable(model: SimCLRModel, layer: str) -> None:
    if layer not in LAYERS:
        raise UserError(f"Grad-CAM layer must be one of {', '.join(LAYERS)}, got {layer!r}")
    if model.supervised_head is None:
        raise UserError("Grad-CAM needs a model with a supervised head (a fine-tuned model)")
    if model.stop_gradient_to_head:
        raise ValueError("the model stops gradients before its head (a pretraining model's "
                         "probe): build it with stop_gradient_to_head=False, as "
                         "trained_model.load does")


def target_classes(logits: tf.Tensor, target: Optional[tf.Tensor] = None) -> tf.Tensor:
    """int32 [B]: `target`, with None or entries < 0 replaced by the largest logit's index;
    an index beyond the classes raises InvalidArgumentError."""
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    if target is None:
        return predicted
    target = tf.cast(target, tf.int32)
    check = tf.debugging.assert_less(
        target, tf.shape(logits)[-1],
        message="Grad-CAM target classes must be below the number of classes")
    with tf.control_dependencies([check]):
        return tf.where(target < 0, predicted, target)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB [H, W, 3]: `heatmap` [H, W] in [0, 1] in the `COLORMAP` colours, blended with
    weight `alpha` over `image` ([H, W], [H, W, 1] or [H, W, 3]; float in [0, 1] or uint8)."""
    colours = colormaps[COLORMAP](np.clip(np.asarray(heatmap, np.float64), 0.0, 1.0))[..., :3]
    return _uint8((1.0 - alpha) * _rgb(image) + alpha * colours)


def _rgb(image: np.ndarray) -> np.ndarray:
    """float64 [H, W, 3] in [0, 1] from a grayscale or RGB, uint8 or [0, 1] float image."""
    image = np.asarray(image)
    pixels = image / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return np.broadcast_to(pixels, pixels.shape[:2] + (3,))


def _uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(255.0 * pixels), 0, 255).astype(np.uint8)


def write_saliency_png(path: str, image, heatmap, title: str,
                       outline: Optional[np.ndarray] = None) -> None:
    """A small PNG: the image beside its heat-map overlay, under `title` (e.g. the class and its
    probability). `outline` [H, W] (e.g. a lesion mask) is drawn as a contour on both panels."""
    figure = Figure(figsize=(5.2, 2.9))
    panels = figure.subplots(1, 2)
    for axes, picture, name in zip(panels, (_uint8(_rgb(image)), overlay(image, heatmap)),
                                   ("image", "Grad-CAM")):
        axes.imshow(picture, interpolation="nearest")
        if outline is not None:
            axes.contour(np.asarray(outline, np.float64), levels=[0.5], colors="white",
                         linewidths=1.0)
        axes.set_title(name, fontsize=8)
        axes.set_axis_off()
    figure.suptitle(title, fontsize=9)
    plots.save_png(figure, path)
