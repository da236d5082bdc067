"""A pretraining benchmark setting as `key=value,...` text, and one short pretraining run of it:
what bench/pretrain_step.py (speed) and bench/loss_curve.py (bfloat16 against float32) share."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

import alternate  # bench/alternate.py, beside this module
from data_prep import synthetic
from simclr_med.config import (ModelConfig, OptimConfig, PretrainConfig, StrategyConfig,
                               TrainConfig)
from simclr_med.data import augment
from simclr_med.data.reader import open_build
from simclr_med.stages.pretrain import pretrain
from simclr_med.training.strategy import build_strategy


@dataclasses.dataclass(frozen=True)
class Setting:
    depth: int = 50
    width: float = 1.0
    size: int = 224
    batch: int = 32  # pairs
    precision: str = "float32"
    micle: int = 0
    replicas: int = 1
    augment: str = "simclr"
    blur: int = 1
    jit: int = 0  # XLA-compiled step (--jit_compile)
    fused_bn: int = 1  # --fused_batch_norm
    input_threads: int = 0  # --input_threads (0: tf.data's shared pool)
    intra: int = 0  # TensorFlow's intra-op threads (0: its default, one per core)
    inter: int = 0  # TensorFlow's inter-op threads (0: its default)
    augment_on: str = "host"  # --augment_on

    @classmethod
    def parse(cls, text: str) -> "Setting":
        return alternate.parse_setting(cls, text)

    def label(self) -> str:
        return alternate.label(self, always=("depth", "size", "batch"))


def set_op_threads(s: Setting) -> None:
    """TensorFlow's op thread pools of `s` (before TensorFlow runs its first op)."""
    if s.intra:
        tf.config.threading.set_intra_op_parallelism_threads(s.intra)
    if s.inter:
        tf.config.threading.set_inter_op_parallelism_threads(s.inter)


def pretrain_run(s: Setting, steps: int, steps_per_loop: int, data_dir: str, model_dir: str,
                 seed: int = 0) -> dict:
    """`steps` SimCLR (or MICLe) steps of `s` into `model_dir`, default optimizer flags; the
    training summary. Without `data_dir`, the synthetic case set (64 px images for outputs up to
    64 px, else 256 px)."""
    strategy = build_strategy(StrategyConfig(
        strategy="mirrored" if s.replicas > 1 else "default",
        num_cpu_devices=s.replicas if s.replicas > 1 else 0, precision=s.precision))
    views = augment.preset(s.augment, **({} if s.blur else {"blur_prob": 0.0}))
    build = data_dir or synthetic.default_build(image_size=synthetic.stored_size_for(s.size))
    return pretrain(
        ModelConfig(resnet_depth=s.depth, width_multiplier=s.width, image_size=s.size,
                    fused_batch_norm=bool(s.fused_bn)),
        OptimConfig(), views, open_build(build),
        TrainConfig(model_dir=model_dir, train_batch_size=s.batch, train_steps=steps,
                    steps_per_loop=steps_per_loop, checkpoint_steps=10**9, seed=seed,
                    jit_compile=bool(s.jit), input_threads=s.input_threads),
        PretrainConfig(use_micle=bool(s.micle), augment_on=s.augment_on), strategy)
