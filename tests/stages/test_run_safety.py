"""No run loses what it wrote: finished and mismatching reruns touch nothing, every invocation
keeps its flags, modes other than pretraining need data, unlabelled validation splits, best.json
of another metric, a damaged latest checkpoint, and a resumed fine-tuning run's best checkpoint.

run.py's `main` runs in this process (a subprocess would cost TensorFlow's start-up each time);
the tiny pretraining folder is made once and copied by the tests that change it.
"""

from __future__ import annotations

import csv
import json
import logging
import pathlib
import shutil

import pytest
import tensorflow as tf
from absl import flags

import run
from data_prep import synthetic
from data_prep.build import build_dataset
from data_prep.config import BuildConfig
from simclr_med.checkpoints import trained_model
from simclr_med.config import DataConfig, OptimConfig, TrainConfig
from simclr_med.data import augment
from simclr_med.data.reader import open_build
from simclr_med.errors import UserError
from simclr_med.models.simclr import SimCLRModel
from simclr_med.stages import evaluate, linear_eval
from simclr_med.stages.finetune import FinetuneConfig, finetune
from tests.tiny import TINY

FLAGS = flags.FLAGS
TINY_MODEL = ["--resnet_depth=18", "--width_multiplier=0.25", "--image_size=32"]
TINY_PRETRAIN = TINY_MODEL + ["--train_batch_size=8", "--optimizer=adam", "--learning_rate=0.001",
                              "--learning_rate_scaling=sqrt", "--temperature=0.5",
                              "--train_steps=4", "--checkpoint_steps=2", "--steps_per_loop=2"]


def run_main(*args: str) -> None:
    """`python run.py ARGS`, in this process."""
    FLAGS.unparse_flags()
    try:
        FLAGS(["run.py", *args])
        run.main()
    finally:
        FLAGS.unparse_flags()


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    """Every file below `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def copy(folder: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


@pytest.fixture(scope="module")
def pretrained(synthetic_build, tmp_path_factory) -> tuple[pathlib.Path, list[str]]:
    """A pretraining folder at step 4 (checkpoints 2 and 4), and the command that made it."""
    model_dir = tmp_path_factory.mktemp("safety") / "pretrain"
    args = ["--mode=pretrain", f"--model_dir={model_dir}", f"--data_dir={synthetic_build}",
            *TINY_PRETRAIN]
    run_main(*args)
    return model_dir, args


def _with_model_dir(args: list[str], model_dir: pathlib.Path) -> list[str]:
    return [a for a in args if not a.startswith("--model_dir=")] + [f"--model_dir={model_dir}"]


def test_a_finished_pretraining_run_again_changes_no_file(pretrained, tmp_path, capsys):
    model_dir = copy(pretrained[0], tmp_path)
    before = snapshot(model_dir)
    assert any(name.startswith("events.out.tfevents") for name in before)
    run_main(*_with_model_dir(pretrained[1], model_dir))
    assert "pretraining already at step 4" in capsys.readouterr().out
    assert snapshot(model_dir) == before


def test_resuming_another_architecture_names_every_difference_and_touches_nothing(
        pretrained, tmp_path):
    model_dir = copy(pretrained[0], tmp_path)
    before = snapshot(model_dir)
    args = _with_model_dir(pretrained[1], model_dir) + [
        "--width_multiplier=0.5", "--num_proj_layers=2", "--train_steps=6"]
    with pytest.raises(UserError) as error:
        run_main(*args)
    assert "width_multiplier: checkpoint 0.25, requested 0.5" in str(error.value)
    assert "num_proj_layers: checkpoint 3, requested 2" in str(error.value)
    assert "resnet_depth" not in str(error.value)
    assert snapshot(model_dir) == before


def test_every_invocation_keeps_its_own_flag_record(pretrained, tmp_path, synthetic_build):
    model_dir = copy(pretrained[0], tmp_path)
    training_flags = (model_dir / "flags.json").read_bytes()
    run_main("--mode=eval", f"--model_dir={model_dir}", f"--data_dir={synthetic_build}",
             "--bootstrap_samples=10", "--noeval_plots")
    run_main("--mode=export", f"--model_dir={model_dir}", f"--export_dir={tmp_path / 'export'}")
    assert (model_dir / "flags.json").read_bytes() == training_flags
    assert json.loads(training_flags)["mode"] == "pretrain"
    for mode in ("eval", "export"):
        assert json.loads((model_dir / f"flags_{mode}.json").read_text())["mode"] == mode
    history = [json.loads(line) for line in
               (model_dir / "flags_history.jsonl").read_text().splitlines()]
    assert [(h["file"], h["flags"]["mode"]) for h in history] == [
        ("flags.json", "pretrain"), ("flags_eval.json", "eval"), ("flags_export.json", "export")]


@pytest.mark.parametrize("mode", ["eval", "linear_eval", "finetune", "train_then_eval"])
def test_modes_other_than_pretraining_refuse_to_run_without_data(mode, tmp_path):
    with pytest.raises(UserError, match=f"--mode={mode} needs a data set: give --data_dir"):
        run_main(f"--mode={mode}", f"--model_dir={tmp_path}", *TINY_MODEL)
    assert not list(tmp_path.iterdir())


def test_pretraining_without_data_says_it_uses_the_synthetic_set(synthetic_build, monkeypatch,
                                                                  caplog):
    monkeypatch.setenv("SIMCLR_MED_CACHE", str(synthetic_build.parents[1]))
    with caplog.at_level(logging.WARNING):
        source = run.open_source(DataConfig(), "pretrain")
    assert source.data_dir == synthetic.default_build()
    assert "SYNTHETIC DATA" in caplog.text and source.data_dir in caplog.text


# ---------------------------------------------------------------------------------------------
# A damaged latest checkpoint


def _zero_4kb_of_model_weights(prefix: pathlib.Path) -> pathlib.Path:
    """Zeroes 4 KB of the largest weight tensor of the model (which evaluation reads too, unlike
    the optimizer's slots) in the checkpoint's data file; returns the file."""
    reader = tf.train.load_checkpoint(str(prefix))
    shapes = reader.get_variable_to_shape_map()
    key = max((k for k in shapes if k.startswith("model/") and "OPTIMIZER_SLOT" not in k),
              key=lambda k: reader.get_tensor(k).size)
    (path,) = prefix.parent.glob(f"{prefix.name}.data-*")
    data = bytearray(path.read_bytes())
    start = bytes(data).index(reader.get_tensor(key).tobytes())
    data[start:start + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_latest_checkpoint_is_named_and_set_aside_and_training_resumes_before_it(
        pretrained, tmp_path, synthetic_build, caplog):
    model_dir = copy(pretrained[0], tmp_path)
    data_file = _zero_4kb_of_model_weights(model_dir / "ckpt-4")
    damaged = {p.name: p.read_bytes() for p in model_dir.glob("ckpt-4.*")}
    intact = {p.name: p.read_bytes() for p in model_dir.glob("ckpt-2.*")}

    # Evaluation does not pick another checkpoint by itself: it names the damaged file.
    before = snapshot(model_dir)
    with pytest.raises(UserError, match=f"{data_file} cannot be read .*Checksum does not match"):
        evaluate.evaluate(str(model_dir), open_build(str(synthetic_build)), "validation",
                          evaluate.EvalConfig(bootstrap_samples=10, plots=False))
    assert snapshot(model_dir) == before

    with caplog.at_level(logging.WARNING):
        run_main(*_with_model_dir(pretrained[1], model_dir))
    assert f"checkpoint {model_dir / 'ckpt-4'} is damaged: {data_file} cannot be read" in (
        caplog.text)
    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["global_step"] == 4
    (entry,) = summary["damaged_checkpoints"]
    assert entry["checkpoint"] == str(model_dir / "ckpt-4")
    assert "Checksum does not match" in entry["error"]
    # Nothing deleted: the damaged files under new names, the intact checkpoint as it was.
    assert {pathlib.Path(p).name: pathlib.Path(p).read_bytes() for p in entry["renamed_to"]} == {
        f"{name}.damaged": data for name, data in damaged.items()}
    assert {p.name: p.read_bytes() for p in model_dir.glob("ckpt-2.*")} == intact
    assert tf.train.latest_checkpoint(str(model_dir)) == str(model_dir / "ckpt-4")
    trained_model.restore(SimCLRModel(TINY, 4), str(model_dir / "ckpt-4"))  # the new one reads


# ---------------------------------------------------------------------------------------------
# Fine-tuning: best checkpoint across resumption, unlabelled validation split, another metric


def _finetune(build: pathlib.Path, model_dir: pathlib.Path, learning_rate: float = 1e-3,
              run_steps: int = 0, best_metric: str = "") -> dict:
    """8 steps of a linear head on a frozen tiny backbone: with learning rate 0 nothing changes,
    batch-norm statistics included, so validation values repeat exactly."""
    return finetune(
        TINY, OptimConfig(optimizer="adam", learning_rate=learning_rate,
                          learning_rate_scaling="sqrt", warmup_epochs=0),
        augment.preset("finetune"), open_build(str(build)),
        TrainConfig(model_dir=str(model_dir), train_batch_size=8, train_steps=8,
                    steps_per_loop=2, checkpoint_steps=2, run_steps=run_steps),
        FinetuneConfig(fine_tune_after_block=4, best_metric=best_metric, eval_batch_size=64),
        tf.distribute.get_strategy())


@pytest.fixture(scope="module")
def interrupted_finetune(synthetic_build, tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """A fine-tuning run stopped at step 4 of 8 (`run_steps`), with its best checkpoint."""
    model_dir = tmp_path_factory.mktemp("interrupted") / "finetune"
    summary = _finetune(synthetic_build, model_dir, run_steps=4)
    assert summary["global_step"] == 4 and summary["best_step"] in (2, 4)
    return model_dir, summary


def test_resumed_finetuning_keeps_the_best_checkpoint_and_the_value_to_beat(
        interrupted_finetune, synthetic_build, tmp_path, capsys):
    """Resumed with learning rate 0, validation repeats the step-4 value, which does not beat
    the best so far: best.json and best/ must stay as before the interruption."""
    model_dir = copy(interrupted_finetune[0], tmp_path)
    before = interrupted_finetune[1]
    best_before = snapshot(model_dir / "best")
    summary = _finetune(synthetic_build, model_dir, learning_rate=0.0)
    assert summary["resumed_from_step"] == 4 and summary["global_step"] == 8
    assert (summary["best_step"], summary["best_value"]) == (before["best_step"],
                                                             before["best_value"])
    assert snapshot(model_dir / "best") == best_before
    best_prefix = str(model_dir / trained_model.BEST_DIR / f"ckpt-{before['best_step']}")
    assert summary["best_checkpoint"] == summary["inference_checkpoint"] == best_prefix

    # Run again when finished: nothing changes, through run.py too.
    finished = snapshot(model_dir)
    assert _finetune(synthetic_build, model_dir, learning_rate=0.0)["nothing_to_do"]
    run_main("--mode=finetune", f"--model_dir={model_dir}", f"--data_dir={synthetic_build}",
             *TINY_MODEL, "--optimizer=adam", "--train_batch_size=8", "--train_steps=8",
             "--fine_tune_after_block=4")
    assert "fine-tuning already at step 8" in capsys.readouterr().out
    assert snapshot(model_dir) == finished


def test_best_json_of_another_metric_stops_the_run_before_it_writes(interrupted_finetune,
                                                                     synthetic_build, tmp_path):
    model_dir = copy(interrupted_finetune[0], tmp_path)
    before = snapshot(model_dir)
    with pytest.raises(UserError, match="best checkpoint by 'auc_macro' .* selects by "
                                        "'top1_accuracy': resume with --best_metric=auc_macro"):
        _finetune(synthetic_build, model_dir, best_metric="top1_accuracy")
    assert snapshot(model_dir) == before


@pytest.fixture(scope="module")
def unlabelled_validation_build(tmp_path_factory) -> pathlib.Path:
    """A small build whose validation images have no label (blank class)."""
    root = tmp_path_factory.mktemp("unlabelled")
    manifest = pathlib.Path(synthetic.write_image_folder(str(root / "raw"), num_cases=40,
                                                         image_size=32))
    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        number = int(row["case_id"][len("case"):])
        row["split"] = ["train"] * 6 + ["validation"] * 2 + ["test"] * 2
        row["split"] = row["split"][number % 10]
        if row["split"] == "validation":
            row["label"] = ""
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    build_dataset(BuildConfig(
        format="generic", manifests=(str(manifest),), image_root=str(root / "raw"),
        output_dir=str(root / "build"), image_id_column="image_id", case_column="case_id",
        patient_column="patient_id", label_column="label", classes=synthetic.CLASSES,
        split_column="split", num_workers=1, progress=False))
    return root / "build"


def test_finetuning_with_an_unlabelled_validation_split_says_so_and_selects_nothing(
        unlabelled_validation_build, tmp_path, caplog):
    assert open_build(str(unlabelled_validation_build)).num_examples("validation") > 0
    with caplog.at_level(logging.WARNING):
        summary = finetune(
            TINY, OptimConfig(optimizer="adam", learning_rate=1e-3), augment.preset("finetune"),
            open_build(str(unlabelled_validation_build)),
            TrainConfig(model_dir=str(tmp_path), train_batch_size=8, train_steps=2,
                        steps_per_loop=2, checkpoint_steps=2),
            FinetuneConfig(eval_batch_size=64), tf.distribute.get_strategy())
    assert "none of them has a label" in summary["no_best_reason"]
    assert "none of them has a label, so no best checkpoint is selected" in caplog.text
    assert summary["best_checkpoint"] is None and not (tmp_path / trained_model.BEST_DIR).exists()
    assert summary["inference_checkpoint"] == str(tmp_path / "ckpt-2")


def test_linear_evaluation_and_the_knn_monitor_refuse_an_unlabelled_split(
        unlabelled_validation_build, tmp_path):
    source = open_build(str(unlabelled_validation_build))
    config = linear_eval.LinearEvalConfig(eval_split="validation")
    model = SimCLRModel(TINY)
    model.build_for_image_size()
    expected = "needs labelled images, but split 'validation' has .* none of them has a label"
    with pytest.raises(UserError, match=expected):
        linear_eval.linear_eval(model, source, config, evaluate.EvalConfig(), str(tmp_path),
                                checkpoint="none", global_step=0)
    with pytest.raises(UserError, match=expected):
        linear_eval.KnnMonitor(source, config)
    assert not list(tmp_path.iterdir())
