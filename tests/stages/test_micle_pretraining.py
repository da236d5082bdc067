"""MICLe on the real NIH ChestX-ray14 and HAM10000 builds: its pairs, a short pretraining that
lowers the loss, and `run.py --mode=pretrain --use_micle` checkpointing and resuming."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf

from simclr_med.checkpoints.initial_weights import load_init_weights
from simclr_med.config import OptimConfig, PretrainConfig, TrainConfig
from simclr_med.data import augment
from simclr_med.data.pretrain_input import PairSpec, pair_dataset
from simclr_med.data.reader import Source, open_build, read_cases
from simclr_med.models.simclr import SimCLRModel
from simclr_med.stages.pretrain import pretrain
from simclr_med.training import contrastive_loss
from tests.tiny import tiny

REPO = pathlib.Path(__file__).resolve().parents[2]
# The paper's augmentation per data set: chest X-ray set for NIH, SimCLR's for dermatology.
REAL_SETS = [("nih_build", "cxr"), ("ham_build", "simclr")]


def _images_by_case(source: Source, split: str) -> dict[str, list[str]]:
    cases = read_cases(source, split)
    return {c["case_id"].numpy().decode(): [i.decode() for i in c["image_id"].numpy()]
            for c in cases}


@pytest.mark.parametrize("build, preset", REAL_SETS)
def test_pairs_are_two_images_of_one_case_different_when_it_has_several(build, preset, request):
    source = open_build(str(request.getfixturevalue(build)))
    by_case = _images_by_case(source, "train")
    spec = PairSpec(use_micle=True, augment=augment.preset(preset), image_size=32, keep_ids=True)
    epoch = next(iter(pair_dataset(source, "train", spec, len(by_case))))
    cases = [c.decode() for c in epoch["case_id"].numpy()]
    assert sorted(cases) == sorted(by_case)  # every case once per epoch
    for case, (first, second) in zip(cases, epoch["image_id"].numpy()):
        images = by_case[case]
        assert first.decode() in images and second.decode() in images
        assert (first != second) == (len(images) > 1), (case, first, second)


# A short pretraining that reliably learns (measured over seeds in the MICLe report): at the
# SimCLR temperature 0.1 the loss on held-out pairs falls within 60 steps; at 0.5 it barely moves.
TINY = tiny(image_size=16)
TEMPERATURE = 0.1
STEPS = 60


def _pretrain_checkpoints(source: Source, preset: str, model_dir: pathlib.Path,
                          seed: int) -> None:
    """MICLe pretraining to STEPS, keeping the checkpoints of step 2 and of the last step."""
    pretrain(TINY, OptimConfig(optimizer="adam", learning_rate=0.008, warmup_epochs=0,
                               weight_decay=0.0),  # Adam at 1e-3 (0.008 x 32 / 256)
             augment.preset(preset), source,
             TrainConfig(model_dir=str(model_dir), train_batch_size=32, train_steps=STEPS,
                         steps_per_loop=2, checkpoint_steps=2, keep_checkpoint_max=STEPS,
                         seed=seed),
             PretrainConfig(temperature=TEMPERATURE, use_micle=True,
                            lineareval_while_pretraining=False),
             tf.distribute.get_strategy())


def held_out_losses(source: Source, preset: str, model_dir: pathlib.Path,
                    steps: tuple[int, ...]) -> list[float]:
    """NT-Xent of each checkpoint on the same 8 batches of validation MICLe pairs (fixed seed),
    batch-norm on batch statistics as in training."""
    spec = PairSpec(use_micle=True, augment=augment.preset(preset), image_size=TINY.image_size,
                    seed=123)
    pairs_per_batch = min(64, source.num_examples("validation", "cases"))
    batches = [tf.concat([b["views"][:, 0], b["views"][:, 1]], axis=0)
               for b in pair_dataset(source, "validation", spec, pairs_per_batch).take(8)]
    model = SimCLRModel(TINY)
    model.build_for_image_size()
    losses = []
    for step in steps:
        load_init_weights(model, str(model_dir / f"ckpt-{step}"))
        per_batch = []
        for images in batches:
            z1, z2 = tf.split(model(images, training=True)["proj_head_output"], 2)
            per_batch.append(tf.reduce_mean(contrastive_loss.nt_xent(z1, z2, TEMPERATURE).per_pair_loss))
        losses.append(float(tf.reduce_mean(per_batch)))
    return losses


@pytest.mark.slow  # about 30 s per data set on 2 idle cores (60 steps, one trace)
@pytest.mark.parametrize("build, preset", REAL_SETS)
def test_short_micle_pretraining_lowers_the_held_out_loss(build, preset, request, tmp_path):
    source = open_build(str(request.getfixturevalue(build)))
    _pretrain_checkpoints(source, preset, tmp_path, seed=0)
    early, late = held_out_losses(source, preset, tmp_path, (2, STEPS))
    assert late < early - 0.1, (early, late)  # seeds 0-4 gave margins of 0.5 to 1.8


def _run_py(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=REPO,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return output


@pytest.mark.subprocess
@pytest.mark.slow  # four run.py processes, two at a time: about a minute on 2 idle cores
def test_run_py_micle_pretraining_checkpoints_and_resumes(nih_build, ham_build, tmp_path):
    """`run.py --mode=pretrain --use_micle` with --augmentation=cxr on the NIH build and
    --augmentation=simclr on the HAM10000 build; run again with more steps: it resumes."""
    tiny = ["--mode=pretrain", "--use_micle", "--resnet_depth=18", "--width_multiplier=0.25",
            "--image_size=32", "--train_batch_size=16", "--optimizer=adam",
            "--learning_rate=0.008", "--warmup_epochs=0", "--temperature=0.5",
            "--steps_per_loop=1"]
    runs = {tmp_path / "nih": [f"--data_dir={nih_build}", "--augmentation=cxr"],
            tmp_path / "ham": [f"--data_dir={ham_build}", "--augmentation=simclr"]}
    for steps, resumed_from in ((2, 0), (4, 2)):
        processes = {model_dir: _run_py(*tiny, *args, f"--model_dir={model_dir}",
                                        f"--train_steps={steps}")
                     for model_dir, args in runs.items()}
        for model_dir, process in processes.items():
            assert f"pretraining done: step {steps}" in _finish(process)
            summary = json.loads((model_dir / "summary.json").read_text())
            assert summary["global_step"] == steps
            assert summary["resumed_from_step"] == resumed_from
            assert summary["use_micle"] and summary["example_unit"] == "case"
            assert (model_dir / f"ckpt-{steps}.index").exists()
    for model_dir, args in runs.items():
        flags = json.loads((model_dir / "flags.json").read_text())
        assert flags["use_micle"] and f"--augmentation={flags['augmentation']}" in args
