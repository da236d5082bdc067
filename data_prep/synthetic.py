"""The built-in default data: SYNTHETIC multi-view cases, generated deterministically.

The package cannot ship medical images (licences), so `run.py` without `--data_dir` and `make demo`
use this stand-in: grayscale images of cases, each case a bag of 1-4 images that share a case-level
pattern (a shape of the case's class at a case-specific place and size, on a case-specific smooth
background) and differ by pose (shift and rotation), intensity (gain, gamma) and noise, like
follow-up radiographs of one patient. Classes: the shape (`disc`, `ring`, `bar`, `cross`).

The generator writes a folder of PNGs with a `metadata.csv`, which `data_prep` builds like any
user's data (`--format=generic`), so the default path exercises the real pipeline.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from data_prep.build import build_dataset
from data_prep.config import BuildConfig
from data_prep.report import save_json
from simclr_med.data import schema

CLASSES = ("disc", "ring", "bar", "cross")
VERSION = 2  # of the cached build: 2 records shard sizes and SHA-256 (the images are as in 1)
MANIFEST = "metadata.csv"
COLUMNS = ("image_id", "path", "case_id", "patient_id", "label")


def _case_pattern(rng: np.random.RandomState, label: int, size: int) -> np.ndarray:
    """The case-level content: a smooth background plus the class shape, in [0, 1]."""
    coarse = rng.rand(4, 4)
    background = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize(
        (size, size), Image.BICUBIC), np.float32) / 255.0 * 0.4 + 0.1
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cy, cx = rng.uniform(0.3, 0.7, 2)
    radius = rng.uniform(0.12, 0.22)
    dy, dx = yy - cy, xx - cx
    distance = np.sqrt(dy ** 2 + dx ** 2)
    if CLASSES[label] == "disc":
        shape = distance < radius
    elif CLASSES[label] == "ring":
        shape = np.abs(distance - radius) < radius * 0.3
    elif CLASSES[label] == "bar":
        shape = (np.abs(dy) < radius * 0.35) & (np.abs(dx) < radius * 1.5)
    else:
        shape = (((np.abs(dy) < radius * 0.25) | (np.abs(dx) < radius * 0.25))
                 & (distance < radius * 1.4))
    return np.clip(background + 0.3 * shape, 0.0, 1.0)


def _view_of(pattern: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """One image of the case: new pose, intensity and noise."""
    size = pattern.shape[0]
    image = Image.fromarray((pattern * 255).astype(np.uint8))
    shift = tuple(int(v) for v in rng.randint(-size // 10, size // 10 + 1, 2))
    image = image.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR, translate=shift,
                         fillcolor=int(pattern.mean() * 255))
    view = np.asarray(image, np.float32) / 255.0
    view = np.clip(view * rng.uniform(0.8, 1.2), 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    return np.clip(view + rng.normal(0.0, 0.04, view.shape), 0.0, 1.0)


def write_image_folder(output_dir: str, num_cases: int = 240, image_size: int = 64,
                       seed: int = 0) -> str:
    """Writes `images/*.png` and `metadata.csv` (generic data_prep format); returns the CSV path.

    The same arguments always give the same files.
    """
    rng = np.random.RandomState(seed)
    os.makedirs(os.path.join(output_dir, "images"), exist_ok=True)
    rows = []
    for case in range(num_cases):
        label = case % len(CLASSES)
        pattern = _case_pattern(rng, label, image_size)
        case_id = f"case{case:05d}"
        for index in range(rng.randint(1, 5)):
            image_id = f"{case_id}_{index}"
            path = f"images/{image_id}.png"
            pixels = (_view_of(pattern, rng) * 255).round().astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(os.path.join(output_dir, path))
            rows.append((image_id, path, case_id, case_id, CLASSES[label]))
    manifest = os.path.join(output_dir, MANIFEST)
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return manifest


def cache_dir() -> str:
    return os.environ.get("SIMCLR_MED_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "simclr_med"))


def stored_size_for(output_size: int) -> int:
    """The synthetic images a benchmark at `output_size` px reads: 64 px up to 64, else 256."""
    return 64 if output_size <= 64 else 256


def default_build(root: str | None = None, num_workers: int = 1, image_size: int = 64) -> str:
    """The data_prep build of the default synthetic data set, made on first use; returns its folder.

    Built in a temporary folder and moved into place, so concurrent first uses are safe. Another
    `image_size` than 64 gives the same cases drawn at that size (for input-pipeline benchmarks).
    """
    suffix = "" if image_size == 64 else f"_{image_size}px"
    target = os.path.join(root or cache_dir(), f"synthetic_cases_v{VERSION}{suffix}")
    if os.path.exists(os.path.join(target, "build", schema.DATASET_INFO_FILE)):
        return os.path.join(target, "build")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    staging = tempfile.mkdtemp(prefix="synthetic_", dir=os.path.dirname(target))
    manifest = write_image_folder(os.path.join(staging, "raw"), image_size=image_size)
    build_dataset(BuildConfig(
        format="generic", manifests=(manifest,), image_root=os.path.join(staging, "raw"),
        output_dir=os.path.join(staging, "build"), image_column="path", image_id_column="image_id",
        case_column="case_id", patient_column="patient_id", label_column="label",
        classes=CLASSES, num_workers=num_workers, progress=False))
    _report_final_folder(staging, target)
    try:
        os.rename(staging, target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return os.path.join(target, "build")



def _report_final_folder(staging: str, target: str) -> None:
    """Makes the build's report.json name the folders it is moved to, so that the rebuild
    command it records (quoted when a shard is damaged) works there."""
    path = os.path.join(staging, "build", schema.REPORT_FILE)
    with open(path) as f:
        report = json.load(f)
    for key in ("command", "output_dir"):
        report[key] = report[key].replace(staging, target)
    save_json(report, path)
