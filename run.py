"""simclr-med's command line: `python run.py --mode=pretrain --model_dir=DIR [...]`.

Flags: flags/run_flags.py (and `python run.py --helpfull`). Commands, flags and output files are
described in the README. The pipeline, stage by stage (DIR = --model_dir, DATA = a data_prep
build's `dataset_info.json` and shards, or a TFDS data set):

  --mode         function (simclr_med.stages.)  reads                        writes
  pretrain       pretrain.pretrain              DATA (or the synthetic set),  DIR: ckpt-N, checkpoint,
                 (SimCLR; MICLe: --use_micle)   --init_checkpoint             model_config.json, flags.json,
                                                                              summary.json, TensorBoard
  finetune       finetune.finetune              DATA's label_fractions.json   the same, and DIR/best/
                                                subset, --init_checkpoint     (best.json)
  eval           evaluate.evaluate              DIR (best/ or latest), DATA   eval_<split>.json,
                                                                              predictions_<split>.csv,
                                                                              roc/confusion PNGs,
                                                                              report_<split>.html;
                                                                              --calibrate:
                                                                              calibration.json
  linear_eval    linear_eval.load_encoder,      DIR or --init_checkpoint,     linear_eval_<split>.json
                 then linear_eval.linear_eval   DATA
  train_then_eval  finetune, then evaluate      as both                       as both
  export         export.export                  DIR (best/ or latest)         --export_dir: features/,
                                                                              serving/ SavedModels
  embed          linear_eval.load_encoder,      DIR or --init_checkpoint,     embeddings_<split>.npz,
                 then embed.embed               DATA                          embedding_map_<split>.png,
                                                                              projector_<split>/

Every mode also appends to DIR/flags_history.jsonl (a finished training run started again
writes nothing). Building DATA is `python -m data_prep.build`;
serving an export, `python -m simclr_med.predict`.
"""

from __future__ import annotations

from flags import entry_point

if __name__ == "__main__":  # hide TensorFlow's start-up notices, before the imports below load it
    entry_point.import_tensorflow_quietly()

from absl import flags, logging

from data_prep import synthetic
from flags import embed_flags, export_flags, finetune_flags, run_flags, strategy_flags
from simclr_med.config import DataConfig
from simclr_med.data import reader
from simclr_med.errors import UserError
from simclr_med.stages import embed, export
from simclr_med.stages.evaluate import evaluate, format_metrics_table
from simclr_med.stages.finetune import finetune
from simclr_med.stages.linear_eval import KnnMonitor, linear_eval, load_encoder
from simclr_med.stages.pretrain import pretrain
from simclr_med.training import strategy
from simclr_med.training.loop import record_flags

FLAGS = flags.FLAGS
flags.mark_flag_as_required("model_dir")

SYNTHETIC_BANNER = """
======================================================================================
  SYNTHETIC DATA: no --data_dir or --tfds_dataset was given, so this pretraining uses
  the built-in synthetic data set (shapes on smooth backgrounds, not medical images) at
  %s
  Give --data_dir=<a data_prep build> to pretrain on your images.
======================================================================================"""


def open_source(data: DataConfig, mode: str) -> reader.Source:
    """The data set named by the flags; for pretraining only, the built-in synthetic one when
    none is named (other modes would silently train or score on the wrong images)."""
    if data.data_dir and data.tfds_dataset:
        raise UserError("give --data_dir or --tfds_dataset, not both")
    if data.tfds_dataset:
        return reader.open_tfds(data.tfds_dataset, data.tfds_data_dir)
    if data.data_dir:
        return reader.open_build(data.data_dir, verify=data.verify_data)
    if mode != "pretrain":
        raise UserError(f"--mode={mode} needs a data set: give --data_dir=<a data_prep build> or "
                        "--tfds_dataset=<name> (only --mode=pretrain falls back to the built-in "
                        "synthetic data)")
    data_dir = synthetic.default_build()
    logging.warning(SYNTHETIC_BANNER, data_dir)
    return reader.open_build(data_dir, verify=data.verify_data)


def flag_values() -> dict:
    """Every flag of run.py with its value, for the folder's flag records."""
    return {flag.name: flag.value
            for module in (run_flags, strategy_flags, finetune_flags, export_flags, embed_flags)
            for flag in FLAGS.get_flags_for_module(module.__name__)}


def export_model() -> None:
    """SavedModels of --model_dir's checkpoint (--eval_checkpoint chooses it) in --export_dir."""
    record_flags(FLAGS.model_dir, "flags_export.json", flag_values())
    result = export.export(FLAGS.model_dir, export_flags.export_dir(FLAGS.model_dir),
                           FLAGS.eval_checkpoint, export_flags.max_image_pixels(),
                           calibrate=FLAGS.calibrate)
    print(f"exported {result.checkpoint} (step {result.global_step}):\n"
          + "\n".join(f"  {name}: {path}" for name, path in result.paths.items()))


def embed_map(model_dir: str, init_checkpoint: str, source: reader.Source) -> None:
    """The embedding files of --eval_split (`--mode=embed`)."""
    config = embed_flags.embed_config()
    model, weights, step = load_encoder(model_dir, init_checkpoint, run_flags.model_config(),
                                        config.checkpoint)
    record_flags(model_dir, "flags_embed.json", flag_values())  # a missing folder stays missing
    result = embed.embed(model, source, config, config.output_dir or model_dir,
                         checkpoint=weights, global_step=step)
    print(f"embedding map ({result.method}) of {result.num_images} of the "
          f"{result.num_split_images} images ({result.num_patients} of "
          f"{result.num_split_patients} patients) of split {config.eval_split}:\n"
          + "\n".join(f"  {path}" for path in result.paths.values()))


def report_training(stage: str, summary: dict, model_dir: str, details: str) -> None:
    """The line a training mode ends with; a run already at its last step changed nothing."""
    if summary.get("nothing_to_do"):
        print(f"{stage} already at step {summary['global_step']} (this run asks for "
              f"{summary['train_steps']} steps): nothing to do, {model_dir} is unchanged")
    else:
        print(f"{stage} done: step {summary['global_step']}, {details}; results in {model_dir}")


def main() -> None:
    if FLAGS.mode == "export":  # needs neither data nor a distribution strategy
        export_model()
        return
    distribution = strategy.build_strategy(strategy_flags.strategy_config())
    source = open_source(run_flags.data_config(), FLAGS.mode)
    train = run_flags.train_config()
    if FLAGS.mode in ("eval", "linear_eval"):  # training modes record theirs once they train
        record_flags(train.model_dir, f"flags_{FLAGS.mode}.json", flag_values())
    if FLAGS.mode == "pretrain":
        monitor = (KnnMonitor(source, finetune_flags.linear_eval_config(FLAGS.monitor_max_images))
                   if FLAGS.monitor == "knn" else None)
        summary = pretrain(run_flags.model_config(), run_flags.optim_config(),
                           run_flags.augment_config(), source, train, run_flags.pretrain_config(),
                           distribution, split=FLAGS.train_split, monitor=monitor,
                           flag_values=flag_values())
        report_training("pretraining", summary, train.model_dir,
                        f"loss {summary.get('loss', float('nan')):.4f}, "
                        f"{summary.get('images_per_second', float('nan')):.1f} images/s")
    if FLAGS.mode in ("finetune", "train_then_eval"):
        summary = finetune(run_flags.model_config(), run_flags.optim_config(),
                           finetune_flags.augment_config(), source, train,
                           finetune_flags.finetune_config(), distribution, split=FLAGS.train_split,
                           flag_values=flag_values())
        report_training("fine-tuning", summary, train.model_dir,
                        f"loss {summary.get('loss', float('nan')):.4f}; best validation "
                        f"{summary.get('best_metric')} {summary.get('best_value')} at step "
                        f"{summary.get('best_step')}")
    if FLAGS.mode in ("eval", "train_then_eval"):
        print(format_metrics_table(evaluate(train.model_dir, source, FLAGS.eval_split,
                                            finetune_flags.eval_config())))
    if FLAGS.mode == "linear_eval":
        model, weights, step = load_encoder(train.model_dir, train.init_checkpoint,
                                            run_flags.model_config(), FLAGS.eval_checkpoint)
        print(format_metrics_table(linear_eval(
            model, source, finetune_flags.linear_eval_config(), finetune_flags.eval_config(),
            train.model_dir, checkpoint=weights, global_step=step)))
    if FLAGS.mode == "embed":
        embed_map(train.model_dir, train.init_checkpoint, source)


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    entry_point.run(main)
