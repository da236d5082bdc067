"""`tf.distribute` strategies from `StrategyConfig`: default, mirrored, multi_worker, tpu.

`num_cpu_devices` splits the CPU into logical devices and mirrors over exactly those, so a
MirroredStrategy exercises the real multi-replica code path (all-gathers, all-reduces, per-replica
batches) on any machine, a GPU one included; without it, mirrored replicates over every GPU (or
the CPU when there is none).
"""

from __future__ import annotations

import functools
from typing import Sequence

import tensorflow as tf

from simclr_med.config import STRATEGIES, StrategyConfig
from simclr_med.models import precision


def configure_cpu_devices(count: int) -> None:
    """Splits the first physical CPU into `count` logical devices (before TensorFlow starts).

    Does nothing when the split is already in place; raises if TensorFlow has already started
    with a different split, since logical devices cannot change after initialisation.
    """
    if count <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError as error:
        raise RuntimeError(f"cannot split the CPU into {count} devices: TensorFlow is already "
                           "initialised; configure devices before building any tensor") from error


def mirrored_devices(num_cpu_devices: int, gpus: Sequence[str], cpus: Sequence[str]) -> list[str]:
    """The devices a MirroredStrategy replicates over, given the logical devices' names.

    Asked for logical CPUs (`num_cpu_devices` > 0), exactly those, even where there are GPUs: the
    replica count is then the one requested on every machine. Otherwise every GPU, else the CPU.
    """
    if num_cpu_devices > 0:
        if len(cpus) < num_cpu_devices:
            raise RuntimeError(f"{num_cpu_devices} logical CPU devices requested, TensorFlow has "
                               f"{len(cpus)}: {list(cpus)}")
        return list(cpus[:num_cpu_devices])
    return list(gpus or cpus)


def build_strategy(config: StrategyConfig) -> tf.distribute.Strategy:
    """The distribution strategy a run trains and evaluates under (and the precision policy).

    Strategies are made once per process and reused: two MirroredStrategy objects in one process
    number their collective operations independently, and the second one's clash with the first
    one's ("Shape mismatch in the collective instance"), e.g. when a notebook pretrains and then
    fine-tunes.
    """
    found = _strategy(config.strategy, config.tpu, config.num_cpu_devices)
    precision.set_policy(precision.resolve(config.precision, precision.native_bfloat16(found)))
    return found


@functools.cache
def _strategy(name: str, tpu: str, num_cpu_devices: int) -> tf.distribute.Strategy:
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        configure_cpu_devices(num_cpu_devices)
        return tf.distribute.MirroredStrategy(mirrored_devices(
            num_cpu_devices, [d.name for d in tf.config.list_logical_devices("GPU")],
            [d.name for d in tf.config.list_logical_devices("CPU")]))
    if name == "multi_worker":
        # Reads the cluster from the TF_CONFIG environment variable.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
