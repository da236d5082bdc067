"""Distribution shift between image views: `--shift=<view attribute>:<from>-><to>`.

data_prep stores each image's view attributes as `key=value;key=value` in `image/view` (NIH:
`view_position=PA` or `AP`; CheXpert: `frontal_lateral=...;ap_pa=...`; a generic build: its
`--view_columns`). The shift fine-tunes on the images of one view and evaluates, with no further
training, on the test images of another: both come from view builds, copies of the build holding
only the images of one view (every split; a case keeps its images of that view, a case without
any is dropped; the nested label-fraction ranks are kept).
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from simclr_med.data import integrity, schema
from simclr_med.errors import UserError
from simclr_med.training.loop import write_json

DONE_FILE = "view_build.json"


@dataclasses.dataclass(frozen=True)
class Shift:
    attribute: str
    source: str  # the view fine-tuned on (and evaluated on in distribution)
    target: str  # the view evaluated on, without further training

    @property
    def name(self) -> str:
        return f"{self.attribute}:{self.source}->{self.target}"


def parse_shift(text: str) -> Shift:
    attribute, _, views = text.partition(":")
    source, _, target = views.partition("->")
    if not (attribute and source and target) or source == target:
        raise UserError(f"--shift={text!r}: expected <view attribute>:<from>-><to> with two "
                        "different views, e.g. view_position:PA->AP")
    return Shift(attribute, source, target)


def view_value(view: str, attribute: str) -> str:
    """The value of `attribute` in a `key=value;key=value` view string ("" if absent)."""
    for item in view.split(";"):
        key, _, value = item.partition("=")
        if key == attribute:
            return value
    return ""


def _cases(data_dir: str, split: str, num_labels: int):
    files = schema.shard_paths(data_dir, split)
    records = tf.data.TFRecordDataset(files).map(lambda r: schema.parse_case(r, num_labels))
    for case in records.as_numpy_iterator():
        yield case


def _keep(case: dict, attribute: str, value: str, num_labels: int) -> schema.Case | None:
    views = [v.decode() for v in case["view"]]
    keep = [i for i, view in enumerate(views) if view_value(view, attribute) == value]
    if not keep:
        return None
    images = [schema.ImageEntry(
        encoded=case["encoded"][i], image_id=case["image_id"][i].decode(), view=views[i],
        class_id=int(case["class_id"][i]),
        labels=case["labels"][i].tolist() if num_labels else (),
        label_mask=case["label_mask"][i].tolist() if num_labels else ()) for i in keep]
    return schema.Case(case["case_id"].decode(), case["patient_id"].decode(), images,
                       float(case["label_fraction_rank"]))


def view_build(data_dir: str, output_dir: str, attribute: str, value: str) -> str:
    """Writes (once) the build of the images whose view has `attribute=value`; returns its
    folder. UserError if no image has that view."""
    if tf.io.gfile.exists(os.path.join(output_dir, DONE_FILE)):
        return output_dir
    info = schema.DatasetInfo.load(data_dir)
    tf.io.gfile.makedirs(output_dir)
    counts, shards, seen = {}, {}, set()
    for split in info.split_counts:
        patients, cases, images = set(), 0, 0
        path = os.path.join(output_dir, schema.shard_name(split, 0, 1))
        with tf.io.TFRecordWriter(path) as writer:
            for case in _cases(data_dir, split, info.num_labels):
                seen.update(view_value(v.decode(), attribute) for v in case["view"])
                kept = _keep(case, attribute, value, info.num_labels)
                if kept is not None:
                    writer.write(schema.encode_case(kept, info.num_labels))
                    patients.add(kept.patient_id)
                    cases, images = cases + 1, images + len(kept.images)
        counts[split] = {"patients": len(patients), "cases": cases, "images": images}
        shards[split] = [integrity.describe_shard(path)]
    if not sum(c["images"] for c in counts.values()):
        raise UserError(f"--shift: no image of {data_dir} has the view {attribute}={value} "
                        f"(values of {attribute!r} found: {sorted(seen - {''}) or 'none'})")
    schema.DatasetInfo(info.task, list(info.names), counts,
                       f"{info.source_format} with {attribute}={value} only",
                       shards=shards).save(output_dir)
    write_json(output_dir, DONE_FILE, {"data_dir": data_dir, "attribute": attribute,
                                       "value": value, "splits": counts})
    return output_dir
