"""SavedModel export (simclr_med.stages.export), `run.py --mode=export` and `python -m simclr_med.predict`.

Every SavedModel is checked in a fresh Python process that imports only TensorFlow (importing
simclr_med there fails on purpose) against the Keras model's evaluation path in this process, on a
batch of synthetic case images (data_prep.synthetic) encoded as RGB and RGBA PNGs, 8- and 16-bit
grayscale PNGs and colour and grayscale JPEGs of different sizes. Empty batches are served in fresh
processes with oneDNN on and off. Only the real fine-tuning run at the end needs the real data.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_prep import synthetic
from simclr_med.checkpoints import native, trained_model
from simclr_med.config import ModelConfig, OptimConfig, TrainConfig
from simclr_med.data import augment, preprocess, schema
from simclr_med.data.reader import open_build, read_images
from simclr_med.errors import UserError
from simclr_med.evaluation import saliency
from simclr_med.models.simclr import SimCLRModel
from simclr_med.stages import evaluate, export
from simclr_med.stages.finetune import FinetuneConfig, finetune
from tests.tiny import TINY, tiny

# The module's fixtures export models with run.py and check them in fresh processes.
pytestmark = pytest.mark.subprocess

REPO = pathlib.Path(__file__).resolve().parents[2]
HAM_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
# The saliency signature's class_index for the test images: -1 is each image's predicted class.
CLASS_INDEX = [-1, 0, -1, 2, 6, -1]
NIH_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema",
              "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening",
              "Pneumonia", "Pneumothorax")
BEST_STEP, LATEST_STEP = 10, 20
TOLERANCE = 1e-4
# The multi-class export's pixel limit (run.py --max_image_pixels): above every test image
# (at most 220 x 220), below the over-sized ones; the multi-label export keeps the default.
SMALL_PIXEL_LIMIT = 100_000
BOMB_SIDE = 40_000  # a PNG claiming 40000 x 40000 pixels: 1.6 Gpx, 6.4 GB as float32

# The models under test: a fine-tuned multi-class model (with a best/ checkpoint beside the
# latest one), a fine-tuned multi-label model with the ImageNet stem and another crop, and a
# pretraining run without classes.
MODELS = {
    "multiclass": dict(config=TINY,
                       task=schema.MULTICLASS, names=HAM_CLASSES, source="finetune"),
    "multilabel": dict(config=tiny(image_size=40, eval_crop_proportion=0.8),
                       task=schema.MULTILABEL, names=NIH_LABELS, source="finetune"),
    "pretrain": dict(config=TINY,
                     task="", names=(), source="pretrain"),
}

# Runs in a fresh interpreter: argv[1] is a JSON job, results go to job["out"] (.json and .npz).
FRESH_PROCESS_CHECKS = r'''
import json, sys, time
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
    explained = tf.constant(job["class_index"], tf.int32)
    for key, value in model.signatures["saliency"](images=batch, class_index=explained).items():
        arrays[f"{name}/saliency/{key}"] = value.numpy()
    oversized = tf.constant([open(path, "rb").read() for path in job["oversized"][name]])
    started = time.perf_counter()
    too_large = error_of(lambda: serve(images=oversized))
    report[name] = {
        "inputs": {k: [str(v.dtype.name), v.shape.as_list()]
                   for k, v in serve.structured_input_signature[1].items()},
        "saliency_inputs": {k: [str(v.dtype.name), v.shape.as_list()] for k, v in
                            model.signatures["saliency"].structured_input_signature[1].items()},
        "class_names": [n.decode() for n in model.class_names.numpy()],
        "task": model.task.numpy().decode(),
        "labels_asset": open(model.labels_file.asset_path.numpy().decode()).read(),
        "task_asset": open(model.task_file.asset_path.numpy().decode()).read(),
        "max_image_pixels": int(model.max_image_pixels.numpy()),
        "too_large": too_large, "too_large_seconds": time.perf_counter() - started,
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

# Runs in a fresh interpreter under a given TF_ENABLE_ONEDNN_OPTS: everything that may see a batch
# of zero images, given one (and, for comparison, one image); prints a JSON report.
EMPTY_BATCH_CHECKS = r'''
import json, sys
import numpy as np
import tensorflow as tf

job = json.loads(sys.argv[1])
shapes = lambda outputs: {k: v.shape.as_list() for k, v in outputs.items()}
report = {}
serving = tf.saved_model.load(job["serving"])
report["serving_default"] = shapes(serving.signatures["serving_default"](
    images=tf.constant([], tf.string)))
report["serving_preprocessed"] = shapes(serving.signatures["serving_preprocessed"](
    images=tf.zeros([0] + job["pixels_shape"])))
report["saliency"] = shapes(serving.signatures["saliency"](
    images=tf.constant([], tf.string), class_index=tf.constant([], tf.int32)))
features = tf.saved_model.load(job["features"])
moving_averages = lambda: [v.numpy() for v in features.variables if not v.trainable]
for trainable in (False, True):
    for rows in (1, 0):  # an odd size, where each downsampling rounds up
        before = moving_averages()
        report[f"features/{trainable}/{rows}"] = shapes(features(
            tf.zeros([rows, 37, 45, 3]), trainable=trainable))
        report[f"features/{trainable}/{rows}/moving_averages_kept"] = all(
            np.array_equal(a, b) for a, b in zip(before, moving_averages()))

from simclr_med.stages import evaluate  # evaluation's Predictor, on a model folder

model = evaluate.load_classifier(job["model_dir"]).model
images = tf.random.stateless_uniform([3] + job["pixels_shape"], seed=[0, 1])
batches = [{"image": images[:rows], "image_id": tf.constant(["x"] * rows, tf.string),
            "patient_id": tf.constant(["p"] * rows, tf.string)} for rows in (0, 3, 0)]
dataset = tf.data.Dataset.from_tensors(batches[0])
for batch in batches[1:]:
    dataset = dataset.concatenate(tf.data.Dataset.from_tensors(batch))
predicted = evaluate.Predictor(model, ("logits_sup", "final_avg_pool"))(dataset)
direct = model(images, training=False)
report["predictor_rows"] = predicted.num_images
report["predictor_difference"] = max(  # relative to the largest value
    float(np.max(np.abs(predicted.outputs[k] - direct[k])) / np.max(np.abs(direct[k])))
    for k in predicted.outputs)
print(json.dumps(report))
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
        # Features that barely vary are scaled as a typical one: a weight of 1 / (their tiny
        # spread) would turn float32 rounding (graph against eager) into visible differences.
        spread = features.std(axis=0)
        mean, std = features.mean(axis=0), np.maximum(spread, spread.mean())
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
        native.make_checkpoint(model, optimizer, optimizer.iterations), str(directory), 3)
    manager.save(checkpoint_number=step)


def _make_model_dir(directory: pathlib.Path, images: list[pathlib.Path], config: ModelConfig,
                    task: str, names: tuple[str, ...], source: str) -> None:
    """A model folder as a training run leaves it; fine-tuning runs also get a best/ checkpoint
    (other weights, an earlier step) that export must prefer to the latest."""
    native.ModelRecord(config, len(names), task, names, source).save(str(directory))
    model = SimCLRModel(config, len(names))
    model.build_for_image_size()
    pixels = _eval_pixels(images, config)
    _randomize(model, 1, pixels)
    _save_checkpoint(model, directory, LATEST_STEP)
    if source == "finetune":
        _randomize(model, 2, pixels)
        native.ModelRecord(config, len(names), task, names, source).save(
            str(directory / trained_model.BEST_DIR))
        _save_checkpoint(model, directory / trained_model.BEST_DIR, BEST_STEP)


def _encode(array: np.ndarray, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **options)
    return buffer.getvalue()


def _colour(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 RGB image [height, width, 3] from a grayscale view, channels unequal."""
    view = np.asarray(Image.fromarray(gray).resize(size[::-1], Image.BICUBIC), np.float32)
    return np.stack([view, 0.6 * view + 60, 255 - 0.8 * view], axis=-1).round().astype(np.uint8)


def _png_bomb(side: int) -> bytes:
    """A valid 1-bit grayscale PNG of side x side black pixels: a few hundred KB of compressed
    zeros that decode to side^2 pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    rows_per_piece = 1000
    compressor = zlib.compressobj(9)
    piece = (b"\0" * (1 + (side + 7) // 8)) * rows_per_piece  # filter byte + packed bits
    data = b"".join(compressor.compress(piece) for _ in range(side // rows_per_piece))
    data += compressor.compress(piece[:(side % rows_per_piece) * len(piece) // rows_per_piece])
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    return (export.PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data + compressor.flush())
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[pathlib.Path]:
    return _write_images(tmp_path_factory.mktemp("images"))


def _write_images(folder: pathlib.Path) -> list[pathlib.Path]:
    """Synthetic case views served as clients send them: RGB and RGBA PNGs, colour and grayscale
    JPEGs, 8- and 16-bit grayscale PNGs, of different sizes and aspect ratios."""
    synthetic.write_image_folder(str(folder / "synthetic"), num_cases=6, image_size=96)
    views = [np.asarray(Image.open(path))
             for path in sorted((folder / "synthetic" / "images").glob("*_0.png"))]
    rgba = np.concatenate([_colour(views[1], (64, 80)),
                           np.linspace(40, 255, 64 * 80).reshape(64, 80, 1).astype(np.uint8)], -1)
    gray16 = np.asarray(Image.fromarray(views[5]).resize((60, 90)), np.uint16) * 257
    files = {"rgb.png": _encode(_colour(views[0], (64, 64)), "PNG"),
             "rgba.png": _encode(rgba, "PNG"),
             "photo.jpg": _encode(_colour(views[2], (220, 220)), "JPEG", quality=90),
             "gray.jpg": _encode(np.asarray(Image.fromarray(views[3]).resize((180, 120))), "JPEG"),
             "gray8.png": _encode(np.asarray(Image.fromarray(views[4]).resize((70, 50))), "PNG"),
             "gray16.png": _encode(gray16 + np.arange(60, dtype=np.uint16), "PNG")}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


@pytest.fixture(scope="module")
def oversized(images, tmp_path_factory) -> dict[str, list[pathlib.Path]]:
    """Batches the serving exports must refuse from the headers: over the multi-class export's
    small limit, a JPEG and a PNG at positions 1 and 3; over the default limit, a PNG bomb."""
    folder = tmp_path_factory.mktemp("oversized")
    gray = np.asarray(Image.open(images[4]))
    (folder / "large.jpg").write_bytes(_encode(_colour(gray, (300, 400)), "JPEG"))
    (folder / "large.png").write_bytes(_encode(_colour(gray, (320, 320)), "PNG"))
    (folder / "bomb.png").write_bytes(_png_bomb(BOMB_SIDE))
    return {"multiclass": [images[0], folder / "large.jpg", images[1], folder / "large.png"],
            "multilabel": [images[0], folder / "bomb.png"]}


@pytest.fixture(scope="module")
def exported(images, tmp_path_factory) -> dict[str, tuple[pathlib.Path, pathlib.Path]]:
    """(model_dir, export_dir) per model. The multi-class model goes through run.py (with a small
    --max_image_pixels), the pretraining run through `export.export`, into a folder holding a
    stale serving/; of the multi-label model only the serving SavedModel is written (the features
    SavedModel does not depend on the head)."""
    root = tmp_path_factory.mktemp("export")
    folders = {}
    for name, spec in MODELS.items():
        model_dir, export_dir = root / name / "model", root / name / "export"
        _make_model_dir(model_dir, images, **spec)
        folders[name] = (model_dir, export_dir)
    model_dir, export_dir = folders["multiclass"]
    completed = subprocess.run(
        [sys.executable, str(REPO / "run.py"), "--mode=export", f"--model_dir={model_dir}",
         f"--export_dir={export_dir}", f"--max_image_pixels={SMALL_PIXEL_LIMIT}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    # export must prefer fine-tuning's best checkpoint
    assert f"step {BEST_STEP}" in completed.stdout and "serving" in completed.stdout
    model_dir, export_dir = folders["multilabel"]
    model = trained_model.load(str(model_dir), num_classes=len(NIH_LABELS)).model
    export.save_serving(model, native.ModelRecord.load(str(model_dir)),
                        str(export_dir / "serving"))
    model_dir, export_dir = folders["pretrain"]
    (export_dir / "serving").mkdir(parents=True)  # an earlier export's, stale now
    (export_dir / "serving" / "saved_model.pb").write_bytes(b"stale")
    result = export.export(str(model_dir), str(export_dir))
    assert result.global_step == LATEST_STEP and list(result.paths) == ["features"]
    return folders


def _evaluation_path(model_dir: pathlib.Path, images: list[pathlib.Path]) -> dict[str, np.ndarray]:
    """What evaluation computes: its model loader, `preprocess_for_eval` image by image, the
    Keras model in inference mode, `evaluate.probabilities`."""
    loaded = evaluate.load_classifier(str(model_dir))
    model, record = loaded.model, loaded.record
    pixels = _eval_pixels(images, record.model)
    outputs = model(pixels, training=False)
    return {"pixels": pixels.numpy(),
            "probabilities": evaluate.probabilities(outputs["logits_sup"].numpy(), record.task),
            "embedding": outputs["final_avg_pool"].numpy()}


@pytest.fixture(scope="module")
def fresh_process(exported, images, oversized, tmp_path_factory) -> dict:
    """Runs FRESH_PROCESS_CHECKS on every export; returns its report, arrays and the
    evaluation-path references computed here."""
    work = tmp_path_factory.mktemp("fresh_process")
    references = {}
    for name in ("multiclass", "multilabel"):
        references[name] = _evaluation_path(exported[name][0], images)
    features_model = trained_model.load(str(exported["pretrain"][0]), num_classes=0).model
    pixels = references["multiclass"]["pixels"]
    references["pretrain"] = {"pixels": pixels, **{
        f"features/{k}": v.numpy() for k, v in features_model(pixels, training=False).items()}}
    references["pretrain"]["num_variables"] = len(features_model.variables)
    references["pretrain"]["num_trainable"] = len(features_model.trainable_variables)
    for name, reference in references.items():
        np.save(work / f"{name}_pixels.npy", reference["pixels"])
    job = {"images": [str(path) for path in images], "out": str(work / "result"),
           "class_index": CLASS_INDEX,
           "pixels": {name: str(work / f"{name}_pixels.npy") for name in references},
           "oversized": {name: list(map(str, files)) for name, files in oversized.items()},
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
    # The pretraining run's export replaced a stale serving/ and left nothing half-written.
    assert [p.name for p in exported["pretrain"][1].iterdir()] == ["features"]


def test_fresh_process_does_not_need_this_package(fresh_process):
    assert fresh_process["report"]["simclr_med_imported"] is False


@pytest.mark.parametrize("name", ["multiclass", "multilabel"])
def test_serving_equals_evaluation_path(fresh_process, images, name):
    """A batch mixing PNG (RGB, RGBA, 8- and 16-bit grayscale) and JPEG of different sizes."""
    arrays, reference = fresh_process["arrays"], fresh_process["references"][name]
    probabilities = arrays[f"{name}/probabilities"]
    assert probabilities.shape == (len(images), len(MODELS[name]["names"]))
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


@pytest.mark.parametrize("name", ["multiclass", "multilabel"])
def test_saliency_signature_equals_grad_cam(fresh_process, exported, name):
    """The `saliency` signature on encoded images: Grad-CAM of the Keras model on the
    evaluation's pixels (which it returns), for the predicted class (-1) or the one asked."""
    report, arrays = fresh_process["report"][name], fresh_process["arrays"]
    assert report["saliency_inputs"] == {"images": ["string", [None]],
                                         "class_index": ["int32", [None]]}
    pixels = fresh_process["references"][name]["pixels"]
    model = evaluate.load_classifier(str(exported[name][0])).model
    expected = saliency.grad_cam(model, tf.constant(pixels), tf.constant(CLASS_INDEX)).numpy()
    assert 0.05 < expected.mean() < 0.95  # maps with something to compare
    heatmaps = arrays[f"{name}/saliency/heatmap"]
    assert heatmaps.shape == pixels.shape[:3] and heatmaps.min() >= 0 and heatmaps.max() <= 1
    np.testing.assert_allclose(heatmaps, expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(arrays[f"{name}/saliency/image"], pixels, rtol=0, atol=1e-6)
    np.testing.assert_allclose(arrays[f"{name}/saliency/probabilities"],
                               arrays[f"{name}/probabilities"], rtol=0, atol=TOLERANCE)


@pytest.fixture(scope="module", params=["1", "0"], ids=["onednn_on", "onednn_off"])
def empty_batches(request, exported) -> dict:
    """EMPTY_BATCH_CHECKS's report, in a fresh process with oneDNN on or off: its graph rewrites
    failed on empty batches on some CPUs (`Incompatible shapes: [16] vs. [0,32,32,3]`)."""
    size = MODELS["multiclass"]["config"].image_size
    job = {"serving": str(exported["multiclass"][1] / "serving"),
           "features": str(exported["pretrain"][1] / "features"),
           "model_dir": str(exported["multiclass"][0]), "pixels_shape": [size, size, 3]}
    completed = subprocess.run(
        [sys.executable, "-c", EMPTY_BATCH_CHECKS, json.dumps(job)], cwd=REPO, timeout=300,
        capture_output=True, text=True, env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": request.param})
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.splitlines()[-1])


def test_empty_batch_gives_empty_outputs(empty_batches):
    classes = len(MODELS["multiclass"]["names"])
    for signature in ("serving_default", "serving_preprocessed"):
        assert empty_batches[signature] == {"probabilities": [0, classes], "embedding": [0, 128]}
    for trainable in ("False", "True"):
        one, empty = (empty_batches[f"features/{trainable}/{rows}"] for rows in (1, 0))
        assert len(one) == 9 and empty == {key: [0] + shape[1:] for key, shape in one.items()}
    # trainable=True updates the moving averages from a batch, but not from no images (NaN)
    assert not empty_batches["features/True/1/moving_averages_kept"]
    assert empty_batches["features/True/0/moving_averages_kept"]


def test_saliency_of_an_empty_batch_is_empty(empty_batches):
    size = MODELS["multiclass"]["config"].image_size
    assert empty_batches["saliency"] == {"heatmap": [0, size, size], "image": [0, size, size, 3],
                                         "probabilities": [0, len(MODELS["multiclass"]["names"])]}


def test_evaluation_predictor_skips_empty_batches(empty_batches):
    assert empty_batches["predictor_rows"] == 3
    assert empty_batches["predictor_difference"] < TOLERANCE


def test_images_over_the_pixel_limit_are_refused_from_their_headers(fresh_process):
    report = fresh_process["report"]
    assert report["multiclass"]["max_image_pixels"] == SMALL_PIXEL_LIMIT
    assert report["multilabel"]["max_image_pixels"] == export.MAX_IMAGE_PIXELS
    refused = report["multiclass"]["too_large"]
    assert refused["type"] == "InvalidArgumentError"
    assert f"images may have at most] [{SMALL_PIXEL_LIMIT}] [pixels" in refused["message"]
    assert "[1 3]" in refused["message"]  # the JPEG and the PNG over the limit
    assert "[[300 400][320 320]]" in refused["message"]  # their height and width


def test_a_decompression_bomb_is_refused_without_decoding(fresh_process, oversized):
    """A PNG of a few hundred KB claiming 40000 x 40000 pixels: refused under the default limit
    in well under a second (decoding would take 6.4 GB)."""
    assert oversized["multilabel"][1].stat().st_size < 500_000
    report = fresh_process["report"]["multilabel"]
    refused = report["too_large"]
    assert refused["type"] == "InvalidArgumentError"
    assert f"[1] [their height and width:] [[{BOMB_SIDE} {BOMB_SIDE}]]" in refused["message"]
    assert report["too_large_seconds"] < 1.0


def _snapshot(folder: pathlib.Path) -> dict[str, str]:
    """Every file below `folder` (hidden ones included) -> SHA-256 of its bytes."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def earlier_export(exported, tmp_path) -> tuple[pathlib.Path, pathlib.Path, dict[str, str]]:
    """A copy of the multi-class model folder and of its export, and the export's snapshot."""
    model_dir, export_dir = (tmp_path / "model", tmp_path / "export")
    for source, copy in zip(exported["multiclass"], (model_dir, export_dir)):
        shutil.copytree(source, copy)
    return model_dir, export_dir, _snapshot(export_dir)


def test_failed_export_keeps_the_earlier_export(earlier_export):
    """A checkpoint that does not fit model_config.json (another width) fails the export, which
    leaves the earlier export as it was."""
    model_dir, export_dir, before = earlier_export
    record = native.ModelRecord.load(str(model_dir))
    wider = dataclasses.replace(record, model=dataclasses.replace(record.model,
                                                                  width_multiplier=0.5))
    for folder in (model_dir, model_dir / trained_model.BEST_DIR):
        wider.save(str(folder))
    with pytest.raises(UserError, match="cannot be restored into the model"):
        export.export(str(model_dir), str(export_dir))
    assert _snapshot(export_dir) == before


def test_export_failing_while_writing_keeps_the_earlier_export(earlier_export, monkeypatch):
    """A save that fails half-way (here: the disk fills after the first file of features/) leaves
    the earlier export, and nothing of the new one, in place."""
    model_dir, export_dir, before = earlier_export

    def disk_full(model, path):
        os.makedirs(path)
        pathlib.Path(path, "saved_model.pb").write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(export, "save_features", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export.export(str(model_dir), str(export_dir))
    assert _snapshot(export_dir) == before


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
    assert trained_model.load(model_dir, "latest", num_classes=0).step == LATEST_STEP
    best = trained_model.inference_checkpoint(model_dir, "auto")
    loaded = trained_model.load(model_dir, best, num_classes=0)
    assert (loaded.checkpoint, loaded.step) == (best, BEST_STEP)


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


def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simclr_med.predict", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_predict_writes_saliency_maps(exported, images, tmp_path):
    """One PNG per image, named by its file's stem (made unique), for the predicted class or the
    one --saliency_class names; an unknown name is refused with the model's class names."""
    twin = tmp_path / "other" / images[0].name  # the same stem as images[0]
    twin.parent.mkdir()
    shutil.copy(images[0], twin)
    export_dir = f"--export_dir={exported['multiclass'][1]}"
    out = tmp_path / "maps"
    completed = _predict(export_dir, f"--saliency_dir={out}", "--saliency_class=mel",
                         str(images[0]), str(images[3]), str(twin))
    assert completed.returncode == 0, completed.stderr[-3000:]
    stem = images[0].stem
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{stem}_saliency.png", f"{images[3].stem}_saliency.png", f"{stem}-2_saliency.png"])
    with Image.open(out / f"{stem}_saliency.png") as picture:
        assert picture.format == "PNG" and picture.width > 200
    assert f"saliency map: {out / (stem + '-2_saliency.png')}" in completed.stdout
    refused = _predict(export_dir, f"--saliency_dir={out}", "--saliency_class=melanoma",
                       str(images[0]))
    assert refused.returncode == 2
    assert ("predict: error: --saliency_class='melanoma' is none of the model's classes: "
            + ", ".join(HAM_CLASSES)) in refused.stderr


@pytest.mark.slow
def test_real_fine_tuning_run_serves_its_evaluation_predictions(ham_build, tmp_path):
    """A short HAM10000 fine-tuning run, evaluated on its test split and exported: the serving
    signature, given the test images' JPEG bytes as stored in the build, returns the
    probabilities of evaluation's predictions_test.csv (which went through tf.data batches)."""
    model_dir = tmp_path / "run"
    source = open_build(str(ham_build))
    finetune(TINY,
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
