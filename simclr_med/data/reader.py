"""Readers: case bags and flattened images from a data_prep build, or images from a TFDS data set.

A data_prep build holds one record per case (see `simclr_med.data.schema`). MICLe reads case bags;
SimCLR, fine-tuning and evaluation read the flattened images, each carrying its case and patient id.
Files are interleaved (and shuffled when training); with several input pipelines (multi-worker
training) each reads a disjoint part: whole files when there are enough, else every n-th record.
Opening a build checks its shards (`simclr_med.data.integrity`); the functions that train or evaluate
on a `Source` are decorated with `integrity.names_damaged_shards`, which names the shard behind
a damaged-record error.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Union

import tensorflow as tf

from simclr_med.data import integrity, schema
from simclr_med.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE
Seed = Union[int, tf.Tensor]  # a Python int, or an int64 scalar inside a tf.data function


@dataclasses.dataclass(frozen=True)
class Source:
    """What the training and evaluation code needs to know about a data set."""

    info: schema.DatasetInfo
    data_dir: str = ""  # a data_prep build, or "" for TFDS
    tfds_name: str = ""
    tfds_data_dir: Optional[str] = None

    def num_examples(self, split: str, unit: str = "images") -> int:
        """Images (or cases/patients) in a split, from the build's counts."""
        counts = self.info.split_counts.get(split)
        if not counts or unit not in counts:
            raise UserError(f"no {unit} count for split {split!r}; the data set has "
                            f"{sorted(self.info.split_counts)}")
        return int(counts[unit])


def open_build(data_dir: str, verify: bool = False) -> Source:
    """A data_prep build, after checking that its shards have their recorded sizes (a stat per
    shard) and, with `verify`, their SHA-256 (reads every shard); a damaged build raises
    `integrity.DamagedBuildError`, naming the shards and how to rebuild them."""
    info = schema.DatasetInfo.load(data_dir)
    if verify:
        integrity.verify_checksums(data_dir, info)
    else:
        integrity.check_sizes(data_dir, info)
    return Source(info=info, data_dir=data_dir)


def open_tfds(name: str, data_dir: Optional[str] = None) -> Source:
    """A TFDS image-classification data set (features `image` and `label`), e.g. cifar10."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare()
    label = builder.info.features["label"]
    counts = {split: {"images": info.num_examples} for split, info in builder.info.splits.items()}
    info = schema.DatasetInfo(task=schema.MULTICLASS, names=list(label.names),
                              split_counts=counts, source_format=f"tfds:{name}")
    return Source(info=info, tfds_name=name, tfds_data_dir=data_dir)


def shard_files(data_dir: str, split: str) -> list[str]:
    files = schema.shard_paths(data_dir, split)
    if not files:
        raise UserError(f"no TFRecord shards for split {split!r} in {data_dir!r} "
                        f"(expected {schema.shard_name_form(split)})")
    return files


def _shard(ds: tf.data.Dataset, context: Optional[tf.distribute.InputContext]) -> tf.data.Dataset:
    if context is None or context.num_input_pipelines == 1:
        return ds
    return ds.shard(context.num_input_pipelines, context.input_pipeline_id)


def read_cases(source: Source, split: str, *, shuffle_files: bool = False, seed: Seed = 0,
               input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
    """Parsed case bags (`schema.parse_case` dicts) of one split of a data_prep build, files in an
    order drawn from `seed` when `shuffle_files` (the same order at every iteration)."""
    files = shard_files(source.data_dir, split)
    by_file = input_context is not None and len(files) >= input_context.num_input_pipelines
    ds = tf.data.Dataset.from_tensor_slices(files)
    if by_file:
        ds = _shard(ds, input_context)
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=False)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 16),
                       num_parallel_calls=AUTOTUNE, deterministic=True)
    if not by_file:
        ds = _shard(ds, input_context)
    num_labels = source.info.num_labels
    return ds.map(lambda record: schema.parse_case(record, num_labels),
                  num_parallel_calls=AUTOTUNE)


def select_label_fraction(cases: tf.data.Dataset, fraction: float) -> tf.data.Dataset:
    """The nested, class-stratified subset of training patients stored by data_prep."""
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"label_fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return cases
    return cases.filter(lambda case: case["label_fraction_rank"] <= fraction)


_CASE_FIELDS = ("case_id", "patient_id")


def flatten_cases(cases: tf.data.Dataset) -> tf.data.Dataset:
    """One element per image: its own fields plus its case's `case_id` and `patient_id`."""

    def images_of(case):
        per_image = {k: v for k, v in case.items()
                     if k not in _CASE_FIELDS and k != "label_fraction_rank"}
        count = tf.shape(case["encoded"])[0]
        for key in _CASE_FIELDS:
            per_image[key] = tf.fill([count], case[key])
        return tf.data.Dataset.from_tensor_slices(per_image)

    return cases.flat_map(images_of)


def read_images(source: Source, split: str, *, shuffle_files: bool = False, seed: Seed = 0,
                input_context: Optional[tf.distribute.InputContext] = None,
                label_fraction: float = 1.0) -> tf.data.Dataset:
    """Single images with labels, from a data_prep build or a TFDS data set.

    Build elements carry `encoded` bytes (decoded later, after shuffling, to keep buffers small);
    TFDS elements carry a decoded uint8 `image`. Both carry `class_id` for multi-class tasks.
    """
    if source.tfds_name:
        return _read_tfds(source, split, shuffle_files, seed, input_context)
    cases = read_cases(source, split, shuffle_files=shuffle_files, seed=seed,
                       input_context=input_context)
    return flatten_cases(select_label_fraction(cases, label_fraction))


def _read_tfds(source: Source, split: str, shuffle_files: bool, seed: int,
               input_context: Optional[tf.distribute.InputContext]) -> tf.data.Dataset:
    import tensorflow_datasets as tfds

    read_config = tfds.ReadConfig(input_context=input_context, shuffle_seed=seed,
                                  shuffle_reshuffle_each_iteration=False)
    ds = tfds.load(source.tfds_name, split=split, data_dir=source.tfds_data_dir,
                   shuffle_files=shuffle_files, read_config=read_config)
    return ds.map(lambda ex: {"image": ex["image"], "class_id": tf.cast(ex["label"], tf.int32)},
                  num_parallel_calls=AUTOTUNE)


def epoch_reader(source: Source, split: str, *, cases: bool = False, seed: int = 0,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 label_fraction: float = 1.0) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """`read(epoch_seed)`: one training epoch of case bags (`cases`) or images, files shuffled by
    the epoch's seed. TFDS files keep one order (from `seed`); the shuffle buffer still differs."""
    if source.tfds_name:
        if cases:
            raise UserError(f"MICLe needs case bags: use a data_prep build (--data_dir), not "
                            f"the TFDS data set {source.tfds_name!r}")
        images = read_images(source, split, shuffle_files=True, seed=seed,
                             input_context=input_context, label_fraction=label_fraction)
        return lambda epoch_seed: images
    if cases:
        return lambda epoch_seed: read_cases(source, split, shuffle_files=True, seed=epoch_seed,
                                             input_context=input_context)
    return lambda epoch_seed: read_images(source, split, shuffle_files=True, seed=epoch_seed,
                                          input_context=input_context,
                                          label_fraction=label_fraction)


def shuffled_epochs(read: Callable[[tf.Tensor], tf.data.Dataset], *, seed: int,
                    shuffle_buffer: int, start_example: int = 0) -> tf.data.Dataset:
    """Endless `(position, element)` pairs: epoch e is `read(s_e)` through a shuffle buffer, with
    s_e a seed derived from `seed` and e, so every process draws the same stream.

    Resuming at `start_example` reads one epoch once to learn its length, then starts at the
    right epoch and skips only the elements before the position within it: the cost does not grow
    with the epochs already trained, as it would with `repeat().skip(n)`.
    """
    def epoch_seed(index: tf.Tensor) -> tf.Tensor:
        return tf.constant(seed, tf.int64) * 1_000_003 + index

    def unshuffled(index: tf.Tensor) -> tf.data.Dataset:
        # Runs inside a tf.data function, whose graph-level seed is its own: fixing it makes the
        # stream depend on `seed` alone, and lets the shuffles take tensor seeds (which
        # `Dataset.shuffle` rejects when TensorFlow's global seed is 0).
        tf.random.set_seed(1)
        return read(epoch_seed(index))

    def epoch(index: tf.Tensor) -> tf.data.Dataset:
        return unshuffled(index).shuffle(shuffle_buffer, seed=epoch_seed(index),
                                         reshuffle_each_iteration=False)

    # Counting (or checking for one element) needs no shuffle buffer to fill.
    size = _epoch_length(tf.data.Dataset.range(1).flat_map(unshuffled),
                         count_all=start_example > 0)
    first_epoch, offset = divmod(start_example, size) if start_example else (0, 0)
    epochs = tf.data.Dataset.range(first_epoch, 2**62)
    return epochs.flat_map(epoch).enumerate(start=first_epoch * size).skip(offset)


def finish(dataset: tf.data.Dataset, batch_size: int, threads: int = 0) -> tf.data.Dataset:
    """Batches of a training stream, prefetched; with `threads` > 0 its ops run on a private
    pool of that many threads rather than on tf.data's shared one (sized to the cores)."""
    dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)
    if threads > 0:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        dataset = dataset.with_options(options)
    return dataset


def _epoch_length(one_epoch: tf.data.Dataset, count_all: bool) -> int:
    """Elements in an epoch (1 when only checking that there is one, `count_all=False`)."""
    counted = one_epoch if count_all else one_epoch.take(1)
    size = int(counted.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
    if size == 0:
        raise UserError("this input pipeline's share of the training split is empty "
                        "(no readable or labelled examples)")
    return size
