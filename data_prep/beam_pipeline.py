"""The per-image work and the shard writing of `data_prep.build` as an Apache Beam pipeline.

    python -m data_prep.build ... --runner=beam -- --runner=DirectRunner --direct_num_workers=2

The launching process plans the build exactly as the local runner does (data_prep/build.py: the
manifest, duplicates, paths outside the image root, missing files, cases, the patient split, the
label-fraction ranks, the write order); only then does the pipeline run:

1. `ReadCases`: the planned cases, in write order, from a file the launcher leaves in the output
   folder (`.beam-cases.txt`: a pipeline graph that held them would be too large for a service
   such as Dataflow with a big data set);
2. `EncodeCases`: on any worker, each case's images are read, checked, decoded, resized and
   encoded (`images.load_image`) and its record serialised (`cases.case_record`);
3. `PlanShards`: one small step sees every record's size (not its bytes) and every skipped image,
   and assigns the records to shards with `writer.ShardPlan` in write order, the rule the local
   builder applies while streaming; it writes the skips and shard counts to `.beam-plan.json`;
4. `WriteShards`: the records grouped by shard, each shard written by one worker in write order.

So the shards are byte-identical to the local build's. The launcher then reads `.beam-plan.json`
and replays the skips, case by case in write order, into the build's ledger (`cases.Written`):
report.json counts and quotes them as the local build does, and under `--on_error=fail` (the plan
step then fails the pipeline, naming the row) the launcher raises the local build's error for
the same first row. Per-reason Beam counters (namespace `data_prep`) show progress in a runner's
monitoring page.
"""

from __future__ import annotations

import base64
import json
import pickle
from typing import Iterable, Sequence

import tensorflow as tf

from data_prep import cases, images, writer
from data_prep.config import BuildConfig
from data_prep.report import Ledger
from simclr_med.data import schema
from simclr_med.errors import UserError

try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
except ImportError:  # the optional `beam` extra
    beam = None

CASES_FILE = ".beam-cases.txt"
PLAN_FILE = ".beam-plan.json"
COUNTER_NAMESPACE = "data_prep"

# What EncodeCases makes of one case: (write position, split, record or b"" when no image could
# be read, skips), a skip being (image position in the case, reason, manifest row, detail).
Encoded = tuple[int, str, bytes, tuple[tuple[int, str, str, str], ...]]


def write_cases(ordered: list[cases.PlannedCase], num_labels: int, config: BuildConfig,
                options: images.ImageOptions, written: cases.Written,
                pipeline_args: Sequence[str] = ()) -> dict[str, list[schema.ShardInfo]]:
    """`build`'s write step on Beam: encodes and writes the cases (in write order) with the
    pipeline `pipeline_args` describe, counts them into `written`; returns the shards."""
    if beam is None:
        raise UserError("--runner=beam needs Apache Beam: pip install 'simclr-med[beam]'")
    cases_path = f"{config.output_dir}/{CASES_FILE}"
    plan_path = f"{config.output_dir}/{PLAN_FILE}"
    _write_cases_file(cases_path, ordered)
    try:
        try:
            _run_pipeline(cases_path, plan_path, num_labels, config, options,
                          cases.estimated_bytes(ordered), pipeline_args)
        except Exception:
            # A worker's exception reaches here wrapped differently by each runner: when the
            # plan step failed the pipeline under --on_error=fail, replay its plan so that the
            # ledger raises the local build's error for the first bad row.
            if not tf.io.gfile.exists(plan_path):
                raise
            _replay(ordered, _read_plan(plan_path)["skips"], written)
            raise
        plan = _read_plan(plan_path)
        _replay(ordered, plan["skips"], written)
        return {split: writer.finish_shards(config.output_dir, split, plan["shards"][split])
                for split in cases.SPLITS}
    except BaseException:
        writer.discard_shards(config.output_dir)
        raise
    finally:
        for path in (cases_path, plan_path):
            if tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)


def _write_cases_file(path: str, ordered: list[cases.PlannedCase]) -> None:
    """One line per case: its write position and the case, pickled, in base64."""
    with tf.io.gfile.GFile(path, "w") as f:
        for order, case in enumerate(ordered):
            f.write(base64.b64encode(pickle.dumps((order, case))).decode() + "\n")


def _run_pipeline(cases_path: str, plan_path: str, num_labels: int, config: BuildConfig,
                  options: images.ImageOptions, estimated: dict[str, int],
                  pipeline_args: Sequence[str]) -> None:
    with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as pipeline:
        encoded = (pipeline
                   | "ReadCases" >> beam.io.ReadFromText(cases_path)
                   | "Unpickle" >> beam.Map(lambda line: pickle.loads(base64.b64decode(line)))
                   | "Spread" >> beam.Reshuffle()
                   | "EncodeCases" >> beam.Map(encode_case, options=options,
                                               num_labels=num_labels))
        plan = (encoded
                | "Sizes" >> beam.Map(lambda case: (case[0], case[1], len(case[2]), case[3]))
                | "AllSizes" >> beam.combiners.ToList()
                | "PlanShards" >> beam.Map(plan_shards, estimated=estimated,
                                           shard_bytes=int(config.shard_size_mb * 2**20),
                                           on_error=config.on_error, plan_path=plan_path))
        _ = (encoded
             | "Written" >> beam.Filter(lambda case: bool(case[2]))
             | "ShardKey" >> beam.Map(lambda case, shard_of: ((case[1], shard_of[case[0]]),
                                                              (case[0], case[2])),
                                      shard_of=beam.pvalue.AsSingleton(plan))
             | "ByShard" >> beam.GroupByKey()
             | "WriteShards" >> beam.Map(_write_shard, output_dir=config.output_dir))


def encode_case(planned: tuple[int, cases.PlannedCase], options: images.ImageOptions,
                num_labels: int) -> Encoded:
    """The per-image work of one case (on a worker) and its serialised record."""
    order, case = planned
    outcomes = [images.load_image(image.path, options) for image in case.images]
    skips = tuple((index, outcome.reason, image.row.ref, outcome.detail)
                  for index, (image, outcome) in enumerate(zip(case.images, outcomes))
                  if outcome.reason)
    for _, reason, _, _ in skips:
        beam.metrics.Metrics.counter(COUNTER_NAMESPACE, f"skipped_{reason}").inc()
    entries = cases.case_entries(case, outcomes)
    beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "images_written").inc(len(entries))
    record = cases.case_record(case, entries, num_labels) if entries else b""
    return order, case.split, record, skips


def plan_shards(sizes: list[tuple[int, str, int, tuple]], estimated: dict[str, int],
                shard_bytes: int, on_error: str, plan_path: str) -> dict[int, int]:
    """The shard of every written record (by write position), planned in write order as the
    local builder does; saves the skips and shard counts for the launcher at `plan_path`."""
    sizes = sorted(sizes)
    shard_plans = {split: writer.ShardPlan(estimated[split], shard_bytes)
                   for split in cases.SPLITS}
    shard_of = {order: shard_plans[split].assign(size)
                for order, split, size, _ in sizes if size}
    skips = [[order, *skip] for order, _, _, case_skips in sizes for skip in case_skips]
    with tf.io.gfile.GFile(plan_path, "w") as f:
        json.dump({"shards": {split: plan.num_shards for split, plan in shard_plans.items()},
                   "skips": skips}, f)
    if on_error == "fail" and skips:
        _, _, reason, ref, detail = skips[0]
        Ledger(on_error).skip(reason, ref, detail)  # raises the build's error, naming the row
    return shard_of


def _write_shard(shard: tuple[tuple[str, int], Iterable[tuple[int, bytes]]],
                 output_dir: str) -> None:
    (split, index), records = shard
    writer.write_shard(output_dir, split, index, (record for _, record in sorted(records)))


def _read_plan(path: str) -> dict:
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _replay(ordered: list[cases.PlannedCase], skips: list[list], written: cases.Written) -> None:
    """Counts every case into `written` as the local build does, from the plan's skips."""
    skipped: dict[tuple[int, int], images.Outcome] = {
        (order, index): images.Outcome(reason=reason, detail=detail)
        for order, index, reason, _, detail in skips}
    for order, case in enumerate(ordered):
        written.add(case, [skipped.get((order, index), images.Outcome())
                           for index in range(len(case.images))])
