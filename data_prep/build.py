"""Builds case-grouped TFRecord data sets from a folder of images and a metadata table.

    python -m data_prep.build --format=chexpert|nih|ham10000|generic --manifest=CSV \\
        --image_root=DIR --output_dir=DIR [--num_workers=N] [--on_error=skip|fail] ... \\
        [--runner=local | --runner=beam -- <Apache Beam pipeline options>]

`build_dataset(BuildConfig(...))` does the same from Python and returns the report.

Steps: read the manifest (every row counted) -> drop duplicate images -> refuse paths outside the
image root and missing files -> group images into cases -> split by patient -> rank the training
patients for the label fractions (`plan_cases`, the same for both runners) -> read, check and
encode the images, in a fixed order, in worker processes (`--runner=local`, data_prep.parallel)
or as an Apache Beam pipeline (`--runner=beam`, data_prep.beam_pipeline) -> one record per case
into sharded TFRecords, cut by `writer.ShardPlan` -> `dataset_info.json`, `label_fractions.json`,
`report.json`.

Cases are written in a seeded pseudo-random order (a hash of the case id), so every shard holds a
mix of patients and classes; identical inputs and flags give byte-identical shards.
"""

from __future__ import annotations

if __name__ == "__main__":  # the command: hide TensorFlow's start-up notices before it loads
    from flags import entry_point

    entry_point.import_tensorflow_quietly()

import collections
import contextlib
import functools
import os
import posixpath
import stat
import time
from typing import Callable, Iterator, Sequence

import tensorflow as tf
from tqdm import tqdm

from data_prep import formats, images, manifest, parallel, splits, writer
from data_prep.cases import (SPLITS, PlannedCase, PlannedImage, SplitTally, Written, case_record,
                             estimated_bytes, write_order)
from data_prep.config import BuildConfig
from data_prep.manifest import ImageRow, ManifestError
from data_prep.report import Ledger, format_summary, save_json
from simclr_med.data import schema
from simclr_med.errors import UserError


def build_dataset(config: BuildConfig, beam_args: Sequence[str] = ()) -> dict:
    """Builds the data set `config` describes; returns the report (also saved as report.json).

    `beam_args`: the Apache Beam pipeline options of `config.runner == "beam"` (e.g.
    `--runner=DirectRunner --direct_num_workers=2`); only the per-image work and the writing of
    the shards run as the pipeline (data_prep.beam_pipeline), everything else as for the local
    runner, so both give the same files.
    """
    started = time.perf_counter()
    image_root = _image_root(config)
    writer.prepare_output_dir(config.output_dir, config.overwrite)
    ledger = Ledger(config.on_error)
    source = formats.make_format(config)
    stages: dict[str, float] = {}
    cases = plan_cases(config, source, image_root, ledger, stages)
    num_labels = len(source.names) if source.task == schema.MULTILABEL else 0
    options = images.ImageOptions(image_root, config.image_size, config.max_image_pixels)
    written = Written(ledger)
    if config.runner == "beam":
        from data_prep import beam_pipeline  # apache-beam is an optional dependency

        write = functools.partial(beam_pipeline.write_cases, pipeline_args=beam_args)
    else:
        write = _write_local
    shards = write(write_order(cases, config.split_seed), num_labels, config, options, written)
    tallies, empty_cases = written.tallies, written.empty_cases
    stages["images"] = time.perf_counter() - started - sum(stages.values())

    split_counts = {split: tallies[split].counts() for split in SPLITS}
    schema.DatasetInfo(task=source.task, names=list(source.names), split_counts=split_counts,
                       source_format=config.format, shards=shards).save(config.output_dir)
    save_json(_label_fractions(cases, tallies[splits.TRAIN], config.split_seed),
              f"{config.output_dir}/{schema.LABEL_FRACTIONS_FILE}")
    report = ledger.report(
        {split: {**split_counts[split], "unlabelled_images": tallies[split].unlabelled_images}
         for split in SPLITS},
        time.perf_counter() - started, format=config.format, output_dir=config.output_dir,
        num_workers=config.workers, empty_cases=empty_cases,
        shards={split: len(split_shards) for split, split_shards in shards.items()},
        command=config.command_line(),
        stage_seconds={stage: round(seconds, 3) for stage, seconds in stages.items()})
    save_json(report, f"{config.output_dir}/{schema.REPORT_FILE}")
    return report


def plan_cases(config: BuildConfig, source: manifest.RowParser, image_root: str, ledger: Ledger,
               stages: dict[str, float]) -> list[PlannedCase]:
    """Everything before the images are read, the same for every runner: the manifest (every row
    counted into `ledger`), duplicates, paths outside the image root and missing files, cases,
    the patient split and the label-fraction ranks. Adds the two stages' seconds to `stages`."""
    started = time.perf_counter()
    parsed = manifest.read_manifest(config.manifests, source, config.split_column)
    stages["read_manifest"] = time.perf_counter() - started
    ledger.rows_in = parsed.rows_in
    for skipped in parsed.skips:
        ledger.skip(skipped.reason, skipped.ref, skipped.detail)
    rows = _drop_duplicates(parsed.rows, ledger)
    if config.split_column:
        split_of = splits.official_splits(rows).__getitem__
    else:
        split_of = functools.cache(functools.partial(
            splits.hash_split, val_fraction=config.val_fraction,
            test_fraction=config.test_fraction, seed=config.split_seed))
    cases = _group_cases(_locate(rows, image_root, ledger), split_of)
    ranks = _label_fraction_ranks(cases, source.task, config.split_seed)
    for case in cases:
        case.rank = ranks.get(case.patient_id, 1.0)
    stages["cases_and_splits"] = time.perf_counter() - started - stages["read_manifest"]
    return cases


def _image_root(config: BuildConfig) -> str:
    """The image root as a real local path (links followed), or a bucket's URL (Beam only)."""
    if not images.is_url(config.image_root):
        image_root = os.path.realpath(config.image_root)
        if not os.path.isdir(image_root):
            raise UserError(f"image root {config.image_root!r} is not a folder")
        return image_root
    if config.runner != "beam":
        raise UserError(f"--image_root={config.image_root}: the local runner reads images from "
                        f"a local folder; --runner=beam reads them from a bucket")
    if not tf.io.gfile.isdir(config.image_root):
        raise UserError(f"image root {config.image_root!r} is not a folder")
    return config.image_root.rstrip("/")


def _drop_duplicates(rows: list[ImageRow], ledger: Ledger) -> list[ImageRow]:
    """The first row of each image id and of each path; later ones are skipped as duplicates."""
    first_ref: dict[str, str] = {}
    unique = []
    for row in rows:
        keys = (f"id:{row.image_id}", f"path:{os.path.normpath(row.path)}")
        earlier = next((first_ref[key] for key in keys if key in first_ref), None)
        if earlier:
            ledger.skip(manifest.DUPLICATE, row.ref, f"image {row.image_id!r} ({row.path}) is "
                                                     f"already at {earlier}")
            continue
        for key in keys:
            first_ref[key] = row.ref
        unique.append(row)
    return unique


def _locate(rows: list[ImageRow], image_root: str, ledger: Ledger) -> Iterator[PlannedImage]:
    """Rows whose path lies inside the image root and names an existing file."""
    for row in rows:
        path = _image_path(image_root, row.path)
        if path is None:
            ledger.skip(images.OUTSIDE_ROOT, row.ref, f"{row.path} is outside {image_root}")
            continue
        try:
            size = _file_size(path)
        except FileNotFoundError:
            ledger.skip(images.MISSING_FILE, row.ref, f"{row.path} not found in {image_root}")
            continue
        except OSError as error:
            ledger.skip(images.UNREADABLE_FILE, row.ref, f"{row.path}: {error}")
            continue
        if size is None:
            ledger.skip(images.MISSING_FILE, row.ref, f"{row.path} is not a file")
            continue
        yield PlannedImage(row, path, size)


def _image_path(image_root: str, path: str) -> str | None:
    """`path` (relative to the root, or absolute) joined to the root and normalised; None when it
    leads outside the root."""
    if not images.is_url(image_root):
        joined = os.path.normpath(os.path.join(image_root, path))
        return joined if images.is_inside(joined, image_root) else None
    scheme, root = image_root.split("://", 1)
    joined = posixpath.normpath(posixpath.join("/" + root, path))
    return f"{scheme}:/{joined}" if images.is_inside(joined, "/" + root) else None


def _file_size(path: str) -> int | None:
    """The size of the file at `path`, None if it is not a file; FileNotFoundError if nothing is
    there."""
    if images.is_url(path):
        try:
            status = tf.io.gfile.stat(path)
        except tf.errors.NotFoundError:
            raise FileNotFoundError(path) from None
        except tf.errors.OpError as error:
            raise OSError(error.message) from None
        return None if status.is_directory else status.length
    try:
        status = os.stat(path)
    except NotADirectoryError:
        raise FileNotFoundError(path) from None
    return status.st_size if stat.S_ISREG(status.st_mode) else None


def _group_cases(located: Iterator[PlannedImage],
                 split_of: Callable[[str], str]) -> list[PlannedCase]:
    """Cases with their images in image-id order; a case spanning two patients is an error."""
    cases: dict[str, PlannedCase] = {}
    conflicts = []
    for image in located:
        row = image.row
        case = cases.get(row.case_id)
        if case is None:
            case = cases[row.case_id] = PlannedCase(row.case_id, row.patient_id,
                                                    split_of(row.patient_id))
        if case.patient_id != row.patient_id:
            conflicts.append(f"{row.ref}: case {row.case_id!r} has patient {row.patient_id!r} "
                             f"here and {case.patient_id!r} before")
        case.images.append(image)
    if conflicts:
        raise ManifestError(f"{len(conflicts)} row(s) put a case under a second patient; a case "
                            f"belongs to one patient: {'; '.join(conflicts[:5])}")
    for case in cases.values():
        if len(case.images) > 1:
            case.images.sort(key=lambda image: image.row.image_id)
    return list(cases.values())


def _label_fraction_ranks(cases: list[PlannedCase], task: str, seed: int) -> dict[str, float]:
    """Ranks of the training patients (see `data_prep.splits`)."""
    by_patient = collections.defaultdict(list)
    for case in cases:
        if case.split == splits.TRAIN:
            by_patient[case.patient_id].extend(
                image.row.class_id if task == schema.MULTICLASS
                else (image.row.labels, image.row.label_mask) for image in case.images)
    strata = (splits.multiclass_strata(by_patient) if task == schema.MULTICLASS
              else splits.multilabel_strata(by_patient))
    return splits.label_fraction_ranks(strata, seed)


def _write_local(ordered: list[PlannedCase], num_labels: int, config: BuildConfig,
                 options: images.ImageOptions,
                 written: Written) -> dict[str, list[schema.ShardInfo]]:
    """Reads the images in worker processes (data_prep.parallel) and writes one record per case,
    streaming; returns the shards."""
    estimated = estimated_bytes(ordered)
    shard_bytes = int(config.shard_size_mb * 2**20)
    writers = {split: writer.ShardedWriter(config.output_dir, split, estimated[split], shard_bytes)
               for split in SPLITS}
    outcomes = parallel.ordered_map(functools.partial(images.load_image, options=options),
                                    (image.path for case in ordered for image in case.images),
                                    config.workers)
    try:
        with contextlib.closing(outcomes), tqdm(
                total=sum(len(case.images) for case in ordered), unit="image", desc="images",
                disable=not config.progress, mininterval=1.0) as progress:
            for case in ordered:
                case_outcomes = [next(outcomes) for _ in case.images]
                progress.update(len(case_outcomes))
                entries = written.add(case, case_outcomes)
                if entries:
                    writers[case.split].write(case_record(case, entries, num_labels))
        return {split: writers[split].finish() for split in SPLITS}
    except BaseException:
        for shard_writer in writers.values():
            shard_writer.discard()
        raise


def _label_fractions(cases: list[PlannedCase], train: SplitTally, seed: int) -> dict:
    """`label_fractions.json`: per standard fraction, the training patients it selects."""
    ranks = {case.patient_id: case.rank for case in cases if case.patient_id in train.images}
    fractions = {}
    for fraction in splits.STANDARD_FRACTIONS:
        members = splits.fraction_members(ranks, fraction)
        fractions[str(fraction)] = {
            "patients": len(members), "cases": sum(train.cases[p] for p in members),
            "images": sum(train.images[p] for p in members), "patient_ids": members}
    return {"split": splits.TRAIN, "seed": seed, "train_patients": len(ranks),
            "selection": "training patients with float32(patient/label_fraction_rank) <= "
                         "float32(fraction); unlabelled patients have rank 1.0",
            "fractions": fractions}


def main() -> None:
    # Imported here, not at the top, so that importing this module from another program (which
    # has flags of its own, such as --image_size) defines no flags.
    from flags import build_flags, entry_point

    entry_point.run(lambda args: print(format_summary(build_dataset(
        build_flags.build_config(), beam_args=build_flags.beam_args(args)))), takes_args=True)


if __name__ == "__main__":
    main()
