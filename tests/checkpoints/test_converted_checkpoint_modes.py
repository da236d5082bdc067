"""A convert_checkpoint output serves every mode a pretraining folder serves: `run.py --mode=export`
(features equal to the reference SimCLR code's own outputs, expected.npz), linear evaluation, and
evaluation of its supervised head, although its checkpoint holds no training step.

The smallest reference fixture (ResNet-18, CIFAR stem) keeps this cheap: the ImageNet-stem fixtures
take the same code path (their conversion is checked in tests/checkpoints/test_official.py).
"""

from __future__ import annotations

import csv
import io
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import special

from simclr_med.checkpoints import official as rc
from simclr_med.checkpoints.native import ModelRecord
from simclr_med.data.reader import open_build, read_images
from simclr_med.errors import UserError
from simclr_med.stages import evaluate, linear_eval

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = "r18_w025_cifar"
NUM_CLASSES = 10  # the fixture's supervised head
EVAL = evaluate.EvalConfig(bootstrap_samples=10, plots=False)


def _close_to_reference(actual: np.ndarray, expected: np.ndarray) -> None:
    """Within 1e-5 of the tensor's largest value (the reference's own SavedModel differs from its
    checkpoint by up to 6e-7 of it)."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.fixture(scope="module")
def fixture_dir(simclr_tf2_fixtures) -> pathlib.Path:
    return simclr_tf2_fixtures / FIXTURE


@pytest.fixture(scope="module")
def converted(fixture_dir, tmp_path_factory) -> pathlib.Path:
    """What `python -m simclr_med.convert_checkpoint --source=<fixture>` writes."""
    output_dir = tmp_path_factory.mktemp("converted") / "model"
    rc.convert_reference_checkpoint(str(fixture_dir), str(output_dir))
    return output_dir


@pytest.fixture(scope="module")
def exported(converted, tmp_path_factory) -> tuple[pathlib.Path, str]:
    """`run.py --mode=export` of the converted folder: the export folder and run.py's stdout."""
    export_dir = tmp_path_factory.mktemp("converted_export")
    completed = subprocess.run(
        [sys.executable, "run.py", "--mode=export", f"--model_dir={converted}",
         f"--export_dir={export_dir}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return export_dir, completed.stdout


@pytest.mark.subprocess
def test_export_gives_the_reference_features(exported, fixture_dir):
    export_dir, stdout = exported
    assert "(step 0)" in stdout  # a converted checkpoint has no training step
    expected = np.load(fixture_dir / "expected.npz")
    features = tf.saved_model.load(str(export_dir / "features"))
    outputs = features(tf.constant(np.load(fixture_dir / "inputs.npy")), trainable=False)
    assert sorted(outputs) == sorted(set(expected.files) - {"logits_sup"})
    for key, value in outputs.items():
        _close_to_reference(value.numpy(), expected[key])


@pytest.mark.subprocess
def test_export_serves_the_reference_head(exported, fixture_dir):
    """The head's classes have no names: served as 0..9, softmax of the reference's logits."""
    serving = tf.saved_model.load(str(exported[0] / "serving"))
    assert [name.decode() for name in serving.class_names.numpy()] == list(
        map(str, range(NUM_CLASSES)))
    served = serving.signatures["serving_preprocessed"](
        images=tf.constant(np.load(fixture_dir / "inputs.npy")))["probabilities"].numpy()
    logits = np.load(fixture_dir / "expected.npz")["logits_sup"]
    np.testing.assert_allclose(served, special.softmax(logits, axis=1), rtol=0, atol=1e-5)


def test_linear_evaluation_of_the_converted_encoder(converted, fixture_dir, synthetic_build,
                                                    tmp_path):
    record = ModelRecord.load(str(converted))
    model, checkpoint, step = linear_eval.load_encoder(str(converted), "", record.model)
    assert step == 0
    expected = np.load(fixture_dir / "expected.npz")
    _close_to_reference(model(np.load(fixture_dir / "inputs.npy"))["final_avg_pool"].numpy(),
                        expected["final_avg_pool"])
    result = linear_eval.linear_eval(
        model, open_build(str(synthetic_build)), linear_eval.LinearEvalConfig(max_images=200),
        evaluate.EvalConfig(bootstrap_samples=10, plots=False, output_dir=str(tmp_path)),
        str(converted), checkpoint=checkpoint, global_step=step)
    assert result["global_step"] == 0 and result["num_train_images"] == 200
    assert 0.0 <= result["metrics"]["top1_accuracy"]["value"] <= 1.0
    assert (tmp_path / "linear_eval_validation.json").exists()


def _ten_class_build(root: pathlib.Path) -> pathlib.Path:
    """A data_prep build of 40 random 32 px PNGs, one patient each, classes c0..c9 in order."""
    from data_prep.build import build_dataset
    from data_prep.config import BuildConfig

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = ["path,patient,label"]
    for i in range(40):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
        (root / "images" / f"{i}.png").write_bytes(buffer.getvalue())
        rows.append(f"images/{i}.png,p{i},c{i % NUM_CLASSES}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    build_dataset(BuildConfig(
        format="generic", manifests=(str(root / "manifest.csv"),), image_root=str(root),
        output_dir=str(root / "build"), case_column="patient", label_column="label",
        classes=tuple(f"c{k}" for k in range(NUM_CLASSES)), val_fraction=0.0, test_fraction=0.5,
        num_workers=1, progress=False))
    return root / "build"


@pytest.mark.subprocess
def test_evaluation_of_the_converted_head(converted, exported, tmp_path):
    """The unnamed classes are evaluated as the data set's classes in order; the probabilities are
    those the exported serving model gives the same image bytes."""
    source = open_build(str(_ten_class_build(tmp_path / "data")))
    result = evaluate.evaluate(str(converted), source, "test",
                               evaluate.EvalConfig(bootstrap_samples=10, plots=False,
                                                   output_dir=str(tmp_path)))
    assert result["global_step"] == 0 and result["num_images"] == source.num_examples("test") > 0
    assert result["evaluated"] == [f"c{k}" for k in range(NUM_CLASSES)]
    with open(tmp_path / "predictions_test.csv") as f:
        rows = {row["image_id"]: [float(row[f"prob/c{k}"]) for k in range(NUM_CLASSES)]
                for row in csv.DictReader(f)}
    serve = tf.saved_model.load(str(exported[0] / "serving")).signatures["serving_default"]
    batch = next(iter(read_images(source, "test").batch(100)))
    served = serve(images=batch["encoded"])["probabilities"].numpy()
    ids = batch["image_id"].numpy().astype(str)
    assert sorted(ids) == sorted(rows)
    np.testing.assert_allclose(np.array([rows[i] for i in ids]), served, rtol=0, atol=1e-5)


def test_evaluation_needs_as_many_classes_as_the_head(converted, synthetic_build):
    with pytest.raises(UserError, match="10 multiclass classes have no names.*has 4 multiclass"):
        evaluate.evaluate(str(converted), open_build(str(synthetic_build)), "test", EVAL)


def test_inference_computes_in_float32_after_bfloat16_training(converted, fixture_dir):
    """Evaluation after a bfloat16 training in the same process (the experiment's runner, a
    notebook) still gives the reference's float32 outputs, as the exported SavedModel does."""
    from simclr_med.checkpoints import trained_model
    from simclr_med.models import precision

    record = ModelRecord.load(str(converted))
    inputs = np.load(fixture_dir / "inputs.npy")
    expected = np.load(fixture_dir / "expected.npz")["final_avg_pool"]
    with precision.policy("mixed_bfloat16"):
        loaded = trained_model.load(str(converted), num_classes=0).model
        encoder, _, _ = linear_eval.load_encoder("", str(converted), record.model)
    for model in (loaded, encoder):
        features = model(inputs)["final_avg_pool"]
        assert features.dtype == tf.float32
        _close_to_reference(features.numpy(), expected)
