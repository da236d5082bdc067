"""Sharded TFRecord output under temporary names.

Shards of one split are filled up to a target size and written as
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

import tensorflow as tf

from simclr_med.data import integrity, schema
from simclr_med.errors import UserError

_BUILD_FILES = (schema.shard_glob(), schema.INCOMPLETE_SHARDS, schema.DATASET_INFO_FILE,
                schema.REPORT_FILE, schema.LABEL_FRACTIONS_FILE)


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


class ShardedWriter:
    """Writes the records of one split into shards of roughly equal size.

    The number of shards comes from the split's estimated size (its image files on disk) and the
    shard size: ceil(estimate / shard size) shards of estimate / that many bytes each. Re-encoding
    mostly shrinks images (grey RGB to one channel, resizing), so the estimate is an upper bound up
    to the records' few bytes of ids and labels; the last shard takes whatever is left over.
    """

    def __init__(self, output_dir: str, split: str, estimated_bytes: int,
                 shard_size_bytes: int) -> None:
        self._output_dir = output_dir
        self._split = split
        self._max_shards = max(1, math.ceil(estimated_bytes / shard_size_bytes))
        self._target = math.ceil(estimated_bytes / self._max_shards)
        self._paths: list[str] = []
        self._writer: tf.io.TFRecordWriter | None = None
        self._shard_bytes = 0

    def write(self, record: bytes) -> None:
        if self._writer is None or (self._shard_bytes + len(record) > self._target
                                    and len(self._paths) < self._max_shards):
            self._next_shard()
        self._writer.write(record)
        self._shard_bytes += len(record)

    def _next_shard(self) -> None:
        self._close()
        path = f"{self._output_dir}/{schema.incomplete_shard_name(self._split, len(self._paths))}"
        self._paths.append(path)
        self._writer = tf.io.TFRecordWriter(path)
        self._shard_bytes = 0

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self) -> list[schema.ShardInfo]:
        """Renames the complete shards to their final names; returns their names, sizes and
        SHA-256."""
        if not self._paths:
            self._next_shard()
        self._close()
        shards = []
        for index, path in enumerate(self._paths):
            final = f"{self._output_dir}/{schema.shard_name(self._split, index, len(self._paths))}"
            tf.io.gfile.rename(path, final, overwrite=True)
            shards.append(integrity.describe_shard(final))
        return shards

    def discard(self) -> None:
        """Removes the incomplete shards (after a failed build)."""
        self._close()
        for path in self._paths:
            if tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)
