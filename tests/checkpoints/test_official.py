"""Loading the official SimCLR TF2 checkpoints: the reference's own fixtures, every output within
OUTPUT_TOLERANCE of its tensor's largest magnitude."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from simclr_med.checkpoints import native
from simclr_med.checkpoints import official as rc
from simclr_med.config import ModelConfig
from simclr_med.models.simclr import SimCLRModel

REPO = pathlib.Path(__file__).resolve().parents[2]

# folder -> what its README says it is: depth, width, sk_ratio, CIFAR stem, projection layers.
FIXTURES = {
    "r50_w025_sk0": (50, 0.25, 0.0, False, 3),
    "r50_w025_sk00625": (50, 0.25, 0.0625, False, 3),
    "r18_w025_cifar": (18, 0.25, 0.0, True, 3),
    "r50_w025_sk0_proj2": (50, 0.25, 0.0, False, 2),
}
SOURCES = [*FIXTURES, "r50_w025_sk0/saved_model"]
SMALLEST = "r18_w025_cifar"
# Element-wise |ours - reference| <= OUTPUT_TOLERANCE * max |reference| per endpoint. Measured on
# the four fixtures: at most 8.7e-7 (oneDNN on and off). An element-wise relative bound cannot
# hold in float32: near-zero activations (|x| ~ 1e-6) carry the same absolute rounding error.
OUTPUT_TOLERANCE = 2e-6


@pytest.fixture(scope="module")
def model_for():
    """Builds each architecture once; every request zeroes all variables first, so a load that
    assigned nothing cannot match the expected outputs."""
    built: dict = {}

    def get(config: ModelConfig, num_classes: int) -> SimCLRModel:
        key = (config, num_classes)
        if key not in built:
            built[key] = SimCLRModel(config, num_classes)
            built[key].build_for_image_size()
        for variable in built[key].variables:
            variable.assign(tf.zeros(variable.shape, variable.dtype))
        return built[key]
    return get


def reference_model(model_for, folder: pathlib.Path,
                    architecture: rc.ReferenceArchitecture) -> SimCLRModel:
    image_size = np.load(folder / "inputs.npy").shape[1]
    return model_for(architecture.model_config(image_size), architecture.num_classes)


def assert_matches_expected(model: SimCLRModel, folder: pathlib.Path, keys=None) -> None:
    expected = np.load(folder / "expected.npz")
    outputs = model(np.load(folder / "inputs.npy"), training=False)
    for key in keys or expected.files:
        np.testing.assert_allclose(outputs[key].numpy(), expected[key], rtol=0,
                                   atol=OUTPUT_TOLERANCE * np.abs(expected[key]).max(),
                                   err_msg=f"{folder.name} {key}")


@pytest.mark.parametrize("source", SOURCES)
def test_every_fixture_loads_and_matches_the_reference_outputs(simclr_tf2_fixtures, model_for,
                                                               source):
    path = simclr_tf2_fixtures / source
    folder = simclr_tf2_fixtures / source.split("/")[0]
    assert rc.is_reference_checkpoint(str(path))
    architecture = rc.infer_architecture(str(path))
    assert (architecture.resnet_depth, architecture.width_multiplier, architecture.sk_ratio,
            architecture.cifar_stem, architecture.num_proj_layers) == FIXTURES[folder.name]
    assert (architecture.proj_out_dim, architecture.num_classes) == (128, 10)

    model = reference_model(model_for, folder, architecture)
    report = rc.load_reference_weights(model, str(path))
    assert report.loaded == len(model.variables)
    assert_matches_expected(model, folder)


def test_saved_model_folders_resolve_at_every_level(simclr_tf2_fixtures):
    folder = simclr_tf2_fixtures / "r50_w025_sk0"
    variables = str(folder / "saved_model" / "3" / "variables" / "variables")
    assert rc.resolve_prefix(str(folder / "saved_model")) == variables
    assert rc.resolve_prefix(str(folder / "saved_model" / "3")) == variables
    # A model_dir holding both: the training checkpoint wins.
    assert rc.resolve_prefix(str(folder)) == str(folder / "ckpt-3")


def test_another_depth_or_width_fails_naming_both(simclr_tf2_fixtures):
    model = SimCLRModel(ModelConfig(resnet_depth=18, width_multiplier=1.0, image_size=64), 10)
    with pytest.raises(rc.ReferenceCheckpointError) as error:
        rc.load_reference_weights(model, str(simclr_tf2_fixtures / "r50_w025_sk0"))
    message = str(error.value)
    assert re.search(r"checkpoint has resnet_depth=50, width_multiplier=0\.25; "
                     r"the requested model has resnet_depth=18, width_multiplier=1\b", message)
    assert not model.variables  # refused before building or assigning anything


def test_every_architecture_difference_is_named(simclr_tf2_fixtures):
    found = rc.infer_architecture(str(simclr_tf2_fixtures / "r50_w025_sk00625"))
    wanted = ModelConfig(resnet_depth=101, width_multiplier=0.25, sk_ratio=0.0, image_size=32,
                         num_proj_layers=2, proj_out_dim=64)
    message = rc.architecture_mismatch(found, wanted, num_classes=5)
    for text in ("resnet_depth=50", "resnet_depth=101", "sk_ratio=0.0625", "sk_ratio=0",
                 "ImageNet stem", "CIFAR stem", "num_proj_layers=3", "num_proj_layers=2",
                 "proj_out_dim=128", "proj_out_dim=64", "num_classes=10", "num_classes=5"):
        assert text in message
    assert "width_multiplier" not in message
    # A different SK ratio that gives the same squeeze widths builds the same network.
    same = dataclasses.replace(found.model_config(64), sk_ratio=0.1)
    assert rc.architecture_mismatch(found, same, num_classes=10) is None


def test_image_size_must_fit_the_stem(simclr_tf2_fixtures):
    found = rc.infer_architecture(str(simclr_tf2_fixtures / SMALLEST))
    with pytest.raises(rc.ReferenceCheckpointError, match="CIFAR stem.*image_size=64"):
        found.model_config(64)


def copy_fixture(fixtures: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / SMALLEST
    shutil.copytree(fixtures / SMALLEST, folder)
    return folder


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_damaged_checkpoint_data_gives_an_error_naming_the_file(simclr_tf2_fixtures, tmp_path,
                                                                 model_for, damage):
    folder = copy_fixture(simclr_tf2_fixtures, tmp_path)
    data = folder / "ckpt-3.data-00000-of-00001"
    with open(data, "r+b") as f:
        if damage == "truncate":
            f.truncate(data.stat().st_size // 2)
        else:
            f.seek(data.stat().st_size // 3)
            f.write(b"\xff" * 4096)
    intact = simclr_tf2_fixtures / SMALLEST
    model = reference_model(model_for, intact, rc.infer_architecture(str(intact)))
    with pytest.raises(rc.ReferenceCheckpointError, match=re.escape(str(data))):
        rc.load_reference_weights(model, str(folder))


def test_damaged_checkpoint_index_gives_an_error_naming_the_file(simclr_tf2_fixtures, tmp_path):
    folder = copy_fixture(simclr_tf2_fixtures, tmp_path)
    index = folder / "ckpt-3.index"
    index.write_bytes(index.read_bytes()[:1000])
    with pytest.raises(rc.ReferenceCheckpointError, match=re.escape(str(index))):
        rc.infer_architecture(str(folder))
    with pytest.raises(rc.ReferenceCheckpointError, match="no checkpoint"):
        rc.infer_architecture(str(tmp_path / "missing"))


def write_object_paths(prefix: pathlib.Path, tensors: dict[str, np.ndarray]) -> str:
    """Saves `tensors` as a TF2 checkpoint whose object graph has exactly these paths."""
    root = tf.Module()
    for path, value in tensors.items():
        *parents, leaf = path.split("/")
        node = root
        for name in parents:
            if not hasattr(node, name):
                setattr(node, name, tf.Module())
            node = getattr(node, name)
        setattr(node, leaf, tf.Variable(value))
    return tf.train.Checkpoint(model=root.model).write(str(prefix))


def fixture_tensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
    variables = rc.read_reference_variables(str(folder))
    return {path: variables.read(path) for path in variables.shapes}


def test_missing_and_unused_keys_are_listed(simclr_tf2_fixtures, tmp_path, model_for):
    tensors = fixture_tensors(simclr_tf2_fixtures / SMALLEST)
    removed = "model/resnet_model/block_groups/2/layers/1/conv2d_bn_layers/3/bn/moving_variance"
    added = "model/resnet_model/block_groups/2/layers/1/extra/kernel"
    tensors[added] = tensors.pop(removed)
    prefix = write_object_paths(tmp_path / "ckpt", tensors)
    model = reference_model(model_for, simclr_tf2_fixtures / SMALLEST,
                            rc.infer_architecture(prefix))
    with pytest.raises(rc.ReferenceCheckpointError) as error:
        rc.load_reference_weights(model, prefix)
    assert re.search(rf"1 model variables the checkpoint lacks: {removed}\b", str(error.value))
    assert re.search(rf"1 checkpoint variables nothing in the model takes: {added}\b",
                     str(error.value))


def test_a_checkpoint_without_projection_head_loads_and_says_the_head_starts_fresh(
        simclr_tf2_fixtures, tmp_path, model_for):
    folder = simclr_tf2_fixtures / SMALLEST
    tensors = {path: value for path, value in fixture_tensors(folder).items()
               if not path.startswith("model/_projection_head/")}
    prefix = write_object_paths(tmp_path / "ckpt", tensors)
    architecture = rc.infer_architecture(prefix)
    assert (architecture.num_proj_layers, architecture.proj_out_dim) == (0, 0)
    model = reference_model(model_for, folder, architecture)
    report = rc.load_reference_weights(model, prefix)
    assert "no projection head" in str(report) and "starts fresh" in str(report)
    assert_matches_expected(model, folder, ["block_group4", "final_avg_pool", "logits_sup"])
    assert not any(np.any(v.numpy()) for v in model.projection_head.variables)


def test_supervised_head_and_upper_projection_layers_can_be_left_fresh(simclr_tf2_fixtures,
                                                                        model_for):
    folder = simclr_tf2_fixtures / SMALLEST
    config = rc.infer_architecture(str(folder)).model_config()
    with pytest.raises(rc.ReferenceCheckpointError, match="num_classes=10.*num_classes=3"):
        rc.load_reference_weights(SimCLRModel(config, 3), str(folder))  # a new 3-class task
    model = model_for(config, 10)
    report = rc.load_reference_weights(model, str(folder), projection_layers=1,
                                       include_supervised_head=False)
    assert "loaded 1 of the checkpoint's 3 projection-head layers" in str(report)
    assert "supervised head not loaded (checkpoint: 10 classes)" in str(report)
    assert_matches_expected(model, folder, ["block_group4", "final_avg_pool"])
    fresh = model.supervised_head.variables + model.projection_head.linear_layers[1].variables
    assert not any(np.any(v.numpy()) for v in fresh)


def with_extra_blocks(shapes: dict, counts: tuple[int, ...]) -> dict:
    """The shapes of a deeper network: each group's last block repeated up to `counts`."""
    pattern = re.compile(r"(model/resnet_model/block_groups/(\d+)/layers/)(\d+)(/.*)")
    last = {}
    for path in shapes:
        if match := pattern.fullmatch(path):
            group, block = int(match[2]), int(match[3])
            last[group] = max(last.get(group, 0), block)
    deeper = dict(shapes)
    for path, shape in shapes.items():
        match = pattern.fullmatch(path)
        if match and int(match[3]) == last[int(match[2])]:
            for block in range(last[int(match[2])] + 1, counts[int(match[2])]):
                deeper[f"{match[1]}{block}{match[4]}"] = shape
    return deeper


@pytest.mark.parametrize("source, counts, depth", [
    ("r18_w025_cifar", (3, 4, 6, 3), 34),
    ("r50_w025_sk0", (3, 4, 23, 3), 101),
    ("r50_w025_sk00625", (3, 8, 36, 3), 152),
    ("r50_w025_sk0", (3, 24, 36, 3), 200),
])
def test_depth_is_inferred_from_the_blocks_per_group(simclr_tf2_fixtures, source, counts, depth):
    shapes = rc.read_reference_variables(str(simclr_tf2_fixtures / source)).shapes
    architecture = rc.infer_architecture_from_shapes(with_extra_blocks(shapes, counts))
    assert architecture.resnet_depth == depth
    assert architecture.width_multiplier == 0.25


def test_a_layout_of_no_known_depth_is_refused(simclr_tf2_fixtures):
    shapes = rc.read_reference_variables(str(simclr_tf2_fixtures / "r50_w025_sk0")).shapes
    with pytest.raises(rc.ReferenceCheckpointError, match=r"\(3, 4, 7, 3\).*match no ResNet"):
        rc.infer_architecture_from_shapes(with_extra_blocks(shapes, (3, 4, 7, 3)))


def widened(shapes: dict, factor: int, sk_ratio: float) -> dict:
    """The shapes of the same network `factor` times as wide; SK squeeze layers recomputed as
    m = max(int(f * sk_ratio), 32)."""
    squeeze = re.compile(r"(.*/conv_relu_dropblock_layers/3/)(conv2d_0/kernel|conv2d_1/kernel|"
                         r"batch_norm_relu_1/bn/\w+)")
    wide = {path: tuple(d if (len(shape) == 4 and i < 2) else d * factor
                        for i, d in enumerate(shape)) for path, shape in shapes.items()}
    for path, shape in shapes.items():
        if match := squeeze.fullmatch(path):
            f = shapes[f"{match[1]}conv2d_0/kernel"][2] * factor
            m = max(int(f * sk_ratio), 32)
            wide[path] = {"conv2d_0/kernel": (1, 1, f, m),
                          "conv2d_1/kernel": (1, 1, m, 2 * f)}.get(match[2], (m,))
    return wide


def test_fractional_width_and_sk_ratio_are_inferred(simclr_tf2_fixtures):
    plain = rc.read_reference_variables(str(simclr_tf2_fixtures / SMALLEST)).shapes
    assert rc.infer_architecture_from_shapes(widened(plain, 3, 0)).width_multiplier == 0.75
    sk = rc.read_reference_variables(str(simclr_tf2_fixtures / "r50_w025_sk00625")).shapes
    assert rc.infer_architecture(str(simclr_tf2_fixtures / "r50_w025_sk00625")).assumptions
    architecture = rc.infer_architecture_from_shapes(widened(sk, 8, 0.1))  # width 2, m up to 102
    assert (architecture.width_multiplier, architecture.sk_ratio) == (2.0, 0.1)
    assert architecture.assumptions == ()


@pytest.fixture(scope="module")
def converted(simclr_tf2_fixtures, tmp_path_factory) -> tuple[pathlib.Path, str]:
    """The smallest fixture through `python -m simclr_med.convert_checkpoint`, and its stdout."""
    output_dir = tmp_path_factory.mktemp("converted")
    completed = subprocess.run(
        [sys.executable, "-m", "simclr_med.convert_checkpoint",
         f"--source={simclr_tf2_fixtures / SMALLEST}", f"--output_dir={output_dir}"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
        timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return output_dir, completed.stdout


@pytest.mark.subprocess
def test_convert_command_round_trip(simclr_tf2_fixtures, converted, model_for):
    folder = simclr_tf2_fixtures / SMALLEST
    output_dir, stdout = converted
    assert "loaded 121 variables" in stdout

    record = native.ModelRecord.load(str(output_dir))
    assert (record.source, record.num_classes) == (str(folder), 10)
    assert not rc.is_reference_checkpoint(str(output_dir))
    model = model_for(record.model, record.num_classes)
    native.make_checkpoint(model).restore(
        native.resolve_checkpoint(str(output_dir))).assert_consumed()
    assert_matches_expected(model, folder)


@pytest.mark.subprocess
def test_pretraining_starts_from_a_converted_checkpoint(converted, synthetic_build, tmp_path,
                                                        model_for):
    """run.py --mode=pretrain --init_checkpoint=<converted fixture> trains and checkpoints in this
    package's format; at learning rate 0 its convolution kernels are the fixture's."""
    output_dir, _ = converted
    record = native.ModelRecord.load(str(output_dir))
    run_dir = tmp_path / "pretrain"
    completed = subprocess.run(
        [sys.executable, "run.py", "--mode=pretrain", f"--model_dir={run_dir}",
         f"--data_dir={synthetic_build}", f"--init_checkpoint={output_dir}",
         "--resnet_depth=18", "--width_multiplier=0.25", "--image_size=32",
         f"--proj_out_dim={record.model.proj_out_dim}", "--train_batch_size=8",
         "--train_steps=2", "--steps_per_loop=1", "--learning_rate=0"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "initialised backbone and 3 projection-head layer(s)" in completed.stderr

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 2 and np.isfinite(summary["loss"])
    trained = native.ModelRecord.load(str(run_dir))
    assert trained.source == "pretrain" and trained.model == record.model

    def kernels(folder: pathlib.Path, num_classes: int) -> list[np.ndarray]:
        model = model_for(record.model, num_classes)
        native.make_checkpoint(model).restore(
            native.resolve_checkpoint(str(folder))).expect_partial()
        return [v.numpy() for v in model.resnet.trainable_variables if v.path.endswith("kernel")]

    start, after = kernels(output_dir, record.num_classes), kernels(run_dir, trained.num_classes)
    assert len(start) == len(after) > 20
    for index, (before, now) in enumerate(zip(start, after)):
        assert np.any(before != 0), index  # model_for zeroes variables: the restore assigned
        np.testing.assert_array_equal(now, before, err_msg=f"kernel {index}")
