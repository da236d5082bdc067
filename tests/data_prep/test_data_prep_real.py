"""data_prep on the real NIH ChestX-ray14 and HAM10000 subsets, official tables and flat manifests."""

from __future__ import annotations

import csv
import glob
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_prep import formats
from data_prep.build import build_dataset
from data_prep.config import BuildConfig
from simclr_med.data import schema
from tests import data_root

SPLITS = ("train", "validation", "test")


def _build(real_data, folder: str, fmt: str, manifest: str, output_dir, **kwargs) -> dict:
    root = real_data / folder
    return build_dataset(BuildConfig(format=fmt, manifests=(str(root / manifest),),
                                     image_root=str(root), output_dir=str(output_dir),
                                     progress=False, **kwargs))


def _cases(output_dir, num_labels: int) -> dict[str, list[dict]]:
    return {split: [schema.parse_case(record, num_labels) for record in tf.data.TFRecordDataset(
        sorted(glob.glob(f"{output_dir}/{split}-*-of-*.tfrecord")))] for split in SPLITS}


def _shards(output_dir) -> dict[str, bytes]:
    return {path[len(str(output_dir)):]: open(path, "rb").read()
            for path in sorted(glob.glob(f"{output_dir}/*.tfrecord"))}


def _patients_disjoint(cases: dict[str, list[dict]]) -> int:
    patients = [{case["patient_id"].numpy() for case in cases[split]} for split in SPLITS]
    assert sum(map(len, patients)) == len(set().union(*patients))
    return sum(map(len, patients))


@pytest.fixture(scope="module")
def nih(nih_build):
    """The session's NIH build from the official table (tests/conftest.py) and its report."""
    return nih_build, json.loads((nih_build / "report.json").read_text())


@pytest.fixture(scope="module")
def ham(ham_build):
    return ham_build, json.loads((ham_build / "report.json").read_text())


def test_nih_official_table(nih, real_data):
    output_dir, report = nih
    assert (report["rows_in"], report["images_written"]) == (112120, 1000)
    assert report["skipped"] == {"missing_file": 111120}
    cases = _cases(output_dir, num_labels=14)
    assert _patients_disjoint(cases) == 264
    by_id = {image_id.numpy().decode(): (encoded, view)
             for case in cases["train"] for image_id, encoded, view in zip(
                 case["image_id"], case["encoded"], case["view"])}
    for image_id in sorted(by_id)[:20]:
        encoded, view = by_id[image_id]
        source = np.asarray(Image.open(real_data / data_root.NIH_FOLDER / "images" / image_id))
        stored = tf.io.decode_png(encoded).numpy()
        assert stored.shape == (64, 64, 1)  # grey RGB(A) stored as one channel
        np.testing.assert_array_equal(stored[..., 0], source[..., 0])
        assert view.numpy().decode() in ("view_position=PA", "view_position=AP")


def test_nih_flat_manifest_gives_the_same_records(nih, real_data, tmp_path):
    output_dir, _ = nih
    report = _build(real_data, data_root.NIH_FOLDER, "generic", "metadata.csv", tmp_path,
                    image_id_column="image_id", case_column="patient_id",
                    label_columns=formats.NIH_FINDINGS, view_columns=("view_position",),
                    num_workers=2)
    assert (report["rows_in"], report["images_written"], report["skipped"]) == (1000, 1000, {})
    assert _shards(tmp_path) == _shards(output_dir)


def test_ham10000_official_table(ham, real_data):
    output_dir, report = ham
    assert (report["rows_in"], report["images_written"]) == (10015, 1164)
    assert report["skipped"] == {"missing_file": 8851}
    assert sum(split["cases"] for split in report["splits"].values()) == 1035
    info = schema.DatasetInfo.load(str(output_dir))
    assert (info.task, tuple(info.names)) == (schema.MULTICLASS, formats.HAM10000_CLASSES)
    cases = _cases(output_dir, num_labels=0)
    assert _patients_disjoint(cases) == 1035
    with open(real_data / data_root.HAM_FOLDER / "metadata.csv") as f:
        dx = {row["image_id"]: row["dx"] for row in csv.DictReader(f)}
    for case in cases["test"][:30]:
        for image_id, encoded, class_id in zip(case["image_id"], case["encoded"],
                                               case["class_id"]):
            image_id = image_id.numpy().decode()
            assert formats.HAM10000_CLASSES[int(class_id)] == dx[image_id]
            source = (real_data / data_root.HAM_FOLDER / "images" / f"{image_id}.jpg").read_bytes()
            assert encoded.numpy() == source  # JPEGs are stored byte for byte
            assert Image.open(io.BytesIO(source)).size == (220, 220)


def test_ham10000_flat_manifest_gives_the_same_records(ham, real_data, tmp_path):
    output_dir, _ = ham
    report = _build(real_data, data_root.HAM_FOLDER, "generic", "metadata.csv", tmp_path,
                    image_id_column="image_id", case_column="lesion_id", label_column="dx",
                    num_workers=2)
    assert (report["rows_in"], report["images_written"], report["skipped"]) == (1164, 1164, {})
    assert _shards(tmp_path) == _shards(output_dir)
