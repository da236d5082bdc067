"""data_prep.build --runner=beam (Apache Beam's DirectRunner) against the local build: the same
files byte for byte, the same report apart from timings, every row accounted for."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from data_prep import beam_pipeline, build, cases, formats, writer
from data_prep.build import build_dataset
from data_prep.config import BuildConfig
from data_prep.report import BuildError, Ledger
from simclr_med.errors import UserError
from tests import data_root
from tests.data_prep.test_data_prep_build import (EXPECTED_SKIPS, HEADER, _config,
                                                  _subset_manifest, make_data_set)
from tests.data_prep.test_data_prep_formats import CHEXPERT_HEADER, chexpert_row

REPO = pathlib.Path(__file__).resolve().parents[2]
TWO_PROCESSES = ("--runner=DirectRunner", "--direct_num_workers=2",
                 "--direct_running_mode=multi_processing")
TIMINGS = ("seconds", "images_per_second", "stage_seconds")
OUTPUT_FILES = ("*.tfrecord", "dataset_info.json", "label_fractions.json")


def _files(output_dir) -> dict[str, bytes]:
    """Everything a build leaves in its folder but report.json, by name."""
    paths = sorted(path for pattern in OUTPUT_FILES
                   for path in pathlib.Path(output_dir).glob(pattern))
    return {path.name: path.read_bytes() for path in paths}


def _report(output_dir) -> dict:
    """report.json without its timings and with the output folder as `OUT`."""
    text = (pathlib.Path(output_dir) / "report.json").read_text()
    report = json.loads(text.replace(str(output_dir), "OUT"))
    return {key: value for key, value in report.items() if key not in TIMINGS}


def assert_same_build(local_dir, beam_dir) -> dict:
    assert sorted(os.listdir(beam_dir)) == sorted(os.listdir(local_dir))  # no work files left
    local, beam = _files(local_dir), _files(beam_dir)
    assert list(beam) == list(local)
    for name in local:
        assert beam[name] == local[name], name
    assert _report(beam_dir) == _report(local_dir)
    return _report(beam_dir)


def _beam_build(config: BuildConfig, output_dir, beam_args=()) -> dict:
    return build_dataset(dataclasses.replace(config, output_dir=str(output_dir), runner="beam"),
                         beam_args=beam_args)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("name, fmt, folder, manifest", [
    ("nih", "nih", data_root.NIH_FOLDER, "Data_Entry_2017_v2020.csv.gz"),
    ("ham", "ham10000", data_root.HAM_FOLDER, "HAM10000_metadata.csv")])
def test_two_workers_build_the_real_data_sets_as_the_local_build(
        apache_beam, real_data, request, tmp_path, name, fmt, folder, manifest):
    local_dir = request.getfixturevalue(f"{name}_build")  # tests/conftest.py, num_workers=1
    root = real_data / folder
    config = BuildConfig(format=fmt, manifests=(str(root / manifest),), image_root=str(root),
                         output_dir=str(local_dir), num_workers=1, progress=False)
    _beam_build(config, tmp_path / "beam", TWO_PROCESSES)
    report = assert_same_build(local_dir, tmp_path / "beam")
    expected = {"nih": (112120, 1000, {"missing_file": 111120}),
                "ham": (10015, 1164, {"missing_file": 8851})}[name]
    assert (report["rows_in"], report["images_written"], report["skipped"]) == expected


@pytest.fixture(scope="module")
def data_set(tmp_path_factory):
    """test_data_prep_build's small data set with one row per way of failing."""
    root = tmp_path_factory.mktemp("data") / "root"
    lines = make_data_set(root)
    (root / "manifest.csv").write_text("\n".join([HEADER] + lines) + "\n")
    return root, lines


@pytest.mark.parametrize("shard_size_mb, beam_args", [
    (128.0, ()),  # one shard a split, the DirectRunner in this process
    pytest.param(2000 / 2**20, TWO_PROCESSES,  # several, two worker processes
                 marks=(pytest.mark.multiprocess, pytest.mark.slow))])
def test_every_skip_reason_is_counted_through_beam_as_locally(apache_beam, data_set, tmp_path,
                                                              shard_size_mb, beam_args):
    root, _ = data_set
    config = _config(root, tmp_path / "local", shard_size_mb=shard_size_mb)
    build_dataset(config)
    report = _beam_build(config, tmp_path / "beam", beam_args)
    assert report["skipped"] == EXPECTED_SKIPS
    assert report["rows_in"] == report["images_written"] + sum(EXPECTED_SKIPS.values())
    assert report["empty_cases"] == 1
    assert (report["shards"]["train"] > 2) == (shard_size_mb < 1)
    assert_same_build(tmp_path / "local", tmp_path / "beam")


def test_on_error_fail_names_the_row_the_local_build_names_and_leaves_no_shard(
        apache_beam, data_set, tmp_path):
    root, lines = data_set
    # Rows 2-6 are good, rows 7 and 8 (garbage.png, truncated.png) corrupt, in two cases: the
    # first of them in write order (case order, as the local build reads them) is named.
    subset = _subset_manifest(tmp_path, lines[:5] + lines[-12:-10])
    config = _config(root, tmp_path / "local", on_error="fail", manifests=(str(subset),))
    with pytest.raises(BuildError, match=r"subset.csv:[78]: corrupt_image: ") as local:
        build_dataset(config)
    with pytest.raises(BuildError) as beam:
        _beam_build(config, tmp_path / "beam")
    assert str(beam.value) == str(local.value)
    assert os.listdir(tmp_path / "beam") == []  # no shard, no work file


def test_a_chexpert_sized_table_is_planned_in_seconds(tmp_path, monkeypatch):
    """223,414 rows (CheXpert's training table) through the planning the launcher does for Beam
    and the pipeline's PlanShards step, with the images' outcomes made up (none is read)."""
    lines = [CHEXPERT_HEADER]
    for index in range(223_414):
        patient, study, view = index // 4 + 1, index // 2 % 2 + 1, ("frontal", "lateral")[index % 2]
        lines.append(chexpert_row(f"CheXpert-v1.0-small/train/patient{patient:05d}/study{study}/"
                                  f"view1_{view}.jpg", view=view.title(),
                                  Edema=("1.0", "0.0", "-1.0", "")[patient % 4]))
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    config = BuildConfig(format="chexpert", manifests=(str(tmp_path / "train.csv"),),
                         image_root=str(tmp_path), output_dir=str(tmp_path), case_key="study",
                         progress=False)
    started = time.perf_counter()
    ledger = Ledger(config.on_error)
    # Every file is there with 3 kB (none exists: locating them is the one step left out).
    monkeypatch.setattr(build, "_locate", lambda rows, root, ledger: (
        cases.PlannedImage(row, os.path.join(root, row.path), 3000) for row in rows))
    planned = build.plan_cases(config, formats.make_format(config), str(tmp_path), ledger, {})
    ordered = cases.write_order(planned, config.split_seed)
    assert ledger.rows_in == sum(len(case.images) for case in ordered) == 223_414
    # What EncodeCases would send PlanShards: each 97th image corrupt, records of 2.5 kB an image.
    sizes, position = [], 0
    for order, case in enumerate(ordered):
        skips = []
        for index, image in enumerate(case.images):
            position += 1
            if position % 97 == 0:
                skips.append((index, "corrupt_image", image.row.ref, "made up"))
        written = len(case.images) - len(skips)
        sizes.append((order, case.split, 2500 * written + 100 * bool(written), tuple(skips)))
    shard_of = beam_pipeline.plan_shards(
        sizes[::-1], cases.estimated_bytes(ordered), shard_bytes=2**27, on_error="skip",
        plan_path=str(tmp_path / beam_pipeline.PLAN_FILE))  # in any order, as from workers
    plan = json.loads((tmp_path / beam_pipeline.PLAN_FILE).read_text())
    written = cases.Written(ledger)
    beam_pipeline._replay(ordered, plan["skips"], written)
    seconds = time.perf_counter() - started
    report = ledger.report({}, seconds)  # raises unless every row is accounted for
    assert report["skipped"] == {"corrupt_image": 223_414 // 97}
    # The local builder's cut, streaming the records in write order.
    streaming = {split: writer.ShardPlan(size, 2**27)
                 for split, size in cases.estimated_bytes(ordered).items()}
    assert shard_of == {order: streaming[split].assign(size) for order, split, size, _ in sizes
                        if size}
    assert plan["shards"] == {split: shards.num_shards for split, shards in streaming.items()}
    assert plan["shards"]["train"] >= 3  # 3 kB x 223,414 images at 128 MiB a shard
    # About 10 s on 2 idle cores (25-45 s on a busy machine); an O(n^2) step would take hours.
    assert seconds < 90, f"{seconds:.1f} s to plan 223,414 rows"


def test_without_apache_beam_the_beam_runner_names_the_extra(data_set, tmp_path, monkeypatch):
    root, _ = data_set
    monkeypatch.setattr(beam_pipeline, "beam", None)
    with pytest.raises(UserError, match=r"pip install 'simclr-med\[beam\]'"):
        _beam_build(_config(root, tmp_path), tmp_path)
    assert not list(tmp_path.glob("*.tfrecord*"))


def test_beam_is_installed(apache_beam):
    """Skips without the `beam` extra; fails instead under SIMCLR_MED_REQUIRE_DATA=1 (CI)."""
    assert apache_beam.__version__


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("require, outcome", [("", "1 skipped"), ("1", "1 error")])
def test_missing_apache_beam_skips_unless_required(tmp_path, require, outcome):
    (tmp_path / "apache_beam").mkdir()  # a package that fails to import, as if not installed
    (tmp_path / "apache_beam" / "__init__.py").write_text("raise ImportError('no beam')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
           "SIMCLR_MED_REQUIRE_DATA": require, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-rs",
         f"{__file__}::test_beam_is_installed"], capture_output=True, text=True, cwd=REPO,
        env=env, timeout=300)
    assert outcome in result.stdout, result.stdout + result.stderr
    assert "apache-beam is not installed: pip install 'simclr-med[beam]'" in result.stdout


@pytest.mark.slow
@pytest.mark.subprocess
def test_command_line_passes_the_options_after_double_dash_to_beam(apache_beam, data_set,
                                                                    tmp_path):
    root, _ = data_set
    flags = [sys.executable, "-m", "data_prep.build", "--format=generic",
             f"--manifest={root / 'manifest.csv'}", f"--image_root={root}",
             "--case_column=lesion", "--patient_column=patient", "--label_column=diagnosis",
             "--classes=benign,malignant,unclear", "--val_fraction=0.2", "--test_fraction=0.2",
             "--max_image_pixels=5000", "--noprogress"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for runner, output in (("local", "local"), ("beam", "beam")):
        extra = ["--", "--runner=DirectRunner"] if runner == "beam" else []
        result = subprocess.run([*flags, f"--output_dir={tmp_path / output}", f"--runner={runner}",
                                 "--num_workers=1", *extra], capture_output=True, text=True,
                                env=env, timeout=300, cwd=REPO)
        assert result.returncode == 0, result.stderr
    assert_same_build(tmp_path / "local", tmp_path / "beam")
    result = subprocess.run([*flags, f"--output_dir={tmp_path / 'stray'}", "--",
                             "--runner=DirectRunner"], capture_output=True, text=True, env=env,
                            timeout=300, cwd=REPO)
    assert result.returncode == 2
    assert "only --runner=beam takes arguments" in result.stderr.strip().splitlines()[-1]


def test_images_and_manifest_in_a_bucket(apache_beam, data_set, tmp_path):
    """The image root and the manifest on a file system TensorFlow reads by URL (here its
    in-memory `ram://`, which the in-process DirectRunner shares): the same records as locally."""
    root, _ = data_set
    bucket = f"ram://simclr-med-test/{tmp_path.name}/root"
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():  # a bucket has no links
            tf.io.gfile.makedirs(f"{bucket}/{path.parent.relative_to(root)}")
            tf.io.gfile.copy(str(path), f"{bucket}/{path.relative_to(root)}")
    local = build_dataset(_config(root, tmp_path / "local"))
    config = dataclasses.replace(_config(root, tmp_path / "beam"), image_root=bucket,
                                 manifests=(f"{bucket}/manifest.csv",))
    with pytest.raises(UserError, match="the local runner reads images from a local folder"):
        build_dataset(config)
    beam = _beam_build(config, tmp_path / "beam")
    # img/link.png, a link out of the root locally, is not in the bucket.
    assert beam["skipped"] == {**EXPECTED_SKIPS, "outside_root": 1, "missing_file": 2}
    assert beam["images_written"] == local["images_written"]
    assert _files(tmp_path / "beam") == _files(tmp_path / "local")
