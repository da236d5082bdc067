"""--tfds_dataset: SimCLR pretraining, fine-tuning and evaluation read a TFDS data set
(cifar10 mocked by `tfds.testing.mock_data`: random images with the real features, no download),
each image with its own label."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_med.config import AugmentConfig, OptimConfig, PretrainConfig, TrainConfig
from simclr_med.data import augment
from simclr_med.data.pretrain_input import PairSpec, pair_dataset
from simclr_med.data.reader import open_tfds
from simclr_med.errors import UserError
from simclr_med.stages import evaluate
from simclr_med.stages.finetune import FinetuneConfig, finetune
from simclr_med.stages.pretrain import pretrain
from tests.tiny import TINY

ADAM = OptimConfig(optimizer="adam", learning_rate=1e-3, warmup_epochs=0)


@pytest.fixture
def cifar10():
    with tfds.testing.mock_data(num_examples=40):
        source = open_tfds("cifar10")
        # The mock has no split metadata (a prepared data set has): give its real sizes.
        counts = {split: {"images": 40} for split in ("train", "test")}
        yield dataclasses.replace(source, info=dataclasses.replace(source.info,
                                                                   split_counts=counts))


def _train(model_dir, steps: int) -> TrainConfig:
    return TrainConfig(model_dir=str(model_dir), train_batch_size=8, train_steps=steps,
                       steps_per_loop=2, checkpoint_steps=2)


def test_simclr_pretraining_on_a_tfds_data_set(cifar10, tmp_path):
    summary = pretrain(TINY, OptimConfig(), augment.preset("simclr"), cifar10,
                       _train(tmp_path, 4), PretrainConfig(), tf.distribute.get_strategy())
    assert summary["global_step"] == 4 and summary["num_train_examples"] == 40
    assert tf.math.is_finite(summary["loss"])


def _mock_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The mock's images and labels, in file order, read by TFDS itself."""
    examples = list(tfds.as_numpy(tfds.load("cifar10", split=split)))
    return (np.stack([e["image"] for e in examples]), np.array([e["label"] for e in examples]))


def test_pairs_of_a_tfds_data_set_are_two_views_of_one_image_with_its_label(cifar10):
    """Without augmentation both views are the image itself: an epoch holds every training
    image once, each with its own label."""
    identity = AugmentConfig(crop=False, flip=False, color_jitter_strength=0.0,
                             grayscale_prob=0.0, blur_prob=0.0)
    spec = PairSpec(use_micle=False, augment=identity, image_size=32)
    epoch = next(iter(pair_dataset(cifar10, "train", spec, 40)))
    views = np.round(epoch["views"].numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(views[:, 0], views[:, 1])
    images, labels = _mock_split("train")
    position = {image.tobytes(): i for i, image in enumerate(images)}
    assert len(position) == 40  # distinct mock images
    found = [position[view.tobytes()] for view in views[:, 0]]
    assert sorted(found) == list(range(40))
    np.testing.assert_array_equal(epoch["class_id"].numpy()[:, 0], labels[found])


def test_micle_on_a_tfds_data_set_is_a_clear_error(cifar10):
    spec = PairSpec(use_micle=True, augment=augment.preset("simclr"), image_size=32)
    with pytest.raises(UserError, match="MICLe needs case bags"):
        pair_dataset(cifar10, "train", spec, 8)


def test_fine_tuning_and_evaluation_on_a_tfds_data_set(cifar10, tmp_path):
    summary = finetune(TINY, ADAM, augment.preset("finetune"), cifar10, _train(tmp_path, 4),
                       FinetuneConfig(validation_split="test"), tf.distribute.get_strategy())
    assert summary["global_step"] == 4 and summary["best_metric"] == "auc_macro"
    result = evaluate.evaluate(str(tmp_path), cifar10, "test",
                               evaluate.EvalConfig(bootstrap_samples=50, plots=False))
    assert result["num_images"] == 40 and result["num_patients"] == 40  # an image is a patient
    # The predictions carry the test images' own labels, in TFDS's order, and top-1 is theirs.
    with open(tmp_path / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    names = cifar10.info.names
    _, labels = _mock_split("test")
    assert [row["label"] for row in rows] == [names[c] for c in labels]
    probs = np.array([[float(row[f"prob/{n}"]) for n in names] for row in rows])
    assert result["metrics"]["top1_accuracy"]["value"] == pytest.approx(
        np.mean(probs.argmax(axis=1) == labels))
