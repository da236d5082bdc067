"""The precision a model computes in: Keras' global dtype policy, and what `auto` chooses.

Under a mixed policy variables stay float32 and layers compute in bfloat16 (or float16); this
package keeps in float32 what needs the range: the contrastive loss and its similarity softmax
(`training.contrastive_loss` casts the projections), the supervised loss, and batch-norm
statistics (Keras' BatchNormalization upcasts bfloat16 inputs).

`auto` trains in bfloat16 where the hardware computes it natively (TPUs, GPUs of compute
capability 8.0 and newer, x86 CPUs with AVX512_BF16 or AMX-BF16 when oneDNN is on) and in float32
elsewhere, where bfloat16 is emulated and slower than float32. Evaluation, linear-probe features,
export and serving compute in float32 whatever training used (`inference_policy`): the metrics a
run reports and the probabilities its SavedModel serves are the same numbers.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

import keras
import tensorflow as tf

from simclr_med.config import PRECISIONS

CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of native bf16 arithmetic
MIN_GPU_CAPABILITY = (8, 0)  # Ampere: bfloat16 tensor cores


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The instruction-set flags the kernel reports for the first CPU (empty where unknown)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def onednn_enabled(environ: os._Environ | dict = os.environ) -> bool:
    """Whether TensorFlow's oneDNN CPU kernels (the ones with native bfloat16) are on: the
    default on x86 Linux; `TF_ENABLE_ONEDNN_OPTS=0` turns them off."""
    return environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() not in ("0", "false")


def cpu_computes_bfloat16(flags: set[str], onednn: bool) -> bool:
    return onednn and any(flag in flags for flag in CPU_BFLOAT16_FLAGS)


def gpus_compute_bfloat16(capabilities: Sequence[tuple[int, int]]) -> bool:
    return bool(capabilities) and all(c >= MIN_GPU_CAPABILITY for c in capabilities)


def _gpu_capabilities() -> list[tuple[int, int]]:
    return [tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)))
            for gpu in tf.config.list_physical_devices("GPU")]


def native_bfloat16(strategy: tf.distribute.Strategy) -> bool:
    """Whether the devices `strategy` trains on compute bfloat16 natively."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    capabilities = _gpu_capabilities()
    if capabilities:
        return gpus_compute_bfloat16(capabilities)
    return cpu_computes_bfloat16(cpu_flags(), onednn_enabled())


def resolve(precision: str, native: bool) -> str:
    """The policy name for `precision` (`auto`: mixed_bfloat16 where native, else float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "mixed_bfloat16" if native else "float32"
    return precision


def set_policy(name: str) -> None:
    """Keras' global dtype policy, for the layers built after it (an explicit name, not auto)."""
    if name not in PRECISIONS[1:]:
        raise ValueError(f"policy must be one of {PRECISIONS[1:]}, got {name!r}")
    keras.config.set_dtype_policy(name)


@contextlib.contextmanager
def policy(name: str) -> Iterator[None]:
    """Layers built inside compute in `name`; the previous global policy comes back after."""
    previous = keras.config.dtype_policy()
    set_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def inference_policy() -> contextlib.AbstractContextManager:
    """Models for evaluation, features and serving compute in float32 (see the module doc)."""
    return policy("float32")
