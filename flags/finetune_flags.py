"""Flags of the fine-tuning, evaluation and linear-evaluation modes of `run.py`, and their
conversion into config objects. Model, optimiser, loop and augmentation flags are shared with
pretraining (flags/run_flags.py). Defaults and choices come from `simclr_med.config`.

Fine-tuning augments with `--augmentation` when it is given, else with the `finetune` preset
(random crop and flip); rotation and colour jitter are added with their own flags, e.g.
`--rotation_degrees=20 --color_jitter_strength=0.5`.
"""

from __future__ import annotations

from absl import flags

from flags import run_flags
from flags.entry_point import ConfigFlags
from simclr_med.config import (LINEAR_EVAL_ENDPOINTS, AugmentConfig, EvalConfig, FinetuneConfig,
                               LinearEvalConfig)

FLAGS = flags.FLAGS

FINETUNE_PRESET = "finetune"
MONITORS = ["none", "knn"]

FINETUNE = ConfigFlags(FinetuneConfig)
EVAL = ConfigFlags(EvalConfig, flag_names={
    "batch_size": "eval_batch_size", "checkpoint": "eval_checkpoint", "plots": "eval_plots",
    "output_dir": "eval_output_dir"})
# train_split, eval_split and label_fraction are the flags fine-tuning and data loading share.
LINEAR_EVAL = ConfigFlags(LinearEvalConfig, flag_names={
    "endpoint": "linear_eval_endpoint", "regularization": "linear_eval_regularization",
    "max_images": "linear_eval_max_images", "batch_size": "eval_batch_size"})

# Fine-tuning.
flags.DEFINE_float("label_fraction", FinetuneConfig.label_fraction, "Fraction of training "
                   "patients whose labels are used: the nested subset stored by data_prep (1%, "
                   "5%, 10%, 20%, 50%, 100%).")
flags.DEFINE_integer("fine_tune_after_block", FinetuneConfig.fine_tune_after_block, "Freeze the "
                     "stem and this many block groups (weights and batch-norm statistics): -1 "
                     "trains everything, 0 freezes the stem, 4 the whole backbone.")
flags.DEFINE_string("validation_split", FinetuneConfig.validation_split, "Split evaluated at "
                    "every checkpoint of fine-tuning to keep the best checkpoint ('' = keep "
                    "none).")
flags.DEFINE_string("best_metric", FinetuneConfig.best_metric, "Validation metric (higher is "
                    "better) that picks the best checkpoint; '' = auc_macro (multi-class) or "
                    "mean_auc (multi-label).")

# Evaluation.
flags.DEFINE_integer("bootstrap_samples", EvalConfig.bootstrap_samples, "Bootstrap resamples of "
                     "the patients for the 95% confidence intervals.")
flags.DEFINE_integer("bootstrap_seed", EvalConfig.bootstrap_seed, "Seed of the bootstrap.")
flags.DEFINE_integer("eval_batch_size", FinetuneConfig.eval_batch_size,
                     "Batch size of evaluation and feature extraction.")
flags.DEFINE_string("eval_checkpoint", EvalConfig.checkpoint, "Checkpoint to evaluate: auto (the "
                    "best of a fine-tuning run if kept, else the latest), best, latest, or a "
                    "path.")
flags.DEFINE_boolean("eval_plots", EvalConfig.plots, "Write the ROC, confusion-matrix and "
                     "reliability PNGs and report_<split>.html.")
flags.DEFINE_boolean("calibrate", EvalConfig.calibrate, "--mode=eval: fit a temperature on "
                     "--calibration_split, write it into <model_dir>/calibration.json and report "
                     "the calibrated ECE too. --mode=export: the serving SavedModel divides the "
                     "logits by that temperature.")
flags.DEFINE_string("calibration_split", EvalConfig.calibration_split, "Split the temperature of "
                    "--calibrate is fitted on (not the evaluated --eval_split).")
flags.DEFINE_string("eval_output_dir", EvalConfig.output_dir, "Folder of the evaluation files "
                    "('' = --model_dir); e.g. one per data set when evaluating a model on "
                    "several.")

# Linear evaluation and the k-NN monitor of pretraining.
flags.DEFINE_enum("monitor", "none", MONITORS, "Pretraining: k-NN score of the encoder "
                  "on --eval_split at every checkpoint, logged to TensorBoard.")
flags.DEFINE_integer("knn_k", LinearEvalConfig.knn_k, "Neighbours of k-NN.")
flags.DEFINE_integer("monitor_max_images", 1000, "Images per split the k-NN monitor uses.")
flags.DEFINE_enum("linear_eval_endpoint", LinearEvalConfig.endpoint, list(LINEAR_EVAL_ENDPOINTS),
                  "Encoder output the probe and k-NN see.")
flags.DEFINE_float("linear_eval_regularization", LinearEvalConfig.regularization, "Inverse "
                   "regularisation strength C of the logistic-regression probe.")
flags.DEFINE_integer("linear_eval_max_images", LinearEvalConfig.max_images, "Images per split "
                     "for linear evaluation (0 = all).")


def finetune_config() -> FinetuneConfig:
    return FINETUNE.build()


def augment_config() -> AugmentConfig:
    """--augmentation if given, else the fine-tuning preset; per-parameter flags on top."""
    preset = FLAGS.augmentation if FLAGS["augmentation"].present else FINETUNE_PRESET
    return run_flags.augment_config(preset)


def eval_config() -> EvalConfig:
    return EVAL.build()


def linear_eval_config(max_images: int | None = None) -> LinearEvalConfig:
    """For linear evaluation; `max_images` replaces --linear_eval_max_images (the monitor)."""
    return (LINEAR_EVAL.build() if max_images is None
            else LINEAR_EVAL.build(max_images=max_images))
