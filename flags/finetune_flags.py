"""Flags of the fine-tuning, evaluation and linear-evaluation modes of `run.py`, and their
conversion into config objects. Model, optimiser, loop and augmentation flags are shared with
pretraining (flags/run_flags.py).

Fine-tuning augments with `--augmentation` when it is given, else with the `finetune` preset
(random crop and flip); rotation and colour jitter are added with their own flags, e.g.
`--rotation_degrees=20 --color_jitter_strength=0.5`.
"""

from __future__ import annotations

from absl import flags

from flags import run_flags
from flags.entry_point import from_flags
from simclr_med.config import AugmentConfig
from simclr_med.stages import linear_eval
from simclr_med.stages.evaluate import EvalConfig
from simclr_med.stages.finetune import FinetuneConfig

FLAGS = flags.FLAGS

FINETUNE_PRESET = "finetune"

# Fine-tuning.
flags.DEFINE_float("label_fraction", 1.0, "Fraction of training patients whose labels are used: "
                   "the nested subset stored by data_prep (1%, 5%, 10%, 20%, 50%, 100%).")
flags.DEFINE_integer("fine_tune_after_block", -1, "Freeze the stem and this many block groups "
                     "(weights and batch-norm statistics): -1 trains everything, 0 freezes the "
                     "stem, 4 the whole backbone.")
flags.DEFINE_string("validation_split", "validation", "Split evaluated at every checkpoint of "
                    "fine-tuning to keep the best checkpoint ('' = keep none).")
flags.DEFINE_string("best_metric", "", "Validation metric (higher is better) that picks the best "
                    "checkpoint; '' = auc_macro (multi-class) or mean_auc (multi-label).")

# Evaluation.
flags.DEFINE_integer("bootstrap_samples", 1000, "Bootstrap resamples of the patients for the "
                     "95% confidence intervals.")
flags.DEFINE_integer("bootstrap_seed", 0, "Seed of the bootstrap.")
flags.DEFINE_integer("eval_batch_size", 256, "Batch size of evaluation and feature extraction.")
flags.DEFINE_string("eval_checkpoint", "auto", "Checkpoint to evaluate: auto (the best of a "
                    "fine-tuning run if kept, else the latest), best, latest, or a path.")
flags.DEFINE_boolean("eval_plots", True, "Write ROC and confusion-matrix PNGs.")
flags.DEFINE_string("eval_output_dir", "", "Folder of the evaluation files ('' = --model_dir); "
                    "e.g. one per data set when evaluating a model on several.")

# Linear evaluation and the k-NN monitor of pretraining.
flags.DEFINE_enum("monitor", "none", ["none", "knn"], "Pretraining: k-NN score of the encoder "
                  "on --eval_split at every checkpoint, logged to TensorBoard.")
flags.DEFINE_integer("knn_k", 20, "Neighbours of k-NN.")
flags.DEFINE_integer("monitor_max_images", 1000, "Images per split the k-NN monitor uses.")
flags.DEFINE_enum("linear_eval_endpoint", "final_avg_pool", list(linear_eval.ENDPOINTS),
                  "Encoder output the probe and k-NN see.")
flags.DEFINE_float("linear_eval_regularization", 1.0, "Inverse regularisation strength C of the "
                   "logistic-regression probe.")
flags.DEFINE_integer("linear_eval_max_images", 0, "Images per split for linear evaluation "
                     "(0 = all).")


def finetune_config() -> FinetuneConfig:
    return FinetuneConfig(label_fraction=FLAGS.label_fraction,
                          fine_tune_after_block=FLAGS.fine_tune_after_block,
                          validation_split=FLAGS.validation_split, best_metric=FLAGS.best_metric,
                          eval_batch_size=FLAGS.eval_batch_size)


def augment_config() -> AugmentConfig:
    """--augmentation if given, else the fine-tuning preset; per-parameter flags on top."""
    preset = FLAGS.augmentation if FLAGS["augmentation"].present else FINETUNE_PRESET
    return run_flags.augment_config(preset)


def eval_config() -> EvalConfig:
    return EvalConfig(bootstrap_samples=FLAGS.bootstrap_samples,
                      bootstrap_seed=FLAGS.bootstrap_seed, batch_size=FLAGS.eval_batch_size,
                      checkpoint=FLAGS.eval_checkpoint, plots=FLAGS.eval_plots,
                      output_dir=FLAGS.eval_output_dir)


def linear_eval_config(max_images: int | None = None) -> linear_eval.LinearEvalConfig:
    """For linear evaluation; `max_images` replaces --linear_eval_max_images (the monitor)."""
    return from_flags(
        linear_eval.LinearEvalConfig, train_split=FLAGS.train_split, eval_split=FLAGS.eval_split,
        label_fraction=FLAGS.label_fraction, endpoint=FLAGS.linear_eval_endpoint,
        knn_k=FLAGS.knn_k, regularization=FLAGS.linear_eval_regularization,
        max_images=FLAGS.linear_eval_max_images if max_images is None else max_images,
        batch_size=FLAGS.eval_batch_size)
