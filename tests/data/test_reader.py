"""shuffled_epochs: the training stream's epochs, orders and cheap resumption."""

from __future__ import annotations

import itertools

import pytest
import tensorflow as tf

from simclr_med.data.reader import shuffled_epochs
from simclr_med.errors import UserError

SIZE = 10


def _stream(start: int = 0, reads: tf.Variable | None = None, size: int = SIZE) -> list[tuple]:
    def read(epoch_seed: tf.Tensor) -> tf.data.Dataset:
        elements = tf.data.Dataset.range(size)
        if reads is None:
            return elements
        return elements.map(lambda x: x + 0 * reads.assign_add(1))

    return shuffled_epochs(read, seed=7, shuffle_buffer=4, start_example=start)


def _take(dataset: tf.data.Dataset, count: int) -> list[tuple[int, int]]:
    return [(int(p), int(x)) for p, x in itertools.islice(dataset, count)]


def test_every_epoch_is_a_new_order_of_all_elements():
    stream = _take(_stream(), 4 * SIZE)
    assert [p for p, _ in stream] == list(range(4 * SIZE))
    epochs = [[x for _, x in stream[e * SIZE:(e + 1) * SIZE]] for e in range(4)]
    assert all(sorted(epoch) == list(range(SIZE)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 4


def test_a_resumed_stream_is_the_rest_of_the_uninterrupted_one():
    straight = _take(_stream(), 60)
    for start in (1, 10, 37):
        assert _take(_stream(start), 60 - start) == straight[start:]


def test_resuming_reads_about_one_epoch_not_every_skipped_element():
    reads = tf.Variable(0, dtype=tf.int64)
    _take(_stream(start=10_000, reads=reads), 3)
    # One counting pass, then the resumed epoch through a 4-element buffer: well under 3 epochs,
    # where `repeat().skip(10_000)` would read 10,000 elements.
    assert int(reads.numpy()) <= 3 * SIZE


def test_an_empty_epoch_is_an_error_not_an_endless_wait():
    with pytest.raises(UserError, match="empty"):
        _stream(size=0)
    with pytest.raises(UserError, match="empty"):
        _stream(start=5, size=0)


@pytest.mark.parametrize("global_seed", [0, 5])
def test_the_stream_depends_on_its_seed_alone_and_keeps_the_global_seed(global_seed):
    reference = _take(_stream(), 25)
    tf.random.set_seed(global_seed)
    expected = float(tf.random.uniform([], seed=3))
    tf.random.set_seed(global_seed)
    assert _take(_stream(start=3), 22) == reference[3:]
    assert float(tf.random.uniform([], seed=3)) == expected
