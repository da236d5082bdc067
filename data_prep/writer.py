"""Sharded TFRecord output under temporary names.

Shards of one split are filled up to a target size (`ShardPlan`: the local builder streams its
records into them, `data_prep.beam_pipeline` plans them from the records' sizes and writes each
on one worker, with the same cut) and written as
`.<split>-NNNNN.tfrecord.incomplete`; only when the whole build has succeeded are they renamed to
`<split>-NNNNN-of-MMMMM.tfrecord` (`schema.shard_name`), so a failed or interrupted build never
leaves a file that a reader would take for a shard. Every split gets at least one shard, empty if
it has no cases, so readers can always open it. Each shard's size and SHA-256 are taken once it
is complete, for `dataset_info.json` (readers check them: `simclr_med.data.integrity`). Paths go
through `tf.io.gfile`, so the output folder can be a cloud bucket (gs://...) as well as a local
folder.
"""

from __future__ import annotations

import math
from typing import Iterable

import tensorflow as tf

from simclr_med.data import integrity, schema
from simclr_med.errors import UserError

_BUILD_FILES = (schema.shard_glob(), schema.INCOMPLETE_SHARDS, schema.DATASET_INFO_FILE,
                schema.REPORT_FILE, schema.LABEL_FRACTIONS_FILE,
                ".beam-*")  # data_prep.beam_pipeline's work files, left by an interrupted build


def prepare_output_dir(output_dir: str, overwrite: bool) -> None:
    """Creates the folder; a previous build in it is an error unless `overwrite` removes it."""
    tf.io.gfile.makedirs(output_dir)
    existing = sorted(path for pattern in _BUILD_FILES
                      for path in tf.io.gfile.glob(f"{output_dir}/{pattern}"))
    if existing and not overwrite:
        raise UserError(f"{output_dir} already holds a build ({len(existing)} files, e.g. "
                        f"{existing[0]}); pass --overwrite to replace it")
    for path in existing:
        tf.io.gfile.remove(path)


class ShardPlan:
    """Which shard each record of one split goes to, decided record by record in write order.

    The number of shards comes from the split's estimated size (its image files on disk) and the
    shard size: ceil(estimate / shard size) shards of estimate / that many bytes each. Re-encoding
    mostly shrinks images (grey RGB to one channel, resizing), so the estimate is an upper bound up
    to the records' few bytes of ids and labels; the last shard takes whatever is left over.

    A pure function of the estimate, the shard size and the records' sizes in order, so the local
    builder (which streams) and the Beam pipeline (which plans from the encoded sizes, then writes
    each shard on one worker) cut the shards at the same records.
    """

    def __init__(self, estimated_bytes: int, shard_size_bytes: int) -> None:
        self._max_shards = max(1, math.ceil(estimated_bytes / shard_size_bytes))
        self._target = math.ceil(estimated_bytes / self._max_shards)
        self._shard_bytes = 0
        self.num_shards = 0  # shards holding records so far

    def assign(self, record_bytes: int) -> int:
        """The index of the shard the next record (of `record_bytes` bytes) goes into."""
        if self.num_shards == 0 or (self._shard_bytes + record_bytes > self._target
                                    and self.num_shards < self._max_shards):
            self.num_shards += 1
            self._shard_bytes = 0
        self._shard_bytes += record_bytes
        return self.num_shards - 1


class ShardedWriter:
    """Writes the records of one split, in order, into the shards a `ShardPlan` assigns."""

    def __init__(self, output_dir: str, split: str, estimated_bytes: int,
                 shard_size_bytes: int) -> None:
        self._output_dir = output_dir
        self._split = split
        self._plan = ShardPlan(estimated_bytes, shard_size_bytes)
        self._writer: tf.io.TFRecordWriter | None = None

    def write(self, record: bytes) -> None:
        shards = self._plan.num_shards
        if self._plan.assign(len(record)) == shards:
            self._close()
            self._writer = tf.io.TFRecordWriter(incomplete_shard_path(self._output_dir,
                                                                      self._split, shards))
        self._writer.write(record)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self) -> list[schema.ShardInfo]:
        """Renames the complete shards to their final names; returns their names, sizes and
        SHA-256."""
        self._close()
        return finish_shards(self._output_dir, self._split, self._plan.num_shards)

    def discard(self) -> None:
        """Removes the incomplete shards (after a failed build)."""
        self._close()
        discard_shards(self._output_dir)


def incomplete_shard_path(output_dir: str, split: str, index: int) -> str:
    return f"{output_dir}/{schema.incomplete_shard_name(split, index)}"


def write_shard(output_dir: str, split: str, index: int, records: Iterable[bytes]) -> None:
    """Writes one complete shard (under its incomplete name) from its records in order."""
    with tf.io.TFRecordWriter(incomplete_shard_path(output_dir, split, index)) as shard:
        for record in records:
            shard.write(record)


def finish_shards(output_dir: str, split: str, num_shards: int) -> list[schema.ShardInfo]:
    """Renames the split's `num_shards` incomplete shards to their final names (after writing an
    empty one when the split has none); returns their names, sizes and SHA-256."""
    if not num_shards:
        write_shard(output_dir, split, 0, ())
    shards = []
    for index in range(max(1, num_shards)):
        final = f"{output_dir}/{schema.shard_name(split, index, max(1, num_shards))}"
        tf.io.gfile.rename(incomplete_shard_path(output_dir, split, index), final, overwrite=True)
        shards.append(integrity.describe_shard(final))
    return shards


def discard_shards(output_dir: str) -> None:
    """Removes every incomplete shard in `output_dir` (after a failed build)."""
    for path in tf.io.gfile.glob(f"{output_dir}/{schema.INCOMPLETE_SHARDS}"):
        tf.io.gfile.remove(path)
