"""Damaged builds are named: data_prep records each shard's size and SHA-256, the reader checks the
sizes on opening, the checksums with `verify`, and names the shard behind a damaged record met
while training or evaluating; every error says how to rebuild."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from data_prep.config import BuildConfig
from simclr_med.config import OptimConfig, PretrainConfig, TrainConfig
from simclr_med.data import augment, schema
from simclr_med.data.integrity import DamagedBuildError, names_damaged_shards
from simclr_med.data.reader import open_build
from simclr_med.errors import UserError
from simclr_med.stages import evaluate
from simclr_med.stages.pretrain import pretrain
from tests.tiny import TINY

REPO = pathlib.Path(__file__).resolve().parents[2]
TRAIN_SHARD = "train-00000-of-00001.tfrecord"
TEST_SHARD = "test-00000-of-00001.tfrecord"


@pytest.fixture
def build_copy(synthetic_build, tmp_path) -> pathlib.Path:
    """A copy of the synthetic build to damage (the session's build stays intact)."""
    return pathlib.Path(shutil.copytree(synthetic_build, tmp_path / "build"))


def _zero_middle(path: pathlib.Path) -> None:
    """64 zero bytes in the middle of the file: its size stays the same."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(bytes(64))


def _assert_says_how_to_rebuild(message: str, build: pathlib.Path) -> None:
    """The message ends with the build's data_prep command, made to rebuild in place."""
    report = json.loads((build / schema.REPORT_FILE).read_text())
    assert report["output_dir"] != str(build)  # the copy is not where it was built
    rebuild = report["command"].replace(f"--output_dir={report['output_dir']}",
                                        f"--output_dir={build}")
    assert message.endswith(f"(from report.json): {rebuild} --overwrite")
    assert "\n" not in message  # entry points print it as one line


def test_dataset_info_records_every_shard_with_its_size_and_sha256(synthetic_build):
    info = schema.DatasetInfo.load(str(synthetic_build))
    recorded = {shard.file: shard for shards in info.shards.values() for shard in shards}
    assert sorted(recorded) == sorted(p.name for p in synthetic_build.glob("*.tfrecord"))
    assert {split: [s.file for s in shards] for split, shards in info.shards.items()} == {
        split: [p.name for p in sorted(synthetic_build.glob(f"{split}-*"))]
        for split in ("train", "validation", "test")}
    for name, shard in recorded.items():
        content = (synthetic_build / name).read_bytes()
        assert shard.bytes == len(content)
        assert shard.sha256 == hashlib.sha256(content).hexdigest()


def test_the_synthetic_build_records_a_command_that_names_its_final_folders(synthetic_build):
    """It is built in a staging folder and moved: the recorded command must name where it is."""
    words = dict(word.split("=", 1) for word in shlex.split(
        json.loads((synthetic_build / schema.REPORT_FILE).read_text())["command"])[3:])
    assert words["--output_dir"] == str(synthetic_build)
    assert os.path.isfile(words["--manifest"]) and os.path.isdir(words["--image_root"])


@pytest.mark.subprocess
def test_the_recorded_command_gives_the_same_build_config(tmp_path):
    """`BuildConfig.command_line()` (report.json's `command`) parsed by data_prep.build's own flags
    (in a process without TensorFlow) is the same config, paths made absolute."""
    config = BuildConfig(format="generic", manifests=("a.csv", str(tmp_path / "b.csv.gz")),
                         image_root="my images", output_dir="gs://bucket/out", case_column="lesion",
                         label_columns=("bad", "odd"), val_fraction=0.25, split_seed=3,
                         uncertainty="ones", on_error="fail", overwrite=True, progress=False)
    parse = ("import dataclasses, json, sys; from absl import flags; from flags import build_flags;"
             "flags.FLAGS(sys.argv); print(json.dumps(dataclasses.asdict("
             "build_flags.build_config())))")
    command = shlex.split(config.command_line())
    assert command[:3] == ["python", "-m", "data_prep.build"]
    parsed = subprocess.run([sys.executable, "-c", parse, *command[3:]], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=True)
    expected = dataclasses.replace(
        config, manifests=(os.path.abspath("a.csv"), config.manifests[1]),
        image_root=os.path.abspath("my images"), overwrite=False, progress=True)
    assert json.loads(parsed.stdout) == json.loads(json.dumps(dataclasses.asdict(expected)))


@pytest.mark.parametrize("damage", ["truncated", "extended", "missing", "unlisted"])
def test_a_shard_of_the_wrong_size_or_a_stray_one_is_named_on_opening(build_copy, damage):
    shard = build_copy / TRAIN_SHARD
    content = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(content[:-100])
    elif damage == "extended":
        shard.write_bytes(content + bytes(64))
    elif damage == "missing":
        shard.unlink()
    else:  # a shard left from another build
        shutil.copy(shard, build_copy / "train-00001-of-00002.tfrecord")
    expected = {"truncated": f"{shard} is {len(content) - 100} bytes, dataset_info.json records "
                             f"{len(content)} (truncated)",
                "extended": f"{shard} is {len(content) + 64} bytes, dataset_info.json records "
                            f"{len(content)} (extended)",
                "missing": f"{shard} is missing",
                "unlisted": f"{build_copy}/train-00001-of-00002.tfrecord is not one of the train "
                            f"shards dataset_info.json lists"}[damage]
    with pytest.raises(UserError) as raised:
        open_build(str(build_copy))
    assert raised.value.problems == [expected]
    _assert_says_how_to_rebuild(str(raised.value), build_copy)


def test_verify_finds_a_shard_changed_in_place(build_copy):
    _zero_middle(build_copy / TRAIN_SHARD)
    open_build(str(build_copy))  # the size is right: opening alone cannot tell
    with pytest.raises(UserError) as raised:
        open_build(str(build_copy), verify=True)
    [problem] = raised.value.problems
    assert problem.startswith(f"{build_copy / TRAIN_SHARD}: SHA-256 ")
    assert "dataset_info.json (changed in place)" in problem
    _assert_says_how_to_rebuild(str(raised.value), build_copy)


def test_a_build_without_recorded_shards_opens_with_a_note_and_verify_checks_its_records(
        build_copy, caplog):
    info_file = build_copy / schema.DATASET_INFO_FILE
    old = {k: v for k, v in json.loads(info_file.read_text()).items() if k != "shards"}
    info_file.write_text(json.dumps(old))
    report_file = build_copy / schema.REPORT_FILE
    report_file.write_text(json.dumps({k: v for k, v in json.loads(report_file.read_text()).items()
                                       if k != "command"}))
    (build_copy / TRAIN_SHARD).write_bytes((build_copy / TRAIN_SHARD).read_bytes()[:-100])
    with caplog.at_level("WARNING"):
        assert open_build(str(build_copy)).info.shards == {}
    assert "its shards cannot be verified" in caplog.text
    with pytest.raises(UserError) as raised:
        open_build(str(build_copy), verify=True)
    [problem] = raised.value.problems
    assert problem.startswith(f"{build_copy / TRAIN_SHARD}: truncated record at ")
    assert str(raised.value).endswith("Rebuild it with python -m data_prep.build, the flags that "
                                      "made it and --overwrite")


def test_training_and_evaluation_stop_naming_the_damaged_shard(build_copy, tmp_path):
    """64 zero bytes in the middle of the training shard: training runs until its reader meets them
    (the checkpoints before are kept), then stops with an error naming the shard; so does an
    evaluation on a test shard damaged the same way."""
    _zero_middle(build_copy / TRAIN_SHARD)
    source = open_build(str(build_copy))
    model_dir = tmp_path / "run"
    train = TrainConfig(model_dir=str(model_dir), train_batch_size=8, train_steps=100,
                        steps_per_loop=5, checkpoint_steps=5, shuffle_buffer=8)
    with pytest.raises(DamagedBuildError) as raised:
        pretrain(TINY,
                 OptimConfig(optimizer="adam", learning_rate=1e-3), augment.preset("simclr"),
                 source, train, PretrainConfig(), tf.distribute.get_strategy())
    [problem] = raised.value.problems
    assert re.fullmatch(rf"{build_copy / TRAIN_SHARD}: corrupted record at \d+ \(a record's "
                        r"length or CRC does not match: the file changed after it was built\)",
                        problem)
    assert isinstance(raised.value.__cause__, tf.errors.DataLossError)
    _assert_says_how_to_rebuild(str(raised.value), build_copy)
    assert tf.train.latest_checkpoint(str(model_dir))  # it stopped inside the training loop

    _zero_middle(build_copy / TEST_SHARD)
    with pytest.raises(DamagedBuildError) as raised:
        evaluate.evaluate(str(model_dir), source, "test", evaluate.EvalConfig(plots=False))
    assert [problem.split(": ")[0] for problem in raised.value.problems] == [
        str(build_copy / TEST_SHARD), str(build_copy / TRAIN_SHARD)]


def test_a_data_loss_error_from_elsewhere_propagates_unchanged(synthetic_build):
    """E.g. a damaged checkpoint: the build's shards read back intact, so it is not blamed."""
    @names_damaged_shards
    def restore_then_read(source):
        raise tf.errors.DataLossError(None, None, "Checksum does not match")

    with pytest.raises(tf.errors.DataLossError, match="Checksum does not match"):
        restore_then_read(open_build(str(synthetic_build)))
