"""Runs the paper's comparison on a data_prep build: pretraining, fine-tuning over the grid, the
linear probes, test evaluation, then the tables, paired differences and plots.

Everything goes through the stages' Python APIs in this process. Every unit of work has its own
folder under the output folder and writes `done.json` last; a unit whose marker exists is skipped,
so running the same command again resumes where it stopped (and a training run stopped in the
middle resumes from its last checkpoint). The schedule is fixed in `plan.json` on the first run
and reused, so a resumed experiment trains exactly the steps the first one planned.

Folders: `pretrain/<run>/`, `finetune/<arm>/fraction_<f>/<setting>/seed_<s>/` (the fine-tuning
run, its `predictions_test.csv` and `eval_test.json`), `finetune/<arm>/fraction_<f>/selection.json`
(the grid's validation values and the choice) and `linear/<arm>/fraction_<f>/`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from simclr_med.checkpoints import native, official
from simclr_med.config import (EvalConfig, FinetuneConfig, LinearEvalConfig, ModelConfig,
                               PretrainConfig, TrainConfig, augment_preset)
from simclr_med.data import schema
from simclr_med.data.finetune_input import count_training_images, is_labelled
from simclr_med.data.reader import Source, open_build, read_images
from simclr_med.errors import UserError
from simclr_med.evaluation import metrics
from simclr_med.experiments import plan, results, summary, views
from simclr_med.experiments.plan import Arm, Cell, ExperimentConfig, FinetuneSetting, Schedule
from simclr_med.stages import evaluate, linear_eval
from simclr_med.stages.finetune import BEST_STATE_FILE, finetune
from simclr_med.stages.pretrain import pretrain
from simclr_med.training.loop import write_json

DONE_FILE = "done.json"
PLAN_FILE = "plan.json"
SELECTION_FILE = "selection.json"
VALIDATION_FILE = "validation.json"
WALL_TIME_FILE = "wall_time.json"
TEST_SPLIT, VALIDATION_SPLIT, TRAIN_SPLIT = "test", "validation", "train"
PROBE_LOOP = 5  # steps per loop of the timing probe: one traced loop, one timed
FINETUNE_AUGMENT = augment_preset("finetune", crop_area_min=0.5)
QUICK_MODEL = ModelConfig(resnet_depth=18, width_multiplier=0.25, image_size=32)


def is_done(folder: str) -> bool:
    return tf.io.gfile.exists(os.path.join(folder, DONE_FILE))


def read_json(path: str) -> dict:
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


class Progress:
    """Logs each finished unit of work with the elapsed time and an ETA: for each kind of unit
    (`plan.UNIT_KINDS`), the units left times the mean time of that kind's units run in this
    invocation, or before one has run the plan's time per unit (`Schedule.unit_seconds`), else
    the mean of every unit run. (One mean for all would take the first, long pretraining runs
    for the time of every short fine-tuning run.)"""

    def __init__(self, totals: dict[str, int], planned: Optional[dict[str, float]] = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.total, self.finished = sum(totals.values()), 0
        self.left = dict(totals)
        self.planned = dict(planned or {})
        self.spent: dict[str, list[float]] = {kind: [] for kind in totals}
        self.clock = clock
        self.started = clock()

    def skip(self, kind: str, what: str) -> None:
        self.left[kind] -= 1
        self.finished += 1
        logging.info("experiment: [%d/%d] %s: already done, skipped", self.finished, self.total,
                     what)

    def done(self, kind: str, what: str, seconds: float) -> None:
        self.left[kind] -= 1
        self.finished += 1
        self.spent[kind].append(seconds)
        elapsed = self.clock() - self.started
        logging.info("experiment: [%d/%d] %s done in %.0f s; elapsed %.1f min, ETA %.1f min",
                     self.finished, self.total, what, seconds, elapsed / 60, self.eta() / 60)

    def eta(self) -> float:
        every = [s for spent in self.spent.values() for s in spent]
        overall = sum(every) / len(every) if every else 0.0
        return sum(left * (sum(self.spent[kind]) / len(self.spent[kind]) if self.spent[kind]
                           else self.planned.get(kind, overall))
                   for kind, left in self.left.items())


def has_multi_image_cases(info: schema.DatasetInfo) -> bool:
    counts = info.split_counts.get(TRAIN_SPLIT, {})
    return counts.get("images", 0) > counts.get("cases", 0)


def outcome_counts(source: Source, fraction: float, split: str = TRAIN_SPLIT) -> np.ndarray:
    """Images of the label fraction of `split` per class ([1, C]), or per label its positive and
    negative entries ([2, L])."""
    images = read_images(source, split, label_fraction=fraction).filter(is_labelled)
    names = source.info.names
    if source.info.task == schema.MULTICLASS:
        counts = np.zeros(len(names))
        for class_id in images.map(lambda x: x["class_id"]).batch(4096):
            counts += np.bincount(class_id.numpy(), minlength=len(names))
        return counts[None]
    counts = np.zeros((2, len(names)))
    for labels, mask in images.map(lambda x: (x["labels"], x["label_mask"])).batch(4096):
        positive, counted = labels.numpy() > 0.5, mask.numpy() > 0
        counts += [(positive & counted).sum(0), (~positive & counted).sum(0)]
    return counts


def scored_label_names(source: Source, min_test_positives: int) -> tuple[str, ...]:
    """Multi-label: the labels the mean AUC is taken over, those with at least
    `min_test_positives` positive test images (`results.scored_labels`, from the build's counts)."""
    positives = outcome_counts(source, 1.0, TEST_SPLIT)[0]
    names = tuple(n for n, count in zip(source.info.names, positives)
                  if count >= min_test_positives)
    if not names:
        raise UserError(f"no label has {min_test_positives} positive test images: lower "
                        "--min_test_positives")
    return names


def fraction_shortfall(source: Source, fraction: float, whole: np.ndarray,
                       scored: Sequence[str] = ()) -> str:
    """Why a label fraction cannot be fine-tuned on ("" if it can). Multi-class: a class with no
    training image in it; multi-label: a scored label (`scored`) with a positive and a negative
    in the whole training split (`whole`: its `outcome_counts`) but not both in the fraction. A
    label left out of the mean AUC does not count: that rare labels (NIH's Hernia) lack a
    positive in a small fraction would otherwise skip every fraction but 100%."""
    found = outcome_counts(source, fraction) > 0
    multiclass = source.info.task == schema.MULTICLASS
    missing = [n for j, n in enumerate(source.info.names)
               if ((whole[:, j] > 0) & ~found[:, j]).any() and (multiclass or n in scored)]
    if not missing:
        return ""
    what = ("has no training image of class(es)" if multiclass
            else "lacks a positive or a negative training image of scored label(s)")
    return f"label fraction {fraction:g} {what} {', '.join(missing)}"


def model_config(config: ExperimentConfig) -> ModelConfig:
    """The network of every arm: `--quick`'s tiny one, the flags', or, with `--init_checkpoint`,
    the checkpoint's (all arms share it, so that they differ only in their weights)."""
    if config.quick and not config.init_checkpoint:
        return QUICK_MODEL
    base = ModelConfig(resnet_depth=config.resnet_depth, width_multiplier=config.width_multiplier,
                       image_size=config.image_size)
    path = config.init_checkpoint
    if not path:
        return base
    if official.is_reference_checkpoint(path):
        return official.infer_architecture(path).model_config(config.image_size, base)
    folder = path if tf.io.gfile.isdir(path) else os.path.dirname(path)
    found = native.ModelRecord.load(folder).model
    return dataclasses.replace(found, image_size=config.image_size)


@dataclasses.dataclass
class Experiment:
    """The resolved plan: what runs and what was skipped, with the reasons."""

    config: ExperimentConfig
    source: Source
    model: ModelConfig
    arms: list[Arm]
    skipped_arms: dict[str, str]
    fractions: list[float]
    skipped_fractions: dict[float, str]
    grid: tuple[FinetuneSetting, ...]
    seeds: tuple[int, ...]
    shift: Optional[views.Shift]

    def path(self, *parts: str) -> str:
        return os.path.join(self.config.output_dir, *parts)

    @property
    def runs(self) -> list[plan.PretrainRun]:
        return plan.pretrain_runs(self.arms)

    def finetune_images(self) -> list[int]:
        """Training images of every fine-tuning run (grid at seed 0, then the other seeds, then
        the shift's runs, counted as if on every training image)."""
        per_fraction = {f: count_training_images(self.source, TRAIN_SPLIT, f)
                        for f in {*self.fractions, 1.0}}
        runs = len(self.grid) + len(self.seeds) - 1
        shift = [per_fraction[1.0]] * (len(self.arms) * len(self.seeds) if self.shift else 0)
        return [per_fraction[f] for _ in self.arms for f in self.fractions
                for _ in range(runs)] + shift

    def linear_cells(self) -> list[Cell]:
        return [Cell("linear", arm.name, f) for arm in self.arms if arm.pretrained
                for f in self.fractions]


def resolve(config: ExperimentConfig) -> Experiment:
    source = open_build(config.data_dir)
    arms, skipped_arms = plan.choose_arms(config.arms, config.init_checkpoint,
                                          has_multi_image_cases(source.info))
    fractions, skipped_fractions = [], {}
    whole = outcome_counts(source, 1.0)
    scored = (scored_label_names(source, config.min_test_positives)
              if source.info.task == schema.MULTILABEL else ())
    for fraction in dict.fromkeys(config.label_fractions):
        reason = fraction_shortfall(source, fraction, whole, scored) if fraction < 1.0 else ""
        if reason:
            skipped_fractions[fraction] = reason
        else:
            fractions.append(fraction)
    if not fractions:
        raise UserError(f"no label fraction can be fine-tuned on: {skipped_fractions}")
    for split in (VALIDATION_SPLIT, TEST_SPLIT):
        if not source.info.split_counts.get(split, {}).get("images"):
            raise UserError(f"the build {config.data_dir} has no {split} images: the comparison "
                            "chooses on the validation split and reports on the test split")
    return Experiment(config, source, model_config(config), arms, skipped_arms, fractions,
                      skipped_fractions, plan.QUICK_GRID if config.quick else plan.GRID,
                      tuple(range(config.seeds)),
                      views.parse_shift(config.shift) if config.shift else None)


# ------------------------------------------------------------------------------------------
# The schedule


def _timed(call) -> tuple[dict, float]:
    began = time.perf_counter()
    result = call()
    return result, time.perf_counter() - began


def probe_throughput(experiment: Experiment, strategy: tf.distribute.Strategy,
                     pretrain_batch: int, finetune_batch: int
                     ) -> tuple[plan.Throughput, plan.Throughput]:
    """Times two short runs, one of pretraining and one of fine-tuning, in `probe/`."""
    steps = 2 * PROBE_LOOP
    src, model = experiment.source, experiment.model

    def train_config(name: str, batch: int) -> TrainConfig:
        return TrainConfig(model_dir=experiment.path("probe", name), train_batch_size=batch,
                           train_steps=steps, steps_per_loop=PROBE_LOOP, checkpoint_steps=steps)

    summaries = {}
    summaries["pretrain"] = _timed(lambda: pretrain(
        model, plan.PRETRAIN_OPTIM, augment_preset(experiment.config.augmentation), src,
        train_config("pretrain", pretrain_batch),
        PretrainConfig(temperature=plan.PRETRAIN_TEMPERATURE, lineareval_while_pretraining=False),
        strategy))
    summaries["finetune"] = _timed(lambda: finetune(
        model, plan.finetune_optim(experiment.grid[0]), FINETUNE_AUGMENT, src,
        train_config("finetune", finetune_batch), FinetuneConfig(label_fraction=1.0), strategy))
    measured = []
    for name, images_per_step in (("pretrain", 2 * pretrain_batch),
                                  ("finetune", finetune_batch)):
        result, seconds = summaries[name]
        if result.get("nothing_to_do"):
            raise UserError(f"{experiment.path('probe')} holds a finished probe but no "
                            f"{PLAN_FILE}: remove the probe folder and start again")
        per_second = result["images_per_second"] / images_per_step
        measured.append(plan.Throughput(per_second, max(0.0, seconds - steps / per_second)))
    return measured[0], measured[1]


PRETRAIN_BATCH, FINETUNE_BATCH = 64, 32


def schedule(experiment: Experiment, strategy: tf.distribute.Strategy) -> Schedule:
    """The schedule of `plan.json` if there is one (a resumed experiment), else a new one:
    `--quick`'s fixed tiny one, or planned from a timed probe to fit the budget."""
    path = experiment.path(PLAN_FILE)
    if tf.io.gfile.exists(path):
        stored = read_json(path)
        logging.info("experiment: using the schedule of %s", path)
        return Schedule(**stored["schedule"])
    if experiment.config.quick:
        chosen = plan.QUICK_SCHEDULE
    else:
        probe_pre, probe_ft = probe_throughput(experiment, strategy, PRETRAIN_BATCH,
                                               FINETUNE_BATCH)
        chosen = plan.plan_schedule(experiment.config.budget_minutes * 60, len(experiment.runs),
                                    experiment.finetune_images(), len(experiment.linear_cells()),
                                    probe_pre, probe_ft, PRETRAIN_BATCH, FINETUNE_BATCH)
    write_json(experiment.config.output_dir, PLAN_FILE,
               {"schedule": dataclasses.asdict(chosen),
                "config": dataclasses.asdict(experiment.config),
                "model": dataclasses.asdict(experiment.model)})
    logging.info("experiment: schedule: %s", chosen.explanation)
    return chosen


# ------------------------------------------------------------------------------------------
# The work


class Runner:
    def __init__(self, experiment: Experiment, chosen: Schedule,
                 strategy: tf.distribute.Strategy):
        self.x, self.schedule, self.strategy = experiment, chosen, strategy
        self.task = experiment.source.info.task
        # Units: pretraining runs, the grid's runs, every seed's test cell (and shift cell), the
        # linear probes.
        x = experiment
        finetuning = (len(x.arms) * len(x.fractions) * (len(x.grid) + len(x.seeds))
                      + (len(x.arms) * len(x.seeds) if x.shift else 0))
        self.progress = Progress({plan.PRETRAINING: len(x.runs), plan.FINETUNING: finetuning,
                                  plan.LINEAR_PROBE: len(x.linear_cells())}, chosen.unit_seconds)
        self.chosen: dict[tuple[str, float], FinetuneSetting] = {}  # select()'s, by arm, fraction

    def _unit(self, kind: str, folder: str, what: str, work) -> None:
        """Runs `work()`, a unit of `kind`, unless `folder` is done; then marks it done."""
        if is_done(folder):
            self.progress.skip(kind, what)
            return
        began = time.perf_counter()
        outcome = work()
        write_json(folder, DONE_FILE, {"what": what, "seconds": time.perf_counter() - began,
                                       "result": outcome})
        self.progress.done(kind, what, time.perf_counter() - began)

    def pretrain_all(self) -> None:
        for run in self.x.runs:
            folder = self.x.path("pretrain", run.name)
            init = (self.x.path("pretrain", run.init_run) if run.init_run
                    else self.x.config.init_checkpoint if run.from_init_checkpoint else "")
            steps = self.schedule.pretrain_steps
            train = TrainConfig(model_dir=folder, train_batch_size=self.schedule.pretrain_batch,
                                train_steps=steps, steps_per_loop=min(10, steps),
                                checkpoint_steps=max(1, math.ceil(steps / 4)),
                                init_checkpoint=init)
            self._unit(plan.PRETRAINING, folder, f"pretraining {run.name}", lambda: pretrain(
                self.x.model, plan.PRETRAIN_OPTIM, augment_preset(self.x.config.augmentation),
                self.x.source, train, PretrainConfig(
                    temperature=plan.PRETRAIN_TEMPERATURE, use_micle=run.use_micle,
                    lineareval_while_pretraining=False), self.strategy))

    def init_of(self, arm: Arm) -> str:
        if arm.encoder_run:
            return self.x.path("pretrain", arm.encoder_run)
        return self.x.config.init_checkpoint if arm.from_init_checkpoint else ""

    def _finetune(self, cell: Cell, source: Optional[Source] = None,
                  folder: str = "") -> float:
        """Fine-tunes the cell on `source` (default: the build) in `folder` (default: the
        cell's), unless it already did; returns its best validation value."""
        source = source or self.x.source
        folder = folder or self.x.path(cell.folder)
        record = os.path.join(folder, VALIDATION_FILE)
        if tf.io.gfile.exists(record):
            return read_json(record)["value"]
        images = count_training_images(source, TRAIN_SPLIT, cell.label_fraction)
        steps = self.schedule.finetune_steps(images)
        every = self.schedule.checkpoint_steps(steps)
        arm = plan.parse_arm(cell.arm)
        train = TrainConfig(model_dir=folder, train_batch_size=self.schedule.finetune_batch,
                            train_steps=steps, steps_per_loop=min(10, every),
                            checkpoint_steps=every, init_checkpoint=self.init_of(arm),
                            seed=cell.seed)
        finetune(self.x.model, plan.finetune_optim(cell.setting), FINETUNE_AUGMENT,
                 source, train,
                 FinetuneConfig(label_fraction=cell.label_fraction,
                                fine_tune_after_block=cell.setting.fine_tune_after_block,
                                validation_split=VALIDATION_SPLIT), self.strategy)
        best_file = os.path.join(folder, "best", BEST_STATE_FILE)
        # No best checkpoint: no labelled validation image (fine-tuning warned), or none defined.
        best = (read_json(best_file) if tf.io.gfile.exists(best_file)
                else {"metric": metrics.main_metric(self.task), "value": float("nan"),
                      "step": None})
        write_json(folder, VALIDATION_FILE, {"metric": best["metric"], "value": best["value"],
                                             "step": best["step"], "train_steps": steps})
        return best["value"]

    def _evaluate(self, model_dir: str, source: Source, output_dir: str = "") -> dict:
        """Test metrics of the model of `model_dir` on `source`; files into `output_dir`."""
        result = evaluate.evaluate(model_dir, source, TEST_SPLIT, EvalConfig(
            bootstrap_samples=self.x.config.bootstrap_samples, plots=False,
            output_dir=output_dir))
        return {k: v["value"] for k, v in result["metrics"].items()}

    def select(self, arm: Arm, fraction: float) -> FinetuneSetting:
        """The grid setting with the best validation value at seed 0 (recorded)."""
        if (arm.name, fraction) not in self.chosen:
            self.chosen[arm.name, fraction] = self._select(arm, fraction)
        return self.chosen[arm.name, fraction]

    def _select(self, arm: Arm, fraction: float) -> FinetuneSetting:
        folder = self.x.path(plan.selection_folder(arm.name, fraction))
        path = os.path.join(folder, SELECTION_FILE)
        by_name = {s.name: s for s in self.x.grid}
        if tf.io.gfile.exists(path):
            for setting in self.x.grid:
                self.progress.skip(plan.FINETUNING,
                                   f"grid {setting.name} of {arm.name} at {fraction:g}")
            return by_name[read_json(path)["chosen"]]
        values = {}
        for setting in self.x.grid:
            cell = Cell("finetune", arm.name, fraction, 0, setting)
            began = time.perf_counter()
            values[setting.name] = self._finetune(cell)
            self.progress.done(plan.FINETUNING, f"fine-tuning {cell.folder} (grid)",
                               time.perf_counter() - began)
        # The best validation value; ties and undefined values go to the earlier setting.
        chosen = max(self.x.grid, key=lambda s: (
            -math.inf if math.isnan(values[s.name]) else values[s.name], -self.x.grid.index(s)))
        write_json(folder, SELECTION_FILE, {"metric": metrics.main_metric(self.task),
                                            "split": VALIDATION_SPLIT, "values": values,
                                            "chosen": chosen.name})
        return chosen

    def finetune_all(self) -> None:
        for arm in self.x.arms:
            for fraction in self.x.fractions:
                chosen = self.select(arm, fraction)
                for seed in self.x.seeds:
                    cell = Cell("finetune", arm.name, fraction, seed, chosen)

                    def work(cell=cell):
                        self._finetune(cell)
                        return {"test": self._evaluate(self.x.path(cell.folder), self.x.source)}

                    self._unit(plan.FINETUNING, self.x.path(cell.folder),
                               f"fine-tuning {cell.folder}", work)

    def shift_all(self) -> None:
        """Every arm and seed fine-tuned on the source view's build (its training images, the
        validation images of that view to choose the checkpoint) with the arm's setting chosen at
        the largest label fraction, then evaluated on the test images of both views."""
        shift = self.x.shift
        built = {view: open_build(views.view_build(
            self.x.config.data_dir, self.x.path("views", f"{shift.attribute}={view}"),
            shift.attribute, view)) for view in (shift.source, shift.target)}
        fraction = max(self.x.fractions)
        for arm in self.x.arms:
            chosen = self.select(arm, fraction)
            for seed in self.x.seeds:
                cell = Cell("finetune", arm.name, 1.0, seed, chosen)
                folder = self.x.path(shift_folder(arm.name, seed))

                def work(cell=cell, folder=folder):
                    self._finetune(cell, built[shift.source], folder)
                    return {evaluation: self._evaluate(folder, built[view],
                                                       os.path.join(folder, subfolder))
                            for evaluation, view, subfolder in shift_evaluations(shift)}

                self._unit(plan.FINETUNING, folder, f"shift {shift.name} {arm.name} seed {seed}",
                           work)

    def linear_all(self) -> None:
        encoders: dict[str, tuple] = {}
        for cell in self.x.linear_cells():
            arm = plan.parse_arm(cell.arm)

            def work(cell=cell, arm=arm):
                if arm.name not in encoders:  # (model, weights, step), once per arm
                    encoders[arm.name] = (
                        linear_eval.load_encoder(self.init_of(arm), "", self.x.model)
                        if arm.encoder_run else
                        linear_eval.load_encoder("", self.init_of(arm), self.x.model))
                model, weights, step = encoders[arm.name]
                return self._probe(cell, model, weights, step)

            self._unit(plan.LINEAR_PROBE, self.x.path(cell.folder),
                       f"linear probe {cell.folder}", work)

    def _probe(self, cell: Cell, model, weights: str, step: int) -> dict:
        folder = self.x.path(cell.folder)
        probes = linear_eval.fit_probes(model, self.x.source, LinearEvalConfig(
            train_split=TRAIN_SPLIT, eval_split=TEST_SPLIT, label_fraction=cell.label_fraction))
        eval_config = EvalConfig(bootstrap_samples=self.x.config.bootstrap_samples)
        result = evaluate.report(probes.targets, probes.linear, probes.test.patient_id,
                                 eval_config, split=TEST_SPLIT, data_dir=self.x.source.data_dir,
                                 global_step=step, checkpoint=weights)
        write_json(folder, f"eval_{TEST_SPLIT}.json", result)
        evaluate.write_predictions(os.path.join(folder, results.PREDICTIONS_FILE),
                                   probes.test.image_id, probes.test.patient_id, probes.targets,
                                   probes.linear)
        return {"test": {k: v["value"] for k, v in result["metrics"].items()}}


def shift_folder(arm: str, seed: int) -> str:
    return f"shift/{arm}/seed_{seed}"


def shift_evaluations(shift: views.Shift) -> list[tuple[str, str, str]]:
    """(evaluation name, view, subfolder of the shift cell) of both test evaluations."""
    return [(f"{shift.attribute}={shift.source} (in distribution)", shift.source,
             "in_distribution"), (f"shift {shift.name}", shift.target, "shifted")]


# ------------------------------------------------------------------------------------------
# The report


def scored_cells(experiment: Experiment) -> list[results.ScoredCell]:
    found = []
    for arm in experiment.arms:
        for fraction in experiment.fractions:
            if "finetune" in arm.protocols:
                selection = read_json(experiment.path(plan.selection_folder(arm.name, fraction),
                                                      SELECTION_FILE))
                setting = {s.name: s for s in experiment.grid}[selection["chosen"]]
                found += [results.ScoredCell(arm.name, "finetune", fraction, seed, TEST_SPLIT,
                                             setting.name, Cell("finetune", arm.name, fraction,
                                                                seed, setting).folder)
                          for seed in experiment.seeds]
            if "linear" in arm.protocols:
                found.append(results.ScoredCell(arm.name, "linear", fraction, 0, TEST_SPLIT,
                                                "logistic regression, C=1",
                                                Cell("linear", arm.name, fraction).folder))
        if experiment.shift:
            setting = read_json(experiment.path(plan.selection_folder(
                arm.name, max(experiment.fractions)), SELECTION_FILE))["chosen"]
            found += [results.ScoredCell(arm.name, "finetune", 1.0, seed, evaluation, setting,
                                         os.path.join(shift_folder(arm.name, seed), subfolder))
                      for seed in experiment.seeds
                      for evaluation, _, subfolder in shift_evaluations(experiment.shift)]
    return found


def _header(x: Experiment, chosen: Schedule, labels: Optional[Sequence[str]]) -> list[str]:
    info = x.source.info
    lines = [f"Data: `{x.config.data_dir}` ({info.task}, {len(info.names)} "
             f"{'classes' if info.task == schema.MULTICLASS else 'labels'}: "
             f"{', '.join(info.names)}).",
             f"Network: ResNet-{x.model.resnet_depth} at width {x.model.width_multiplier:g}, "
             f"{x.model.image_size} px.",
             f"Arms: {', '.join(a.name for a in x.arms)}."]
    lines += [f"- arm `{name}` skipped: {why}" for name, why in x.skipped_arms.items()]
    lines.append(f"Label fractions: {', '.join(f'{f:.0%}' for f in x.fractions)} of the training "
                 f"patients (data_prep's nested subsets); seeds of fine-tuning: {len(x.seeds)}.")
    lines += [f"- label fraction {f:g} skipped: {why}" for f, why in x.skipped_fractions.items()]
    grid = ", ".join(f"(lr {s.learning_rate:g}, fine_tune_after_block "
                     f"{s.fine_tune_after_block})" for s in x.grid)
    lines += [
        "", "## How",
        f"- Schedule: {chosen.explanation}.",
        f"- Pretraining: {plan.PRETRAIN_OPTIM.optimizer.upper()}, learning rate "
        f"{plan.PRETRAIN_OPTIM.learning_rate:g} x sqrt(batch {chosen.pretrain_batch}), "
        f"temperature {plan.PRETRAIN_TEMPERATURE:g}, augmentation `{x.config.augmentation}`, "
        f"{chosen.pretrain_steps} steps per run; `simclr_micle` continues the `simclr` run with "
        "MICLe; every label fraction and seed of an arm fine-tunes the same encoder.",
        f"- Fine-tuning: Adam, learning rate x sqrt(batch {chosen.finetune_batch}), "
        f"{chosen.finetune_epochs:g} epochs, augmentation random crop and flip. Every arm gets "
        f"the same grid, {grid}, and the number of epochs is searched by keeping the best of "
        f"{plan.VALIDATIONS_PER_RUN} evenly spaced checkpoints; both are chosen by the "
        f"validation {metrics.main_metric(info.task)} at seed 0 (never the test split), per arm "
        "and label fraction (`selection.json`), and the chosen setting runs every seed.",
        "- Linear probe (protocol `linear`, every pretrained arm): logistic regression (C=1) on "
        "standardised frozen `final_avg_pool` features of the label fraction's training images; "
        "deterministic, so one seed.",
        f"- Test metrics: on the patient-disjoint test split, 95% intervals from "
        f"{x.config.bootstrap_samples} bootstrap resamples of the test patients."]
    if x.shift:
        lines.append(
            f"- Distribution shift `{x.shift.name}`: every arm and seed is fine-tuned (fraction 1 "
            f"of the patients, the arm's setting chosen at fraction {max(x.fractions):g}) on the "
            f"training images whose view has {x.shift.attribute}={x.shift.source} (their "
            "validation images choose the checkpoint), then evaluated with no further training "
            f"on the test images of {x.shift.attribute}={x.shift.source} (in distribution) and "
            f"of {x.shift.attribute}={x.shift.target} (shifted): `views/` holds the builds of "
            "each view, `shift.png` the figures side by side.")
    if labels is not None:
        lines.append(f"- Multi-label: mean AUC over the labels with at least "
                     f"{x.config.min_test_positives} positive test images: "
                     f"{', '.join(labels) or 'none'} (left out: "
                     f"{', '.join(n for n in info.names if n not in labels) or 'none'}).")
    return lines


def record_wall_time(output_dir: str, seconds: float) -> list[float]:
    """Appends this invocation's wall time to `wall_time.json`; returns every one recorded."""
    path = os.path.join(output_dir, WALL_TIME_FILE)
    earlier = read_json(path)["invocations_seconds"] if tf.io.gfile.exists(path) else []
    recorded = [*earlier, round(seconds, 1)]
    write_json(output_dir, WALL_TIME_FILE, {"invocations_seconds": recorded})
    return recorded


def wall_time_line(invocations: Sequence[float]) -> str:
    return (f"Wall time: {sum(invocations) / 60:.1f} min over {len(invocations)} invocation(s) "
            f"of the command ({', '.join(f'{s / 60:.1f}' for s in invocations)} min; each from "
            "its start to the tables, probe included; `wall_time.json`).")


def report(x: Experiment, chosen: Schedule, invocations: Sequence[float] = ()) -> dict:
    cells = scored_cells(x)
    labels = list(x.source.info.names)
    if x.source.info.task == schema.MULTILABEL:
        first = results.read_predictions(
            x.path(cells[0].folder, results.PREDICTIONS_FILE), x.source.info.task)
        labels = list(results.scored_labels(first, x.config.min_test_positives))
    samples = x.config.bootstrap_samples
    rows = results.result_rows(x.config.output_dir, cells, x.source.info.task, labels, samples)
    paired = results.paired_rows(x.config.output_dir, cells, x.source.info.task, labels, samples)
    out = x.config.output_dir
    results.write_csv(os.path.join(out, results.RESULTS_FILE), results.RESULT_COLUMNS, rows)
    results.write_csv(os.path.join(out, results.PAIRED_FILE), results.PAIRED_COLUMNS, paired)
    headline = results.headline_metrics(x.source.info.task)
    paths = {"results": os.path.join(out, results.RESULTS_FILE),
             "paired_differences": os.path.join(out, results.PAIRED_FILE),
             "label_efficiency": summary.write_label_efficiency(out, rows, headline)}
    evaluations = [TEST_SPLIT]
    if x.shift:
        names = [evaluation for evaluation, _, _ in shift_evaluations(x.shift)]
        evaluations += names
        paths["shift"] = summary.write_shift(out, rows, headline, names)
    header = _header(x, chosen, labels if x.source.info.task == schema.MULTILABEL else None)
    paths["summary"] = summary.write_summary(
        out, header=[*header, "", wall_time_line(invocations)] if invocations else header,
        rows=rows, paired=paired, metrics=headline, evaluations=evaluations)
    return paths


def run_experiment(config: ExperimentConfig, strategy: tf.distribute.Strategy) -> dict:
    """Runs (or resumes) the whole comparison; returns the paths of the files written."""
    started = time.perf_counter()
    experiment = resolve(config)
    for name, why in experiment.skipped_arms.items():
        logging.warning("experiment: arm %s skipped: %s", name, why)
    for fraction, why in experiment.skipped_fractions.items():
        logging.warning("experiment: label fraction %g skipped: %s", fraction, why)
    chosen = schedule(experiment, strategy)
    runner = Runner(experiment, chosen, strategy)
    runner.pretrain_all()
    runner.finetune_all()
    runner.linear_all()
    if experiment.shift:
        runner.shift_all()
    return report(experiment, chosen,
                  record_wall_time(config.output_dir, time.perf_counter() - started))
