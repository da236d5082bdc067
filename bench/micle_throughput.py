"""MICLe pretraining throughput: pairs/s of the input pipeline alone and of training.

    .venv/bin/python bench/micle_throughput.py [--data_dir=BUILD] [--augmentation=cxr]
        [--resnet_depth=18 --image_size=64 --batch=64] [--nouse_micle]

Without --data_dir the NIH ChestX-ray14 subset is built into a temporary folder with data_prep.
1. The pipeline alone: `pair_dataset` batches (read the case, pick the pair, decode the two images,
   augment each, batch) drawn as fast as possible, after a few warm-up batches.
2. Training: a short MICLe pretraining (LARS, the default model width) on the same data; its
   summary's pairs/s leaves out the first loop (tracing). The pipeline runs alongside the model on
   the same cores, as in real training.
The pipeline keeps up when (1) is well above (2); (2) / (1) is about the share of the CPU the
pipeline takes away from the model.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flags import entry_point  # noqa: E402

entry_point.import_tensorflow_quietly()

import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from data_prep.build import build_dataset  # noqa: E402
from data_prep.config import BuildConfig  # noqa: E402
from flags import micle_bench_flags  # noqa: E402,F401  (defines the flags)
from simclr_med.config import ModelConfig, OptimConfig, PretrainConfig, TrainConfig  # noqa: E402
from simclr_med.data import augment  # noqa: E402
from simclr_med.data.pretrain_input import PairSpec, pair_dataset  # noqa: E402
from simclr_med.data.reader import Source, open_build  # noqa: E402
from simclr_med.errors import UserError  # noqa: E402
from simclr_med.stages.pretrain import pretrain  # noqa: E402
from tests import data_root


def build_nih(output_dir: str) -> str:
    root = data_root.real_data_root()
    if root is None:
        raise UserError("no --data_dir and no real data: set SIMCLR_MED_DATA (see the README)")
    folder = os.path.join(root, data_root.NIH_FOLDER)
    build_dataset(BuildConfig(
        format="nih", image_root=folder, output_dir=output_dir, progress=False,
        manifests=(os.path.join(folder, "Data_Entry_2017_v2020.csv.gz"),)))
    return output_dir


def pipeline_pairs_per_second(source: Source, spec: PairSpec, batch: int, batches: int,
                              warmup: int = 5) -> float:
    iterator = iter(pair_dataset(source, "train", spec, batch))
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


def training_pairs_per_second(source: Source, spec: PairSpec, args: flags.FlagValues) -> float:
    with tempfile.TemporaryDirectory() as model_dir:
        summary = pretrain(
            ModelConfig(resnet_depth=args.resnet_depth, image_size=args.image_size),
            OptimConfig(), spec.augment, source,
            TrainConfig(model_dir=model_dir, train_batch_size=args.batch,
                        train_steps=args.train_steps + args.steps_per_loop,
                        steps_per_loop=args.steps_per_loop, checkpoint_steps=10**9),
            PretrainConfig(use_micle=spec.use_micle), tf.distribute.get_strategy())
    return summary["examples_per_second"]


def main() -> None:
    args = flags.FLAGS
    with tempfile.TemporaryDirectory() as scratch:
        source = open_build(args.data_dir or build_nih(os.path.join(scratch, "nih")))
        spec = PairSpec(use_micle=args.use_micle, augment=augment.preset(args.augmentation),
                        image_size=args.image_size)
        results = {
            "data": source.info.source_format, "use_micle": args.use_micle,
            "augmentation": args.augmentation, "image_size": args.image_size,
            "batch_pairs": args.batch, "resnet_depth": args.resnet_depth,
            "pipeline_pairs_per_second": round(pipeline_pairs_per_second(
                source, spec, args.batch, args.pipeline_batches), 1),
            "training_pairs_per_second": round(training_pairs_per_second(source, spec, args), 1),
        }
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'MICLe' if args.use_micle else 'SimCLR'} on {results['data']}, "
          f"--augmentation={args.augmentation}, {args.image_size} px, batch {args.batch}:")
    print(f"  input pipeline alone      {results['pipeline_pairs_per_second']:8.1f} pairs/s")
    print(f"  training ResNet-{args.resnet_depth:<3d}       "
          f"{results['training_pairs_per_second']:8.1f} pairs/s")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    entry_point.run(main)
