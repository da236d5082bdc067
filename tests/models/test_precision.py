"""`--precision=auto`: bfloat16 exactly where the hardware computes it natively, else float32."""

from __future__ import annotations

import keras
import pytest

from simclr_med.config import StrategyConfig
from simclr_med.models import precision
from simclr_med.training import strategy

AVX512_BF16_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 avx512_vnni
processor\t: 1
flags\t\t: fpu sse2 avx avx2
"""


@pytest.mark.parametrize("requested, native, expected", [
    ("auto", True, "mixed_bfloat16"), ("auto", False, "float32"),
    ("float32", True, "float32"), ("mixed_bfloat16", False, "mixed_bfloat16"),
    ("mixed_float16", True, "mixed_float16")])
def test_resolve(requested, native, expected):
    assert precision.resolve(requested, native) == expected


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="bfloat32"):
        precision.resolve("bfloat32", True)
    with pytest.raises(ValueError, match="auto"):
        precision.set_policy("auto")  # only a resolved name becomes the policy


def test_cpu_flags_are_the_first_cpus(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(AVX512_BF16_CPUINFO)
    flags = precision.cpu_flags(str(cpuinfo))
    assert {"avx2", "avx512_bf16"} <= flags and "avx512_vnni" in flags
    assert precision.cpu_flags(str(tmp_path / "missing")) == set()  # macOS, Windows


@pytest.mark.parametrize("flags, onednn, expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, True, True),
    ({"avx2", "amx_bf16", "amx_tile"}, True, True),
    ({"avx2", "avx512f", "avx512_bf16"}, False, False),  # Eigen's kernels emulate bfloat16
    ({"avx2", "avx512f", "avx512_vnni"}, True, False),  # AVX-512 without bf16 arithmetic
    ({"avx", "avx2", "fma"}, True, False), (set(), True, False)])
def test_cpu_computes_bfloat16(flags, onednn, expected):
    assert precision.cpu_computes_bfloat16(flags, onednn) is expected


@pytest.mark.parametrize("environ, expected", [
    ({}, True), ({"TF_ENABLE_ONEDNN_OPTS": "1"}, True), ({"TF_ENABLE_ONEDNN_OPTS": "0"}, False),
    ({"TF_ENABLE_ONEDNN_OPTS": "false"}, False)])
def test_onednn_enabled(environ, expected):
    assert precision.onednn_enabled(environ) is expected


@pytest.mark.parametrize("capabilities, expected", [
    ([(8, 0)], True), ([(9, 0), (8, 6)], True), ([(7, 5)], False), ([(8, 0), (7, 0)], False),
    ([], False)])
def test_gpus_compute_bfloat16(capabilities, expected):
    assert precision.gpus_compute_bfloat16(capabilities) is expected


@pytest.fixture
def restore_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("native, expected", [(True, "mixed_bfloat16"), (False, "float32")])
def test_build_strategy_sets_what_auto_resolves_to(native, expected, monkeypatch,
                                                   restore_policy):
    monkeypatch.setattr(precision, "native_bfloat16", lambda found: native)
    assert StrategyConfig().precision == "auto"  # the default
    strategy.build_strategy(StrategyConfig())
    assert keras.config.dtype_policy().name == expected
    strategy.build_strategy(StrategyConfig(precision="float32"))
    assert keras.config.dtype_policy().name == "float32"


def test_this_machine_is_read(restore_policy):
    """On this machine's real devices (no GPU in CI): bfloat16 exactly when its CPU has it."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("the CPU rule is checked on CPU-only machines")
    native = precision.cpu_computes_bfloat16(precision.cpu_flags(), precision.onednn_enabled())
    assert precision.native_bfloat16(tf.distribute.get_strategy()) is native


def test_policy_scope_restores(restore_policy):
    precision.set_policy("float32")
    with precision.policy("mixed_bfloat16"):
        assert keras.layers.Dense(2).compute_dtype == "bfloat16"
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(RuntimeError):
        with precision.policy("mixed_bfloat16"):
            raise RuntimeError
    assert keras.config.dtype_policy().name == "float32"
