"""Fine-tuning: real HAM10000 and NIH runs beat chance, distribution-shift evaluation of the NIH
model on a CheXpert-format build, label-fraction subsets, frozen blocks.

The two real-data runs are module-scoped and shared by several tests (each run traces its own
training step: the expensive part).
"""

from __future__ import annotations

import csv
import json
import pathlib
import shutil
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from data_prep.build import build_dataset
from data_prep.config import BuildConfig
from simclr_med.checkpoints import native
from simclr_med.checkpoints import trained_model
from simclr_med.config import ModelConfig, OptimConfig, TrainConfig
from simclr_med.data import augment
from simclr_med.data.finetune_input import count_training_images, evaluation_dataset
from simclr_med.data.reader import open_build, read_cases
from simclr_med.errors import UserError
from simclr_med.models.simclr import SimCLRModel
from simclr_med.stages import evaluate
from simclr_med.stages.finetune import FinetuneConfig, finetune
from tests.tiny import tiny

# ResNet-18 at width 0.25 on 64 px inputs (ImageNet stem: 16x16 maps after it), Adam.
SMALL = tiny(image_size=64, eval_crop_proportion=1.0)
ADAM = OptimConfig(optimizer="adam", learning_rate=1e-3, learning_rate_scaling="sqrt",
                   warmup_epochs=0, weight_decay=1e-4)
CROP_AND_FLIP = augment.preset("finetune", crop_area_min=0.5)


def _finetune(build: pathlib.Path, model_dir: pathlib.Path, steps: int,
              config: FinetuneConfig = FinetuneConfig(), model: ModelConfig = SMALL,
              strategy: tf.distribute.Strategy | None = None, **train) -> dict:
    settings = dict(train_batch_size=32, train_steps=steps, steps_per_loop=10,
                    checkpoint_steps=steps // 2)
    settings.update(train)
    return finetune(model, ADAM, CROP_AND_FLIP, open_build(str(build)),
                    TrainConfig(model_dir=str(model_dir), **settings), config,
                    strategy or tf.distribute.get_strategy())


def _fine_tuned_and_evaluated(build: pathlib.Path, model_dir: pathlib.Path, steps: int):
    summary = _finetune(build, model_dir, steps)
    result = evaluate.evaluate(str(model_dir), open_build(str(build)), "test",
                               evaluate.EvalConfig(bootstrap_samples=1000))
    return summary, result


@pytest.fixture(scope="module")
def ham_run(ham_build, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("ham_finetune")
    return (model_dir, *_fine_tuned_and_evaluated(ham_build, model_dir, steps=40))


@pytest.fixture(scope="module")
def nih_run(nih_build, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("nih_finetune")
    return (model_dir, *_fine_tuned_and_evaluated(nih_build, model_dir, steps=120))


@pytest.mark.slow
def test_ham_model_beats_chance_with_its_interval_and_writes_every_file(ham_run):
    """Seeded and bit-reproducible; over seeds 0-4 the interval's lower end was 0.676-0.713 and
    top-1 0.32-0.40 (chance 1/7)."""
    model_dir, summary, result = ham_run
    auc = result["metrics"]["auc_macro"]
    assert auc["ci95"][0] > 0.5, auc
    assert result["metrics"]["top1_accuracy"]["value"] > 1 / 7
    assert {"top3_accuracy", "auc/mel", "auc/nv"} <= set(result["metrics"])
    assert result["split"] == "test" and result["num_images"] == 232
    assert result["num_patients"] == 206  # HAM10000 patients are lesions

    # Which checkpoint serves: the best by validation auc_macro, a complete model folder.
    best_dir = model_dir / trained_model.BEST_DIR
    assert summary["best_metric"] == "auc_macro"
    assert summary["best_checkpoint"] == summary["inference_checkpoint"] == result["checkpoint"]
    assert summary["best_checkpoint"].startswith(str(best_dir))
    assert result["global_step"] == summary["best_step"] == json.loads(
        (best_dir / "best.json").read_text())["step"]
    record = native.ModelRecord.load(str(best_dir))
    assert record == native.ModelRecord.load(str(model_dir))
    assert (record.source, record.task, record.num_classes) == ("finetune", "multiclass", 7)

    with open(model_dir / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 232 and list(rows[0])[:3] == ["image_id", "patient_id", "label"]
    probs = np.array([[float(r[f"prob/{c}"]) for c in record.class_names] for r in rows])
    assert np.allclose(probs.sum(axis=1), 1.0)
    for name in ("eval_test.json", "roc_test.png", "confusion_matrix_test.png", "reliability_test.png",
                 "summary.json"):
        assert (model_dir / name).exists(), name


@pytest.mark.slow
def test_nih_model_learns_its_training_labels_and_reports_test_auc(nih_run, nih_build):
    """120 steps of a width-0.25 ResNet-18 on ~700 NIH images fit the 14 findings (sigmoid loss
    with masks, real images) but cannot be shown to generalise: test mean AUCs of such runs
    scatter around 0.5-0.6 with intervals that include 0.5 (README, fine-tuning results). So the
    test asks for learning on the training split and for well-formed test metrics. The run is
    seeded and bit-reproducible; over seeds 0-3 the training mean AUC was 0.609-0.640 (its
    interval's lower end 0.528-0.584: too close to 0.5 to test on another machine's kernels)."""
    model_dir, summary, result = nih_run
    train = evaluate.evaluate(str(model_dir), open_build(str(nih_build)), "train",
                              evaluate.EvalConfig(bootstrap_samples=200))
    assert train["metrics"]["mean_auc"]["value"] > 0.55, train["metrics"]["mean_auc"]
    assert summary["best_metric"] == "mean_auc"
    low, high = result["metrics"]["mean_auc"]["ci95"]
    assert 0.0 <= low <= result["metrics"]["mean_auc"]["value"] <= high <= 1.0
    # Labels without a positive test image have no AUC: reported, not averaged.
    assert result["undefined_metrics"]
    for name in result["undefined_metrics"]:
        assert name not in result["metrics"]


def _nih_test_images_as_chexpert(nih_build: pathlib.Path, nih_folder: pathlib.Path,
                                 root: pathlib.Path) -> pathlib.Path:
    """The NIH build's test images re-labelled as a CheXpert `valid.csv` (competition labels,
    `Effusion` as `Pleural Effusion`; every Edema entry of odd follow-ups uncertain)."""
    cases = read_cases(open_build(str(nih_build)), "test")
    patients = {case["patient_id"].numpy().decode() for case in cases}
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "Atelectasis", "Cardiomegaly",
              "Consolidation", "Edema", "Pleural Effusion"]
    rows = []
    with open(nih_folder / "metadata.csv") as f:
        for row in csv.DictReader(f):
            if row["patient_id"] not in patients:
                continue
            follow_up = int(row["follow_up"])
            path = (f"CheXpert-v1.0-small/valid/patient{int(row['patient_id']):05d}/"
                    f"study{follow_up + 1}/view1_frontal.png")
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(nih_folder / row["path"], root / path)
            edema = "-1.0" if follow_up % 2 else row["Edema"]
            rows.append([path, row["patient_sex"], row["patient_age"], "Frontal",
                         row["view_position"], row["Atelectasis"], row["Cardiomegaly"],
                         row["Consolidation"], edema, row["Effusion"]])
    manifest = root / "valid.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return manifest


@pytest.mark.slow
def test_nih_model_evaluates_on_a_chexpert_build_through_the_shared_labels(
        nih_run, nih_build, real_data, ham_build, tmp_path):
    """No training: the NIH model is evaluated on another data set's format and label names.
    The images are the NIH test images, so the shared label's AUC equals the NIH evaluation's."""
    model_dir, _, nih_result = nih_run
    manifest = _nih_test_images_as_chexpert(nih_build, real_data / "nih_cxr14_64px",
                                            tmp_path / "chexpert")
    build = tmp_path / "chexpert_build"
    build_dataset(BuildConfig(format="chexpert", manifests=(str(manifest),),
                              image_root=str(tmp_path / "chexpert"), output_dir=str(build),
                              val_fraction=0.0, test_fraction=0.0, num_workers=1,
                              progress=False))
    checkpoints = sorted(p.name for p in model_dir.glob("ckpt-*"))
    result = evaluate.evaluate(str(model_dir), open_build(str(build)), "train",
                               evaluate.EvalConfig(bootstrap_samples=200,
                                                   output_dir=str(tmp_path / "shift")))
    assert sorted(p.name for p in model_dir.glob("ckpt-*")) == checkpoints  # nothing trained
    assert result["global_step"] == nih_result["global_step"]
    assert result["num_images"] == nih_result["num_images"]
    assert result["evaluated"] == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                                   "Pleural Effusion"]
    assert result["renamed"] == {"Pleural Effusion": "Effusion"}
    assert "Pleural_Thickening" in result["not_evaluated"]["model"]
    assert result["not_evaluated"]["data"] == []
    shifted = result["metrics"]["auc/Pleural Effusion"]["value"]
    # The same images, in other batches: on some CPUs (AVX2 without AVX-512, seen) oneDNN's
    # float32 kernels round differently by batch size, which can swap two near-tied scores
    # (measured: 7.6e-5 of AUC); another label's AUC differs by far more.
    assert shifted == pytest.approx(nih_result["metrics"]["auc/Effusion"]["value"], abs=1e-3)
    with open(tmp_path / "shift" / "predictions_train.csv") as f:
        edema = [row["label/Edema"] for row in csv.DictReader(f)]
    assert "" in edema and {"0", "1"} & set(edema)  # uncertain entries are masked, not negative
    assert "renamed (data -> model): {'Pleural Effusion': 'Effusion'}" in (
        evaluate.format_metrics_table(result))

    with pytest.raises(UserError, match="the model is multilabel .* the data set is multiclass"):
        evaluate.evaluate(str(model_dir), open_build(str(ham_build)), "test")


def _patients(source, split: str, fraction: float = 1.0) -> tuple[set, int]:
    dataset = evaluation_dataset(source, split, 8, 1.0, 512, label_fraction=fraction)
    ids = [p for batch in dataset for p in batch["patient_id"].numpy().tolist()]
    return set(ids), len(ids)


def test_label_fraction_subsets_hold_only_training_patients_and_are_nested(nih_build):
    source = open_build(str(nih_build))
    held_out = _patients(source, "validation")[0] | _patients(source, "test")[0]
    stored = json.loads((nih_build / "label_fractions.json").read_text())["fractions"]
    smaller: set = set()
    for fraction in (0.05, 0.1, 0.3, 0.5, 1.0):
        chosen, images = _patients(source, "train", fraction)
        assert chosen and chosen.isdisjoint(held_out), fraction
        assert smaller <= chosen, fraction  # nested
        assert count_training_images(source, "train", fraction) == images
        if str(fraction) in stored:
            assert sorted(chosen) == sorted(p.encode() for p in
                                            stored[str(fraction)]["patient_ids"])
        smaller = chosen


TINY = tiny(ft_proj_selector=1)


def _init_folder(folder: pathlib.Path) -> SimCLRModel:
    """A 'pretrained' model folder whose batch-norm statistics are far from their initial values,
    so that any update of them shows."""
    model = SimCLRModel(TINY)
    model.build_for_image_size()
    rng = np.random.default_rng(0)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=layer.moving_variance.shape))
    native.ModelRecord(TINY, source="pretrain").save(str(folder))
    tf.train.CheckpointManager(native.make_checkpoint(model), str(folder), 1).save()
    return model


def test_frozen_blocks_and_their_batch_norm_statistics_stay_bit_identical(synthetic_build,
                                                                          tmp_path,
                                                                          two_cpu_strategy):
    """fine_tune_after_block=2 on two replicas: the stem and block groups 1-2 keep the loaded
    weights and moving statistics bit for bit, and the projection layers above
    ft_proj_selector=1 (not loaded, unused) never change; the rest trains, statistics too."""
    initial = _init_folder(tmp_path / "init")
    strategy = two_cpu_strategy
    tuned_dir = tmp_path / "tuned"
    _finetune(synthetic_build, tuned_dir, steps=6, model=TINY, strategy=strategy,
              config=FinetuneConfig(fine_tune_after_block=2, validation_split=""),
              train_batch_size=16, checkpoint_steps=2, init_checkpoint=str(tmp_path / "init"))
    early = evaluate.load_classifier(str(tuned_dir), str(tuned_dir / "ckpt-2")).model
    tuned = evaluate.load_classifier(str(tuned_dir), "latest").model

    def parts(model: SimCLRModel) -> dict:
        head = model.projection_head.linear_layers
        return {"stem": model.resnet.stem, "group1": model.resnet.block_groups[0],
                "group2": model.resnet.block_groups[1], "group3": model.resnet.block_groups[2],
                "group4": model.resnet.block_groups[3], "head0": head[0], "head1": head[1],
                "head2": head[2], "supervised": model.supervised_head}

    def compare(before: SimCLRModel, after: SimCLRModel, name: str) -> tuple[list, list]:
        """(bit-identical per variable, bit-identical per moving statistic)."""
        pairs = [(v.path, v.numpy(), w.numpy())
                 for v, w in zip(parts(before)[name].variables, parts(after)[name].variables)]
        assert pairs and all(a.shape == b.shape for _, a, b in pairs)
        return ([a.tobytes() == b.tobytes() for _, a, b in pairs],
                [a.tobytes() == b.tobytes() for p, a, b in pairs if "moving" in p])

    for name in ("stem", "group1", "group2"):
        identical, statistics = compare(initial, tuned, name)
        assert all(identical) and statistics, name
    for name in ("head1", "head2"):
        assert all(compare(early, tuned, name)[0]), name
    for name in ("group3", "group4", "head0", "supervised"):
        identical, statistics = compare(early, tuned, name)
        assert not any(statistics), name  # batch norm in training mode: statistics move
        assert sum(identical) < len(identical) / 2, name


@pytest.mark.parametrize("task,names,metric", [
    ("multiclass", ("a", "b"), "ece"),
    ("multilabel", ("Effusion", "Hernia"), "mean_ece"),
    ("multilabel", ("Effusion", "Hernia"), "ece/Hernia")])
def test_a_calibration_error_is_no_best_metric(task, names, metric):
    """Lower is better for an ECE: choosing the best checkpoint by it is refused before any work."""
    source = types.SimpleNamespace(info=types.SimpleNamespace(task=task, names=list(names)),
                                   data_dir="unused")
    with pytest.raises(UserError, match=f"best_metric '{metric}' is not one of"):
        finetune(ModelConfig(), OptimConfig(), None, source, TrainConfig(model_dir="unused"),
                 FinetuneConfig(best_metric=metric), None)
