"""`tf.distribute` strategies from `StrategyConfig`: default, mirrored, multi_worker, tpu.

On a CPU-only machine `num_cpu_devices` splits the CPU into logical devices, so a MirroredStrategy
exercises the real multi-replica code path (all-gathers, all-reduces, per-replica batches).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from simclr_med.config import StrategyConfig

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


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


def set_precision(precision: str) -> None:
    """Keras' global dtype policy: variables stay float32, computation in bfloat16/float16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    keras.config.set_dtype_policy(precision)


def build_strategy(config: StrategyConfig) -> tf.distribute.Strategy:
    """The distribution strategy a run trains and evaluates under."""
    set_precision(config.precision)
    if config.strategy == "default":
        return tf.distribute.get_strategy()
    if config.strategy == "mirrored":
        configure_cpu_devices(config.num_cpu_devices)
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if config.strategy == "multi_worker":
        # Reads the cluster from the TF_CONFIG environment variable.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if config.strategy == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=config.tpu or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {config.strategy!r}")
