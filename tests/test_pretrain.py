"""Pretraining runs: outputs, resume (also after SIGKILL), determinism, non-finite loss, multi-worker."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from simclr_med import augment
from simclr_med.config import ModelConfig, OptimConfig, PretrainConfig, TrainConfig
from simclr_med.dataset import open_build
from simclr_med.pretrain import pretrain
from simclr_med.trainer import NonFiniteLossError

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_MODEL = ["--resnet_depth=18", "--width_multiplier=0.25", "--image_size=32"]
TINY_RUN = TINY_MODEL + ["--train_batch_size=16", "--optimizer=adam", "--learning_rate=0.0002",
                         "--learning_rate_scaling=sqrt", "--temperature=0.5", "--seed=3"]


def _run_py(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), "--mode=pretrain", *args],
                            cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def _finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def _summary(model_dir: pathlib.Path, name: str = "summary.json") -> dict:
    return json.loads((model_dir / name).read_text())


def _event_tags(model_dir: pathlib.Path) -> set[str]:
    tags = set()
    for path in model_dir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(synthetic_build, tmp_path):
    """SIGKILL mid-run, run again: it resumes from the last checkpoint and, with deterministic ops,
    ends bit-identical to a run that was never interrupted."""
    common = [*TINY_RUN, f"--data_dir={synthetic_build}", "--train_steps=24", "--deterministic",
              "--checkpoint_steps=2", "--steps_per_loop=1"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    uninterrupted = _run_py(*common, f"--model_dir={straight}")
    victim = _run_py(*common, f"--model_dir={killed}")
    deadline = time.time() + 240
    while _latest_step(killed) < 4 and time.time() < deadline:  # ckpt-4 recorded as latest
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    _finish(uninterrupted)
    last_before_kill = _latest_step(killed)
    assert 4 <= last_before_kill < 24

    output = _finish(_run_py(*common, f"--model_dir={killed}"))
    resumed = _summary(killed)
    assert resumed["resumed_from_step"] == last_before_kill
    assert resumed["global_step"] == 24
    assert resumed["weights_sha256"] == _summary(straight)["weights_sha256"]
    assert "pretraining done: step 24" in output

    # What a user of the first run finds in its model_dir.
    for name in ("flags.json", "model_config.json", "checkpoint", "ckpt-24.index"):
        assert (straight / name).exists(), name
    assert json.loads((straight / "flags.json").read_text())["train_steps"] == 24
    summary = _summary(straight)
    assert summary["mode"] == "pretrain" and summary["images_per_second"] > 0
    assert {"loss", "contrast_accuracy", "contrast_entropy", "learning_rate", "weight_norm",
            "images_per_second", "augmented_pairs"} <= _event_tags(straight)


def _latest_step(model_dir: pathlib.Path) -> int:
    """The step of the checkpoint the `checkpoint` state file names (0 if none); a checkpoint's
    files appear before the state file names it."""
    latest = tf.train.latest_checkpoint(str(model_dir))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def _tiny_pretrain(build: pathlib.Path, model_dir: pathlib.Path, steps: int,
                   temperature: float = 0.5) -> dict:
    return pretrain(
        ModelConfig(resnet_depth=18, width_multiplier=0.25, image_size=32),
        OptimConfig(optimizer="adam", learning_rate=1e-3, learning_rate_scaling="sqrt"),
        augment.preset("simclr"), open_build(str(build)),
        TrainConfig(model_dir=str(model_dir), train_batch_size=8, train_steps=steps,
                    steps_per_loop=2, checkpoint_steps=2),
        PretrainConfig(temperature=temperature), tf.distribute.get_strategy())


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
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.multiprocess
def test_two_workers_train_to_identical_weights(synthetic_build, tmp_path):
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    workers = [
        _run_py(*TINY_RUN, f"--data_dir={synthetic_build}", f"--model_dir={tmp_path}",
                "--strategy=multi_worker", "--train_steps=4", "--steps_per_loop=2",
                env={"TF_CONFIG": json.dumps({"cluster": cluster,
                                              "task": {"type": "worker", "index": i}})})
        for i in range(2)]
    for worker in workers:
        _finish(worker)
    chief, other = _summary(tmp_path), _summary(tmp_path, "summary_worker1.json")
    assert chief["global_step"] == other["global_step"] == 4
    assert chief["weights_sha256"] == other["weights_sha256"]
    # Only the chief writes checkpoints into the shared model_dir.
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-4")
