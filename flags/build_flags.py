"""Flags of `python -m data_prep.build` and their conversion into a `BuildConfig` (defaults and
choices: data_prep/config.py)."""

from __future__ import annotations

from absl import flags

from data_prep.config import (CASE_KEYS, FLAG_NAMES, FORMATS, ON_ERROR, RUNNERS,
                              UNCERTAINTY_POLICIES, BuildConfig)
from flags.entry_point import ConfigFlags
from simclr_med.errors import UserError

FLAGS = flags.FLAGS

BUILD = ConfigFlags(BuildConfig, flag_names=FLAG_NAMES)

flags.DEFINE_enum("format", None, FORMATS, "Manifest format.")
flags.DEFINE_list("manifest", None, "Manifest CSV file(s) (.csv or .csv.gz), comma-separated; "
                  "rows of several files are read as one table.")
flags.DEFINE_string("image_root", None, "Folder the manifest's image paths are relative to. "
                    "Paths resolving outside it are refused.")
flags.DEFINE_string("output_dir", None, "Folder for the shards, dataset_info.json, "
                    "label_fractions.json and report.json.")

# generic format
flags.DEFINE_string("image_column", BuildConfig.image_column,
                    "generic: column with the image path.")
flags.DEFINE_string("image_id_column", BuildConfig.image_id_column,
                    "generic: column with an image id (default: the path).")
flags.DEFINE_string("case_column", BuildConfig.case_column,
                    "generic: column grouping images into cases (required).")
flags.DEFINE_string("patient_column", BuildConfig.patient_column,
                    "generic: patient column (default: the case column).")
flags.DEFINE_string("label_column", BuildConfig.label_column,
                    "generic: one multi-class label column.")
flags.DEFINE_list("label_columns", list(BuildConfig.label_columns),
                  "generic: several 0/1 columns (multi-label); -1 is uncertain (see "
                  "--uncertainty), blank is unknown (masked).")
flags.DEFINE_list("classes", list(BuildConfig.classes),
                  "generic multi-class: class names in class-id order (default: the sorted "
                  "distinct values of --label_column).")
flags.DEFINE_list("view_columns", list(BuildConfig.view_columns),
                  "generic: columns stored as the image's view attributes.")
flags.DEFINE_string("split_column", BuildConfig.split_column,
                    "Honour an official split column (train / valid(ation) / test) instead of the "
                    "patient hash split; it must be patient-disjoint.")

# chexpert and nih
flags.DEFINE_string("labels", BuildConfig.labels,
                    "chexpert: competition (default, 5 pathologies), all (14) or a comma-separated "
                    "list; nih: all (default, 14 findings) or a list.")
flags.DEFINE_enum("uncertainty", BuildConfig.uncertainty, UNCERTAINTY_POLICIES,
                  "Uncertain (-1) labels: ones, zeros, or ignore (masked: losses and metrics skip "
                  "them).")
flags.DEFINE_enum("case_key", BuildConfig.case_key, CASE_KEYS,
                  "chexpert: one case per patient or study.")

# splits
flags.DEFINE_float("val_fraction", BuildConfig.val_fraction,
                   "Share of patients in the validation split.")
flags.DEFINE_float("test_fraction", BuildConfig.test_fraction,
                   "Share of patients in the test split.")
flags.DEFINE_integer("split_seed", BuildConfig.split_seed,
                     "Seed of the patient split, label-fraction order and record order.")

# images and run
flags.DEFINE_integer("image_size", BuildConfig.image_size,
                     "If > 0, shrink images so the shorter side has this many pixels (re-encoded "
                     "as PNG); 0 stores the original bytes.")
flags.DEFINE_integer("max_image_pixels", BuildConfig.max_image_pixels,
                     "Images with more pixels are refused (too_large) without being decoded.")
flags.DEFINE_integer("num_workers", BuildConfig.num_workers,
                     "Worker processes reading images (0: one per CPU core), with "
                     "--runner=local; Beam's own options choose its workers.")
flags.DEFINE_float("shard_size_mb", BuildConfig.shard_size_mb,
                   "Target size of a TFRecord shard in MiB.")
flags.DEFINE_enum("on_error", BuildConfig.on_error, ON_ERROR,
                  "skip: count and report rows that cannot be written; fail: stop at the first, "
                  "naming the row.")
flags.DEFINE_enum("runner", BuildConfig.runner, RUNNERS,
                  "local: read the images in --num_workers processes of this machine; beam: as an "
                  "Apache Beam pipeline (pip install 'simclr-med[beam]'), its options after `--`, "
                  "e.g. `--runner=beam -- --runner=DirectRunner --direct_num_workers=2`. Both "
                  "write the same files.")
flags.DEFINE_boolean("overwrite", BuildConfig.overwrite,
                     "Replace a previous build in --output_dir.")
flags.DEFINE_boolean("progress", BuildConfig.progress, "Show a progress bar.")

flags.mark_flags_as_required(["format", "manifest", "image_root", "output_dir"])


def build_config() -> BuildConfig:
    """The `BuildConfig` the parsed flags describe (lists become tuples)."""
    values = BUILD.values()
    return BUILD.build(**{k: tuple(v) for k, v in values.items() if isinstance(v, list)})


def beam_args(args: list[str]) -> list[str]:
    """The Apache Beam pipeline options: the arguments after `--`, with `--runner=beam` only."""
    if args and FLAGS.runner != "beam":
        raise UserError(f"unexpected argument(s) {' '.join(args)}: only --runner=beam takes "
                        f"arguments (Apache Beam pipeline options, after `--`)")
    return list(args)
