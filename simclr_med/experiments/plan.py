"""What the paper's comparison runs: its arms, the fine-tuning grid, the cells and the budget.

An arm is a way to obtain the network that is fine-tuned: from random weights (`scratch`), or a
chain of in-domain contrastive pretraining runs (`simclr`, `micle`, `simclr_micle`, the paper's
SimCLR-then-MICLe), started from random weights or, with `--init_checkpoint`, from a given
checkpoint such as an official ImageNet SimCLR release (`imagenet` fine-tunes that checkpoint
directly; `imagenet_simclr`, ... pretrain from it). Pretraining runs are shared: `simclr_micle`
continues the run of `simclr`, and every label fraction and seed of an arm fine-tunes the same
encoder.

A cell is one unit of work with its own folder and done marker: a fine-tuning run (arm, label
fraction, grid setting, seed) evaluated on the test split, or a linear probe (arm, label
fraction) on the frozen encoder. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

from simclr_med.config import OptimConfig
from simclr_med.errors import UserError

SCRATCH = "scratch"
IMAGENET = "imagenet"  # the arm of --init_checkpoint, and the prefix of the arms started from it
METHODS = ("simclr", "micle")
IN_DOMAIN_ARMS = ("scratch", "simclr", "micle", "simclr_micle")
INIT_ARMS = ("imagenet", "imagenet_simclr", "imagenet_micle", "imagenet_simclr_micle")
PROTOCOLS = ("finetune", "linear")
DEFAULT_FRACTIONS = (0.01, 0.1, 0.3, 1.0)
# What --quick changes besides the network and schedule, unless the flags say otherwise.
QUICK_DEFAULTS = dict(arms=("scratch", "simclr", "micle"), label_fractions=(1.0,), seeds=1,
                      bootstrap_samples=200)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The command's settings (flags/experiment_flags.py)."""

    data_dir: str
    output_dir: str
    quick: bool = False
    arms: tuple[str, ...] = ()  # (): the in-domain arms, and the init arms with init_checkpoint
    label_fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    seeds: int = 3
    budget_minutes: float = 60.0
    init_checkpoint: str = ""
    shift: str = ""  # <view attribute>:<from>-><to> (views.parse_shift)
    augmentation: str = "simclr"  # pretraining's preset (config.AUGMENT_PRESETS)
    # The network (with --init_checkpoint: the checkpoint's, at this image size).
    resnet_depth: int = 18
    width_multiplier: float = 0.5
    image_size: int = 64
    bootstrap_samples: int = 1000
    min_test_positives: int = 10  # multi-label: labels with fewer positive test images left out

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.budget_minutes <= 0:
            raise ValueError(f"budget_minutes must be positive, got {self.budget_minutes}")
        bad = [f for f in self.label_fractions if not 0 < f <= 1]
        if bad or not self.label_fractions:
            raise ValueError(f"label_fractions must be in (0, 1], got {list(self.label_fractions)}")


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    methods: tuple[str, ...]  # the pretraining chain, in order: () for scratch and imagenet
    from_init_checkpoint: bool

    @property
    def pretrained(self) -> bool:
        return bool(self.methods) or self.from_init_checkpoint

    @property
    def protocols(self) -> tuple[str, ...]:
        """Scratch has no encoder to probe; every other arm is also scored by a linear probe."""
        return PROTOCOLS if self.pretrained else PROTOCOLS[:1]

    @property
    def uses_micle(self) -> bool:
        return "micle" in self.methods

    @property
    def encoder_run(self) -> str:
        """The pretraining run whose encoder the arm fine-tunes ("" for none)."""
        return self.name if self.methods else ""


def parse_arm(name: str) -> Arm:
    if name not in IN_DOMAIN_ARMS + INIT_ARMS:
        raise UserError(f"unknown arm {name!r}; known: {', '.join(IN_DOMAIN_ARMS + INIT_ARMS)}")
    parts = tuple(name.split("_"))
    from_init = parts[0] == IMAGENET
    methods = parts[1:] if from_init else (() if name == SCRATCH else parts)
    return Arm(name, methods, from_init)


def choose_arms(names: Sequence[str], init_checkpoint: str,
                multi_image_cases: bool) -> tuple[list[Arm], dict[str, str]]:
    """(arms to run, {skipped arm: reason}). No names: the in-domain arms, and the arms of
    `--init_checkpoint` when one is given."""
    names = list(names) or list(IN_DOMAIN_ARMS) + (list(INIT_ARMS) if init_checkpoint else [])
    arms, skipped = [], {}
    for name in dict.fromkeys(names):
        arm = parse_arm(name)
        if arm.from_init_checkpoint and not init_checkpoint:
            raise UserError(f"arm {name!r} starts from --init_checkpoint, which is not given")
        if arm.uses_micle and not multi_image_cases:
            skipped[name] = ("the training split has no case with more than one image, so MICLe "
                             "has no pairs of distinct images: it would equal SimCLR")
            continue
        arms.append(arm)
    if not arms:
        raise UserError(f"no arm left to run (skipped: {skipped})")
    return arms, skipped


@dataclasses.dataclass(frozen=True)
class PretrainRun:
    """One contrastive pretraining run, in `pretrain/<name>/`."""

    name: str
    use_micle: bool
    init_run: str  # the run it continues ("" for none)
    from_init_checkpoint: bool  # starts from --init_checkpoint


def pretrain_runs(arms: Sequence[Arm]) -> list[PretrainRun]:
    """Every run the arms need, each once, a run after the run it continues."""
    runs: dict[str, PretrainRun] = {}
    for arm in arms:
        prefix = (IMAGENET,) if arm.from_init_checkpoint else ()
        for i, method in enumerate(arm.methods):
            name = "_".join(prefix + arm.methods[:i + 1])
            previous = "_".join(prefix + arm.methods[:i]) if i else ""
            runs.setdefault(name, PretrainRun(name, method == "micle", previous,
                                              arm.from_init_checkpoint and not i))
    return list(runs.values())


@dataclasses.dataclass(frozen=True)
class FinetuneSetting:
    """One point of the fine-tuning grid."""

    learning_rate: float  # Adam's, before the square-root batch scaling (see `finetune_optim`)
    fine_tune_after_block: int  # -1: all layers train; k: the stem and k block groups frozen

    @property
    def name(self) -> str:
        return f"lr{self.learning_rate:g}_after{self.fine_tune_after_block}"


# Every arm gets this same grid; the number of epochs is searched too, by keeping the checkpoint
# with the best validation value among `VALIDATIONS_PER_RUN` evenly spaced ones (early stopping).
# Three points, not the full 2 x 2: on 2 CPU cores every run's fixed cost (building, tracing,
# validating) counts, and the grid multiplies the runs.
GRID = (FinetuneSetting(1e-3, -1), FinetuneSetting(3e-4, -1), FinetuneSetting(1e-3, 2))
QUICK_GRID = (FinetuneSetting(1e-3, -1),)
VALIDATIONS_PER_RUN = 5


def finetune_optim(setting: FinetuneSetting) -> OptimConfig:
    return OptimConfig(optimizer="adam", learning_rate=setting.learning_rate,
                       learning_rate_scaling="sqrt", warmup_epochs=0, weight_decay=1e-4)


# Pretraining: SimCLR's small-batch recipe (LARS, lr 0.075 x sqrt(batch), temperature 0.5).
PRETRAIN_OPTIM = OptimConfig(optimizer="lars", learning_rate=0.075, learning_rate_scaling="sqrt",
                             warmup_epochs=1.0)
PRETRAIN_TEMPERATURE = 0.5


@dataclasses.dataclass(frozen=True)
class Cell:
    """One unit of work with its own folder (relative to the output folder)."""

    protocol: str  # finetune | linear
    arm: str
    label_fraction: float
    seed: int = 0
    setting: Optional[FinetuneSetting] = None  # fine-tuning only

    @property
    def folder(self) -> str:
        base = f"{self.protocol}/{self.arm}/fraction_{self.label_fraction:g}"
        if self.protocol == "linear":
            return base
        return f"{base}/{self.setting.name}/seed_{self.seed}"


def selection_folder(arm: str, label_fraction: float) -> str:
    """Where the grid choice of an arm at a label fraction is recorded."""
    return f"finetune/{arm}/fraction_{label_fraction:g}"


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long each run trains, planned to fit the budget (`plan_schedule`)."""

    pretrain_steps: int
    pretrain_batch: int
    finetune_epochs: float
    finetune_batch: int
    explanation: str
    # The plan's seconds per unit of each kind (`UNIT_KINDS`), for the ETA before one has run.
    unit_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def finetune_steps(self, images: int) -> int:
        return max(1, math.ceil(self.finetune_epochs * images / self.finetune_batch))

    def checkpoint_steps(self, steps: int) -> int:
        return max(1, math.ceil(steps / VALIDATIONS_PER_RUN))


@dataclasses.dataclass(frozen=True)
class Throughput:
    """A timed probe of one stage: steps per second once traced, and the fixed cost of a run
    (building the model and pipeline, tracing, validating, evaluating) in seconds."""

    steps_per_second: float
    overhead_seconds: float


# The kinds of units of work, each with its own time per unit in the ETA.
PRETRAINING, FINETUNING, LINEAR_PROBE = UNIT_KINDS = ("pretraining", "fine-tuning",
                                                     "linear probe")
PRETRAIN_SHARE = 0.5  # of the training time left after the fixed costs, when anything pretrains
MAX_FINETUNE_EPOCHS = 30.0
MIN_PRETRAIN_STEPS = 10


def plan_schedule(budget_seconds: float, runs: int, finetune_images: Sequence[int],
                  linear_cells: int, pretrain: Throughput, finetune: Throughput,
                  pretrain_batch: int, finetune_batch: int) -> Schedule:
    """Splits the budget: the fixed cost of every run first (from the probes; a linear probe
    costs as much as a fine-tuning run's overhead), then `PRETRAIN_SHARE` of the rest to the
    `runs` pretraining runs in equal steps, the remainder to fine-tuning, where every run
    (`finetune_images`: the training images of each) trains the same number of epochs (at most
    `MAX_FINETUNE_EPOCHS`)."""
    fixed = (runs * pretrain.overhead_seconds
             + (len(finetune_images) + linear_cells) * finetune.overhead_seconds)
    left = budget_seconds - fixed
    if left <= 0:
        raise UserError(
            f"--budget_minutes={budget_seconds / 60:g} is too short: the fixed cost of the "
            f"{runs} pretraining and {len(finetune_images) + linear_cells} evaluation cells alone "
            f"is about {fixed / 60:.1f} minutes; raise it, or run fewer arms, fractions or seeds")
    pretrain_seconds = PRETRAIN_SHARE * left if runs else 0.0
    steps = (max(MIN_PRETRAIN_STEPS, int(pretrain_seconds / runs * pretrain.steps_per_second))
             if runs else 0)
    batches_per_epoch = sum(images / finetune_batch for images in finetune_images)
    epochs = (left - pretrain_seconds) * finetune.steps_per_second / max(batches_per_epoch, 1e-9)
    epochs = min(MAX_FINETUNE_EPOCHS, max(1.0, round(epochs, 1)))
    explanation = (
        f"a timed probe measured {pretrain.steps_per_second:.2f} pretraining steps/s (batch "
        f"{pretrain_batch}) and {finetune.steps_per_second:.2f} fine-tuning steps/s (batch "
        f"{finetune_batch}), with fixed costs of {pretrain.overhead_seconds:.0f} s per "
        f"pretraining run and {finetune.overhead_seconds:.0f} s per fine-tuning or linear cell "
        f"(model building, tracing, validation, evaluation). Of the {budget_seconds / 60:g} "
        f"minutes, {fixed / 60:.1f} go to those fixed costs; {PRETRAIN_SHARE:.0%} of the rest "
        f"to {runs} pretraining run(s) of {steps} steps each, the remainder to "
        f"{len(finetune_images)} fine-tuning runs of {epochs:g} epochs each (at most "
        f"{MAX_FINETUNE_EPOCHS:g})")
    per_finetune = (finetune.overhead_seconds + epochs * batches_per_epoch
                    / max(len(finetune_images), 1) / finetune.steps_per_second)
    unit_seconds = {PRETRAINING: pretrain.overhead_seconds + steps / pretrain.steps_per_second,
                    FINETUNING: per_finetune, LINEAR_PROBE: finetune.overhead_seconds}
    return Schedule(steps, pretrain_batch, epochs, finetune_batch, explanation, unit_seconds)


QUICK_SCHEDULE = Schedule(pretrain_steps=10, pretrain_batch=16, finetune_epochs=1.0,
                          finetune_batch=16,
                          explanation="--quick: a fixed tiny schedule (10 pretraining steps, 1 "
                                      "fine-tuning epoch), no budget planning")
