"""Evaluation and serving speed: images/s of `--mode=eval`'s forward pass and of the exported
`serving_default` signature, side by side.

    .venv/bin/python bench/inference.py [--setting=depth=50,size=224,batch=64,cores=2 ...]
        [--rounds=2] [--images=256] [--output=inference.json]

Each measurement, in a fresh process (pinned to `cores` CPUs), saves a randomly initialised
classifier as a model folder and times
- eval: `stages.evaluate.Predictor` over `evaluation_dataset` batches of the synthetic build
  (decode, central crop, resize, the model in inference mode), as evaluation runs it;
- serving: the SavedModel that `stages.export.export` writes, called with batches of encoded
  JPEGs (decode and size checks inside the signature, as a server calls it).
Both compute in float32 (inference always does, see simclr_med.models.precision).
"""

from __future__ import annotations

import dataclasses
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

import alternate  # noqa: E402  (bench/alternate.py, beside this script)
from data_prep import synthetic  # noqa: E402
from flags import inference_bench_flags  # noqa: E402,F401  (defines the flags)
from simclr_med import serving  # noqa: E402
from simclr_med.checkpoints import trained_model  # noqa: E402
from simclr_med.config import ModelConfig  # noqa: E402
from simclr_med.data.finetune_input import evaluation_dataset  # noqa: E402
from simclr_med.data.reader import open_build  # noqa: E402
from simclr_med.models import precision  # noqa: E402
from simclr_med.models.simclr import SimCLRModel  # noqa: E402
from simclr_med.stages import evaluate, export  # noqa: E402

FLAGS = flags.FLAGS
PATHS = ("eval", "serving")


@dataclasses.dataclass(frozen=True)
class Setting:
    depth: int = 50
    width: float = 1.0
    size: int = 224
    batch: int = 64
    cores: int = 0  # 0: every CPU

    def label(self) -> str:
        return alternate.label(self, always=("depth", "size", "batch"))


def _model_folder(s: Setting, names: list[str], directory: str) -> str:
    with precision.inference_policy():
        model = SimCLRModel(ModelConfig(resnet_depth=s.depth, width_multiplier=s.width,
                                        image_size=s.size), len(names))
        model.build_for_image_size()
    return trained_model.save(directory, model, tuple(names), "multiclass", step=1)


def _eval_seconds(model_dir: str, s: Setting, data_dir: str, images: int) -> float:
    loaded = trained_model.load(model_dir)
    predictor = evaluate.Predictor(loaded.model)
    data = evaluation_dataset(open_build(data_dir), "train", s.size,
                              loaded.record.model.eval_crop_proportion, s.batch)
    predictor(data.take(1))  # traces
    timed = data.repeat().take(max(1, images // s.batch))
    start = time.perf_counter()
    counted = len(predictor(timed).image_id)
    return (time.perf_counter() - start) / counted


def _serving_seconds(model_dir: str, s: Setting, images: int, directory: str) -> float:
    export.export(model_dir, directory)
    served = serving.ServedClassifier(directory)
    pixels = tf.random.stateless_uniform([s.size + s.size // 7] * 2 + [3], [0, 1], maxval=256,
                                         dtype=tf.int32)
    batch = [tf.io.encode_jpeg(tf.cast(pixels, tf.uint8)).numpy()] * s.batch
    served.batch_probabilities(batch)  # warm-up
    calls = max(1, images // s.batch)
    start = time.perf_counter()
    for _ in range(calls):
        served.batch_probabilities(batch)
    return (time.perf_counter() - start) / (calls * s.batch)


def measure(s: Setting, images: int) -> dict:
    data_dir = synthetic.default_build(image_size=synthetic.stored_size_for(s.size))
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = _model_folder(s, open_build(data_dir).info.names,
                                  os.path.join(scratch, "model"))
        eval_seconds = _eval_seconds(model_dir, s, data_dir, images)
        serving_seconds = _serving_seconds(model_dir, s, images, os.path.join(scratch, "export"))
    return {"seconds": eval_seconds, "eval_seconds_per_image": eval_seconds,
            "serving_seconds_per_image": serving_seconds, "peak_rss_gb": alternate.peak_rss_gb()}


def summarise(job: dict, runs: list[dict]) -> dict:
    s = Setting(**job["setting"])
    row = {"setting": s.label(), **job["setting"], "rounds": runs,
           "peak_rss_gb": max(r["peak_rss_gb"] for r in runs)}
    for path in PATHS:
        seconds, spread = alternate.median_and_range([r[f"{path}_seconds_per_image"]
                                                      for r in runs])
        row[f"{path}_images_per_second"] = 1 / seconds
        row[f"{path}_images_per_second_range"] = [1 / spread[1], 1 / spread[0]]
    return row


def table(rows: list[dict]) -> list[str]:
    lines = [f"{'setting':44s} {'eval img/s':>10s} {'range':>13s} {'serving img/s':>13s} "
             f"{'range':>13s} {'peak GB':>7s} {'ratio':>6s}"]
    base = rows[0]["eval_images_per_second"]
    for row in rows:
        cells = [f"{row[f'{p}_images_per_second']:{w}.1f} "
                 f"{row[f'{p}_images_per_second_range'][0]:6.1f}-"
                 f"{row[f'{p}_images_per_second_range'][1]:<6.1f}" for p, w in zip(PATHS, (10, 13))]
        lines.append(f"{row['setting']:44s} {' '.join(cells)} {row['peak_rss_gb']:7.2f} "
                     f"{row['eval_images_per_second'] / base:6.2f}")
    return lines


def main() -> None:
    if FLAGS.child:
        job = json.loads(FLAGS.child)
        print(json.dumps(measure(Setting(**job["setting"]), job["images"])))
        return
    settings = [alternate.parse_setting(Setting, text) for text in FLAGS.setting]
    for s in settings:  # built once, before the timed processes
        synthetic.default_build(image_size=synthetic.stored_size_for(s.size))
    jobs = [{"setting": dataclasses.asdict(s), "images": FLAGS.images} for s in settings]
    alternate.report(
        jobs, FLAGS.rounds,
        lambda job: alternate.run_child(__file__, job, cores=job["setting"]["cores"]),
        lambda job: Setting(**job["setting"]).label() + ", eval s/image",
        lambda jobs, runs: [summarise(job, r) for job, r in zip(jobs, runs)], table,
        FLAGS.output, images=FLAGS.images)


if __name__ == "__main__":
    entry_point.run(main)
