"""Flags of `python -m simclr_med.experiment`, the paper's comparison, and its config.

`--quick` runs a tiny version for CI: the tiny network, a fixed short schedule, and, unless
their flags are given, the arms, label fractions, seeds and bootstrap size of
`plan.QUICK_DEFAULTS`.
"""

from __future__ import annotations

from absl import flags

from flags.entry_point import ConfigFlags
from simclr_med.config import AUGMENT_PRESETS
from simclr_med.experiments.plan import (IN_DOMAIN_ARMS, INIT_ARMS, QUICK_DEFAULTS,
                                         ExperimentConfig)

FLAGS = flags.FLAGS

EXPERIMENT = ConfigFlags(ExperimentConfig)

flags.DEFINE_string("data_dir", None, "A data_prep build (multi-class or multi-label).")
flags.DEFINE_string("output_dir", None, "Folder of the results; running the same command again "
                    "resumes there, skipping finished cells.")
flags.DEFINE_boolean("quick", ExperimentConfig.quick, "A tiny version for CI (under 2 minutes on "
                     "2 CPU cores): tiny network, a few steps, "
                     f"{', '.join(f'{k}={v}' for k, v in QUICK_DEFAULTS.items())} unless given.")
flags.DEFINE_list("arms", list(ExperimentConfig.arms), "Arms to run, of "
                  f"{', '.join(IN_DOMAIN_ARMS + INIT_ARMS)}; empty: {', '.join(IN_DOMAIN_ARMS)} "
                  "and, with --init_checkpoint, the arms started from it.")
flags.DEFINE_list("label_fractions", list(ExperimentConfig.label_fractions),
                  "Fractions of the training patients to fine-tune on (data_prep's nested "
                  "subsets).")
flags.DEFINE_integer("seeds", ExperimentConfig.seeds, "Fine-tuning seeds per cell.",
                     lower_bound=1)
flags.DEFINE_float("budget_minutes", ExperimentConfig.budget_minutes, "Time to plan the "
                   "pretraining steps and fine-tuning epochs for (a timed probe, then a split).")
flags.DEFINE_string("init_checkpoint", ExperimentConfig.init_checkpoint, "Weights to start the "
                    "`imagenet*` arms from: an official SimCLR TF2 checkpoint or a model folder "
                    "of this package; the network is the checkpoint's.")
flags.DEFINE_string("shift", ExperimentConfig.shift, "<view attribute>:<from>-><to>, e.g. "
                    "view_position:PA->AP (NIH): also fine-tune on the images of one view and "
                    "evaluate on the test images of the other.")
flags.DEFINE_enum("augmentation", ExperimentConfig.augmentation, list(AUGMENT_PRESETS),
                  "Augmentation preset of pretraining (cxr: the paper's chest X-ray set).")
flags.DEFINE_integer("resnet_depth", ExperimentConfig.resnet_depth, "ResNet depth.")
flags.DEFINE_float("width_multiplier", ExperimentConfig.width_multiplier,
                   "ResNet width multiplier.")
flags.DEFINE_integer("image_size", ExperimentConfig.image_size, "Input size in pixels.")
flags.DEFINE_integer("bootstrap_samples", ExperimentConfig.bootstrap_samples, "Bootstrap "
                     "resamples of the test patients for intervals and paired differences.")
flags.DEFINE_integer("min_test_positives", ExperimentConfig.min_test_positives, "Multi-label: "
                     "the mean AUC is over the labels with at least this many positive test "
                     "images.", lower_bound=1)
flags.mark_flags_as_required(["data_dir", "output_dir"])


def _fractions(values: list[str]) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in values)
    except ValueError as error:
        raise flags.ValidationError(f"--label_fractions: {error}") from error


def experiment_config() -> ExperimentConfig:
    """The config of the flags; with --quick, `QUICK_DEFAULTS` for the flags not given."""
    values = {"arms": tuple(FLAGS.arms), "label_fractions": _fractions(FLAGS.label_fractions)}
    if FLAGS.quick:
        values.update({k: v for k, v in QUICK_DEFAULTS.items() if not FLAGS[k].present})
    return EXPERIMENT.build(**values)
