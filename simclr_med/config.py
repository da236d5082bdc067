"""Plain configuration objects. Entry points build them from flags; library code takes them.

The one source of configuration: every stage's config dataclass, each field's default (the flags
of `flags/` read it from here) and the choices of every enumerated field (next to the field), and
the augmentation presets. Nothing here reads absl FLAGS, so every stage can be driven from a
notebook or a test, and nothing here imports TensorFlow, so the flags modules can import it
without loading the library.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

PROJ_HEAD_MODES = ("none", "linear", "nonlinear")


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
    # TensorFlow's fused batch-norm kernel in training (faster, bfloat16 activations stay
    # bfloat16); False: Keras 3's layer throughout, as earlier versions trained.
    fused_batch_norm: bool = True
    proj_head_mode: str = "nonlinear"  # one of PROJ_HEAD_MODES
    num_proj_layers: int = 3
    proj_out_dim: int = 128
    # Which projection-head layer feeds the supervised head: 0 = backbone output.
    ft_proj_selector: int = 0
    # Evaluation and serving input: central crop of this proportion of the shorter side, then
    # resize to image_size (SimCLR's evaluation preprocessing; 1.0 keeps the largest square).
    eval_crop_proportion: float = 0.875

    def __post_init__(self) -> None:
        if self.proj_head_mode not in PROJ_HEAD_MODES:
            raise ValueError(f"proj_head_mode must be none, linear or nonlinear, got "
                             f"{self.proj_head_mode!r}")
        if self.width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be positive, got {self.width_multiplier}")
        if self.proj_head_mode == "nonlinear" and self.num_proj_layers < 1:
            raise ValueError("a nonlinear projection head needs num_proj_layers >= 1")


ROTATION_FILL_MODES = ("reflect", "constant", "nearest", "wrap")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """One view's augmentation. `AUGMENT_PRESETS` (below) names the paper's settings."""

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
    rotation_fill_mode: str = "reflect"  # one of ROTATION_FILL_MODES


# Every field of AugmentConfig, spelled out per preset so each preset reads on its own.
AUGMENT_PRESETS: dict[str, dict[str, object]] = {
    # SimCLR's augmentation (the paper uses it for dermatology).
    "simclr": dict(crop=True, crop_area_min=0.08, crop_area_max=1.0, crop_aspect_min=3 / 4,
                   crop_aspect_max=4 / 3, flip=True, color_jitter_strength=1.0,
                   color_jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.5, blur_sigma_min=0.1,
                   blur_sigma_max=2.0, rotation_degrees=0.0, rotation_fill_mode="reflect"),
    # The paper's chest X-ray set: random crop, colour jitter of strength 0.5, rotation in
    # +-45 degrees, horizontal flip, no Gaussian blur. Grayscale conversion is not in the
    # paper's list (on a radiograph it would be the identity anyway).
    "cxr": dict(crop=True, crop_area_min=0.08, crop_area_max=1.0, crop_aspect_min=3 / 4,
                crop_aspect_max=4 / 3, flip=True, color_jitter_strength=0.5,
                color_jitter_prob=0.8, grayscale_prob=0.0, blur_prob=0.0, blur_sigma_min=0.1,
                blur_sigma_max=2.0, rotation_degrees=45.0, rotation_fill_mode="reflect"),
    # The reference's fine-tuning augmentation: random crop and flip, nothing else.
    "finetune": dict(crop=True, crop_area_min=0.08, crop_area_max=1.0, crop_aspect_min=3 / 4,
                     crop_aspect_max=4 / 3, flip=True, color_jitter_strength=0.0,
                     color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
                     blur_sigma_min=0.1, blur_sigma_max=2.0, rotation_degrees=0.0,
                     rotation_fill_mode="reflect"),
    # No augmentation: the largest central square, resized.
    "none": dict(crop=False, crop_area_min=0.08, crop_area_max=1.0, crop_aspect_min=3 / 4,
                 crop_aspect_max=4 / 3, flip=False, color_jitter_strength=0.0,
                 color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, blur_sigma_min=0.1,
                 blur_sigma_max=2.0, rotation_degrees=0.0, rotation_fill_mode="reflect"),
}


def augment_preset(name: str, **overrides: object) -> AugmentConfig:
    """The AugmentConfig of a named preset, with some fields replaced."""
    if name not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; "
                         f"known: {', '.join(AUGMENT_PRESETS)}")
    fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown AugmentConfig fields {unknown}; known: {sorted(fields)}")
    return AugmentConfig(**{**AUGMENT_PRESETS[name], **overrides})


OPTIMIZERS = ("lars", "momentum", "adam")
LEARNING_RATE_SCALINGS = ("linear", "sqrt")  # linear: lr * B / 256; sqrt: lr * sqrt(B)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "lars"  # one of OPTIMIZERS
    learning_rate: float = 0.3
    learning_rate_scaling: str = "linear"  # one of LEARNING_RATE_SCALINGS
    warmup_epochs: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-6
    lars_trust_coefficient: float = 0.001


# host: the input pipeline makes whole views; device: it ships uint8 crops and the training step
# runs flip, colour jitter, grayscale and blur (simclr_med.data.device_augment).
AUGMENT_ON = ("host", "device")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
# auto: mixed_bfloat16 where the hardware computes bfloat16 natively, else float32
# (simclr_med.models.precision).
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
    strategy: str = "default"  # one of STRATEGIES
    tpu: str = ""
    num_cpu_devices: int = 0  # > 0: split the CPU into this many logical devices
    precision: str = "auto"  # one of PRECISIONS


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
    input_threads: int = 0  # > 0: the input pipeline's own thread pool of this size (0: tf.data's)
    run_steps: int = 0  # end this invocation after this many steps (0: go to the last step)
    init_checkpoint: str = ""  # weights to start from: this package's model folder or an official one
    seed: int = 0
    deterministic: bool = False  # TF op determinism: bit-reproducible runs, somewhat slower
    jit_compile: bool = False  # XLA-compile the training step (bench/pretrain_step.py measures it)


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """What is specific to contrastive pretraining."""

    temperature: float = 0.1
    use_micle: bool = False
    lineareval_while_pretraining: bool = True
    augment_on: str = "host"  # one of AUGMENT_ON: where a view's photometric steps run

    def __post_init__(self) -> None:
        if self.augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {self.augment_on!r}")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """What is specific to fine-tuning."""

    label_fraction: float = 1.0  # the stored nested subset of training patients
    fine_tune_after_block: int = -1  # -1: train all; k >= 0: freeze the stem and k block groups
    validation_split: str = "validation"  # "" or an empty split: no best-checkpoint selection
    best_metric: str = ""  # "" = auc_macro (multi-class) / mean_auc (multi-label)
    eval_batch_size: int = 256


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    bootstrap_samples: int = 1000
    bootstrap_seed: int = 0
    batch_size: int = 256
    checkpoint: str = "auto"  # auto (best if kept, else latest) | best | latest | a prefix
    plots: bool = True  # the PNGs and report_<split>.html
    output_dir: str = ""  # where the files go; "" = the model folder
    calibrate: bool = False  # fit a temperature on calibration_split (calibration.json)
    calibration_split: str = "validation"


LINEAR_EVAL_ENDPOINTS = ("final_avg_pool", "proj_head_input", "proj_head_output")


@dataclasses.dataclass(frozen=True)
class LinearEvalConfig:
    train_split: str = "train"
    eval_split: str = "validation"
    label_fraction: float = 1.0  # of the training patients the probe and k-NN learn from
    endpoint: str = "final_avg_pool"  # one of LINEAR_EVAL_ENDPOINTS
    knn_k: int = 20
    regularization: float = 1.0  # inverse regularisation strength C of the logistic regression
    max_images: int = 0  # > 0: at most this many images per split (the first in file order)
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.endpoint not in LINEAR_EVAL_ENDPOINTS:
            raise ValueError(f"endpoint must be one of {LINEAR_EVAL_ENDPOINTS}, got "
                             f"{self.endpoint!r}")
        if self.knn_k < 1:
            raise ValueError(f"knn_k must be >= 1, got {self.knn_k}")


# auto: UMAP where umap-learn is installed, else t-SNE.
EMBED_METHODS = ("auto", "umap", "tsne", "pca")


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """The embedding map of one split: `final_avg_pool` features, a 2-D map, projector files."""

    eval_split: str = "validation"
    method: str = "auto"  # one of EMBED_METHODS
    max_images: int = 2000  # > 0: at most this many images, whole patients drawn with `seed`
    label: str = ""  # multi-label: colour by this label; "": any label positive vs none
    seed: int = 0  # of the patient subset, the cases joined by lines and t-SNE / UMAP
    batch_size: int = 256
    checkpoint: str = "auto"  # auto (best if kept, else latest) | best | latest | a prefix
    output_dir: str = ""  # where the files go; "" = the model folder

    def __post_init__(self) -> None:
        if self.method not in EMBED_METHODS:
            raise ValueError(f"embed_method must be one of {EMBED_METHODS}, got {self.method!r}")
        if self.max_images < 0:
            raise ValueError(f"embed_max_images must be >= 0, got {self.max_images}")
