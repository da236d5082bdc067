"""data_prep.build end to end on a small generated data set: accounting, round trip, determinism."""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
import random

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_prep.build import build_dataset
from data_prep.config import BuildConfig
from data_prep.manifest import ManifestError
from data_prep.report import BuildError
from simclr_med.data import schema
from simclr_med.errors import UserError

CLASSES = ("benign", "malignant", "unclear")
HEADER = "path,lesion,patient,diagnosis"
EXPECTED_SKIPS = {"bad_label": 1, "corrupt_image": 3, "duplicate": 2, "malformed_row": 1,
                  "missing_file": 1, "missing_value": 1, "outside_root": 2, "too_large": 1}


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_data_set(root) -> list[str]:
    """20 patients with 1-3 lesions of 1-3 images each, plus one row per way of failing."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    lines = []
    for patient in range(20):
        for lesion in range(rng.integers(1, 4)):
            for index in range(rng.integers(1, 4)):
                shape = (16, 20) if index % 2 else (16, 20, 3)
                path = f"img/p{patient}_l{lesion}_{index}.png"
                (root / path).write_bytes(_png(rng.integers(0, 256, shape, dtype=np.uint8)))
                lines.append(f"{path},p{patient}-l{lesion},p{patient},{CLASSES[lesion % 3]}")
    good = _png(rng.integers(0, 256, (16, 20), dtype=np.uint8))
    (root / "img/garbage.png").write_bytes(b"not a png")
    (root / "img/truncated.png").write_bytes(good[: len(good) // 2])
    (root / "img/lonely.png").write_bytes(b"\x89PNG broken")
    (root / "img/huge.png").write_bytes(_png(np.zeros((100, 100), np.uint8)))
    (root.parent / "outside.png").write_bytes(good)
    os.symlink(root.parent / "outside.png", root / "img/link.png")
    lines += [
        "img/garbage.png,p0-l0,p0,benign",  # corrupt_image
        "img/truncated.png,p1-l0,p1,benign",  # corrupt_image
        "img/lonely.png,p99-l0,p99,benign",  # corrupt_image: its case stays empty
        "img/huge.png,p2-l0,p2,benign",  # too_large
        "img/absent.png,p3-l0,p3,benign",  # missing_file
        "../outside.png,p4-l0,p4,benign",  # outside_root
        "img/link.png,p4-l0,p4,benign",  # outside_root (a link leading out)
        lines[0], "./" + lines[1],  # duplicate, twice
        "img/p5_l0_0.png,p5-l0,p5,malignantish",  # bad_label (and not a duplicate: skipped first)
        "img/p6_l0_0.png,,p6,benign",  # missing_value
        "img/p7_l0_0.png,p7-l0,p7",  # malformed_row
    ]
    return lines


@pytest.fixture(scope="module")
def data_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "root"
    lines = make_data_set(root)
    (root / "manifest.csv").write_text("\n".join([HEADER] + lines) + "\n")
    return root, lines


def _config(root, output_dir, **kwargs) -> BuildConfig:
    values = dict(format="generic", manifests=(str(root / "manifest.csv"),), image_root=str(root),
                  output_dir=str(output_dir), case_column="lesion", patient_column="patient",
                  label_column="diagnosis", classes=CLASSES, val_fraction=0.2, test_fraction=0.2,
                  max_image_pixels=5000, num_workers=1, progress=False)
    values.update(kwargs)
    return BuildConfig(**values)


@pytest.fixture(scope="module")
def built(data_set, tmp_path_factory):
    root, _ = data_set
    output_dir = tmp_path_factory.mktemp("build")
    return root, output_dir, build_dataset(_config(root, output_dir))


def read_build(output_dir, num_labels: int = 0) -> dict[str, list[dict]]:
    """Split -> parsed cases (NumPy values), through tf.data as a reader would."""
    return {split: [{k: v.numpy() for k, v in schema.parse_case(record, num_labels).items()}
                    for record in tf.data.TFRecordDataset(sorted(glob.glob(
                        f"{output_dir}/{split}-*-of-*.tfrecord")))]
            for split in ("train", "validation", "test")}


def _shard_bytes(output_dir) -> dict[str, bytes]:
    """The shards and dataset_info.json (which records their sizes and SHA-256), by name."""
    return {os.path.basename(p): open(p, "rb").read()
            for p in sorted(glob.glob(f"{output_dir}/*.tfrecord"))
            + [f"{output_dir}/{schema.DATASET_INFO_FILE}"]}


def test_every_row_is_accounted_for(built, data_set):
    _, lines = data_set
    _, _, report = built
    assert report["rows_in"] == len(lines)
    assert report["skipped"] == EXPECTED_SKIPS
    assert report["rows_in"] == report["images_written"] + sum(report["skipped"].values())
    assert report["empty_cases"] == 1
    assert set(report["skipped_examples"]) == set(EXPECTED_SKIPS)
    assert all(len(v) == EXPECTED_SKIPS[k] for k, v in report["skipped_examples"].items())
    assert any("manifest.csv:" in example and "link.png" in example
               for example in report["skipped_examples"]["outside_root"])


def test_round_trip_pixels_labels_and_cases(built):
    root, output_dir, report = built
    cases = read_build(output_dir)
    source = {}
    for line in open(root / "manifest.csv").read().splitlines()[1:]:
        source.setdefault(line.split(",")[0], line.split(","))
    seen_images, patients_by_split = set(), {}
    for split, split_cases in cases.items():
        patients_by_split[split] = {case["patient_id"] for case in split_cases}
        assert report["splits"][split]["cases"] == len(split_cases)
        for case in split_cases:
            assert (0.0 < case["label_fraction_rank"] <= 1.0) and (
                split == "train" or case["label_fraction_rank"] == 1.0)
            for encoded, image_id, class_id in zip(case["encoded"], case["image_id"],
                                                   case["class_id"]):
                path, lesion, patient, diagnosis = source[image_id.decode()]
                assert (case["case_id"].decode(), case["patient_id"].decode()) == (lesion, patient)
                assert CLASSES[class_id] == diagnosis
                expected = np.asarray(Image.open(root / path))
                decoded = tf.io.decode_png(encoded).numpy()
                np.testing.assert_array_equal(decoded.reshape(expected.shape), expected)
                seen_images.add(image_id.decode())
            assert list(case["image_id"]) == sorted(case["image_id"])
    assert len(seen_images) == report["images_written"]
    train, validation, test = patients_by_split.values()
    assert not (train & validation or train & test or validation & test)


def test_dataset_info_and_label_fractions(built):
    _, output_dir, report = built
    info = schema.DatasetInfo.load(str(output_dir))
    assert (info.task, info.names, info.source_format) == (schema.MULTICLASS, list(CLASSES),
                                                           "generic")
    assert info.split_counts == {split: {k: v for k, v in counts.items() if k != "unlabelled_images"}
                                 for split, counts in report["splits"].items()}
    fractions = json.load(open(output_dir / "label_fractions.json"))["fractions"]
    train = {case["patient_id"].decode(): case["label_fraction_rank"]
             for case in read_build(output_dir)["train"]}
    previous: set[str] = set()
    for fraction, subset in fractions.items():
        members = set(subset["patient_ids"])
        assert previous <= members
        assert members == {p for p, rank in train.items() if rank <= np.float32(fraction)}
        previous = members
    assert fractions["1.0"]["images"] == report["splits"]["train"]["images"]


def test_identical_for_two_workers_and_shuffled_rows(built, data_set, tmp_path):
    root, output_dir, _ = built
    _, lines = data_set
    two_workers = build_dataset(_config(root, tmp_path / "two", num_workers=2))
    assert two_workers["skipped"] == EXPECTED_SKIPS
    assert _shard_bytes(tmp_path / "two") == _shard_bytes(output_dir)
    # Rows in another order: the same shards (the skipped duplicates and the rows they repeat
    # keep their order, so the same rows win).
    shuffled = lines[:-5]
    random.Random(1).shuffle(shuffled)
    (tmp_path / "shuffled.csv").write_text("\n".join([HEADER] + shuffled + lines[-5:]) + "\n")
    build_dataset(_config(root, tmp_path / "shuffled",
                          manifests=(str(tmp_path / "shuffled.csv"),)))
    assert _shard_bytes(tmp_path / "shuffled") == _shard_bytes(output_dir)


def test_on_error_fail_names_the_row_and_leaves_no_shard(data_set, tmp_path):
    root, lines = data_set
    with pytest.raises(BuildError, match=r"subset.csv:7: corrupt_image: .*garbage.png"):
        build_dataset(_config(root, tmp_path, on_error="fail", num_workers=2, manifests=(
            str(_subset_manifest(tmp_path, lines[:5] + lines[-12:-11])),)))
    assert not [name for name in os.listdir(tmp_path) if "tfrecord" in name]


def _subset_manifest(tmp_path, lines: list[str]):
    path = tmp_path / "subset.csv"
    path.write_text("\n".join([HEADER] + lines) + "\n")
    return path


def test_existing_build_needs_overwrite(built, data_set):
    root, output_dir, _ = built
    with pytest.raises(UserError, match="--overwrite"):
        build_dataset(_config(root, output_dir))


def test_empty_split_gets_an_empty_shard(data_set, tmp_path):
    root, lines = data_set
    report = build_dataset(_config(root, tmp_path, val_fraction=0.0, test_fraction=0.0,
                                   manifests=(str(_subset_manifest(tmp_path, lines[:6])),)))
    assert report["splits"]["validation"] == {"patients": 0, "cases": 0, "images": 0,
                                              "unlabelled_images": 0}
    assert sum(1 for _ in tf.data.TFRecordDataset(
        str(tmp_path / "validation-00000-of-00001.tfrecord"))) == 0


def test_shards_split_by_size(data_set, tmp_path):
    root, _ = data_set
    report = build_dataset(_config(root, tmp_path, shard_size_mb=2000 / 2**20))
    assert report["shards"]["train"] > 2
    sizes = [os.path.getsize(p) for p in glob.glob(f"{tmp_path}/train-*")]
    assert len(sizes) == report["shards"]["train"]
    assert sum(len(cases) for cases in read_build(tmp_path).values()) == sum(
        split["cases"] for split in report["splits"].values())


def test_case_under_two_patients_is_an_error(data_set, tmp_path):
    root, lines = data_set
    clash = lines[1].replace(",p0,", ",p9,")
    path = _subset_manifest(tmp_path, [lines[0], clash.replace(lines[1].split(",")[0],
                                                               lines[2].split(",")[0])])
    with pytest.raises(ManifestError, match="case 'p0-l0' has patient 'p9'"):
        build_dataset(_config(root, tmp_path / "out", manifests=(str(path),)))


def test_official_split_and_multilabel(data_set, tmp_path):
    root, lines = data_set
    rows = [f"{line},{'test' if 'p1' in line.split(',')[2] else 'train'},"
            f"{int('malignant' in line)},{'' if 'unclear' in line else 0}"
            for line in lines[:25]]
    path = tmp_path / "official.csv"
    path.write_text("\n".join([HEADER + ",split,bad,odd"] + rows) + "\n")
    config = dataclasses.replace(_config(root, tmp_path / "out", manifests=(str(path),)),
                                 label_column="", classes=(), label_columns=("bad", "odd"),
                                 split_column="split")
    report = build_dataset(config)
    cases = read_build(tmp_path / "out", num_labels=2)
    assert {c["patient_id"].decode() for c in cases["test"]} == {
        line.split(",")[2] for line in lines[:25] if line.split(",")[2].startswith("p1")}
    assert report["splits"]["validation"]["cases"] == 0
    for case in cases["train"] + cases["test"]:
        assert case["labels"].shape == case["label_mask"].shape == (len(case["encoded"]), 2)
    info = schema.DatasetInfo.load(str(tmp_path / "out"))
    assert (info.task, info.names) == (schema.MULTILABEL, ["bad", "odd"])
