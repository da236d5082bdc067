"""Plain configuration objects. Entry points build them from flags; library code takes them.

Nothing here reads absl FLAGS, so every stage can be driven from a notebook or a test.
"""

from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """ResNet backbone and heads, as SimCLR (v1/v2) builds them."""

    resnet_depth: int = 50
    width_multiplier: float = 1.0
    sk_ratio: float = 0.0
    image_size: int = 224
    batch_norm_decay: float = 0.9
    batch_norm_epsilon: float = 1e-5
    global_bn: bool = True
    proj_head_mode: str = "nonlinear"  # none | linear | nonlinear
    num_proj_layers: int = 3
    proj_out_dim: int = 128
    # Which projection-head layer feeds the supervised head: 0 = backbone output.
    ft_proj_selector: int = 0
    # Evaluation and serving input: central crop of this proportion of the shorter side, then
    # resize to image_size (SimCLR's evaluation preprocessing; 1.0 keeps the largest square).
    eval_crop_proportion: float = 0.875

    def __post_init__(self) -> None:
        if self.proj_head_mode not in ("none", "linear", "nonlinear"):
            raise ValueError(f"proj_head_mode must be none, linear or nonlinear, got "
                             f"{self.proj_head_mode!r}")
        if self.width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be positive, got {self.width_multiplier}")
        if self.proj_head_mode == "nonlinear" and self.num_proj_layers < 1:
            raise ValueError("a nonlinear projection head needs num_proj_layers >= 1")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """One view's augmentation. `simclr_med.data.augment.PRESETS` names the paper's settings."""

    crop: bool = True
    crop_area_min: float = 0.08
    crop_area_max: float = 1.0
    crop_aspect_min: float = 3 / 4
    crop_aspect_max: float = 4 / 3
    flip: bool = True
    color_jitter_strength: float = 1.0
    color_jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    rotation_degrees: float = 0.0
    rotation_fill_mode: str = "reflect"  # reflect | constant | nearest | wrap


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "lars"  # lars | momentum | adam
    learning_rate: float = 0.3
    learning_rate_scaling: str = "linear"  # linear: lr * B / 256; sqrt: lr * sqrt(B)
    warmup_epochs: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-6
    lars_trust_coefficient: float = 0.001


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
    strategy: str = "default"  # default | mirrored | multi_worker | tpu
    tpu: str = ""
    num_cpu_devices: int = 0  # > 0: split the CPU into this many logical devices
    precision: str = "float32"  # float32 | mixed_bfloat16 | mixed_float16


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where training and evaluation images come from."""

    data_dir: str = ""  # a data_prep output folder
    tfds_dataset: str = ""
    tfds_data_dir: Optional[str] = None
    train_split: str = "train"
    eval_split: str = "validation"
    verify_data: bool = False  # check every shard's SHA-256 on opening a build (else: sizes)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training-loop settings shared by pretraining and fine-tuning."""

    model_dir: str
    train_batch_size: int = 256
    train_steps: int = 0  # 0: derive from train_epochs
    train_epochs: float = 100.0
    steps_per_loop: int = 10  # steps per tf.function call, between progress lines
    checkpoint_steps: int = 0  # 0: once per epoch of the training data
    keep_checkpoint_max: int = 5
    shuffle_buffer: int = 2048  # training examples (images, or case bags for MICLe)
    run_steps: int = 0  # end this invocation after this many steps (0: go to the last step)
    init_checkpoint: str = ""  # weights to start from: this package's model folder or an official one
    seed: int = 0
    deterministic: bool = False  # TF op determinism: bit-reproducible runs, somewhat slower


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """What is specific to contrastive pretraining."""

    temperature: float = 0.1
    use_micle: bool = False
    lineareval_while_pretraining: bool = True
