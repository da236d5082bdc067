"""MICLe: Multi-Instance Contrastive Learning (Azizi et al., 2021, section 3.2).

When a case bag holds M >= 2 images of the same underlying pathology (frontal and lateral views,
several photos of one lesion, follow-ups of a patient), a positive pair is made of two *different*
images of the bag, drawn uniformly without replacement, each then augmented independently. A bag of
one image falls back to SimCLR: two augmentations of that image. No labels are used.

Only the two chosen images are decoded, so the cost of a pair does not grow with the bag.
"""

from __future__ import annotations

import tensorflow as tf

# Named rather than "auto_select", which picks another generator under XLA or on a TPU: the pairs
# of a seed are the same wherever the input runs (and tests can draw millions of them under XLA).
RNG_ALG = "philox"


def choose_pair(num_images: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Indices (i, j) of a MICLe pair in a bag of `num_images`, from a stateless `seed` [2].

    M >= 2: i uniform in [0, M), j uniform over the other M - 1 images, so every unordered pair
    {a, b} has probability 2 / (M (M - 1)). M = 1: (0, 0).
    """
    num_images = tf.cast(num_images, tf.int32)
    seed_i, seed_j = tf.unstack(tf.random.experimental.stateless_split(seed, 2, alg=RNG_ALG))
    first = tf.random.stateless_uniform([], seed_i, 0, num_images, dtype=tf.int32, alg=RNG_ALG)
    others = tf.maximum(num_images - 1, 1)
    second = tf.random.stateless_uniform([], seed_j, 0, others, dtype=tf.int32, alg=RNG_ALG)
    second = second + tf.cast(second >= first, tf.int32)  # skip over `first`
    second = tf.where(num_images >= 2, second, first)
    return first, second
