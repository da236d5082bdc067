"""--tfds_dataset: SimCLR pretraining, fine-tuning and evaluation read a TFDS data set
(cifar10 mocked by `tfds.testing.mock_data`: random images with the real features, no download)."""

from __future__ import annotations

import dataclasses

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_med import augment, evaluate
from simclr_med.config import ModelConfig, OptimConfig, PretrainConfig, TrainConfig
from simclr_med.dataset import open_tfds
from simclr_med.errors import UserError
from simclr_med.finetune import FinetuneConfig, finetune
from simclr_med.pretrain import pretrain
from simclr_med.pretrain_input import PairSpec, pair_dataset

TINY = ModelConfig(resnet_depth=18, width_multiplier=0.25, image_size=32)
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
    assert 0.0 <= result["metrics"]["top1_accuracy"]["value"] <= 1.0
