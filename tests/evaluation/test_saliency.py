"""Grad-CAM (simclr_med.evaluation.saliency): against a NumPy computation from the layer's
activations and gradients, and on a task where the evidence is known to sit in one quadrant."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from simclr_med.errors import UserError
from simclr_med.evaluation import saliency
from simclr_med.models.simclr import SimCLRModel
from tests.tiny import tiny

NUM_CLASSES = 3


def _random_model(num_classes: int = NUM_CLASSES, seed: int = 0) -> SimCLRModel:
    """A tiny model whose residual branches are not silenced by their zero-initialised gammas."""
    keras.utils.set_random_seed(seed)
    model = SimCLRModel(tiny(), num_classes, stop_gradient_to_head=False)
    model.build_for_image_size()
    rng = np.random.default_rng(seed)
    for variable in model.variables:
        if variable.path.endswith("gamma"):
            variable.assign(rng.uniform(0.5, 1.5, tuple(variable.shape)))
    return model


def _bilinear(size_out: int, size_in: int) -> np.ndarray:
    """[size_out, size_in] interpolation matrix: bilinear, half-pixel centres, edges clamped."""
    centre = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
    low = np.floor(centre).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    matrix = np.zeros((size_out, size_in))
    matrix[np.arange(size_out), low] += 1 - (centre - low)
    matrix[np.arange(size_out), high] += centre - low
    return matrix


def _numpy_grad_cam(model: SimCLRModel, images: tf.Tensor, target: np.ndarray,
                    layer: str) -> np.ndarray:
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(images)
        outputs = model(images, training=False)
        logits = [outputs["logits_sup"][i, c] for i, c in enumerate(target)]
    activations = outputs[layer].numpy()
    maps = []
    for i, logit in enumerate(logits):  # each image's own logit, one gradient at a time
        gradient = tape.gradient(logit, outputs[layer]).numpy()[i]
        cam = np.maximum(np.einsum("hwk,k->hw", activations[i], gradient.mean(axis=(0, 1))), 0)
        height, width = images.shape[1:3]
        cam = _bilinear(height, cam.shape[0]) @ cam @ _bilinear(width, cam.shape[1]).T
        maps.append(cam / cam.max() if cam.max() > 0 else cam)
    return np.stack(maps)


@pytest.mark.parametrize("layer", ["block_group4", "block_group2"])
def test_grad_cam_matches_numpy(layer):
    """Non-square images (40 x 56), so a map upsampled with height and width swapped shows."""
    model = _random_model()
    images = tf.random.stateless_uniform([3, 40, 56, 3], seed=[1, 2])
    logits = model(images, training=False)["logits_sup"].numpy()
    target = np.array([2, 0, 1])
    expected = _numpy_grad_cam(model, images, target, layer)
    assert 0.05 < expected.mean() < 0.95  # the maps are neither empty nor flat
    heatmaps = saliency.grad_cam(model, images, tf.constant(target), layer=layer).numpy()
    assert heatmaps.shape == (3, 40, 56) and heatmaps.dtype == np.float32
    np.testing.assert_allclose(heatmaps, expected, atol=1e-5)
    # None, or -1, is the predicted class
    predicted = _numpy_grad_cam(model, images, logits.argmax(axis=1), layer)
    np.testing.assert_allclose(saliency.grad_cam(model, images, layer=layer), predicted, atol=1e-5)
    mixed = saliency.grad_cam(model, images, tf.constant([-1, 0, -1]), layer=layer).numpy()
    np.testing.assert_allclose(mixed[1], expected[1], atol=1e-5)
    np.testing.assert_allclose(mixed[[0, 2]], predicted[[0, 2]], atol=1e-5)


def test_grad_cam_in_a_function_and_range():
    model = _random_model()
    images = tf.random.stateless_uniform([4, 32, 32, 3], seed=[3, 4])
    eager = saliency.grad_cam(model, images)
    traced = tf.function(lambda batch: saliency.grad_cam(model, batch))(images)
    np.testing.assert_allclose(traced, eager, atol=1e-5)
    assert np.all((eager >= 0) & (eager <= 1)) and np.allclose(eager.numpy().max(axis=(1, 2)), 1)


def test_a_map_without_positive_evidence_stays_zero():
    model = _random_model()
    model.supervised_head.dense.kernel.assign(tf.zeros_like(model.supervised_head.dense.kernel))
    heatmaps = saliency.grad_cam(model, tf.random.stateless_uniform([2, 32, 32, 3], seed=[5, 6]))
    assert np.array_equal(heatmaps.numpy(), np.zeros([2, 32, 32], np.float32))


def test_bad_requests_are_refused():
    model = _random_model()
    images = tf.zeros([1, 32, 32, 3])
    with pytest.raises(UserError, match="block_group1, block_group2"):
        saliency.grad_cam(model, images, layer="final_avg_pool")
    with pytest.raises(tf.errors.InvalidArgumentError, match="below the number of classes"):
        saliency.grad_cam(model, images, tf.constant([NUM_CLASSES]))
    probe = SimCLRModel(tiny(), NUM_CLASSES)  # pretraining's probe: stop-gradient features
    probe.build_for_image_size()
    with pytest.raises(ValueError, match="stop_gradient_to_head=False"):
        saliency.grad_cam(probe, images)


def test_overlay_and_png(tmp_path):
    image = np.linspace(0, 1, 20 * 30).reshape(20, 30)
    heatmap = np.zeros([20, 30])
    heatmap[:, 15:] = 1.0
    blended = saliency.overlay(image, heatmap, alpha=0.5)
    assert blended.shape == (20, 30, 3) and blended.dtype == np.uint8
    # jet: 0 is dark blue, 1 dark red; half of the blend is the grey image
    left, right = blended[10, 5].astype(int), blended[10, 25].astype(int)
    assert left[2] > left[0] and right[0] > right[2]
    assert np.array_equal(saliency.overlay(image, heatmap, alpha=0.0)[..., 0],
                          np.rint(255 * image).astype(np.uint8))
    path = tmp_path / "x_saliency.png"
    saliency.write_saliency_png(str(path), image, heatmap, "mel, p = 91.0%", outline=heatmap > 0)
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.width < 1000
    assert path.stat().st_size < 200_000


# The quadrant task: 32 px images of noise with a bright bar in one random quadrant; the class is
# the bar's orientation (0: horizontal, 1: vertical). Grad-CAM of a model that learned it must
# point at the bar's quadrant, whichever class it explains.
SIDE, HALF, LONG, SHORT, MARGIN = 32, 16, 8, 3, 2
STEPS = 100
QUADRANTS = ((0, 0), (0, 1), (1, 0), (1, 1))  # (row, column); (0, 1) and (1, 0) tell a transpose


def _quadrant_images(rng: np.random.Generator,
                     count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images [count, 32, 32, 3], classes, quadrant indices)."""
    classes = rng.integers(0, 2, count)
    quadrants = rng.integers(0, len(QUADRANTS), count)
    images = rng.uniform(0.0, 0.6, (count, SIDE, SIDE, 1)).astype(np.float32)
    for image, vertical, quadrant in zip(images, classes, quadrants):
        height, width = (LONG, SHORT) if vertical else (SHORT, LONG)
        row, column = QUADRANTS[quadrant]
        top = row * HALF + rng.integers(MARGIN, HALF - MARGIN - height + 1)
        left = column * HALF + rng.integers(MARGIN, HALF - MARGIN - width + 1)
        image[top:top + height, left:left + width] = rng.uniform(0.85, 1.0)
    return np.repeat(images, 3, axis=-1), classes, quadrants


def _quadrant_mass(heatmaps: np.ndarray, quadrants: np.ndarray) -> np.ndarray:
    """Share of each map's total in its quadrant."""
    mass = []
    for heatmap, quadrant in zip(heatmaps, quadrants):
        row, column = QUADRANTS[quadrant]
        inside = heatmap[row * HALF:(row + 1) * HALF, column * HALF:(column + 1) * HALF].sum()
        mass.append(inside / max(heatmap.sum(), 1e-12))
    return np.array(mass)


def _peak_quadrants(heatmaps: np.ndarray) -> np.ndarray:
    rows, columns = np.unravel_index(heatmaps.reshape(len(heatmaps), -1).argmax(axis=1),
                                     heatmaps.shape[1:])
    return np.array([QUADRANTS.index((r // HALF, c // HALF)) for r, c in zip(rows, columns)])


@pytest.fixture(scope="module")
def quadrant_model() -> SimCLRModel:
    """ResNet-18 at width 0.25, trained for STEPS steps of 16 images with Adam (25-55 s on the
    shared 2-core machine, much of it tracing)."""
    keras.utils.set_random_seed(0)
    model = SimCLRModel(tiny(), 2, stop_gradient_to_head=False)
    model.build_for_image_size()
    optimizer = keras.optimizers.Adam(2e-3)
    rng = np.random.default_rng(0)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)["logits_sup"]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        variables = model.trainable_variables
        # The projection head is unused (the task head sits on the backbone): no gradients.
        optimizer.apply_gradients([(g, v) for g, v in zip(tape.gradient(loss, variables),
                                                          variables) if g is not None])

    for _ in range(STEPS):
        step(*_quadrant_images(rng, 16)[:2])
    return model


@pytest.mark.slow
def test_grad_cam_points_at_the_deciding_quadrant(quadrant_model):
    """The predicted class's map holds most of its mass (chance: a quarter) in the bar's quadrant
    and peaks there; the other class's map, whose evidence is negative there, does not."""
    images, classes, quadrants = _quadrant_images(np.random.default_rng(1), 64)
    logits = quadrant_model(images, training=False)["logits_sup"].numpy()
    assert np.mean(logits.argmax(axis=1) == classes) > 0.95
    heatmaps = saliency.grad_cam(quadrant_model, images).numpy()
    mass = _quadrant_mass(heatmaps, quadrants)
    assert np.median(mass) > 0.5 and np.mean(mass > 0.35) > 0.9, np.round(mass, 2)
    assert np.mean(_peak_quadrants(heatmaps) == quadrants) > 0.9
    other = saliency.grad_cam(quadrant_model, images, tf.constant(1 - logits.argmax(axis=1)))
    assert np.median(_quadrant_mass(other.numpy(), quadrants)) < 0.25
