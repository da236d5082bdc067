"""Pretraining throughput (images/s through the network, two views per pair) on this machine.

    .venv/bin/python bench/train_throughput.py [--configs=18:32:64,50:224:32] [--steps=12]

Runs a short SimCLR pretraining per setting on the synthetic data (or --data_dir) with the default
strategy and reports the training summary's images/s, which leaves out the first loop (tracing).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flags import entry_point  # noqa: E402

entry_point.import_tensorflow_quietly()

import tensorflow as tf  # noqa: E402

from data_prep import synthetic  # noqa: E402
from flags import bench_flags  # noqa: E402
from simclr_med.config import ModelConfig, OptimConfig, PretrainConfig, TrainConfig  # noqa: E402
from simclr_med.data import augment  # noqa: E402
from simclr_med.data.reader import open_build  # noqa: E402
from simclr_med.stages.pretrain import pretrain  # noqa: E402


def measure(depth: int, image_size: int, batch: int, options: dict) -> dict:
    source = open_build(options["data_dir"] or synthetic.default_build())
    with tempfile.TemporaryDirectory() as model_dir:
        summary = pretrain(
            ModelConfig(resnet_depth=depth, image_size=image_size),
            OptimConfig(), augment.preset("simclr"), source,
            TrainConfig(model_dir=model_dir, train_batch_size=batch,
                        train_steps=options["steps"] + options["steps_per_loop"],
                        steps_per_loop=options["steps_per_loop"], checkpoint_steps=10**9),
            PretrainConfig(use_micle=options["use_micle"]), tf.distribute.get_strategy())
    return {"resnet_depth": depth, "image_size": image_size, "batch_pairs": batch,
            "images_per_second": round(summary["images_per_second"], 1),
            "pairs_per_second": round(summary["examples_per_second"], 1)}


def main() -> None:
    options = bench_flags.options()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores")
    results = [measure(*setting, options) for setting in bench_flags.settings()]
    for r in results:
        print(f"ResNet-{r['resnet_depth']} {r['image_size']} px, batch {r['batch_pairs']} pairs: "
              f"{r['images_per_second']} images/s ({r['pairs_per_second']} pairs/s)")
    if options["output"]:
        with open(options["output"], "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    entry_point.run(main)
