"""Embedding maps of a model's features on one split: see what the encoder learned.

Any model folder works (a pretraining run without a head, a fine-tuning run, a convert_checkpoint
output; or weights given by `--init_checkpoint`): `linear_eval.load_encoder` loads the encoder.
The `final_avg_pool` features of the split's images (evaluation preprocessing, as
`--mode=eval` sees them) are written with ids and labels, projected to 2-D and drawn, and laid out
for TensorBoard's projector. At most `EmbedConfig.max_images` images are used: whole patients,
drawn with the seed, so the cases of a patient stay together on the map.

Files (into `EmbedConfig.output_dir`, default the model folder): `embeddings_<split>.npz`,
`embedding_map_<split>.png`, `projector_<split>/`.
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
import tensorflow as tf
from absl import logging

from simclr_med.config import EmbedConfig
from simclr_med.data import schema
from simclr_med.data.finetune_input import evaluation_dataset, image_ids
from simclr_med.data.integrity import names_damaged_shards
from simclr_med.data.reader import Source
from simclr_med.errors import UserError
from simclr_med.evaluation import embedding_map
from simclr_med.models.simclr import SimCLRModel
from simclr_med.stages import evaluate

ENDPOINT = "final_avg_pool"


@dataclasses.dataclass(frozen=True)
class EmbedResult:
    num_images: int  # on the map
    num_split_images: int
    num_patients: int
    num_split_patients: int
    method: str  # the projection used (auto resolved)
    paths: dict[str, str]  # npz, map, projector


def _label_text(task: str, names: tuple[str, ...], truth: dict[str, np.ndarray]) -> list[str]:
    """Each image's labels for the projector's metadata: its class, or its positive labels."""
    if task == schema.MULTICLASS:
        return [names[c] if c >= 0 else "unlabelled" for c in truth["class_id"]]
    positive = (truth["labels"] > 0.5) & (truth["label_mask"] > 0)
    return ["|".join(n for n, p in zip(names, row) if p) or "none" for row in positive]


def _thumbnails(dataset: tf.data.Dataset, size: int) -> np.ndarray:
    """[N, size, size, 3] uint8 of the evaluation images, in reading order."""
    small = dataset.map(lambda batch: tf.image.convert_image_dtype(
        tf.image.resize(batch["image"], [size, size], antialias=True), tf.uint8, saturate=True))
    return np.concatenate([batch.numpy() for batch in small])


@names_damaged_shards
def embed(model: SimCLRModel, source: Source, config: EmbedConfig, output_dir: str, *,
          checkpoint: str, global_step: int) -> EmbedResult:
    """Writes the embedding files of `config.eval_split` into `output_dir`."""
    split = config.eval_split
    if not source.num_examples(split):
        raise UserError(f"split {split!r} of {source.data_dir or source.tfds_name} holds no "
                        "images")
    ids = image_ids(source, split)
    keep = embedding_map.patient_subset(ids["patient_id"], config.max_images, config.seed)
    patients = np.unique(ids["patient_id"][keep])
    num_split_patients = len(np.unique(ids["patient_id"]))
    logging.info("embedding map of %d of the %d images (%d of %d patients) of split %r "
                 "(--embed_max_images=%d)", keep.sum(), len(keep), len(patients),
                 num_split_patients, split, config.max_images)
    method = embedding_map.resolve_method(config.method)
    dataset = evaluation_dataset(source, split, model.config.image_size,
                                 model.config.eval_crop_proportion, config.batch_size,
                                 patients=None if keep.all() else patients.tolist())
    predicted = evaluate.Predictor(model, (ENDPOINT,))(dataset)
    if not np.array_equal(predicted.image_id, ids["image_id"][keep]):
        raise RuntimeError("the images read for the features are not those of the id pass")
    features = predicted.outputs[ENDPOINT]
    info = source.info
    xy = embedding_map.project(features, method, config.seed)
    colours = embedding_map.colouring(info.task, info.names, predicted.truth, config.label)
    case_id = ids["case_id"][keep] if "case_id" in ids else None
    lines = embedding_map.case_lines(case_id, config.seed) if case_id is not None else []

    tf.io.gfile.makedirs(output_dir)
    paths = {"npz": os.path.join(output_dir, f"embeddings_{split}.npz"),
             "map": os.path.join(output_dir, f"embedding_map_{split}.png"),
             "projector": os.path.join(output_dir, f"projector_{split}")}
    names_key = "class_names" if info.task == schema.MULTICLASS else "label_names"
    arrays = {ENDPOINT: features, "image_id": predicted.image_id,
              "patient_id": predicted.patient_id, **predicted.truth,
              names_key: np.asarray(info.names, dtype=str), "map_xy": xy,
              "map_method": np.asarray(method), "map_group": colours.group,
              "map_group_names": np.asarray(colours.names, dtype=str),
              "checkpoint": np.asarray(checkpoint), "global_step": np.asarray(global_step)}
    if case_id is not None:
        arrays["case_id"] = case_id
    buffer = io.BytesIO()  # np.savez seeks, which a GFile cannot
    np.savez(buffer, **arrays)
    with tf.io.gfile.GFile(paths["npz"], "wb") as f:
        f.write(buffer.getvalue())
    title = (f"{evaluate.data_title(source, split)}; weights {os.path.basename(checkpoint)} "
             f"(step {global_step})")
    embedding_map.save_figure(embedding_map.map_figure(xy, colours, lines, method, title),
                              paths["map"])
    metadata = {"image_id": predicted.image_id, "patient_id": predicted.patient_id}
    if case_id is not None:
        metadata["case_id"] = case_id
    metadata["label"] = _label_text(info.task, tuple(info.names), predicted.truth)
    metadata["map_group"] = [colours.names[g] for g in colours.group]
    thumbnails = _thumbnails(dataset, embedding_map.thumbnail_size(len(features)))
    embedding_map.write_projector(paths["projector"], features, metadata, thumbnails)
    return EmbedResult(len(features), len(keep), len(patients), num_split_patients, method,
                       paths)
