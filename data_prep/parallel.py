"""An ordered, bounded parallel map over worker processes.

Results come back in input order (so identical inputs give byte-identical shards), and only a few
chunks per worker are in flight at any time (so memory does not grow with the data set).

Workers are forked where the platform can, because a spawned worker re-imports the entry-point
module and with it TensorFlow, which costs seconds per worker; the forked workers run only the
PIL / NumPy / pydicom code of `data_prep.images` and never touch TensorFlow.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import multiprocessing
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_CHUNKS_IN_FLIGHT_PER_WORKER = 4


def _chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _apply(function: Callable[[T], R], chunk: list[T]) -> list[R]:
    return [function(item) for item in chunk]


def ordered_map(function: Callable[[T], R], items: Iterable[T], num_workers: int,
                chunk_size: int = 16) -> Iterator[R]:
    """`map(function, items)` computed by `num_workers` processes (in this process when 1).

    `function` must be picklable (a module-level function or a functools.partial of one).
    """
    if num_workers <= 1:
        yield from map(function, items)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    chunks = _chunked(items, chunk_size)
    pending: collections.deque[concurrent.futures.Future] = collections.deque()
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
        try:
            for chunk in itertools.islice(chunks, num_workers * _CHUNKS_IN_FLIGHT_PER_WORKER):
                pending.append(pool.submit(_apply, function, chunk))
            while pending:
                results = pending.popleft().result()
                for chunk in itertools.islice(chunks, 1):
                    pending.append(pool.submit(_apply, function, chunk))
                yield from results
        finally:
            for future in pending:
                future.cancel()
