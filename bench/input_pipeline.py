"""The pretraining input pipeline alone, per core: pairs/s from data_prep TFRecords.

    .venv/bin/python bench/input_pipeline.py [--setting=micle=1,augment=cxr,size=224,cores=1 ...]
        [--rounds=2] [--batches=20] [--data_dir=BUILD] [--output=input_pipeline.json]

Each measurement draws `pair_dataset` batches (read the case or image, pick the pair, decode, two
augmented views, batch; with `augment_on=device` two uint8 crops instead, the rest of the views'
work being the training step's) as fast as it can, in a fresh process pinned to `cores` CPUs, so that
TensorFlow sizes its thread pools (tf.data's included) to them. Pairs/s per core over the pairs/s
a training step consumes (bench/pretrain_step.py) is how many host cores one accelerator needs.
Without --data_dir it reads the synthetic case set (1-4 grey-level PNG views per case) built with
data_prep at 64 px, or at 256 px for larger outputs (built once into the synthetic cache).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flags import entry_point  # noqa: E402

entry_point.import_tensorflow_quietly()

from absl import flags  # noqa: E402

import alternate  # noqa: E402  (bench/alternate.py, beside this script)
from data_prep import synthetic  # noqa: E402
from flags import input_pipeline_flags  # noqa: E402,F401  (defines the flags)
from simclr_med.data import augment  # noqa: E402
from simclr_med.data.pretrain_input import PairSpec, pair_dataset  # noqa: E402
from simclr_med.data.reader import open_build  # noqa: E402

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Setting:
    micle: int = 0
    augment: str = "simclr"
    size: int = 64
    batch: int = 32  # pairs
    cores: int = 1
    stored: int = 0  # synthetic images' size; 0: 64 up to 64 px outputs, else 256
    augment_on: str = "host"  # device: the host's share of --augment_on=device (uint8 crops)

    def label(self) -> str:
        return alternate.label(self, always=("micle", "augment", "size", "cores"))

    def stored_size(self) -> int:
        return self.stored or synthetic.stored_size_for(self.size)


def measure(s: Setting, data_dir: str, batches: int, warmup: int) -> dict:
    spec = PairSpec(use_micle=bool(s.micle), augment=augment.preset(s.augment),
                    image_size=s.size, augment_on=s.augment_on)
    iterator = iter(pair_dataset(open_build(data_dir), "train", spec, s.batch))
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = (time.perf_counter() - start) / batches
    return {"seconds": seconds, "cpus": len(os.sched_getaffinity(0)),
            "peak_rss_gb": alternate.peak_rss_gb()}


def summarise(job: dict, runs: list[dict]) -> dict:
    s = Setting(**job["setting"])
    seconds, spread = alternate.median_and_range([r["seconds"] for r in runs])
    pairs = s.batch / seconds
    return {"setting": s.label(), **job["setting"], "data_dir": job["data_dir"],
            "batch_seconds": seconds, "batch_seconds_range": spread,
            "pairs_per_second": pairs, "pairs_per_second_per_core": pairs / s.cores,
            "cpus_seen": runs[0]["cpus"], "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
            "rounds": runs}


def table(rows: list[dict]) -> list[str]:
    lines = [f"{'setting':44s} {'pairs/s':>8s} {'per core':>8s} {'range pairs/s':>14s} "
             f"{'ratio':>6s}"]
    base = rows[0]["pairs_per_second"]
    for row in rows:
        low, high = (row["batch"] / t for t in reversed(row["batch_seconds_range"]))
        lines.append(f"{row['setting']:44s} {row['pairs_per_second']:8.1f} "
                     f"{row['pairs_per_second_per_core']:8.1f} {low:6.1f}-{high:<7.1f} "
                     f"{row['pairs_per_second'] / base:6.2f}")
    return lines


def main() -> None:
    if FLAGS.child:
        job = json.loads(FLAGS.child)
        print(json.dumps(measure(Setting(**job["setting"]), job["data_dir"], job["batches"],
                                 job["warmup"])))
        return
    settings = [alternate.parse_setting(Setting, text) for text in FLAGS.setting]
    jobs = [{"setting": dataclasses.asdict(s), "batches": FLAGS.batches, "warmup": FLAGS.warmup,
             "data_dir": FLAGS.data_dir or synthetic.default_build(image_size=s.stored_size())}
            for s in settings]
    alternate.report(
        jobs, FLAGS.rounds,
        lambda job: alternate.run_child(__file__, job, cores=job["setting"]["cores"]),
        lambda job: Setting(**job["setting"]).label() + ", s/batch",
        lambda jobs, runs: [summarise(job, r) for job, r in zip(jobs, runs)], table,
        FLAGS.output, batches=FLAGS.batches)


if __name__ == "__main__":
    entry_point.run(main)
