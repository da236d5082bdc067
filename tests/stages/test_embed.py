"""`--mode=embed` on the built-in synthetic build: the features, ids and labels it writes, the map
and the projector files, for a pretraining folder (no head) and a fine-tuning folder."""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from matplotlib import image as mpimg

from data_prep import synthetic
from simclr_med.checkpoints import native
from simclr_med.config import EmbedConfig
from simclr_med.data import preprocess
from simclr_med.data.reader import open_build, read_images
from simclr_med.errors import UserError
from simclr_med.evaluation import embedding_map
from simclr_med.models.simclr import SimCLRModel
from simclr_med.stages import embed, linear_eval
from tests.tiny import TINY

SPLIT = "test"
REPO = pathlib.Path(__file__).resolve().parents[2]


def _model_folder(folder, num_classes: int, seed: int) -> None:
    """A model folder as training leaves one: model_config.json and a checkpoint."""
    keras.utils.set_random_seed(seed)
    names = synthetic.CLASSES if num_classes else ()
    native.ModelRecord(TINY, num_classes, "multiclass" if num_classes else "", names,
                       "finetune" if num_classes else "pretrain").save(str(folder))
    model = SimCLRModel(TINY, num_classes)
    model.build_for_image_size()
    tf.train.CheckpointManager(native.make_checkpoint(model), str(folder), 1).save()


def _run(folder, source, **changes):
    model, weights, step = linear_eval.load_encoder(str(folder), "", TINY)
    config = dataclasses.replace(EmbedConfig(eval_split=SPLIT, method="pca"), **changes)
    result = embed.embed(model, source, config, config.output_dir or str(folder),
                         checkpoint=weights, global_step=step)
    return model, result


def _reference_features(model, source) -> dict[str, tuple[np.ndarray, int, str]]:
    """{image_id: (final_avg_pool, class_id, case_id)} of every image of the split, from the
    records, each image preprocessed on its own."""
    images = list(read_images(source, SPLIT))
    pixels = tf.stack([preprocess.preprocess_for_eval(image["encoded"], TINY.image_size,
                                                      TINY.eval_crop_proportion)
                       for image in images])
    features = model(pixels, training=False)["final_avg_pool"].numpy()
    return {image["image_id"].numpy().decode(): (feature, int(image["class_id"]),
                                                 image["case_id"].numpy().decode())
            for image, feature in zip(images, features)}


@pytest.fixture(scope="module")
def source(synthetic_build):
    return open_build(str(synthetic_build))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, source):
    folder = tmp_path_factory.mktemp("embed_pretrain")
    _model_folder(folder, 0, seed=1)
    model, result = _run(folder, source)
    return folder, model, result


def test_npz_holds_each_image_once_with_its_ids_labels_and_features(pretrained, source):
    folder, model, result = pretrained
    data = np.load(folder / f"embeddings_{SPLIT}.npz")
    n = source.num_examples(SPLIT)
    assert result.num_images == n == len(data["image_id"]) == 142
    assert data["final_avg_pool"].dtype == np.float32
    assert data["final_avg_pool"].shape == (n, model.resnet.output_dim)
    assert list(data["class_names"]) == list(synthetic.CLASSES)
    reference = _reference_features(model, source)
    assert sorted(data["image_id"]) == sorted(reference)
    for i, image_id in enumerate(data["image_id"]):
        feature, class_id, case_id = reference[image_id]
        np.testing.assert_allclose(data["final_avg_pool"][i], feature, rtol=1e-4, atol=1e-5)
        assert data["class_id"][i] == class_id and data["case_id"][i] == case_id
    assert data["map_xy"].shape == (n, 2) and str(data["map_method"]) == "pca"


def test_map_and_projector_files_are_valid(pretrained):
    folder, _, result = pretrained
    n = result.num_images
    png = mpimg.imread(str(folder / f"embedding_map_{SPLIT}.png"))
    assert png.ndim == 3 and min(png.shape[:2]) > 200
    projector = folder / f"projector_{SPLIT}"
    rows = (projector / "metadata.tsv").read_text().splitlines()
    assert len(rows) == n + 1 and rows[0] == "image_id\tpatient_id\tcase_id\tlabel\tmap_group"
    side = int(np.ceil(np.sqrt(n)))
    sprite = mpimg.imread(str(projector / "sprite.png"))
    assert sprite.shape[:2] == (side * 64, side * 64)
    assert "sprite.png" in (projector / "projector_config.pbtxt").read_text()
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(projector)))
    data = np.load(folder / f"embeddings_{SPLIT}.npz")
    np.testing.assert_array_equal(
        reader.get_tensor("embedding/.ATTRIBUTES/VARIABLE_VALUE"), data["final_avg_pool"])
    assert [row.split("\t")[0] for row in rows[1:]] == list(data["image_id"])


def test_a_capped_map_holds_whole_patients_drawn_with_the_seed(pretrained, tmp_path_factory,
                                                               source):
    """A fine-tuning folder (with a head) and --embed_max_images=60: the patients
    `patient_subset` draws from the split with the seed, all their images, in reading order."""
    folder = tmp_path_factory.mktemp("embed_finetune")
    _model_folder(folder, len(synthetic.CLASSES), seed=2)
    _, result = _run(folder, source, max_images=60, seed=5)
    data = np.load(folder / f"embeddings_{SPLIT}.npz")
    everything = np.load(pretrained[0] / f"embeddings_{SPLIT}.npz")
    keep = embedding_map.patient_subset(everything["patient_id"], 60, seed=5)
    assert 50 <= keep.sum() <= 60 and not keep.all()
    assert list(data["image_id"]) == list(everything["image_id"][keep])
    assert result.num_images == keep.sum()
    assert result.num_patients == len(set(data["patient_id"])) < result.num_split_patients


def test_a_missing_split_or_model_folder_is_the_users_error(pretrained, source, tmp_path):
    folder, model, _ = pretrained
    with pytest.raises(UserError, match="no images count for split 'nonexistent'"):
        embed.embed(model, source, EmbedConfig(eval_split="nonexistent"), str(tmp_path),
                    checkpoint="", global_step=0)
    with pytest.raises(UserError, match="not a simclr-med model folder"):
        linear_eval.load_encoder(str(tmp_path / "missing"), "", TINY)


@pytest.mark.slow  # about 20-35 s on 2 shared cores, the NIH build included
def test_a_multilabel_build_is_coloured_by_the_labels_rule(nih_build, tmp_path):
    """NIH (multi-label, patients with follow-ups): labels, masks and names in the npz, every
    point in the group of its labels, the metadata naming each image's positive labels."""
    source = open_build(str(nih_build))
    _model_folder(tmp_path, 0, seed=3)
    _, result = _run(tmp_path, source, max_images=100, label="Effusion")
    data = np.load(tmp_path / f"embeddings_{SPLIT}.npz")
    n, names = result.num_images, list(data["label_names"])
    assert n <= 100 and data["labels"].shape == data["label_mask"].shape == (n, len(names))
    assert result.num_patients < n  # whole patients, several images each
    effusion = data["labels"][:, names.index("Effusion")] > 0.5
    assert np.array_equal(data["map_group"] == 0, effusion)
    rows = (tmp_path / f"projector_{SPLIT}" / "metadata.tsv").read_text().splitlines()[1:]
    for row, labels in zip(rows, data["labels"]):
        positive = [name for name, value in zip(names, labels) if value > 0.5]
        assert row.split("\t")[3] == ("|".join(positive) or "none")


@pytest.mark.subprocess
def test_run_py_names_a_missing_model_folder_in_one_line_and_creates_nothing(synthetic_build,
                                                                             tmp_path):
    missing = tmp_path / "no_such_run"
    completed = subprocess.run(
        [sys.executable, "run.py", "--mode=embed", f"--model_dir={missing}",
         f"--data_dir={synthetic_build}", "--eval_split=test"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2, completed.stderr
    last = completed.stderr.splitlines()[-1]  # (TensorFlow's notices above: the log level is set)
    assert last.startswith("run.py: error: ") and "is not a simclr-med model folder" in last
    assert not missing.exists()
