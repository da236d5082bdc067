"""SavedModel export (simclr_med.export), `run.py --mode=export` and `python -m simclr_med.predict`.

Every SavedModel is checked in a fresh Python process that imports only TensorFlow (importing
simclr_med there fails on purpose) against the Keras model's evaluation path in this process, on a
batch of real NIH PNGs (RGB and RGBA, 64 px), HAM JPEGs (220 px) and grayscale 8- and 16-bit PNGs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from simclr_med import augment, checkpointing, evaluate, export, paths, preprocess, schema
from simclr_med.config import ModelConfig, OptimConfig, TrainConfig
from simclr_med.dataset import open_build, read_images
from simclr_med.finetune import FinetuneConfig, finetune
from simclr_med.model import SimCLRModel

REPO = pathlib.Path(__file__).resolve().parents[1]
HAM_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
NIH_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema",
              "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening",
              "Pneumonia", "Pneumothorax")
NIH_IMAGES = ("00000231_013.png", "00000004_000.png", "00000058_000.png")  # RGB, RGBA, RGBA
HAM_IMAGES = ("ISIC_0024311.jpg", "ISIC_0024318.jpg")
BEST_STEP, LATEST_STEP = 10, 20
TOLERANCE = 1e-4

# The models under test: a fine-tuned multi-class model (with a best/ checkpoint beside the
# latest one), a fine-tuned multi-label model with the ImageNet stem and another crop, and a
# pretraining run without classes.
MODELS = {
    "multiclass": dict(config=ModelConfig(resnet_depth=18, width_multiplier=0.25, image_size=32),
                       task=schema.MULTICLASS, names=HAM_CLASSES, source="finetune"),
    "multilabel": dict(config=ModelConfig(resnet_depth=18, width_multiplier=0.25, image_size=40,
                                          eval_crop_proportion=0.8),
                       task=schema.MULTILABEL, names=NIH_LABELS, source="finetune"),
    "pretrain": dict(config=ModelConfig(resnet_depth=18, width_multiplier=0.25, image_size=32),
                     task="", names=(), source="pretrain"),
}

# Runs in a fresh interpreter: argv[1] is a JSON job, results go to job["out"] (.json and .npz).
FRESH_PROCESS_CHECKS = r'''
import json, sys
sys.modules["simclr_med"] = None  # importing this package must fail: the SavedModels stand alone
import numpy as np
import tensorflow as tf

job = json.loads(sys.argv[1])
batch = tf.constant([open(path, "rb").read() for path in job["images"]])
png = open(job["images"][0], "rb").read()
arrays, report = {}, {}


def error_of(call):
    try:
        call()
    except tf.errors.OpError as error:
        return {"type": type(error).__name__, "message": error.message}
    return None


for name, folder in job["serving"].items():
    model = tf.saved_model.load(folder)
    serve = model.signatures["serving_default"]
    for key, value in serve(images=batch).items():
        arrays[f"{name}/{key}"] = value.numpy()
    pixels = tf.constant(np.load(job["pixels"][name]))
    for key, value in model.signatures["serving_preprocessed"](images=pixels).items():
        arrays[f"{name}/preprocessed/{key}"] = value.numpy()
    empty = serve(images=tf.constant([], tf.string))
    report[name] = {
        "inputs": {k: [str(v.dtype.name), v.shape.as_list()]
                   for k, v in serve.structured_input_signature[1].items()},
        "class_names": [n.decode() for n in model.class_names.numpy()],
        "task": model.task.numpy().decode(),
        "labels_asset": open(model.labels_file.asset_path.numpy().decode()).read(),
        "task_asset": open(model.task_file.asset_path.numpy().decode()).read(),
        "empty": {k: v.shape.as_list() for k, v in empty.items()},
        "not_an_image": error_of(lambda: serve(images=tf.constant([png, b"GIF89a..", png, b""]))),
        "truncated_png": error_of(lambda: serve(images=tf.constant([png[:60]]))),
    }

for name, folder in job["features"].items():
    model = tf.saved_model.load(folder)
    pixels = tf.constant(np.load(job["pixels"][name]))
    first, second = model(pixels, trainable=False), model(pixels, trainable=False)
    default = model(pixels)
    signature = model.signatures["serving_default"](images=pixels)
    for key, value in first.items():
        arrays[f"{name}/features/{key}"] = value.numpy()
    with tf.GradientTape() as tape:
        training = model(pixels, trainable=True)
        loss = tf.reduce_sum(training["proj_head_output"] ** 2)
    gradients = tape.gradient(loss, model.trainable_variables)
    report[name + "/features"] = {
        "keys": sorted(first),
        "max_differences": {other: max(float(np.max(np.abs(first[k] - outputs[k]))) for k in first)
                            for other, outputs in [("second", second), ("default", default),
                                                   ("signature", signature)]},
        "training_mode_differs": not np.allclose(training["final_avg_pool"],
                                                 first["final_avg_pool"]),
        "image_size": int(model.image_size.numpy()),
        "num_variables": len(model.variables),
        "num_trainable": len(model.trainable_variables),
        "missing_gradients": sum(g is None for g in gradients),
        "zero_gradients": sum(g is not None and not np.any(g.numpy()) for g in gradients),
        "finite_gradients": all(g is None or np.all(np.isfinite(g.numpy())) for g in gradients),
    }

report["simclr_med_imported"] = sys.modules.get("simclr_med") is not None
np.savez(job["out"] + ".npz", **arrays)
json.dump(report, open(job["out"] + ".json", "w"))
'''


def _eval_pixels(images: list[pathlib.Path], config: ModelConfig) -> tf.Tensor:
    """The evaluation path's input: `preprocess_for_eval`, image by image."""
    return tf.stack([preprocess.preprocess_for_eval(tf.constant(path.read_bytes()),
                                                    config.image_size, config.eval_crop_proportion)
                     for path in images])


def _randomize(model: SimCLRModel, seed: int, pixels: tf.Tensor) -> None:
    """Batch-norm statistics and scales away from their initial values (the zero-initialised
    gammas would otherwise silence every residual branch) and a supervised head that spreads the
    test images' standardised features, so that outputs differ clearly between images and any
    difference in preprocessing shows."""
    rng = np.random.default_rng(seed)
    draws = {"moving_variance": lambda shape: rng.uniform(0.5, 2.0, shape),
             "moving_mean": lambda shape: rng.normal(0.0, 0.2, shape),
             "beta": lambda shape: rng.normal(0.0, 0.2, shape),
             "gamma": lambda shape: rng.uniform(0.5, 1.5, shape)}
    for variable in model.variables:
        kind = variable.path.rsplit("/", 1)[-1]
        if kind in draws:
            variable.assign(draws[kind](tuple(variable.shape)))
    if model.supervised_head is not None:
        features = model(pixels, training=False)["final_avg_pool"].numpy()
        mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
        dense = model.supervised_head.dense
        kernel = rng.normal(0.0, 2.0 / np.sqrt(len(mean)), tuple(dense.kernel.shape)) / std[:, None]
        dense.kernel.assign(kernel)
        dense.bias.assign(-mean @ kernel)


def _save_checkpoint(model: SimCLRModel, directory: pathlib.Path, step: int) -> None:
    """As the trainer saves: model, optimizer state and step, through a CheckpointManager."""
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    optimizer.iterations.assign(step)
    manager = tf.train.CheckpointManager(
        checkpointing.make_checkpoint(model, optimizer, optimizer.iterations), str(directory), 3)
    manager.save(checkpoint_number=step)


def _make_model_dir(directory: pathlib.Path, images: list[pathlib.Path], config: ModelConfig,
                    task: str, names: tuple[str, ...], source: str) -> None:
    """A model folder as a training run leaves it; fine-tuning runs also get a best/ checkpoint
    (other weights, an earlier step) that export must prefer to the latest."""
    checkpointing.ModelRecord(config, len(names), task, names, source).save(str(directory))
    model = SimCLRModel(config, len(names))
    model.build_for_image_size()
    pixels = _eval_pixels(images, config)
    _randomize(model, 1, pixels)
    _save_checkpoint(model, directory, LATEST_STEP)
    if source == "finetune":
        _randomize(model, 2, pixels)
        checkpointing.ModelRecord(config, len(names), task, names, source).save(
            str(directory / evaluate.BEST_DIR))
        _save_checkpoint(model, directory / evaluate.BEST_DIR, BEST_STEP)


def _encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images(real_data, tmp_path_factory) -> list[pathlib.Path]:
    """Real PNGs and JPEGs of different sizes, then non-square grayscale 8- and 16-bit PNGs."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    gray8 = folder / "gray8.png"
    gray8.write_bytes(_encode_png(rng.integers(0, 256, (50, 70), dtype=np.uint8)))
    gray16 = folder / "gray16.png"
    gray16.write_bytes(_encode_png(rng.integers(0, 65536, (90, 60), dtype=np.uint16)))
    return ([real_data / paths.NIH_FOLDER / "images" / name for name in NIH_IMAGES]
            + [real_data / paths.HAM_FOLDER / "images" / name for name in HAM_IMAGES]
            + [gray8, gray16])


@pytest.fixture(scope="module")
def exported(images, tmp_path_factory) -> dict[str, tuple[pathlib.Path, pathlib.Path]]:
    """(model_dir, export_dir) per model. The multi-class model goes through `export.export`,
    the pretraining run through run.py; of the multi-label model only the serving SavedModel is
    written (the features SavedModel does not depend on the head)."""
    root = tmp_path_factory.mktemp("export")
    folders = {}
    for name, spec in MODELS.items():
        model_dir, export_dir = root / name / "model", root / name / "export"
        _make_model_dir(model_dir, images, **spec)
        folders[name] = (model_dir, export_dir)
    model_dir, export_dir = folders["multiclass"]
    result = export.export(str(model_dir), str(export_dir))
    assert result.global_step == BEST_STEP, "export must prefer fine-tuning's best checkpoint"
    model_dir, export_dir = folders["multilabel"]
    model, _, _ = export.restore_model(str(model_dir), len(NIH_LABELS))
    export.save_serving(model, checkpointing.ModelRecord.load(str(model_dir)),
                        str(export_dir / "serving"))
    model_dir, export_dir = folders["pretrain"]
    completed = subprocess.run(
        [sys.executable, str(REPO / "run.py"), "--mode=export", f"--model_dir={model_dir}",
         f"--export_dir={export_dir}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"step {LATEST_STEP}" in completed.stdout and "features" in completed.stdout
    return folders


def _evaluation_path(model_dir: pathlib.Path, images: list[pathlib.Path]) -> dict[str, np.ndarray]:
    """What evaluation computes: its model loader, `preprocess_for_eval` image by image, the
    Keras model in inference mode, `evaluate.probabilities`."""
    model, record, _, _ = evaluate.load_model(str(model_dir))
    pixels = _eval_pixels(images, record.model)
    outputs = model(pixels, training=False)
    return {"pixels": pixels.numpy(),
            "probabilities": evaluate.probabilities(outputs["logits_sup"].numpy(), record.task),
            "embedding": outputs["final_avg_pool"].numpy()}


@pytest.fixture(scope="module")
def fresh_process(exported, images, tmp_path_factory) -> dict:
    """Runs FRESH_PROCESS_CHECKS on every export; returns its report, arrays and the
    evaluation-path references computed here."""
    work = tmp_path_factory.mktemp("fresh_process")
    references = {}
    for name in ("multiclass", "multilabel"):
        references[name] = _evaluation_path(exported[name][0], images)
    features_model, _, _ = export.restore_model(str(exported["pretrain"][0]), 0)
    pixels = references["multiclass"]["pixels"]
    references["pretrain"] = {"pixels": pixels, **{
        f"features/{k}": v.numpy() for k, v in features_model(pixels, training=False).items()}}
    references["pretrain"]["num_variables"] = len(features_model.variables)
    references["pretrain"]["num_trainable"] = len(features_model.trainable_variables)
    for name, reference in references.items():
        np.save(work / f"{name}_pixels.npy", reference["pixels"])
    job = {"images": [str(path) for path in images], "out": str(work / "result"),
           "pixels": {name: str(work / f"{name}_pixels.npy") for name in references},
           "serving": {name: str(exported[name][1] / "serving")
                       for name in ("multiclass", "multilabel")},
           "features": {"pretrain": str(exported["pretrain"][1] / "features")}}
    completed = subprocess.run([sys.executable, "-c", FRESH_PROCESS_CHECKS, json.dumps(job)],
                               capture_output=True, text=True, timeout=300,
                               env={**os.environ, "PYTHONPATH": ""}, cwd=work)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((work / "result.json").read_text())
    with np.load(work / "result.npz") as arrays:
        return {"report": report, "arrays": dict(arrays), "references": references}


def test_export_layout(exported):
    export_dir = exported["multiclass"][1]
    assert sorted(p.name for p in export_dir.iterdir()) == ["features", "serving"]
    for name in ("multiclass", "multilabel"):
        assets = exported[name][1] / "serving" / "assets"
        assert (assets / "labels.txt").read_text().splitlines() == list(MODELS[name]["names"])
        assert (assets / "task.txt").read_text().strip() == MODELS[name]["task"]
    assert [p.name for p in exported["pretrain"][1].iterdir()] == ["features"]


def test_fresh_process_does_not_need_this_package(fresh_process):
    assert fresh_process["report"]["simclr_med_imported"] is False


@pytest.mark.parametrize("name", ["multiclass", "multilabel"])
def test_serving_equals_evaluation_path(fresh_process, name):
    """A batch mixing PNG (RGB, RGBA, 8- and 16-bit grayscale) and JPEG of different sizes."""
    arrays, reference = fresh_process["arrays"], fresh_process["references"][name]
    probabilities = arrays[f"{name}/probabilities"]
    assert probabilities.shape == (len(NIH_IMAGES) + len(HAM_IMAGES) + 2,
                                   len(MODELS[name]["names"]))
    # The outputs depend on the image: a preprocessing difference could not hide.
    assert np.ptp(reference["probabilities"], axis=0).max() > 0.2
    np.testing.assert_allclose(probabilities, reference["probabilities"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(arrays[f"{name}/embedding"], reference["embedding"],
                               rtol=TOLERANCE, atol=TOLERANCE)
    for key in ("probabilities", "embedding"):
        np.testing.assert_allclose(arrays[f"{name}/preprocessed/{key}"], reference[key],
                                   rtol=TOLERANCE, atol=TOLERANCE)
    if name == "multiclass":
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", ["multiclass", "multilabel"])
def test_serving_signature_and_metadata(fresh_process, name):
    report = fresh_process["report"][name]
    assert report["inputs"] == {"images": ["string", [None]]}
    assert report["class_names"] == list(MODELS[name]["names"])
    assert report["task"] == MODELS[name]["task"]
    assert report["labels_asset"].splitlines() == list(MODELS[name]["names"])
    assert report["task_asset"].strip() == MODELS[name]["task"]


def test_empty_batch_gives_empty_outputs(fresh_process):
    report = fresh_process["report"]["multilabel"]
    assert report["empty"] == {"probabilities": [0, len(NIH_LABELS)], "embedding": [0, 128]}


def test_invalid_bytes_give_a_clear_error(fresh_process):
    report = fresh_process["report"]["multiclass"]
    not_an_image = report["not_an_image"]
    assert not_an_image["type"] == "InvalidArgumentError"
    assert "images must be PNG or JPEG bytes" in not_an_image["message"]
    assert "[1 3]" in not_an_image["message"]  # the batch positions of the GIF and the empty string
    truncated = report["truncated_png"]
    assert truncated["type"] == "InvalidArgumentError" and "PNG" in truncated["message"]


def test_features_match_the_keras_model_and_repeat_exactly(fresh_process):
    report = fresh_process["report"]["pretrain/features"]
    reference = fresh_process["references"]["pretrain"]
    assert report["keys"] == sorted(["initial_conv", "initial_max_pool", "block_group1",
                                     "block_group2", "block_group3", "block_group4",
                                     "final_avg_pool", "proj_head_input", "proj_head_output"])
    differences = report["max_differences"]
    assert differences["second"] == differences["default"] == 0.0
    assert differences["signature"] < TOLERANCE  # another graph, optimised differently
    for key in report["keys"]:
        np.testing.assert_allclose(fresh_process["arrays"][f"pretrain/features/{key}"],
                                   reference[f"features/{key}"], rtol=TOLERANCE, atol=TOLERANCE)


def test_features_fine_tune_with_gradients(fresh_process):
    report = fresh_process["report"]["pretrain/features"]
    reference = fresh_process["references"]["pretrain"]
    assert report["image_size"] == MODELS["pretrain"]["config"].image_size
    assert report["num_variables"] == reference["num_variables"]
    assert report["num_trainable"] == reference["num_trainable"] > 0
    assert report["missing_gradients"] == 0 and report["finite_gradients"]
    assert report["zero_gradients"] < report["num_trainable"] // 10
    assert report["training_mode_differs"]  # trainable=True uses batch statistics


def test_explicit_checkpoint_choice(exported):
    model_dir = str(exported["multiclass"][0])
    assert export.restore_model(model_dir, 0, "latest")[2] == LATEST_STEP
    best = evaluate.inference_checkpoint(model_dir, "auto")
    assert export.restore_model(model_dir, 0, best)[1:] == (best, BEST_STEP)


def _printed_predictions(output: str) -> dict[str, list[tuple[str, float]]]:
    """predict's blocks: an image path, then lines `  <rank>. <name>  <percent>%`."""
    blocks: dict[str, list[tuple[str, float]]] = {}
    for line in output.splitlines():
        match = re.fullmatch(r"  \d+\. (\S+)\s+([\d.]+)%", line)
        if match:
            blocks[path].append((match[1], float(match[2]) / 100))
        elif not line.startswith(" "):
            path = line
            blocks[path] = []
    return blocks


def test_predict_prints_top_labels(exported, images, fresh_process, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image")
    files = [images[0], images[3], bad]
    completed = subprocess.run(
        [sys.executable, "-m", "simclr_med.predict", f"--export_dir={exported['multiclass'][1]}",
         "--top_k=2", *map(str, files)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1
    assert "predict: 1 of 3 image(s) could not be read" in completed.stderr
    assert f"{bad}\n  could not be read: " in completed.stdout
    assert "images must be PNG or JPEG bytes" in completed.stdout
    printed = _printed_predictions(completed.stdout)
    probabilities = fresh_process["arrays"]["multiclass/probabilities"]
    for index in (0, 3):
        top = np.argsort(-probabilities[index])[:2]
        assert [name for name, _ in printed[str(images[index])]] == [HAM_CLASSES[i] for i in top]
        np.testing.assert_allclose([p for _, p in printed[str(images[index])]],
                                   probabilities[index][top], atol=1e-4)


@pytest.mark.slow
def test_real_fine_tuning_run_serves_its_evaluation_predictions(ham_build, tmp_path):
    """A short HAM10000 fine-tuning run, evaluated on its test split and exported: the serving
    signature, given the test images' JPEG bytes as stored in the build, returns the
    probabilities of evaluation's predictions_test.csv (which went through tf.data batches)."""
    model_dir = tmp_path / "run"
    source = open_build(str(ham_build))
    finetune(ModelConfig(resnet_depth=18, width_multiplier=0.25, image_size=32),
             OptimConfig(optimizer="adam", learning_rate=1e-3, learning_rate_scaling="sqrt",
                         warmup_epochs=0),
             augment.preset("finetune"), source,
             TrainConfig(model_dir=str(model_dir), train_batch_size=16, train_steps=4,
                         steps_per_loop=2, checkpoint_steps=2),
             FinetuneConfig(validation_split=""), tf.distribute.get_strategy())
    evaluate.evaluate(str(model_dir), source, "test",
                      evaluate.EvalConfig(bootstrap_samples=10, plots=False, batch_size=64))
    result = export.export(str(model_dir), str(tmp_path / "export"))
    with open(model_dir / "predictions_test.csv") as f:
        rows = {row["image_id"]: [float(row[f"prob/{name}"]) for name in HAM_CLASSES]
                for row in csv.DictReader(f)}
    serve = tf.saved_model.load(result.paths["serving"]).signatures["serving_default"]
    served = {}
    for batch in read_images(source, "test").batch(50):
        probabilities = serve(images=batch["encoded"])["probabilities"].numpy()
        served.update(zip(batch["image_id"].numpy().astype(str), probabilities))
    assert sorted(served) == sorted(rows) and len(rows) == 232
    np.testing.assert_allclose(np.array([served[i] for i in rows]), np.array(list(rows.values())),
                               rtol=0, atol=TOLERANCE)
