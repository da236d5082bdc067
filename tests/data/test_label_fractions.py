"""Label fractions on the training path: what fine-tuning reads (`training_dataset`) at fraction f
is exactly data_prep's stored subset of training patients, and never a held-out patient."""

from __future__ import annotations

import json

import pytest
import tensorflow as tf

from simclr_med.data import augment
from simclr_med.data.reader import open_build, read_cases
from simclr_med.data.finetune_input import (LABEL_FRACTIONS_FILE, LabelledSpec, count_training_images,
                                       training_dataset)

# Every fraction label_fractions.json stores (data_prep.splits.STANDARD_FRACTIONS).
FRACTIONS = ("0.01", "0.05", "0.1", "0.2", "0.5", "1.0")


@pytest.fixture(scope="module")
def build(synthetic_build):
    source = open_build(str(synthetic_build))
    stored = json.loads((synthetic_build / LABEL_FRACTIONS_FILE).read_text())
    held_out = {case["patient_id"].numpy().decode() for split in ("validation", "test")
                for case in read_cases(source, split)}
    assert stored["split"] == "train" and sorted(stored["fractions"]) == sorted(FRACTIONS)
    assert held_out and stored["fractions"]["1.0"]["patients"] == stored["train_patients"]
    return source, stored["fractions"], held_out


def _training_images(source, fraction: float, images: int, pipelines: int = 1) -> list[list]:
    """The first `images` (image id, patient id) pairs of each input pipeline's training stream,
    as fine-tuning reads them."""
    spec = LabelledSpec(augment.preset("none"), image_size=8, label_fraction=fraction,
                        keep_ids=True)
    streams = []
    for pipeline in range(pipelines):
        context = (tf.distribute.InputContext(pipelines, pipeline, pipelines) if pipelines > 1
                   else None)
        batch = next(iter(training_dataset(source, "train", spec, images, input_context=context)))
        streams.append([(i.decode(), p.decode()) for i, p in
                        zip(batch["image_id"].numpy(), batch["patient_id"].numpy())])
    return streams


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_an_epoch_is_the_stored_subset_of_training_patients(build, fraction):
    """One epoch at fraction f: every image of the stored f list's patients once, nothing else
    (so no validation or test patient either)."""
    source, stored, held_out = build
    entry = stored[fraction]
    images = count_training_images(source, "train", float(fraction))
    assert images == entry["images"] > 0
    (epoch,) = _training_images(source, float(fraction), images)
    assert len(set(epoch)) == images  # each image once
    patients = {patient for _, patient in epoch}
    assert patients.isdisjoint(held_out)
    assert sorted(patients) == entry["patient_ids"]


def test_two_input_pipelines_share_the_stored_subset(build):
    """As two workers read it at 10%: disjoint patients, together the stored list. Each stream's
    first batch is the size of the whole subset, so it covers the pipeline's share."""
    source, stored, held_out = build
    entry = stored["0.1"]
    streams = _training_images(source, 0.1, entry["images"], pipelines=2)
    first, second = ({patient for _, patient in stream} for stream in streams)
    assert first and second and first.isdisjoint(second)
    assert (first | second).isdisjoint(held_out)
    assert sorted(first | second) == entry["patient_ids"]
