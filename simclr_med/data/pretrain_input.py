"""The input of contrastive pretraining: batches of positive pairs of augmented views.

SimCLR: every image once per epoch, two augmentations of it. MICLe: every case bag once per epoch,
two different images of the bag when it has several (`simclr_med.data.micle`). A SimCLR image is treated
as a bag of one, so both share one pair builder.

Each element gets its augmentation seed from its position in the (seeded, shuffled, repeated)
stream, so a run resumed at step k sees exactly the pairs an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from simclr_med.config import AUGMENT_ON, AugmentConfig
from simclr_med.data import augment, device_augment, micle, preprocess
from simclr_med.data.reader import AUTOTUNE, Source, epoch_reader, finish, shuffled_epochs

# Per-image label fields that follow the chosen images into the pair.
_LABEL_FIELDS = ("class_id", "labels", "label_mask")


@dataclasses.dataclass(frozen=True)
class PairSpec:
    """How pairs are made."""

    use_micle: bool
    augment: AugmentConfig
    image_size: int
    seed: int = 0
    shuffle_buffer: int = 2048
    threads: int = 0  # the pipeline's private thread pool (0: tf.data's shared one)
    augment_on: str = "host"  # "device": views are uint8 crops, `finished_views` finishes them
    keep_ids: bool = False  # keep case and image ids (strings) in the elements, for inspection

    def __post_init__(self) -> None:
        if self.augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {self.augment_on!r}")


def _as_bag(image: dict) -> dict:
    """A single image as a bag of one."""
    return {k: v if k in ("case_id", "patient_id") else tf.expand_dims(v, 0)
            for k, v in image.items()}


def _image_at(bag: dict, index: tf.Tensor) -> tf.Tensor:
    if "encoded" in bag:
        return preprocess.decode_image(bag["encoded"][index])
    return tf.image.convert_image_dtype(bag["image"][index], tf.float32)


# One trace serves both views of a pair (tracing a view's graph takes about a second).
_augment_view = tf.function(augment.augment_view)
_geometric_view = tf.function(augment.geometric_view)
_photometric_draws = tf.function(augment.photometric_draws)


def _view(image: tf.Tensor, seed: tf.Tensor, spec: PairSpec) -> tf.Tensor:
    if spec.augment_on == "device":
        return device_augment.to_uint8(
            _geometric_view(image, seed, spec.augment, spec.image_size))
    return _augment_view(image, seed, spec.augment, spec.image_size)


def finished_views(pairs: dict, spec: PairSpec) -> tf.Tensor:
    """The float32 views [B, 2, S, S, 3] of a batch of pairs: as shipped (`augment_on="host"`),
    or finished from the uint8 crops and their draws by `device_augment.photometric_batch`."""
    if spec.augment_on != "device":
        return pairs["views"]
    view_shape = pairs["views"].shape[2:]
    draws = {k: tf.reshape(v, [-1, *v.shape[2:]]) for k, v in pairs.get("view_draws", {}).items()}
    views = device_augment.photometric_batch(
        tf.reshape(pairs["views"], [-1, *view_shape]), draws, spec.image_size)
    return tf.reshape(views, [-1, 2, *view_shape])


def make_pair(bag: dict, seed: tf.Tensor, spec: PairSpec) -> dict:
    """Two augmented views of a bag: of two different images when it has several."""
    pair_seed, seed1, seed2 = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    count = tf.shape(bag["encoded"] if "encoded" in bag else bag["image"])[0]
    first, second = micle.choose_pair(count, pair_seed)
    views = tf.stack([_view(_image_at(bag, first), seed1, spec),
                      _view(_image_at(bag, second), seed2, spec)])
    indices = tf.stack([first, second])
    pair = {"views": views, "image_index": indices}
    if spec.augment_on == "device":
        draws = [_photometric_draws(seed, spec.augment, spec.image_size) for seed in (seed1, seed2)]
        if draws[0]:  # a config without photometric steps draws nothing
            pair["view_draws"] = {k: tf.stack([draws[0][k], draws[1][k]]) for k in draws[0]}
    pair.update({k: tf.gather(bag[k], indices) for k in _LABEL_FIELDS if k in bag})
    if spec.keep_ids:
        pair["image_id"] = tf.gather(bag["image_id"], indices)
        pair["case_id"] = bag["case_id"]
    return pair


def pair_dataset(source: Source, split: str, spec: PairSpec, batch_size: int, *,
                 start_example: int = 0,
                 input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
    """Endless batches of `batch_size` pairs: `views` [B, 2, S, S, 3], `image_index` [B, 2] and the
    chosen images' labels (`class_id` [B, 2]; multi-label `labels`, `label_mask` [B, 2, L]).
    With `spec.augment_on="device"`, `views` are the uint8 crops and `view_draws` the random
    parameters of their photometric steps ([B, 2], `order` [B, 2, 4]): `finished_views` makes
    the views.

    `start_example` skips that many pairs of this input pipeline (resuming; see
    `shuffled_epochs`). Without `spec.keep_ids` the batches hold no strings, so they
    can go to any device. The map keeps its order (`deterministic=True`): the seeds come from
    positions, but which pairs share a batch must not depend on thread timing, or a resumed run
    would train on differently composed batches than an uninterrupted one.
    """
    pipeline = input_context.input_pipeline_id if input_context else 0
    read = epoch_reader(source, split, cases=spec.use_micle, seed=spec.seed,
                        input_context=input_context)
    read_bags = read if spec.use_micle else (lambda epoch_seed: read(epoch_seed).map(_as_bag))
    pairs = shuffled_epochs(read_bags, seed=spec.seed, shuffle_buffer=spec.shuffle_buffer,
                            start_example=start_example)

    def to_pair(index, bag):
        seed = tf.stack([tf.constant(spec.seed * 1000 + pipeline, tf.int64), index])
        return make_pair(bag, seed, spec)

    pairs = pairs.map(to_pair, num_parallel_calls=AUTOTUNE, deterministic=True)
    return finish(pairs, batch_size, spec.threads)
