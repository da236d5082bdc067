"""MICLe pairs and the pretraining input, on tiny case bags whose pixels name their image.

Every image is a small PNG whose red channel is its case number and whose green channel is its
index in the bag (constant over the image; blue is noise, so views are textured). Augmentations
without colour changes keep a constant channel constant, so each view still says which image it
came from: `_ids` reads (case, index) back from a batch of views.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import pathlib
from collections import Counter

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
from PIL import Image

from simclr_med.config import StrategyConfig
from simclr_med.data import augment, micle, preprocess, schema
from simclr_med.data.pretrain_input import PairSpec, make_pair, pair_dataset
from simclr_med.data.reader import Source, open_build, read_cases
from simclr_med.training.loop import distributed_input
from simclr_med.training.strategy import build_strategy

BAG_SIZES = (1, 1, 1, 2, 3, 4, 5, 6, 12)  # case c holds BAG_SIZES[c] images
PIXELS = 16
SIGNIFICANCE = 0.001  # the level of every chi-square test of uniformity here
# Geometry only (rotation, crop, flip): constant channels stay constant, so ids stay readable.
GEOMETRY = augment.preset("cxr", color_jitter_strength=0.0)


def _png(case: int, index: int) -> bytes:
    rng = np.random.default_rng(1000 * case + index)
    pixels = np.empty([PIXELS, PIXELS, 3], np.uint8)
    pixels[..., 0], pixels[..., 1] = case, index
    pixels[..., 2] = rng.integers(0, 256, [PIXELS, PIXELS])
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_build(folder: pathlib.Path, num_shards: int) -> Source:
    """A multi-class build of the BAG_SIZES cases in `num_shards` train shards; class = index."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = [schema.Case(case_id=f"case{c}", patient_id=f"patient{c}", images=[
        schema.ImageEntry(encoded=_png(c, k), image_id=f"case{c}/{k}", class_id=k)
        for k in range(size)]) for c, size in enumerate(BAG_SIZES)]
    for shard in range(num_shards):
        path = folder / schema.shard_name("train", shard, num_shards)
        with tf.io.TFRecordWriter(str(path)) as writer:
            for case in cases[shard::num_shards]:
                writer.write(schema.encode_case(case))
    counts = {"cases": len(cases), "patients": len(cases), "images": sum(BAG_SIZES)}
    schema.DatasetInfo(task=schema.MULTICLASS, names=[str(k) for k in range(max(BAG_SIZES))],
                       split_counts={"train": counts}).save(str(folder))
    return open_build(str(folder))


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> Source:
    return _write_build(tmp_path_factory.mktemp("bags"), num_shards=1)


@pytest.fixture(scope="module")
def bags_in_two_files(tmp_path_factory) -> Source:
    return _write_build(tmp_path_factory.mktemp("bags2"), num_shards=2)


def _ids(views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(case, index) of each view of `views` [..., S, S, 3], checking the channels are constant."""
    red, green = views[..., 0] * 255, views[..., 1] * 255
    for channel in (red, green):
        spread = channel.max(axis=(-2, -1)) - channel.min(axis=(-2, -1))
        assert spread.max() < 0.01, "an id channel is not constant: the augmentation changed it"
    return (np.rint(red.mean(axis=(-2, -1))).astype(int),
            np.rint(green.mean(axis=(-2, -1))).astype(int))


def _take(dataset, batches: int) -> list[dict]:
    return [{k: v.numpy() for k, v in batch.items()} for batch in itertools.islice(dataset, batches)]


def _concat(batches: list[dict]) -> dict:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _check_pairs(pairs: dict) -> None:
    """Each pair: two different images of one case when it has several, else its image twice;
    `image_index`, `class_id` and ids agree with the pixels."""
    case, index = _ids(pairs["views"])
    assert (case[:, 0] == case[:, 1]).all(), "a pair mixes two cases"
    sizes = np.asarray(BAG_SIZES)[case[:, 0]]
    assert (index[:, 0] != index[:, 1])[sizes >= 2].all(), "same image twice in a bag of several"
    assert (index[:, 0] == index[:, 1])[sizes == 1].all()
    assert (index < sizes[:, None]).all()
    np.testing.assert_array_equal(pairs["image_index"], index)
    np.testing.assert_array_equal(pairs["class_id"], index)
    if "case_id" in pairs:
        assert [c.decode() for c in pairs["case_id"]] == [f"case{c}" for c in case[:, 0]]
        assert [[i.decode() for i in ids] for ids in pairs["image_id"]] == [
            [f"case{c}/{k}" for k in ks] for c, ks in zip(case[:, 0], index)]


def _uniformity_p_value(pairs: dict, max_bag: int = 6) -> float:
    """Chi-square p-value that every unordered pair of each bag of 3..max_bag images is equally
    frequent (one test over all those bags: their statistics and degrees of freedom add up)."""
    case, index = _ids(pairs["views"])
    counts = Counter((c, *sorted(ks)) for c, ks in zip(case[:, 0], index))
    statistic, dof = 0.0, 0
    for c, size in enumerate(BAG_SIZES):
        if 3 <= size <= max_bag:
            observed = [counts[(c, a, b)] for a, b in itertools.combinations(range(size), 2)]
            assert min(observed) > 0
            statistic += scipy.stats.chisquare(observed).statistic
            dof += len(observed) - 1
    return float(scipy.stats.chi2.sf(statistic, dof))


# --- choose_pair --------------------------------------------------------------------------------

def _draws(num_images: int, count: int) -> np.ndarray:
    seeds = tf.data.Dataset.range(count).map(lambda i: tf.stack([i, tf.constant(7, tf.int64)]))
    pairs = seeds.map(lambda seed: tf.stack(micle.choose_pair(tf.constant(num_images), seed)))
    return next(iter(pairs.batch(count))).numpy()


def test_choose_pair_of_one_image_is_that_image_twice():
    assert (_draws(1, 50) == 0).all()


# Bag size M: (draws N, bound on |count / (N p) - 1| for every ordered pair), p = 1 / (M (M - 1)).
UNIFORMITY_DRAWS = {2: (2**20, 0.01), 3: (2**20, 0.015), 5: (2**20, 0.025), 66: (2**23, 0.15)}
FALSE_ALARM = 1e-6  # the most a correct choose_pair may fail with, per bag size, over seeds


def _false_alarm(num_images: int, draws: int, bound: float) -> float:
    """Union bound, over the ordered pairs, of P(|count / (draws p) - 1| > bound) for a count
    ~ Binomial(draws, p): the chance that a correct choose_pair fails the bound."""
    p = 1 / (num_images * (num_images - 1))
    mean = draws * p
    low, high = math.ceil(mean * (1 - bound)), math.floor(mean * (1 + bound))
    per_pair = scipy.stats.binom.cdf(low - 1, draws, p) + scipy.stats.binom.sf(high, draws, p)
    return num_images * (num_images - 1) * float(per_pair)


def _pair_counts(num_images: int, draws: int) -> np.ndarray:
    """[M, M] counts of the pairs (i, j) of seeds [k, 7], k < draws, in one XLA call on the CPU
    (~0.3 us a draw; the tf.data path of `_draws` takes ~20 us)."""
    @tf.function(jit_compile=True)
    def count():
        def cell(k):
            first, second = micle.choose_pair(tf.constant(num_images),
                                              tf.stack([k, tf.constant(7, tf.int64)]))
            return first * num_images + second
        cells = tf.map_fn(cell, tf.range(draws, dtype=tf.int64), fn_output_signature=tf.int32,
                          parallel_iterations=1000)
        return tf.math.unsorted_segment_sum(tf.ones_like(cells), cells, num_images ** 2)

    with tf.device("/CPU:0"):
        return count().numpy().reshape(num_images, num_images)


def test_pairs_counted_under_xla_are_the_pipelines_pairs():
    """`_pair_counts` counts the very numbers the input pipeline draws (same generator)."""
    draws = _draws(66, 1000)
    expected = np.zeros([66, 66], int)
    np.add.at(expected, (draws[:, 0], draws[:, 1]), 1)
    np.testing.assert_array_equal(_pair_counts(66, 1000), expected)


@pytest.mark.parametrize("num_images", sorted(UNIFORMITY_DRAWS))  # 66: the largest NIH patient
def test_choose_pair_is_uniform_over_pairs_of_different_images(num_images):
    """Every ordered pair (a, b), a != b, within a few percent of 1 / (M (M - 1)): so every
    unordered pair too, and either image of it first equally often.

    A chi-square test at level 0.001 with 5-20 expected counts per pair misses a bias such as
    "j uniform in [0, M), j == i -> (i + 1) mod M" about half the time, and with fixed seeds a
    miss is for ever. Here every pair's count must be within the bound of its expectation:

        M = 2:  2^20 draws, bound 1%    (524288 expected per pair), false alarm 3e-24
        M = 3:  2^20 draws, bound 1.5%  (174763),                   false alarm 4e-11
        M = 5:  2^20 draws, bound 2.5%  (52429),                    false alarm 9e-8
        M = 66: 2^23 draws, bound 15%   (1955),                     false alarm 2e-7

    (false alarm: the chance that a correct choose_pair fails, by `_false_alarm`, which the test
    recomputes.) 10^5 draws cannot do this at M = 66: 23 per pair, +-21% noise alone. The example
    bias moves pairs by +-33% (M = 3), +60% / -20% (M = 5), +97% (M = 66): caught every time.
    """
    draws, bound = UNIFORMITY_DRAWS[num_images]
    assert _false_alarm(num_images, draws, bound) < FALSE_ALARM
    counts = _pair_counts(num_images, draws)
    assert counts.sum() == draws  # every draw in range
    assert not np.diagonal(counts).any(), "the same image twice"
    expected = draws / (num_images * (num_images - 1))
    off_diagonal = ~np.eye(num_images, dtype=bool)
    errors = np.abs(counts[off_diagonal] / expected - 1)
    assert errors.max() <= bound, (
        f"ordered pair frequencies off by up to {errors.max():.1%} (bound {bound:.1%})")


# --- make_pair ----------------------------------------------------------------------------------

def test_make_pair_decodes_only_the_two_chosen_images(bags, monkeypatch):
    """A bag of 12: two decodes per pair, whatever the bag's size."""
    decoded = []

    def counting_decode(encoded):
        def count(value):
            decoded.append(value)
            return value
        return original(tf.ensure_shape(tf.numpy_function(count, [encoded], tf.string), []))

    original = preprocess.decode_image
    monkeypatch.setattr(preprocess, "decode_image", counting_decode)
    spec = PairSpec(use_micle=True, augment=GEOMETRY, image_size=PIXELS)
    big = next(iter(read_cases(bags, "train").filter(lambda b: tf.size(b["encoded"]) == 12)))
    pairs = tf.data.Dataset.range(5).map(
        lambda i: make_pair(big, tf.stack([i, tf.constant(0, tf.int64)]), spec))
    indices = [p["image_index"].numpy() for p in pairs]
    assert len(decoded) == 10
    assert decoded == [big["encoded"][k].numpy() for pair in indices for k in pair]


# --- pair_dataset -------------------------------------------------------------------------------

def test_simclr_sees_every_image_once_per_epoch_two_views_of_it(bags):
    spec = PairSpec(use_micle=False, augment=GEOMETRY, image_size=PIXELS, keep_ids=True)
    images = sum(BAG_SIZES)
    for epoch in _take(pair_dataset(bags, "train", spec, images), 3):  # batch = one epoch
        case, index = _ids(epoch["views"])
        assert (case[:, 0] == case[:, 1]).all() and (index[:, 0] == index[:, 1]).all()
        assert sorted(zip(case[:, 0], index[:, 0])) == [
            (c, k) for c, size in enumerate(BAG_SIZES) for k in range(size)]
        assert (epoch["image_index"] == 0).all()


def test_micle_sees_every_case_once_per_epoch(bags):
    spec = PairSpec(use_micle=True, augment=GEOMETRY, image_size=PIXELS)
    for epoch in _take(pair_dataset(bags, "train", spec, len(BAG_SIZES)), 3):
        _check_pairs(epoch)
        assert sorted(_ids(epoch["views"])[0][:, 0]) == list(range(len(BAG_SIZES)))


def _single_pipeline(source: Source, spec: PairSpec, pairs: int) -> dict:
    return _concat(_take(pair_dataset(source, "train", spec, 90), pairs // 90))


def _distributed(strategy: tf.distribute.Strategy, source: Source, spec: PairSpec,
                 global_batch: int, start_step: int = 0) -> tf.distribute.DistributedDataset:
    """The pretraining input as `pretrain` builds it."""
    make = functools.partial(pair_dataset, source, "train", spec)
    return distributed_input(strategy, global_batch, make)(start_step)


def _mirrored_two_devices(source: Source, spec: PairSpec, pairs: int) -> dict:
    """Through `distribute_datasets_from_function` on a MirroredStrategy over 2 CPU devices."""
    strategy = build_strategy(StrategyConfig(strategy="mirrored", num_cpu_devices=2, precision="float32"))
    dataset = _distributed(strategy, source, spec, global_batch=90)
    batches = []
    for batch in itertools.islice(dataset, pairs // 90):
        replicas = [strategy.experimental_local_results(v) for v in batch.values()]
        assert all(len(r) == 2 for r in replicas)
        batches += [{k: r[i].numpy() for k, r in zip(batch, replicas)} for i in range(2)]
    return _concat(batches)


def _two_input_pipelines(source: Source, spec: PairSpec, pairs: int) -> dict:
    """Two input pipelines (as two workers would have), each reading its part of the data."""
    per_pipeline = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=2)
        per_pipeline.append(_concat(_take(
            pair_dataset(source, "train", spec, 45, input_context=context), pairs // 90)))
    return _concat(per_pipeline)


@pytest.mark.parametrize("draw", [_single_pipeline, _mirrored_two_devices, _two_input_pipelines])
def test_micle_pairs_are_different_images_of_a_case_uniformly_chosen(bags_in_two_files, draw):
    """2,700 pairs (300 per case): valid pairs, each unordered pair of a bag equally frequent."""
    spec = PairSpec(use_micle=True, augment=GEOMETRY, image_size=PIXELS, keep_ids=True)
    pairs = draw(bags_in_two_files, spec, 2700)
    assert len(pairs["views"]) == 2700
    _check_pairs(pairs)
    assert _uniformity_p_value(pairs) > SIGNIFICANCE


@pytest.mark.parametrize("num_shards", [1, 2])  # fewer files than pipelines: every 2nd record
def test_input_pipelines_read_disjoint_cases_covering_the_split(tmp_path, num_shards):
    source = _write_build(tmp_path, num_shards)
    spec = PairSpec(use_micle=True, augment=GEOMETRY, image_size=PIXELS)
    cases = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(2, pipeline, 2)
        per_epoch = len(BAG_SIZES[pipeline::2])  # either way each pipeline gets every 2nd case
        batches = _take(pair_dataset(source, "train", spec, per_epoch, input_context=context), 2)
        for epoch in batches:
            _check_pairs(epoch)
        pipeline_cases = [sorted(_ids(epoch["views"])[0][:, 0]) for epoch in batches]
        assert pipeline_cases[0] == pipeline_cases[1]  # the same cases every epoch
        cases.append(set(pipeline_cases[0]))
    assert not cases[0] & cases[1]
    assert cases[0] | cases[1] == set(range(len(BAG_SIZES)))


def test_fixed_seed_gives_identical_pairs_and_views_other_seeds_differ(bags):
    """Full chest X-ray augmentation (colour too): equal seeds, bit-identical batches."""
    def first_batches(seed):
        spec = PairSpec(use_micle=True, augment=augment.preset("cxr"), image_size=PIXELS,
                        seed=seed)
        return _take(pair_dataset(bags, "train", spec, 8), 2)

    run, again, other = first_batches(1), first_batches(1), first_batches(2)
    for a, b, c in zip(run, again, other):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(a["views"], c["views"])


def test_the_two_views_are_augmented_independently(bags):
    """Bags of one give two views of one image: they differ (two augmentation seeds)."""
    spec = PairSpec(use_micle=False, augment=augment.preset("cxr"), image_size=PIXELS)
    pairs = _concat(_take(pair_dataset(bags, "train", spec, 35), 2))
    differences = np.abs(pairs["views"][:, 0] - pairs["views"][:, 1]).max(axis=(1, 2, 3))
    assert (differences > 0.05).all()


def _same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.parametrize("use_micle", [True, False])
def test_a_resumed_stream_continues_the_uninterrupted_one(bags, use_micle):
    """Skipping 10 batches of 4 (40 pairs: past the first epoch of 9 cases or 35 images) gives
    exactly batches 10.. of a stream that was not skipped, views bit for bit."""
    spec = PairSpec(use_micle=use_micle, augment=augment.preset("cxr"), image_size=PIXELS,
                    seed=3, keep_ids=True)
    straight = _take(pair_dataset(bags, "train", spec, 4), 16)
    resumed = _take(pair_dataset(bags, "train", spec, 4, start_example=40), 6)
    _same_batches(resumed, straight[10:])


def test_a_resumed_distributed_stream_continues_on_every_replica(bags, two_cpu_strategy):
    """Through the strategy's input, 2 replicas: the start step is turned into the right skip."""
    strategy = two_cpu_strategy
    spec = PairSpec(use_micle=True, augment=augment.preset("cxr"), image_size=PIXELS, seed=3)

    def replica_batches(start_step: int, steps: int) -> list[dict]:
        dataset = _distributed(strategy, bags, spec, 6, start_step)
        out = []
        for batch in itertools.islice(dataset, steps):
            local = {k: strategy.experimental_local_results(v) for k, v in batch.items()}
            out += [{k: v[i].numpy() for k, v in local.items()} for i in range(2)]
        return out

    _same_batches(replica_batches(3, 4), replica_batches(0, 7)[6:])
