"""Damaged builds are named: shard sizes and SHA-256 recorded by data_prep, checked by the reader.

data_prep records every shard's size and SHA-256 in `dataset_info.json` (`schema.ShardInfo`), and
the data_prep command that made the build in `report.json`. The reader checks
- when it opens a build: every recorded shard is there with its recorded size, and no unlisted
  shard sits beside them (a stat per shard, also on gs://): `check_sizes`;
- with `verify_data`: every shard's SHA-256, before any step: `verify_checksums`;
- while reading: the records' CRCs, in TensorFlow's TFRecord reader. Its `DataLossError` names no
  file (tf.data interleaves the shards), so the functions that read a build are decorated with
  `names_damaged_shards`: after a `DataLossError` they read every shard of the build once more,
  one at a time (through tf.data, no Python per record), and raise a `DamagedBuildError` naming
  the shards that fail. The scan runs only after a failure; the training input is untouched.
Every error ends with how to rebuild the data set: the command `report.json` records.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import posixpath
import re
import shlex
import time
from typing import Callable, TypeVar

import tensorflow as tf
from absl import logging

from simclr_med.data import schema
from simclr_med.errors import UserError

READ_CHUNK_BYTES = 8 * 2**20
F = TypeVar("F", bound=Callable)


class DamagedBuildError(UserError):
    """Shards of a data_prep build are missing, have the wrong size or hold damaged records."""

    def __init__(self, data_dir: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"damaged data set {data_dir}: {'; '.join(problems)}. "
                         f"{rebuild_hint(data_dir)}")


def describe_shard(path: str) -> schema.ShardInfo:
    """Name, size and SHA-256 of a shard file (read in chunks: any size, local or gs://)."""
    digest = hashlib.sha256()
    size = 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(READ_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return schema.ShardInfo(file=posixpath.basename(path), bytes=size, sha256=digest.hexdigest())


def rebuild_hint(data_dir: str) -> str:
    """How to rebuild the build in `data_dir`: the data_prep command its report.json records."""
    report = {}
    path = f"{data_dir}/{schema.REPORT_FILE}"
    if tf.io.gfile.exists(path):
        try:
            with tf.io.gfile.GFile(path) as f:
                report = json.load(f)
        except (json.JSONDecodeError, tf.errors.OpError):
            pass  # a damaged report cannot help; the generic advice follows
    command = report.get("command")
    if not command:
        return ("Rebuild it with python -m data_prep.build, the flags that made it and "
                "--overwrite")
    # Here, wherever it was built (a copied or moved build, a staging folder).
    words = [f"--output_dir={data_dir}" if word.startswith("--output_dir=") else word
             for word in shlex.split(command)]
    return (f"Rebuild it with the command that made it (from {schema.REPORT_FILE}): "
            f"{shlex.join(words + ['--overwrite'])}")


def _split_shards(data_dir: str, info: schema.DatasetInfo) -> dict[str, list[str]]:
    """Paths of every split's shards: the recorded ones, else those found in the folder."""
    if info.shards:
        return {split: [f"{data_dir}/{shard.file}" for shard in shards]
                for split, shards in info.shards.items()}
    return {split: schema.shard_paths(data_dir, split) for split in info.split_counts}


def check_sizes(data_dir: str, info: schema.DatasetInfo) -> None:
    """Every recorded shard exists with its recorded size and no other shard is there; a build
    that records no shards (made before they were recorded) only gets a note."""
    if not info.shards:
        logging.warning("%s records no shard sizes or checksums (built before data_prep recorded "
                        "them): its shards cannot be verified. Rebuild it to have them checked.",
                        data_dir)
        return
    problems = []
    for split, shards in info.shards.items():
        for shard in shards:
            path = f"{data_dir}/{shard.file}"
            try:
                size = tf.io.gfile.stat(path).length
            except tf.errors.NotFoundError:
                problems.append(f"{path} is missing")
                continue
            if size != shard.bytes:
                change = "truncated" if size < shard.bytes else "extended"
                problems.append(f"{path} is {size} bytes, {schema.DATASET_INFO_FILE} records "
                                f"{shard.bytes} ({change})")
        listed = {shard.file for shard in shards}
        problems += [f"{path} is not one of the {split} shards {schema.DATASET_INFO_FILE} lists"
                     for path in schema.shard_paths(data_dir, split)
                     if posixpath.basename(path) not in listed]
    if problems:
        raise DamagedBuildError(data_dir, problems)


def verify_checksums(data_dir: str, info: schema.DatasetInfo) -> None:
    """Every shard's SHA-256 against the record (sizes are checked first); a build that records
    none gets its records' CRCs checked instead."""
    started = time.perf_counter()
    check_sizes(data_dir, info)
    if info.shards:
        problems = []
        for shard in (shard for shards in info.shards.values() for shard in shards):
            actual = describe_shard(f"{data_dir}/{shard.file}").sha256
            if actual != shard.sha256:
                problems.append(f"{data_dir}/{shard.file}: SHA-256 {actual} differs from "
                                f"{shard.sha256} in {schema.DATASET_INFO_FILE} (changed in place)")
        checked = "SHA-256"
    else:
        problems = damaged_records(data_dir, info)
        checked = "record CRCs (the build records no checksums)"
    if problems:
        raise DamagedBuildError(data_dir, problems)
    logging.info("verified the %s of %d shards of %s in %.1f s", checked,
                 sum(map(len, _split_shards(data_dir, info).values())), data_dir,
                 time.perf_counter() - started)


def _record_error(path: str) -> str:
    """What TensorFlow's reader finds wrong in a shard, or "" when every record reads back."""
    records = tf.data.TFRecordDataset(path, buffer_size=READ_CHUNK_BYTES)
    try:
        records.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1)
    except tf.errors.NotFoundError:
        return "missing"
    except tf.errors.DataLossError as error:
        found = re.search(r"\w+ record at \d+", error.message)  # "corrupted record at 606523"
        return (f"{found.group(0) if found else error.message} (a record's length or CRC does "
                "not match: the file changed after it was built)")
    return ""


def damaged_records(data_dir: str, info: schema.DatasetInfo) -> list[str]:
    """`<path>: <what is wrong>` for each shard whose records do not read back intact."""
    return [f"{path}: {error}" for paths in _split_shards(data_dir, info).values()
            for path in paths if (error := _record_error(path))]


def names_damaged_shards(function: F) -> F:
    """Decorates a function reading the data set passed as its `source` argument (a
    `reader.Source`): a `DataLossError` it raises becomes a `DamagedBuildError` naming the damaged
    shards. When no shard is damaged (the error came from elsewhere) it propagates unchanged."""
    signature = inspect.signature(function)
    if "source" not in signature.parameters:
        raise TypeError(f"{function.__qualname__} has no `source` argument")

    @functools.wraps(function)
    def reading(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except tf.errors.DataLossError as error:
            source = signature.bind(*args, **kwargs).arguments["source"]
            if not source.data_dir:
                raise
            logging.error("TensorFlow found a damaged record: checking the shards of %s",
                          source.data_dir)
            problems = damaged_records(source.data_dir, source.info)
            if not problems:
                logging.error("every shard of %s reads back intact: the error is not theirs",
                              source.data_dir)
                raise
            raise DamagedBuildError(source.data_dir, problems) from error

    return reading  # type: ignore[return-value]
