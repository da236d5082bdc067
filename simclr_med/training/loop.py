"""The training loop shared by pretraining and fine-tuning.

Several steps run per `tf.function` call (`steps_per_loop`); between calls the loop logs a progress
line and TensorBoard scalars, checks that the loss is finite (a non-finite loss stops the run before
anything is saved, so the last good checkpoint stays intact) and checkpoints model, optimizer and
step with a `tf.train.CheckpointManager`. A run in a folder that already has checkpoints resumes
from the newest intact one (see `Trainer.resume`); a run that has already reached its last step
writes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Optional

import keras
import tensorflow as tf
from absl import logging

from simclr_med.checkpoints import native
from simclr_med.errors import UserError
from simclr_med.training.running_means import RunningMeans

SUMMARY_FILE = "summary.json"
FLAGS_FILE = "flags.json"  # the flags of the training run (its latest invocation that trained)
FLAGS_HISTORY_FILE = "flags_history.jsonl"  # one line per invocation that wrote to the folder


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; nothing was saved after the last good checkpoint."""


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    mode: str  # recorded in summary.json: pretrain, finetune, ...
    model_dir: str
    total_steps: int
    steps_per_loop: int
    checkpoint_steps: int
    keep_checkpoint_max: int
    examples_per_step: int  # the global batch
    images_per_example: int = 1  # 2 for contrastive pairs: the network sees two views
    run_steps: int = 0  # end this invocation after this many steps (0: run to total_steps)
    jit_compile: bool = False  # XLA-compile the step function


def worker_id(strategy: tf.distribute.Strategy) -> int | None:
    """This process's task index in a multi-worker cluster; None when training alone."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return None
    return int(resolver.task_id)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints and summaries (worker 0, or the `chief` task)."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def weights_fingerprint(variables: list) -> str:
    """SHA-256 of the variables' values in path order: equal only for bit-identical weights."""
    digest = hashlib.sha256()
    for variable in sorted(variables, key=lambda v: v.path):
        digest.update(variable.path.encode())
        digest.update(variable.numpy().tobytes())
    return digest.hexdigest()


class Trainer:
    """Runs `step_fn(batch)` in replica context over a distributed dataset, with checkpoints.

    In a multi-worker cluster every worker restores from `model_dir`, but only the chief writes
    there (checkpoints, TensorBoard); the others save to a temporary folder, removed at the end, as
    the collective save protocol requires every worker to take part.

    Nothing is written to `model_dir` before `begin()`, so a run that stops before it (a model
    that does not fit the folder's checkpoints, a run already finished) leaves the folder as it
    was. Only setting a damaged checkpoint aside (`resume`) renames files earlier.
    """

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer, metrics: RunningMeans,
                 step_fn: Callable[[Any], None], settings: LoopSettings):
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.metrics = metrics
        self.settings = settings
        if settings.jit_compile:
            _check_xla_devices(strategy)
        self._step_fn = tf.function(step_fn, jit_compile=True) if settings.jit_compile else step_fn
        self.chief = is_chief(strategy)
        self.worker = worker_id(strategy)
        self.checkpoint = native.make_checkpoint(model, optimizer, optimizer.iterations)
        self.manager = self._checkpoint_manager()
        self.damaged: list[dict] = []  # checkpoints set aside by `resume`
        self._writer = None
        self._loop_fn = tf.function(self._loop)

    def _checkpoint_manager(self) -> tf.train.CheckpointManager:
        save_dir = (self.settings.model_dir if self.chief
                    else tempfile.mkdtemp(prefix="worker_ckpt_"))
        return tf.train.CheckpointManager(
            self.checkpoint, save_dir, max_to_keep=self.settings.keep_checkpoint_max,
            step_counter=self.optimizer.iterations)

    @property
    def writer(self) -> tf.summary.SummaryWriter:
        """The TensorBoard writer, made on first use (it creates an event file at once)."""
        if self._writer is None:
            self._writer = (tf.summary.create_file_writer(self.settings.model_dir) if self.chief
                            else tf.summary.create_noop_writer())
        return self._writer

    @property
    def summary_file(self) -> str:
        """`summary.json` for the chief, `summary_worker<i>.json` for the other workers."""
        return SUMMARY_FILE if self.chief else f"summary_worker{self.worker}.json"

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    @property
    def finished(self) -> bool:
        """Whether the run has reached its last step (nothing is left to train)."""
        return self.step >= self.settings.total_steps

    def resume(self, record: native.ModelRecord) -> bool:
        """Resumes from the newest intact checkpoint in `model_dir`; returns whether there was one.

        First checks that the folder's checkpoints are of `record`'s model (UserError naming each
        differing field, nothing written). A checkpoint that cannot be read is skipped with a
        warning; once an older one restores, the chief sets the damaged ones aside (renamed
        `*.damaged`, dropped from the state file) and `summary.json` lists them. When none can
        be read, UserError and nothing is renamed.
        """
        model_dir = self.settings.model_dir
        native.check_same_model(model_dir, record)
        state = tf.train.get_checkpoint_state(model_dir)
        if state is None:
            return False
        damaged = []
        for prefix in reversed(state.all_model_checkpoint_paths or [state.model_checkpoint_path]):
            try:
                status = self.checkpoint.restore(prefix)
            except native.READ_ERRORS as error:
                damaged.append((prefix, native.damage_report(prefix, error)))
                logging.warning("%s; trying the checkpoint before it", damaged[-1][1])
                continue
            try:
                status.assert_existing_objects_matched()
            except AssertionError as error:
                raise UserError(f"{prefix} does not fit this run (another --optimizer than the "
                                f"one it was trained with?): {error}") from error
            self._set_aside(damaged)
            logging.info("resumed from %s (step %d)", prefix, self.step)
            return True
        raise UserError(f"no checkpoint in {model_dir} can be read: "
                        + "; ".join(report for _, report in damaged)
                        + ". Nothing was changed; move the checkpoints away to start afresh")

    def _set_aside(self, damaged: list[tuple[str, str]]) -> None:
        for prefix, report in damaged:
            renamed = native.set_aside(prefix) if self.chief else []
            self.damaged.append({"checkpoint": prefix, "error": report, "renamed_to": renamed})
            logging.warning("set aside the damaged checkpoint %s as %s", prefix,
                            ", ".join(renamed) or "(left to the chief)")
        if damaged and self.chief:
            native.forget_checkpoints(self.settings.model_dir,
                                             [prefix for prefix, _ in damaged])
            self.manager = self._checkpoint_manager()

    def begin(self, record: native.ModelRecord,
              flag_values: Optional[dict] = None) -> None:
        """The run will train: the chief writes `model_config.json` and the flags record."""
        if not self.chief:
            return
        record.save(self.settings.model_dir)
        if flag_values is not None:
            record_flags(self.settings.model_dir, FLAGS_FILE, flag_values)

    def nothing_to_do(self) -> dict:
        """What a finished run returns instead of a summary; it wrote nothing."""
        if not self.chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
        logging.info("%s: already at step %d of %d, nothing to do; %s is unchanged",
                     self.settings.mode, self.step, self.settings.total_steps,
                     self.settings.model_dir)
        return {"mode": self.settings.mode, "global_step": self.step,
                "train_steps": self.settings.total_steps, "nothing_to_do": True}

    def _loop(self, iterator, steps):
        for _ in tf.range(steps):
            self.strategy.run(self._step_fn, args=(next(iterator),))

    def train(self, make_dataset: Callable[[int], Any],
              on_checkpoint: Optional[Callable[[int], dict]] = None) -> dict:
        """Trains to `total_steps` (or `run_steps` more) and returns the summary.

        `make_dataset(start_step)` returns the distributed dataset positioned at `start_step`;
        `on_checkpoint(step)` may return extra scalars (e.g. a k-NN accuracy) to log.
        """
        s = self.settings
        start = self.step
        stop = s.total_steps if not s.run_steps else min(s.total_steps, start + s.run_steps)
        iterator = iter(make_dataset(start))
        logging.info("%s: computing in %s%s", s.mode, self.model.dtype_policy.name,
                     ", the step compiled with XLA" if s.jit_compile else "")
        results: dict = {}
        timed_seconds, timed_steps, started = 0.0, 0, time.perf_counter()
        saves, save_seconds = 0, 0.0  # the training stalls while a checkpoint is written
        while self.step < stop:
            step = self.step
            to_checkpoint = s.checkpoint_steps - step % s.checkpoint_steps
            n = min(s.steps_per_loop, stop - step, to_checkpoint)
            begin = time.perf_counter()
            self._loop_fn(iterator, tf.constant(n))
            results = self.metrics.result()
            seconds = time.perf_counter() - begin
            self._check_finite(results, step)
            if step > start or self.step >= stop:  # the first call also traces: not timed
                timed_seconds, timed_steps = timed_seconds + seconds, timed_steps + n
            results.update(self._throughput(n, seconds))
            self.metrics.reset()
            if self.step % s.checkpoint_steps == 0 or self.step >= stop:
                begin = time.perf_counter()
                self.manager.save(checkpoint_number=self.step)
                saves, save_seconds = saves + 1, save_seconds + time.perf_counter() - begin
                if on_checkpoint:
                    results.update(on_checkpoint(self.step))
            # Until a loop is timed, the first one (tracing included) gives a pessimistic ETA.
            per_step = timed_seconds / timed_steps if timed_steps else seconds / n
            self._log(results, per_step * (stop - self.step))
        summary = {"mode": s.mode, "global_step": self.step, "train_steps": s.total_steps,
                   "resumed_from_step": start, "damaged_checkpoints": self.damaged,
                   "checkpoint": tf.train.latest_checkpoint(s.model_dir),
                   "elapsed_seconds": time.perf_counter() - started,
                   "precision": self.model.dtype_policy.name, "jit_compile": s.jit_compile,
                   "checkpoints_saved": saves, "checkpoint_seconds": save_seconds,
                   "weights_sha256": weights_fingerprint(self.model.variables)}
        if not self.chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
        summary.update(results)
        if timed_steps:
            summary.update(self._throughput(timed_steps, timed_seconds))
        return summary

    def write_summary(self, summary: dict) -> None:
        """`summary.json` (the chief) or `summary_worker<i>.json`, written whole or not at all."""
        write_json(self.settings.model_dir, self.summary_file, summary)

    def _throughput(self, steps: int, seconds: float) -> dict:
        examples = steps * self.settings.examples_per_step / max(seconds, 1e-9)
        return {"examples_per_second": examples,
                "images_per_second": examples * self.settings.images_per_example}

    def _check_finite(self, results: dict, loop_start: int) -> None:
        loss = results.get("loss", 0.0)
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"the loss became {loss} between steps {loop_start} and {self.step}; nothing was "
                f"saved after the last good checkpoint ({self.manager.latest_checkpoint}). Lower "
                "--learning_rate or check the input data.")

    def _log(self, results: dict, eta_seconds: float) -> None:
        step = self.step
        learning_rate = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
        weight_norm = float(tf.linalg.global_norm(self.model.trainable_variables))
        with self.writer.as_default(step=step):
            for name, value in results.items():
                tf.summary.scalar(name, value)
            tf.summary.scalar("learning_rate", learning_rate)
            tf.summary.scalar("weight_norm", weight_norm)
        self.writer.flush()
        shown = "  ".join(f"{k} {v:.4g}" for k, v in results.items() if k != "examples_per_second")
        eta = datetime.timedelta(seconds=round(eta_seconds))
        logging.info("[%s] step %d/%d  %s  lr %.4g  ETA %s", self.settings.mode, step,
                     self.settings.total_steps, shown, learning_rate, eta)


def _check_xla_devices(strategy: tf.distribute.Strategy) -> None:
    """XLA compiles for one CPU device: replicas on logical CPU devices cannot share a compiled
    step (their variables live on devices it does not see)."""
    if strategy.num_replicas_in_sync == 1:
        return
    devices = [tf.DeviceSpec.from_string(d) for d in strategy.extended.worker_devices]
    if all(d.device_type == "CPU" for d in devices):
        raise UserError(f"--jit_compile cannot compile a step for {len(devices)} replicas on CPU "
                        "devices (XLA sees one CPU); train on one device, or on GPUs")


def distributed_input(strategy: tf.distribute.Strategy, global_batch: int,
                      make: Callable[..., tf.data.Dataset]) -> Callable[[int], Any]:
    """The `make_dataset(start_step)` of `Trainer.train` for a resumable input function.

    Every input pipeline calls `make(per_replica_batch, start_example=n, input_context=context)`,
    where n is its share of the examples of the first `start_step` steps (skipped on resuming).
    """
    def make_dataset(start_step: int):
        def input_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            per_replica = context.get_per_replica_batch_size(global_batch)
            start = start_step * global_batch // context.num_input_pipelines
            return make(per_replica, start_example=start, input_context=context)
        return strategy.distribute_datasets_from_function(input_fn)
    return make_dataset


def write_json(directory: str, name: str, data: dict) -> None:
    """Writes `<directory>/<name>` whole or not at all: a temporary file renamed into place, so an
    interrupted write never leaves a truncated file."""
    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, name)
    with tf.io.gfile.GFile(f"{path}.tmp", "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
    tf.io.gfile.rename(f"{path}.tmp", path, overwrite=True)


def record_flags(directory: str, name: str, flag_values: dict) -> None:
    """`<name>` (`flags.json` for training, `flags_<mode>.json` for the other modes) holds the
    flags of the latest such invocation; `flags_history.jsonl` gets a line for every invocation,
    so no earlier record is lost."""
    write_json(directory, name, flag_values)
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "file": name, "flags": flag_values}
    with tf.io.gfile.GFile(os.path.join(directory, FLAGS_HISTORY_FILE), "a") as f:
        f.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
