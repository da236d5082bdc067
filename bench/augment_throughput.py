"""Per-image throughput of `augment_view` (and of the evaluation crop) inside a tf.data map.

    .venv/bin/python bench/augment_throughput.py

Input images live in memory (decoding is not measured), 64 px -> 64 px and 224 px -> 224 px,
each preset with one map thread and with AUTOTUNE. Prints one line per setting.
"""

from __future__ import annotations

import os
import time

from flags import entry_point

entry_point.import_tensorflow_quietly()

import tensorflow as tf  # noqa: E402

from simclr_med.data import augment, preprocess  # noqa: E402

SIZES = (64, 224)
PRESETS = ("simclr", "cxr", "finetune")
IMAGES = {64: 2000, 224: 400}
WARMUP = 50


def _rate(transform, image: tf.Tensor, count: int, parallel: int) -> float:
    """Images per second of `transform(image, seed)` mapped over `count` seeds."""
    seeds = tf.data.Dataset.range(count + WARMUP).map(lambda i: tf.stack([i, 0 * i + 1]))
    dataset = seeds.map(lambda seed: transform(image, seed), num_parallel_calls=parallel)
    iterator = iter(dataset.prefetch(8))
    for _ in range(WARMUP):
        next(iterator)
    start = time.perf_counter()
    for _ in range(count):
        next(iterator)
    return count / (time.perf_counter() - start)


def main() -> None:
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores")
    for size in SIZES:
        image = tf.random.stateless_uniform([size, size, 3], [size, 0])
        transforms = {name: (lambda x, s, c=augment.preset(name), n=size:
                             augment.augment_view(x, s, c, n)) for name in PRESETS}
        transforms["eval crop"] = lambda x, s, n=size: preprocess.center_crop_and_resize(x, n)
        for name, transform in transforms.items():
            for parallel, label in ((1, "1 thread"), (tf.data.AUTOTUNE, "autotune")):
                rate = _rate(transform, image, IMAGES[size], parallel)
                print(f"{size:4d} px  {name:10s} {label:9s} {rate:9.1f} images/s")


if __name__ == "__main__":
    entry_point.run(main)
