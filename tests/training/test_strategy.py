"""Which devices a MirroredStrategy replicates over, on CPU-only and GPU machines."""

import pytest

from simclr_med.config import StrategyConfig
from simclr_med.training.strategy import build_strategy, mirrored_devices

CPUS = ["/device:CPU:0", "/device:CPU:1"]
GPUS = ["/device:GPU:0"]  # a one-GPU machine, as the README's `.[gpu]` install gives


def test_requested_logical_cpus_are_used_even_where_there_is_a_gpu():
    assert mirrored_devices(2, GPUS, CPUS) == CPUS
    assert mirrored_devices(1, GPUS, CPUS) == CPUS[:1]
    assert mirrored_devices(2, [], CPUS) == CPUS


def test_without_a_cpu_split_every_gpu_else_the_cpu():
    assert mirrored_devices(0, GPUS + ["/device:GPU:1"], CPUS[:1]) == GPUS + ["/device:GPU:1"]
    assert mirrored_devices(0, [], CPUS[:1]) == CPUS[:1]


def test_more_cpus_than_configured_is_an_error():
    with pytest.raises(RuntimeError, match="3 logical CPU devices requested, TensorFlow has 2"):
        mirrored_devices(3, [], CPUS)


def test_one_strategy_per_configuration_and_process(two_cpu_strategy):
    # A second MirroredStrategy in the process would clash with the first one's collectives.
    again = build_strategy(StrategyConfig(strategy="mirrored", num_cpu_devices=2, precision="float32"))
    assert again is two_cpu_strategy and again.num_replicas_in_sync == 2
