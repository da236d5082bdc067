"""simclr-med's command line: `python run.py --mode=pretrain --model_dir=DIR [...]`.

Flags: flags/run_flags.py (and `python run.py --helpfull`). Commands, flags and output files are
described in the README.
"""

from __future__ import annotations

from flags import entry_point

if __name__ == "__main__":  # hide TensorFlow's start-up notices, before the imports below load it
    entry_point.import_tensorflow_quietly()

from absl import app, flags, logging

from flags import export_flags, finetune_flags, run_flags
from simclr_med import dataset, export, strategy, synthetic
from simclr_med.config import DataConfig
from simclr_med.evaluate import evaluate, format_metrics_table
from simclr_med.finetune import finetune
from simclr_med.linear_eval import KnnMonitor, linear_eval, load_encoder
from simclr_med.pretrain import pretrain
from simclr_med.trainer import write_json

FLAGS = flags.FLAGS
flags.mark_flag_as_required("model_dir")

TRAINING_MODES = ("pretrain", "finetune", "train_then_eval")


def open_source(data: DataConfig) -> dataset.Source:
    """The data set named by the flags; the built-in synthetic one when none is named."""
    if data.data_dir and data.tfds_dataset:
        raise app.UsageError("give --data_dir or --tfds_dataset, not both")
    if data.tfds_dataset:
        return dataset.open_tfds(data.tfds_dataset, data.tfds_data_dir)
    if data.data_dir:
        return dataset.open_build(data.data_dir, verify=data.verify_data)
    data_dir = synthetic.default_build()
    logging.info("no --data_dir or --tfds_dataset: using the built-in SYNTHETIC data set at %s",
                 data_dir)
    return dataset.open_build(data_dir, verify=data.verify_data)


def export_model() -> None:
    """SavedModels of --model_dir's checkpoint (--eval_checkpoint chooses it) in --export_dir."""
    result = export.export(FLAGS.model_dir, export_flags.export_dir(FLAGS.model_dir),
                           FLAGS.eval_checkpoint, export_flags.max_image_pixels())
    print(f"exported {result.checkpoint} (step {result.global_step}):\n"
          + "\n".join(f"  {name}: {path}" for name, path in result.paths.items()))


def main() -> None:
    if FLAGS.mode == "export":  # needs neither data nor a distribution strategy
        export_model()
        return
    distribution = strategy.build_strategy(run_flags.strategy_config())
    source = open_source(run_flags.data_config())
    train = run_flags.train_config()
    # Evaluation modes keep the training run's flags.json and write flags_<mode>.json.
    write_json(train.model_dir,
               "flags.json" if FLAGS.mode in TRAINING_MODES else f"flags_{FLAGS.mode}.json",
               {**run_flags.flag_values(), **finetune_flags.flag_values()})
    if FLAGS.mode == "pretrain":
        monitor = (KnnMonitor(source, finetune_flags.linear_eval_config(FLAGS.monitor_max_images))
                   if FLAGS.monitor == "knn" else None)
        summary = pretrain(run_flags.model_config(), run_flags.optim_config(),
                           run_flags.augment_config(), source, train, run_flags.pretrain_config(),
                           distribution, split=FLAGS.train_split, monitor=monitor)
        print(f"pretraining done: step {summary['global_step']}, loss {summary['loss']:.4f}, "
              f"{summary.get('images_per_second', float('nan')):.1f} images/s; "
              f"results in {train.model_dir}")
    if FLAGS.mode in ("finetune", "train_then_eval"):
        summary = finetune(run_flags.model_config(), run_flags.optim_config(),
                           finetune_flags.augment_config(), source, train,
                           finetune_flags.finetune_config(), distribution, split=FLAGS.train_split)
        print(f"fine-tuning done: step {summary['global_step']}, loss {summary['loss']:.4f}; "
              f"best validation {summary['best_metric']} {summary['best_value']} at step "
              f"{summary['best_step']}; results in {train.model_dir}")
    if FLAGS.mode in ("eval", "train_then_eval"):
        print(format_metrics_table(evaluate(train.model_dir, source, FLAGS.eval_split,
                                            finetune_flags.eval_config())))
    if FLAGS.mode == "linear_eval":
        model, weights, step = load_encoder(train.model_dir, train.init_checkpoint,
                                            run_flags.model_config(), FLAGS.eval_checkpoint)
        print(format_metrics_table(linear_eval(
            model, source, finetune_flags.linear_eval_config(), finetune_flags.eval_config(),
            train.model_dir, checkpoint=weights, global_step=step)))


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    entry_point.run(main)
