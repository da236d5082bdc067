"""Does bfloat16 train like float32? Loss curves of short pretraining runs, side by side.

    .venv/bin/python bench/loss_curve.py [--setting=depth=18,size=32,batch=64,blur=0]
        [--precisions=float32,mixed_bfloat16] [--seeds=3] [--steps=200] [--steps_per_loop=10]
        [--output=loss_curve.json] [--plot=loss_curve.png]

Each run is a short pretraining in a fresh process with one precision and one seed (the same
seeds for every precision, which fix the initial weights, the data order and the augmentations);
the runs alternate (seed 0 float32, seed 0 bfloat16, seed 1 float32, ...). Its loss curve is read
from the run's TensorBoard events: one point per `steps_per_loop` steps, their mean loss.

The comparison is on the mean loss over the last `tail` of each curve. For each precision after
the first: the mean over seeds of its difference from the reference at the same seed (paired),
its standard error, and the reference's own seed-to-seed standard deviation of that mean, the
noise. "Within noise" means the precision moves the loss less than another seed moves float32.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flags import entry_point  # noqa: E402

entry_point.import_tensorflow_quietly()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import alternate  # noqa: E402  (bench/alternate.py, beside this script)
from flags import loss_curve_flags  # noqa: E402,F401  (defines the flags)
from pretrain_setting import Setting, pretrain_run, set_op_threads  # noqa: E402
from simclr_med.config import PRECISIONS  # noqa: E402
from simclr_med.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS


def logged_losses(model_dir: str) -> tuple[list[int], list[float]]:
    """(steps, losses) of the `loss` scalars of the TensorBoard events in `model_dir`."""
    points = {}
    for path in pathlib.Path(model_dir).glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "loss":
                    points[event.step] = float(tf.make_ndarray(value.tensor))
    steps = sorted(points)
    return steps, [points[step] for step in steps]


def child(job: dict) -> dict:
    s = Setting(**job["setting"])
    set_op_threads(s)
    with tempfile.TemporaryDirectory() as model_dir:
        summary = pretrain_run(s, job["steps"], job["steps_per_loop"], job["data_dir"],
                               model_dir, seed=job["seed"])
        steps, losses = logged_losses(model_dir)
    return {"seconds": s.batch / summary["examples_per_second"], "steps": steps, "loss": losses,
            "precision": summary["precision"]}


def compare(precisions: list[str], curves: dict[str, np.ndarray], tail: float) -> list[dict]:
    """One row per precision from its curves ([seeds, points]); rows after the first compared
    with the first at the same seeds."""
    points = next(iter(curves.values())).shape[1]
    last = max(1, round(tail * points))
    reference = curves[precisions[0]]
    rows = []
    for precision in precisions:
        found, seeds = curves[precision], curves[precision].shape[0]
        tails = found[:, -last:].mean(axis=1)
        row = {"precision": precision, "tail_points": last, "tail_means": tails.tolist(),
               "tail_mean": float(tails.mean()),
               "seed_sd": float(tails.std(ddof=1)) if seeds > 1 else None,
               "curves": found.tolist(), "mean_curve": found.mean(axis=0).tolist()}
        if rows:
            paired = tails - reference[:, -last:].mean(axis=1)
            noise = rows[0]["seed_sd"]
            row.update({
                "difference": float(paired.mean()),
                "difference_se": float(paired.std(ddof=1) / math.sqrt(seeds)) if seeds > 1
                else None,
                "largest_curve_gap": float(np.abs(found.mean(0) - reference.mean(0)).max()),
                "within_noise": bool(abs(paired.mean()) <= noise) if noise is not None else None})
        rows.append(row)
    return rows


def summarise(jobs: list[dict], runs: list[list[dict]]) -> list[dict]:
    precisions = list(dict.fromkeys(job["setting"]["precision"] for job in jobs))
    steps = {tuple(r[0]["steps"]) for r in runs}
    if len(steps) > 1:
        raise RuntimeError(f"the runs logged at different steps: {sorted(steps)}")
    own = {p: [r[0] for job, r in zip(jobs, runs) if job["setting"]["precision"] == p]
           for p in precisions}
    rows = compare(precisions, {p: np.array([r["loss"] for r in own[p]]) for p in precisions},
                   FLAGS.tail)
    for row in rows:
        first = own[row["precision"]][0]
        row.update({"steps": first["steps"], "step_seconds": alternate.median_and_range(
            [r["seconds"] for r in own[row["precision"]]])[0], "computed_in": first["precision"]})
    return rows


def table(rows: list[dict]) -> list[str]:
    reference = rows[0]["precision"]
    lines = [f"mean loss of the last {rows[0]['tail_points']} logged points, over "
             f"{len(rows[0]['tail_means'])} seeds",
             f"{'precision':16s} {'loss':>7s} {'seed sd':>8s} {f'- {reference} (paired)':>26s} "
             f"{'largest gap':>11s} {'within noise':>12s} {'s/step':>7s}"]
    for row in rows:
        sd = f"{row['seed_sd']:8.4f}" if row["seed_sd"] is not None else f"{'-':>8s}"
        if "difference" in row:
            se = f" +- {row['difference_se']:.4f}" if row["difference_se"] is not None else ""
            versus = (f"{row['difference']:+.4f}{se}", f"{row['largest_curve_gap']:.4f}",
                      {True: "yes", False: "no", None: "-"}[row["within_noise"]])
        else:
            versus = ("-", "-", "-")
        lines.append(f"{row['precision']:16s} {row['tail_mean']:7.4f} {sd} {versus[0]:>26s} "
                     f"{versus[1]:>11s} {versus[2]:>12s} {row['step_seconds']:7.3f}")
    lines.append("step     " + " ".join(f"{row['precision']:>16s}" for row in rows))
    for i, step in enumerate(rows[0]["steps"]):
        lines.append(f"{step:<8d} " + " ".join(f"{row['mean_curve'][i]:16.4f}" for row in rows))
    return lines


def plot(rows: list[dict], path: str) -> None:
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for row in rows:
        own = np.array(row["curves"])
        line, = axes.plot(row["steps"], row["mean_curve"], label=row["precision"])
        axes.fill_between(row["steps"], own.min(0), own.max(0), color=line.get_color(), alpha=0.2)
    axes.set(xlabel="step", ylabel="NT-Xent loss (mean of the seeds; band: min-max)",
             title=FLAGS.setting)
    axes.legend()
    figure.savefig(path, dpi=120, bbox_inches="tight")


def main() -> None:
    if FLAGS.child:
        print(json.dumps(child(json.loads(FLAGS.child))))
        return
    base = Setting.parse(FLAGS.setting)
    unknown = [p for p in FLAGS.precisions if p not in PRECISIONS]
    if unknown or FLAGS.seeds < 1 or not 0 < FLAGS.tail <= 1:
        raise UserError(f"--precisions must be among {', '.join(PRECISIONS)} (got "
                        f"{', '.join(FLAGS.precisions)}), --seeds at least 1 and --tail in (0, 1]")
    jobs = [{"setting": dataclasses.asdict(dataclasses.replace(base, precision=precision)),
             "seed": seed, "steps": FLAGS.steps, "steps_per_loop": FLAGS.steps_per_loop,
             "data_dir": FLAGS.data_dir}
            for seed in range(FLAGS.seeds) for precision in FLAGS.precisions]
    rows = alternate.report(
        jobs, 1, lambda job: alternate.run_child(__file__, job),
        lambda job: f"seed {job['seed']} {job['setting']['precision']}, s/step",
        summarise, table, FLAGS.output, setting=FLAGS.setting, steps=FLAGS.steps,
        steps_per_loop=FLAGS.steps_per_loop, tail=FLAGS.tail)
    if FLAGS.plot:
        plot(rows, FLAGS.plot)


if __name__ == "__main__":
    entry_point.run(main)
