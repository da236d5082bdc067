"""Pretraining step speed, settings side by side: pairs/s, views/s, peak memory, and ratios.

    .venv/bin/python bench/pretrain_step.py [--setting=depth=50,size=224,batch=32
        --setting=depth=50,size=224,batch=32,precision=mixed_bfloat16 ...] [--rounds=2]
        [--steps=8] [--noyardstick] [--output=pretrain_step.json]

Each measurement is a short SimCLR (or MICLe) pretraining in a fresh process, so that its peak
resident memory is its own, timed after its first loop (tracing) by the training summary; the
input pipeline runs beside the model on the same cores, as in real training. The settings
alternate, round after round (A B A B, not A A B B), so that a shared machine's drift reaches
every setting alike; the table gives the median over rounds, the range, the ratio to the
first setting and the seconds a checkpoint save stalled training ("save s": the summary's `checkpoint_seconds`
per save, median over rounds; not in the step time).

The yardstick: `keras.applications.ResNet<depth>` (depths 50, 101, 152) trained supervised with
`fit` on in-memory images, as many per step as the setting has views (2 x batch), at the same
precision. Its per-image step time against our per-view step time is how much the contrastive
step (two views, projection head, NT-Xent over the batch, LARS, the input pipeline) costs beyond
a plain supervised step of the same network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flags import entry_point  # noqa: E402

entry_point.import_tensorflow_quietly()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

import alternate  # noqa: E402  (bench/alternate.py, beside this script)
from flags import pretrain_step_flags  # noqa: E402,F401  (defines the flags)
from pretrain_setting import Setting, pretrain_run, set_op_threads  # noqa: E402
from simclr_med.config import StrategyConfig  # noqa: E402
from simclr_med.training.strategy import build_strategy  # noqa: E402

FLAGS = flags.FLAGS
YARDSTICK_DEPTHS = (50, 101, 152)
YARDSTICK_KEYS = ("depth", "size", "batch", "precision", "jit")  # what a yardstick shares with its setting


def measure_pretraining(s: Setting, steps: int, steps_per_loop: int, data_dir: str) -> dict:
    with tempfile.TemporaryDirectory() as model_dir:
        summary = pretrain_run(s, steps + steps_per_loop, steps_per_loop, data_dir, model_dir)
    return {"seconds": s.batch / summary["examples_per_second"],
            "checkpoint_seconds": summary["checkpoint_seconds"] / max(1, summary["checkpoints_saved"])}


def measure_yardstick(s: Setting, steps: int, steps_per_loop: int) -> dict:
    build_strategy(StrategyConfig(precision=s.precision))
    network = getattr(keras.applications, f"ResNet{s.depth}")(
        weights=None, input_shape=(s.size, s.size, 3), classes=1000)
    network.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                    loss="sparse_categorical_crossentropy", steps_per_execution=steps_per_loop,
                    jit_compile=bool(s.jit))
    images = 2 * s.batch  # as many as the contrastive step's views
    batch = (tf.random.uniform([images, s.size, s.size, 3]),
             tf.random.uniform([images], maxval=1000, dtype=tf.int32))
    data = tf.data.Dataset.from_tensors(batch).repeat()
    network.fit(data, steps_per_epoch=steps_per_loop, verbose=0)  # traces
    start = time.perf_counter()
    network.fit(data, steps_per_epoch=steps, verbose=0)
    return {"seconds": (time.perf_counter() - start) / steps}


def child(job: dict) -> dict:
    s = Setting(**job["setting"])
    set_op_threads(s)
    if job["kind"] == "yardstick":
        found = measure_yardstick(s, job["steps"], job["steps_per_loop"])
    else:
        found = measure_pretraining(s, job["steps"], job["steps_per_loop"], job["data_dir"])
    return {**found, "peak_rss_gb": alternate.peak_rss_gb()}


def jobs(settings: list[Setting], yardstick: bool) -> list[dict]:
    common = {"steps": FLAGS.steps, "steps_per_loop": FLAGS.steps_per_loop,
              "data_dir": FLAGS.data_dir}
    found = [{"kind": "simclr_med", "setting": dataclasses.asdict(s), **common} for s in settings]
    if yardstick:
        keys = dict.fromkeys(tuple(getattr(s, k) for k in YARDSTICK_KEYS) for s in settings
                             if s.depth in YARDSTICK_DEPTHS)
        found += [{"kind": "yardstick", "setting": dataclasses.asdict(
            Setting(**dict(zip(YARDSTICK_KEYS, key)))), **common} for key in keys]
    return found


def summarise(job: dict, runs: list[dict]) -> dict:
    s = Setting(**job["setting"])
    step, spread = alternate.median_and_range([r["seconds"] for r in runs])
    return {"kind": job["kind"], "setting": s.label(), **job["setting"],
            "step_seconds": step, "step_seconds_range": spread,
            "pairs_per_second": s.batch / step, "views_per_second": 2 * s.batch / step,
            **({"checkpoint_seconds": statistics.median(r["checkpoint_seconds"] for r in runs)}
               if job["kind"] == "simclr_med" else {}),
            "peak_rss_gb": max(r["peak_rss_gb"] for r in runs), "rounds": runs}


def _yardstick_of(row: dict, rows: list[dict]) -> dict | None:
    for other in rows:
        if other["kind"] == "yardstick" and all(other[k] == row[k] for k in YARDSTICK_KEYS):
            return other
    return None


def compare(rows: list[dict]) -> list[dict]:
    """`rows`, each of ours given its ratio to the first row and, where there is a yardstick, our
    per-view step time over its per-image step time (1.0: as fast per image as Keras)."""
    base = rows[0]
    for row in rows:
        if row["kind"] == "yardstick":
            continue
        row["ratio_to_baseline"] = row["pairs_per_second"] / base["pairs_per_second"]
        keras_row = _yardstick_of(row, rows)
        row["per_view_vs_keras_per_image"] = (
            keras_row["views_per_second"] / row["views_per_second"] if keras_row else None)
    return rows


def table(rows: list[dict]) -> list[str]:
    width = max([52] + [len(row["setting"]) for row in rows])
    lines = [f"{'setting':{width}s} {'pairs/s':>8s} {'views/s':>8s} {'range pairs/s':>14s} "
             f"{'peak GB':>7s} {'ratio':>6s} {'vs Keras':>8s} {'save s':>6s}"]
    for row in rows:
        if row["kind"] == "yardstick":
            continue
        low, high = (row["batch"] / t for t in reversed(row["step_seconds_range"]))
        versus = row["per_view_vs_keras_per_image"]
        lines.append(f"{row['setting']:{width}s} {row['pairs_per_second']:8.2f} "
                     f"{row['views_per_second']:8.2f} {low:6.2f}-{high:<7.2f} "
                     f"{row['peak_rss_gb']:7.2f} {row['ratio_to_baseline']:6.2f} "
                     + (f"{versus:8.2f}" if versus else f"{'-':>8s}")
                     + f" {row['checkpoint_seconds']:6.2f}")
    for row in rows:
        if row["kind"] == "yardstick":
            lines.append(f"Keras ResNet{row['depth']} supervised, {row['size']} px, "
                         f"{2 * row['batch']} images/step, {row['precision']}: "
                         f"{row['views_per_second']:.2f} images/s, peak "
                         f"{row['peak_rss_gb']:.2f} GB")
    return lines


def main() -> None:
    if FLAGS.child:
        print(json.dumps(child(json.loads(FLAGS.child))))
        return
    settings = [Setting.parse(text) for text in FLAGS.setting]
    todo = jobs(settings, FLAGS.yardstick)
    alternate.report(
        todo, FLAGS.rounds, lambda job: alternate.run_child(__file__, job),
        lambda job: Setting(**job["setting"]).label()
        + (" (Keras yardstick), s/step" if job["kind"] == "yardstick" else ", s/step"),
        lambda jobs, runs: compare([summarise(job, r) for job, r in zip(jobs, runs)]), table,
        FLAGS.output, steps=FLAGS.steps, steps_per_loop=FLAGS.steps_per_loop)


if __name__ == "__main__":
    entry_point.run(main)
