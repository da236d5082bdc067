"""The case record: one `tf.train.Example` per patient case (a bag of M >= 1 images).

This module is the single definition of the on-disk format. `data_prep` writes records with
`encode_case`; the readers in `simclr_med.data.reader` parse them with `parse_case`.

Labels belong to images, not to cases: an NIH patient's follow-ups carry different findings.
Where a source labels the case (a HAM10000 lesion) every image of it carries that label.

Per-image labels are stored for both task types so one reader serves both:
- multi-class: `image/class_id` (int, -1 = unlabelled);
- multi-label: `image/labels` and `image/label_mask`, M x L floats flattened row-major
  (mask 0 = uncertain or missing: losses and metrics skip that entry).
The number of labels L and the class names live in the build's `dataset_info.json`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import tensorflow as tf

from simclr_med.errors import UserError

SCHEMA_VERSION = 1

CASE_ID = "case/id"
PATIENT_ID = "patient/id"
# Position of the patient in the nested, class-stratified label-fraction order, in (0, 1]:
# the fine-tuning subset for fraction f is every training patient whose rank is <= f.
LABEL_FRACTION_RANK = "patient/label_fraction_rank"
IMAGE_ENCODED = "image/encoded"
IMAGE_ID = "image/id"
IMAGE_VIEW = "image/view"
IMAGE_CLASS_ID = "image/class_id"
IMAGE_LABELS = "image/labels"
IMAGE_LABEL_MASK = "image/label_mask"

MULTICLASS = "multiclass"
MULTILABEL = "multilabel"


@dataclasses.dataclass
class ImageEntry:
    """One image of a case, with its own labels."""

    encoded: bytes
    image_id: str
    view: str = ""
    class_id: int = -1
    labels: Sequence[float] = ()
    label_mask: Sequence[float] = ()


@dataclasses.dataclass
class Case:
    """A bag of images of one patient case (a patient, a study, a lesion)."""

    case_id: str
    patient_id: str
    images: list[ImageEntry]
    label_fraction_rank: float = 1.0


def _bytes(values: Sequence[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _floats(values: Sequence[float]) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _ints(values: Sequence[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def encode_case(case: Case, num_labels: int = 0) -> bytes:
    """Serialises a case. `num_labels` is L for multi-label builds, 0 for multi-class."""
    if not case.images:
        raise ValueError(f"case {case.case_id!r} has no images")
    labels, masks = [], []
    for image in case.images:
        if len(image.labels) != num_labels:
            raise ValueError(
                f"image {image.image_id!r} of case {case.case_id!r} has {len(image.labels)} labels,"
                f" expected {num_labels}")
        mask = image.label_mask if len(image.label_mask) else [1.0] * num_labels
        if len(mask) != num_labels:
            raise ValueError(f"image {image.image_id!r}: label_mask has {len(mask)} entries,"
                             f" expected {num_labels}")
        labels.extend(float(v) for v in image.labels)
        masks.extend(float(v) for v in mask)
    feature = {
        CASE_ID: _bytes([case.case_id.encode()]),
        PATIENT_ID: _bytes([case.patient_id.encode()]),
        LABEL_FRACTION_RANK: _floats([case.label_fraction_rank]),
        IMAGE_ENCODED: _bytes([image.encoded for image in case.images]),
        IMAGE_ID: _bytes([image.image_id.encode() for image in case.images]),
        IMAGE_VIEW: _bytes([image.view.encode() for image in case.images]),
        IMAGE_CLASS_ID: _ints([image.class_id for image in case.images]),
        IMAGE_LABELS: _floats(labels),
        IMAGE_LABEL_MASK: _floats(masks),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


_FEATURES = {
    CASE_ID: tf.io.FixedLenFeature([], tf.string),
    PATIENT_ID: tf.io.FixedLenFeature([], tf.string),
    LABEL_FRACTION_RANK: tf.io.FixedLenFeature([], tf.float32, default_value=1.0),
    IMAGE_ENCODED: tf.io.RaggedFeature(tf.string),
    IMAGE_ID: tf.io.RaggedFeature(tf.string),
    IMAGE_VIEW: tf.io.RaggedFeature(tf.string),
    IMAGE_CLASS_ID: tf.io.RaggedFeature(tf.int64),
    IMAGE_LABELS: tf.io.RaggedFeature(tf.float32),
    IMAGE_LABEL_MASK: tf.io.RaggedFeature(tf.float32),
}


def parse_case(serialized: tf.Tensor, num_labels: int = 0) -> dict[str, tf.Tensor]:
    """Parses one serialized case into dense per-image tensors (graph-mode safe).

    Returns a dict with scalars `case_id`, `patient_id`, `label_fraction_rank` and per-image
    tensors of leading size M: `encoded`, `image_id`, `view`, `class_id` and, for
    multi-label builds, `labels` and `label_mask` of shape [M, num_labels].
    """
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    case = {
        "case_id": parsed[CASE_ID],
        "patient_id": parsed[PATIENT_ID],
        "label_fraction_rank": parsed[LABEL_FRACTION_RANK],
        "encoded": parsed[IMAGE_ENCODED],
        "image_id": parsed[IMAGE_ID],
        "view": parsed[IMAGE_VIEW],
        "class_id": tf.cast(parsed[IMAGE_CLASS_ID], tf.int32),
    }
    if num_labels:
        case["labels"] = tf.reshape(parsed[IMAGE_LABELS], [-1, num_labels])
        case["label_mask"] = tf.reshape(parsed[IMAGE_LABEL_MASK], [-1, num_labels])
    return case


# The files of a build besides its shards (every name of the on-disk format is defined here).
DATASET_INFO_FILE = "dataset_info.json"
REPORT_FILE = "report.json"  # data_prep's account of the build, with the command that made it
LABEL_FRACTIONS_FILE = "label_fractions.json"  # the training patients of each label fraction
# Shards: `<split>-NNNNN-of-MMMMM.tfrecord` (`shard_name`); while data_prep writes them,
# `.<split>-NNNNN.tfrecord.incomplete` (`incomplete_shard_name`), which no reader takes for one.
SHARD_SUFFIX = ".tfrecord"
INCOMPLETE_SUFFIX = ".incomplete"
INCOMPLETE_SHARDS = f".*{SHARD_SUFFIX}{INCOMPLETE_SUFFIX}"  # glob of every incomplete shard


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One TFRecord shard as data_prep wrote it: its file name, size and SHA-256."""

    file: str  # e.g. train-00000-of-00004.tfrecord, in the build folder
    bytes: int
    sha256: str  # hex digest of the whole file


@dataclasses.dataclass
class DatasetInfo:
    """What `dataset_info.json` of a build holds: the task and its class or label names.

    `split_counts` maps a split name to {"patients": n, "cases": n, "images": n}.
    For multi-class builds `names` are the class names (class id = index); for multi-label
    builds they are the label names (column of `image/labels` = index).
    `shards` maps a split name to its shards; builds made before shards were recorded have none
    (they open, but cannot be verified).
    """

    task: str
    names: list[str]
    split_counts: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    source_format: str = ""
    schema_version: int = SCHEMA_VERSION
    shards: dict[str, list[ShardInfo]] = dataclasses.field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        """L, the width of the multi-hot label vector (0 for multi-class builds)."""
        return len(self.names) if self.task == MULTILABEL else 0

    @property
    def num_classes(self) -> int:
        """Outputs of a classifier for this task."""
        return len(self.names)

    def to_json(self) -> dict:
        data = {"schema_version": self.schema_version, "task": self.task,
                "source_format": self.source_format,
                "class_names" if self.task == MULTICLASS else "label_names": self.names,
                "splits": self.split_counts}
        if self.shards:
            data["shards"] = {split: [dataclasses.asdict(shard) for shard in shards]
                              for split, shards in self.shards.items()}
        return data

    @classmethod
    def from_json(cls, data: dict) -> "DatasetInfo":
        task = data["task"]
        if task not in (MULTICLASS, MULTILABEL):
            raise ValueError(f"unknown task {task!r} in {DATASET_INFO_FILE}")
        names = data["class_names"] if task == MULTICLASS else data["label_names"]
        shards = {split: [ShardInfo(**shard) for shard in entries]
                  for split, entries in data.get("shards", {}).items()}
        return cls(task=task, names=list(names), split_counts=dict(data.get("splits", {})),
                   source_format=data.get("source_format", ""),
                   schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
                   shards=shards)

    def save(self, directory: str) -> None:
        with tf.io.gfile.GFile(f"{directory}/{DATASET_INFO_FILE}", "w") as f:
            json.dump(self.to_json(), f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, directory: str) -> "DatasetInfo":
        path = f"{directory}/{DATASET_INFO_FILE}"
        if not tf.io.gfile.exists(path):
            raise UserError(f"{path} not found: is {directory!r} a data_prep output folder?")
        with tf.io.gfile.GFile(path) as f:
            return cls.from_json(json.load(f))


def shard_glob(split: str = "*") -> str:
    """Glob of the names of one split's shards (default: of every split's)."""
    return f"{split}-*-of-*{SHARD_SUFFIX}"


def shard_pattern(directory: str, split: str) -> str:
    """Glob of the TFRecord shards `<split>-NNNNN-of-MMMMM.tfrecord` of one split."""
    return f"{directory}/{shard_glob(split)}"


def shard_paths(directory: str, split: str) -> list[str]:
    """The shards of one split found in `directory`, in order."""
    return sorted(tf.io.gfile.glob(shard_pattern(directory, split)))


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def shard_name_form(split: str) -> str:
    """How the shards of `split` are named, for messages: `<split>-NNNNN-of-MMMMM.tfrecord`."""
    return f"{split}-NNNNN-of-MMMMM{SHARD_SUFFIX}"


def incomplete_shard_name(split: str, index: int) -> str:
    """The name of a shard data_prep is still writing (renamed to `shard_name` at the end)."""
    return f".{split}-{index:05d}{SHARD_SUFFIX}{INCOMPLETE_SUFFIX}"
