"""Pretraining runs: outputs, resume (also after SIGKILL), determinism, non-finite loss,
multi-worker against one device."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_med.checkpoints.native import ModelRecord, make_checkpoint
from simclr_med.config import OptimConfig, PretrainConfig, TrainConfig
from simclr_med.data import augment
from simclr_med.data.pretrain_input import PairSpec, pair_dataset
from simclr_med.data.reader import open_build
from simclr_med.models.simclr import SimCLRModel, no_decay_variables
from simclr_med.stages import evaluate
from simclr_med.stages.pretrain import contrastive_gradients, pretrain
from simclr_med.training.loop import NonFiniteLossError
from simclr_med.training.optimizers import build_optimizer
from tests.tiny import TINY

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY_MODEL = ["--resnet_depth=18", "--width_multiplier=0.25", "--image_size=32"]
TINY_RUN = TINY_MODEL + ["--train_batch_size=16", "--optimizer=adam", "--learning_rate=0.0002",
                         "--learning_rate_scaling=sqrt", "--temperature=0.5", "--seed=3"]
# These tests compare CPU processes; two of them at once could not share one GPU's memory.
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}


def _run_py(*args: str, env: dict | None = None, log: pathlib.Path | None = None,
            command: tuple[str, ...] = (str(REPO / "run.py"),)) -> subprocess.Popen:
    """`run.py --mode=pretrain ARGS` (or another `command`), its output piped or in `log`."""
    output = open(log, "w") if log else subprocess.PIPE
    process = subprocess.Popen([sys.executable, *command, "--mode=pretrain", *args], cwd=REPO,
                               env={**os.environ, **CPU_ONLY, **(env or {})}, stdout=output,
                               stderr=subprocess.STDOUT, text=True)
    if log:
        output.close()  # the child has its own copy
    return process


def _finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def _summary(model_dir: pathlib.Path, name: str = "summary.json") -> dict:
    return json.loads((model_dir / name).read_text())


def _events(model_dir: pathlib.Path):
    """(step, summary value) of every TensorBoard event in `model_dir`."""
    for path in model_dir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                yield event.step, value


# The victim of the kill test: run.py, SIGKILLed when it starts to save checkpoint KILL_AT, so
# the steps since the previous checkpoint are lost, exactly as a kill between saves loses them.
KILL_AT = 6
KILL_WHEN_SAVING = f"""
import os, runpy, signal, sys
import tensorflow as tf

save = tf.train.CheckpointManager.save

def save_or_die(self, checkpoint_number=None, *args, **kwargs):
    if checkpoint_number == {KILL_AT}:
        print("killed when saving step", checkpoint_number, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return save(self, checkpoint_number, *args, **kwargs)

tf.train.CheckpointManager.save = save_or_die
sys.argv[0] = {str(REPO / "run.py")!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.subprocess
def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(synthetic_build, tmp_path):
    """SIGKILL at step 6, after steps 5-6 ran but before their checkpoint: run again, it resumes
    from step 4 and, with deterministic ops, ends bit-identical to a run never interrupted."""
    common = [*TINY_RUN, f"--data_dir={synthetic_build}", "--train_steps=8", "--deterministic",
              "--checkpoint_steps=2", "--steps_per_loop=2"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    uninterrupted = _run_py(*common, f"--model_dir={straight}")
    victim = _run_py(*common, f"--model_dir={killed}", command=("-c", KILL_WHEN_SAVING))
    output = victim.communicate(timeout=300)[0]
    assert victim.returncode == -signal.SIGKILL, output[-3000:]
    assert f"killed when saving step {KILL_AT}" in output  # steps 5-6 ran, then were lost
    assert _latest_step(killed) == KILL_AT - 2
    _finish(uninterrupted)

    output = _finish(_run_py(*common, f"--model_dir={killed}"))
    resumed = _summary(killed)
    assert resumed["resumed_from_step"] == KILL_AT - 2
    assert resumed["global_step"] == 8
    assert resumed["weights_sha256"] == _summary(straight)["weights_sha256"]
    assert "pretraining done: step 8" in output

    # What a user of the first run finds in its model_dir.
    for name in ("flags.json", "model_config.json", "checkpoint", "ckpt-8.index"):
        assert (straight / name).exists(), name
    assert json.loads((straight / "flags.json").read_text())["train_steps"] == 8
    summary = _summary(straight)
    assert summary["mode"] == "pretrain" and summary["images_per_second"] > 0
    assert summary["checkpoints_saved"] == 4 and summary["checkpoint_seconds"] > 0  # every 2
    tags = {value.tag for _, value in _events(straight)}
    assert {"loss", "contrast_accuracy", "contrast_entropy", "learning_rate", "weight_norm",
            "images_per_second", "augmented_pairs"} <= tags


def _latest_step(model_dir: pathlib.Path) -> int:
    """The step of the checkpoint the `checkpoint` state file names (0 if none); a checkpoint's
    files appear before the state file names it."""
    latest = tf.train.latest_checkpoint(str(model_dir))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def _tiny_pretrain(build: pathlib.Path, model_dir: pathlib.Path, steps: int,
                   temperature: float = 0.5, augment_on: str = "host",
                   strategy: tf.distribute.Strategy | None = None) -> dict:
    return pretrain(
        TINY,
        OptimConfig(optimizer="adam", learning_rate=1e-3, learning_rate_scaling="sqrt"),
        augment.preset("simclr"), open_build(str(build)),
        TrainConfig(model_dir=str(model_dir), train_batch_size=8, train_steps=steps,
                    steps_per_loop=2, checkpoint_steps=2),
        PretrainConfig(temperature=temperature, augment_on=augment_on),
        strategy or tf.distribute.get_strategy())


@pytest.mark.parametrize("replicas", [1, 2])
def test_augmenting_on_the_device_trains_on_the_host_paths_views(synthetic_build, tmp_path,
                                                                 request, replicas):
    """The step finishes the shipped uint8 crops into the views the host would have made, also
    on each replica's share of the batch: the same loss but for the crops' rounding to 8 bits
    (measured: 1e-4 relative over the first two steps; later steps drift apart as any two
    slightly different inputs do)."""
    strategy = request.getfixturevalue("two_cpu_strategy") if replicas == 2 else None
    host = _tiny_pretrain(synthetic_build, tmp_path / "host", steps=2, strategy=strategy)
    device = _tiny_pretrain(synthetic_build, tmp_path / "device", steps=2, augment_on="device",
                            strategy=strategy)
    assert device["loss"] == pytest.approx(host["loss"], rel=1e-3)
    assert any(value.tag == "augmented_pairs" for _, value in _events(tmp_path / "device"))


def test_more_steps_resume_and_a_non_finite_loss_keeps_the_last_checkpoint(synthetic_build,
                                                                            tmp_path):
    first = _tiny_pretrain(synthetic_build, tmp_path, steps=2)
    assert first["global_step"] == 2 and first["resumed_from_step"] == 0
    more = _tiny_pretrain(synthetic_build, tmp_path, steps=4)
    assert more["resumed_from_step"] == 2 and more["global_step"] == 4

    saved = {p.name: p.read_bytes() for p in tmp_path.glob("ckpt-4*")}
    # A temperature that underflows to zero makes every logit infinite: the loss is NaN.
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        _tiny_pretrain(synthetic_build, tmp_path, steps=6, temperature=1e-45)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-4")
    assert {p.name: p.read_bytes() for p in tmp_path.glob("ckpt-4*")} == saved
    assert not list(tmp_path.glob("ckpt-6*"))


def _free_ports(count: int) -> list[int]:
    """Ports free on every interface (the workers' gRPC servers bind 0.0.0.0) a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _wait_all(processes: list[subprocess.Popen], timeout: float = 600) -> None:
    """Waits for every process; once one fails, kills the others (they would wait for it)."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in processes):
        if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in processes):
            for p in processes:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.5)


def _train_cluster(args: list[str], logs: pathlib.Path, attempts: int = 3) -> None:
    """Runs a 2-worker cluster of `run.py ARGS` to completion. Another process may take a port
    between `_free_ports` and a worker's bind: the cluster then starts again on new ports."""
    for attempt in range(attempts):
        cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
        paths = [logs / f"worker{i}_attempt{attempt}.log" for i in range(2)]
        workers = [_run_py(*args, log=path, env={"TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": i}})})
            for i, path in enumerate(paths)]
        _wait_all(workers)
        outputs = [path.read_text() for path in paths]
        if all(worker.returncode == 0 for worker in workers):
            return
        if not any("Could not start gRPC server" in output for output in outputs):
            break
    pytest.fail("\n".join(output[-3000:] for output in outputs))


@pytest.mark.multiprocess
def test_two_workers_take_the_step_of_one_device_with_their_global_batch(synthetic_build,
                                                                          tmp_path):
    """Two workers (8 pairs each) train as one device on their 16 pairs: from the checkpoint of
    step 1, one device given both workers' step-2 pairs (as their input pipelines make them) has
    the loss they logged and takes their step (negatives, batch norm, probe, L2 term and
    normalisers over all 16). The workers end bit-identical; only the chief writes model_dir.

    In float32 the gradients of the lowest layers depend on the summation order to about 1.4%
    here (1 device against 2 replicas; float64: 2e-7), hence the update tolerances."""
    model_dir = tmp_path / "run"
    optim = OptimConfig(optimizer="momentum", learning_rate=0.5, weight_decay=0.05)
    _train_cluster([*TINY_MODEL, "--train_batch_size=16", "--temperature=0.5", "--seed=3",
                    f"--optimizer={optim.optimizer}", f"--learning_rate={optim.learning_rate}",
                    f"--weight_decay={optim.weight_decay}", f"--data_dir={synthetic_build}",
                    f"--model_dir={model_dir}", "--strategy=multi_worker", "--train_steps=2",
                    "--steps_per_loop=1", "--checkpoint_steps=1",
                    "--precision=float32"],  # as the check below (auto: bfloat16 on AMX CPUs)
                   tmp_path)
    chief, other = _summary(model_dir), _summary(model_dir, "summary_worker1.json")
    assert chief["global_step"] == other["global_step"] == 2
    assert chief["weights_sha256"] == other["weights_sha256"]
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-2")

    spec = PairSpec(use_micle=False, augment=augment.preset("simclr"), image_size=32, seed=3)
    pipelines = [pair_dataset(open_build(str(synthetic_build)), "train", spec, 8, start_example=8,
                              input_context=tf.distribute.InputContext(2, i, 2))
                 for i in range(2)]
    pairs = [next(iter(pipeline)) for pipeline in pipelines]
    pairs = {key: tf.concat([p[key] for p in pairs], axis=0) for key in pairs[0]}
    # The chief's step-2 loss, and the lr of the step-2 update (logged after step 1).
    logged = {value.tag: float(tf.make_ndarray(value.tensor)) for step, value in _events(model_dir)
              if step == 2 - (value.tag == "learning_rate")}
    record = ModelRecord.load(str(model_dir))
    model = SimCLRModel(record.model, record.num_classes, stop_gradient_to_head=True)
    model.build_for_image_size()
    # A (constant) schedule, as the run's, so that the optimizer's variables are the checkpoint's.
    constant = keras.optimizers.schedules.ExponentialDecay(logged["learning_rate"], 1, 1.0)
    optimizer = build_optimizer(optim, constant, no_decay_variables(model))
    optimizer.build(model.trainable_variables)
    make_checkpoint(model, optimizer).restore(str(model_dir / "ckpt-1")).expect_partial()
    assert int(optimizer.iterations.numpy()) == 1
    start = [v.numpy() for v in model.trainable_variables]
    _, grads, outputs = contrastive_gradients(model, optimizer, pairs, 0.5, 16, record.task, optim)
    assert float(tf.reduce_mean(outputs["contrast"].per_pair_loss)) == pytest.approx(
        logged["loss"], rel=1e-5)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

    workers = evaluate.load_classifier(str(model_dir), str(model_dir / "ckpt-2")).model
    ours = [v.numpy() - w for v, w in zip(model.trainable_variables, start)]
    theirs = [v.numpy() - w for v, w in zip(workers.trainable_variables, start)]
    for one, two, variable in zip(ours, theirs, model.trainable_variables):
        assert np.linalg.norm(two - one) <= 5e-2 * np.linalg.norm(one) + 1e-7, variable.path
    error = np.sqrt(sum(np.sum((two - one) ** 2) for one, two in zip(ours, theirs)))
    assert error <= 1e-2 * np.sqrt(sum(np.sum(one ** 2) for one in ours))
