"""The paper's comparison (`simclr_med.experiments`): --quick end to end in this process on the
synthetic cases (with a view column, for the shift), resumption, results recomputed from the
saved predictions, the shift's image filter, paired differences, fraction and arm skipping, the
budget plan."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from data_prep import synthetic
from data_prep.build import build_dataset
from data_prep.config import BuildConfig
from simclr_med.data import schema
from simclr_med.errors import UserError
from simclr_med.evaluation import metrics
from simclr_med.experiments import paired, plan, results, runner, views
from simclr_med.experiments.plan import ExperimentConfig
from simclr_med.stages import evaluate

SHIFT = "view_position:PA->AP"


def _view(image_id: str) -> str:
    """PA for the first image of a case and every other one, AP for the rest."""
    return "PA" if int(image_id.rsplit("_", 1)[1]) % 2 == 0 else "AP"


@pytest.fixture(scope="module")
def view_build(tmp_path_factory) -> pathlib.Path:
    """The synthetic cases, with a `view_position` column, built like a user's generic data."""
    raw = tmp_path_factory.mktemp("raw")
    manifest = pathlib.Path(synthetic.write_image_folder(str(raw)))
    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0], "view_position"])
        writer.writeheader()
        writer.writerows({**row, "view_position": _view(row["image_id"])} for row in rows)
    output = raw.parent / "build"
    build_dataset(BuildConfig(
        format="generic", manifests=(str(manifest),), image_root=str(raw), output_dir=str(output),
        image_id_column="image_id", case_column="case_id", label_column="label",
        view_columns=("view_position",), num_workers=1, progress=False))
    return output


@pytest.fixture(scope="module")
def quick_run(view_build, tmp_path_factory):
    output = tmp_path_factory.mktemp("experiment")
    config = ExperimentConfig(data_dir=str(view_build), output_dir=str(output), quick=True,
                              shift=SHIFT, **plan.QUICK_DEFAULTS)
    paths = runner.run_experiment(config, tf.distribute.get_strategy())
    return config, output, paths


@pytest.mark.slow
def test_quick_run_writes_every_file_and_row(quick_run):
    config, output, paths = quick_run
    for name in ("results", "paired_differences", "label_efficiency", "summary", "shift"):
        assert os.path.getsize(paths[name]) > 0, name
    rows = results.read_csv(paths["results"])
    assert set(rows[0]) >= {"arm", "protocol", "label_fraction", "seed", "metric", "value",
                            "ci95_low", "ci95_high"}
    test_rows = {(r["arm"], r["protocol"], r["metric"]) for r in rows if r["evaluation"] == "test"}
    assert test_rows == {(arm, protocol, metric) for arm in ("scratch", "simclr", "micle")
                         for protocol in (("finetune",) if arm == "scratch"
                                          else ("finetune", "linear"))
                         for metric in ("top1_accuracy", "auc_macro")}
    shifted = {r["evaluation"] for r in rows} - {"test"}
    assert shifted == {"view_position=PA (in distribution)", f"shift {SHIFT}"}
    pairs = {(r["arm"], r["reference"], r["protocol"], r["evaluation"])
             for r in results.read_csv(paths["paired_differences"]) if r["metric"] == "auc_macro"}
    assert ("micle", "simclr", "finetune", "test") in pairs
    assert ("simclr", "scratch", "linear", "test") in pairs
    assert ("micle", "scratch", "finetune", f"shift {SHIFT}") in pairs
    text = pathlib.Path(paths["summary"]).read_text()
    assert "(lr 0.001, fine_tune_after_block -1)" in text and "never the test split" in text


@pytest.mark.slow
def test_every_row_recomputes_from_the_cells_predictions(quick_run):
    config, output, paths = quick_run
    rows = results.read_csv(paths["results"])
    assert len(rows) == 2 * (5 + 2 * 3)  # 5 test cells, 3 arms x 2 shift evaluations
    for row in rows:
        p = results.read_predictions(str(output / row["cell"] / results.PREDICTIONS_FILE),
                                     schema.MULTICLASS)
        assert float(row["value"]) == pytest.approx(
            metrics.compute(p.targets, p.probs)[row["metric"]], abs=1e-12), row


@pytest.mark.slow
def test_the_shift_evaluates_only_the_target_views_test_images(quick_run, view_build):
    config, output, paths = quick_run
    test_ids = _image_ids(view_build, "test")
    for folder, view in (("shifted", "AP"), ("in_distribution", "PA")):
        predicted = results.read_predictions(str(
            output / runner.shift_folder("scratch", 0) / folder / results.PREDICTIONS_FILE),
            schema.MULTICLASS)
        assert set(predicted.image_id) == {i for i in test_ids if _view(i) == view}
    trained_on = _image_ids(output / "views" / "view_position=PA", "train")
    assert trained_on and all(_view(i) == "PA" for i in trained_on)


def _image_ids(build: pathlib.Path, split: str) -> set[str]:
    records = tf.data.TFRecordDataset(schema.shard_paths(str(build), split))
    return {image_id.decode() for record in records.as_numpy_iterator()
            for image_id in schema.parse_case(record)["image_id"].numpy()}


@pytest.mark.slow
def test_running_again_skips_every_finished_cell(quick_run, monkeypatch):
    config, output, paths = quick_run
    before = pathlib.Path(paths["results"]).read_text()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell ran again")

    for name in ("pretrain", "finetune"):
        monkeypatch.setattr(runner, name, refuse)
    monkeypatch.setattr(runner.linear_eval, "fit_probes", refuse)
    monkeypatch.setattr(runner.evaluate, "evaluate", refuse)
    made, original = [], runner.Progress
    monkeypatch.setattr(runner, "Progress",
                        lambda *a, **k: made.append(original(*a, **k)) or made[-1])
    again = runner.run_experiment(config, tf.distribute.get_strategy())
    assert pathlib.Path(again["results"]).read_text() == before
    wall = json.loads((output / runner.WALL_TIME_FILE).read_text())["invocations_seconds"]
    assert len(wall) == 2 and wall[1] < wall[0]
    assert "over 2 invocation(s)" in (output / "summary.md").read_text()
    progress, = made  # every unit counted once as skipped, the shift's grid choice included
    assert progress.finished == progress.total and not any(progress.left.values())
    assert progress.eta() == 0


def test_the_eta_counts_each_kind_of_unit_at_its_own_pace():
    """One long pretraining run done: the ETA is its pace for the other one, the plan's for the
    fine-tuning runs not yet timed, and the mean of every unit run for a kind with no plan."""
    now = [0.0]
    progress = runner.Progress({plan.PRETRAINING: 2, plan.FINETUNING: 10, plan.LINEAR_PROBE: 2},
                               {plan.FINETUNING: 5.0}, clock=lambda: now[0])
    progress.done(plan.PRETRAINING, "pretraining a", 300.0)
    assert progress.eta() == pytest.approx(300 + 10 * 5 + 2 * 300)
    progress.done(plan.FINETUNING, "fine-tuning b", 7.0)
    assert progress.eta() == pytest.approx(300 + 9 * 7 + 2 * (307 / 2))
    progress.skip(plan.LINEAR_PROBE, "linear c")
    assert (progress.finished, progress.total) == (3, 14)


def _predictions(rng: np.random.Generator, patients: int = 30, classes: int = 3
                 ) -> paired.Predictions:
    patient = np.repeat(np.arange(patients), 2).astype(str)
    class_id = rng.integers(0, classes, len(patient))
    probs = rng.dirichlet(np.ones(classes), len(patient))
    return paired.Predictions(metrics.Targets("multiclass", ("a", "b", "c"), class_id=class_id),
                              probs, np.array([f"img{i}" for i in range(len(patient))]), patient)


def test_an_arm_against_itself_differs_by_zero():
    p = _predictions(np.random.default_rng(0))
    d = paired.paired_difference([p, p], [p, p], "auc_macro", samples=200)
    assert d.value == 0 and d.ci95 == (0.0, 0.0) and d.seeds == 2


def test_a_paired_difference_is_the_difference_of_the_seeds_mean_metrics_in_any_order():
    rng = np.random.default_rng(1)
    a, b = _predictions(rng), _predictions(rng)
    b = dataclasses.replace(b, targets=a.targets)  # the same test images and truth
    shuffled = a.in_order(a.image_id[::-1])
    d = paired.paired_difference([shuffled], [b], "top1_accuracy", samples=500)
    expected = (metrics.compute(a.targets, a.probs)["top1_accuracy"]
                - metrics.compute(b.targets, b.probs)["top1_accuracy"])
    assert d.value == pytest.approx(expected)
    assert d.ci95[0] <= d.value <= d.ci95[1]


def test_a_fraction_without_every_class_is_skipped_with_the_reason(view_build, tmp_path):
    experiment = runner.resolve(ExperimentConfig(
        data_dir=str(view_build), output_dir=str(tmp_path), label_fractions=(0.01, 0.5, 1.0)))
    assert experiment.fractions == [0.5, 1.0]
    assert "has no training image of class(es)" in experiment.skipped_fractions[0.01]


def test_micle_arms_are_skipped_without_multi_image_cases():
    arms, skipped = plan.choose_arms((), "", multi_image_cases=False)
    assert [a.name for a in arms] == ["scratch", "simclr"]
    assert set(skipped) == {"micle", "simclr_micle"} and "equal SimCLR" in skipped["micle"]
    with pytest.raises(UserError, match="--init_checkpoint"):
        plan.choose_arms(("imagenet",), "", multi_image_cases=True)


def test_pretraining_runs_are_shared_along_the_chain():
    runs = plan.pretrain_runs([plan.parse_arm(n) for n in plan.IN_DOMAIN_ARMS + plan.INIT_ARMS])
    assert [(r.name, r.use_micle, r.init_run, r.from_init_checkpoint) for r in runs] == [
        ("simclr", False, "", False), ("micle", True, "", False),
        ("simclr_micle", True, "simclr", False), ("imagenet_simclr", False, "", True),
        ("imagenet_micle", True, "", True),
        ("imagenet_simclr_micle", True, "imagenet_simclr", False)]


def test_the_schedule_spends_the_budget():
    pre, ft = plan.Throughput(2.0, 30.0), plan.Throughput(4.0, 20.0)
    images = [1000, 10000] * 3
    s = plan.plan_schedule(3600, 2, images, 4, pre, ft, 64, 32)
    spent = (2 * (30 + s.pretrain_steps / 2.0) + 4 * 20
             + sum(20 + s.finetune_epochs * n / 32 / 4.0 for n in images))
    assert spent == pytest.approx(3600, rel=0.02)
    units = s.unit_seconds  # the ETA's plan per unit adds up to the same
    assert (2 * units[plan.PRETRAINING] + len(images) * units[plan.FINETUNING]
            + 4 * units[plan.LINEAR_PROBE]) == pytest.approx(spent)
    with pytest.raises(UserError, match="too short"):
        plan.plan_schedule(60, 2, images, 4, pre, ft, 64, 32)


def test_views_of_a_view_string():
    assert views.view_value("frontal_lateral=Frontal;ap_pa=AP", "ap_pa") == "AP"
    assert views.view_value("", "view_position") == ""
    with pytest.raises(UserError, match="expected <view attribute>"):
        views.parse_shift("view_position:PA")


@pytest.fixture(scope="module")
def multilabel_build(tmp_path_factory) -> pathlib.Path:
    """The synthetic cases as a multi-label build: 0/1 columns `round` (disc, ring), `straight`
    (bar, cross) and `rare` (the first image of every ninth case: 8 training and 1 test
    positives, so left out of the mean AUC at the default `min_test_positives`)."""
    raw = tmp_path_factory.mktemp("raw_multilabel")
    manifest = pathlib.Path(synthetic.write_image_folder(str(raw), num_cases=80))
    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0], "round", "straight", "rare"])
        writer.writeheader()
        writer.writerows({**row, "round": int(row["label"] in ("disc", "ring")),
                          "straight": int(row["label"] in ("bar", "cross")),
                          "rare": int(row["image_id"].endswith("_0")
                                      and int(row["case_id"][-2:]) % 9 == 0)} for row in rows)
    output = raw.parent / "build_multilabel"
    build_dataset(BuildConfig(
        format="generic", manifests=(str(manifest),), image_root=str(raw), output_dir=str(output),
        image_id_column="image_id", case_column="case_id",
        label_columns=("round", "straight", "rare"), num_workers=1, progress=False))
    return output


def test_multilabel_fractions_need_both_outcomes_of_every_scored_label(multilabel_build,
                                                                        tmp_path):
    """Fraction 0.03 lacks a positive of `round` and `rare` and a negative of `straight`; `rare`
    is not scored, so only the other two are named; 0.1 holds both outcomes of the scored labels
    and runs, though `rare`'s one positive there is beside the point."""
    experiment = runner.resolve(ExperimentConfig(
        data_dir=str(multilabel_build), output_dir=str(tmp_path),
        label_fractions=(0.01, 0.03, 0.1, 1.0)))
    assert experiment.fractions == [0.1, 1.0]
    reason = experiment.skipped_fractions[0.03]
    assert reason.endswith("lacks a positive or a negative training image of scored label(s) "
                           "round, straight"), reason


def test_multilabel_without_a_scored_label_fails_before_training(multilabel_build, tmp_path):
    with pytest.raises(UserError, match="no label has 1000 positive test images"):
        runner.resolve(ExperimentConfig(data_dir=str(multilabel_build), output_dir=str(tmp_path),
                                        min_test_positives=1000))


def test_multilabel_predictions_read_back_and_keep_the_labels_with_enough_positives(tmp_path):
    labels = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], float)
    mask = np.array([[1, 1], [1, 0], [1, 1], [1, 1]], float)
    targets = metrics.Targets("multilabel", ("a", "b"), labels=labels, label_mask=mask)
    probs = np.array([[0.9, 0.2], [0.8, 0.5], [0.3, 0.6], [0.7, 0.1]])
    path = str(tmp_path / results.PREDICTIONS_FILE)
    evaluate.write_predictions(path, np.array(["i0", "i1", "i2", "i3"]),
                               np.array(["p0", "p0", "p1", "p2"]), targets, probs)
    back = results.read_predictions(path, "multilabel")
    np.testing.assert_array_equal(back.targets.label_mask, mask)
    np.testing.assert_array_equal(back.targets.labels * mask, labels * mask)
    np.testing.assert_array_equal(back.probs, probs)
    assert results.scored_labels(back, min_positives=2) == ("a",)
    only_a = results.restricted(back, ("a",))
    assert only_a.targets.names == ("a",) and only_a.probs.shape == (4, 1)


@pytest.mark.slow
def test_quick_run_on_the_real_nih_build_with_the_pa_to_ap_shift(nih_build, tmp_path):
    """--quick on real chest X-rays (multi-label, masked labels, follow-up cases) with NIH's
    PA -> AP shift: mean AUC rows on the test split and on both views, every value an AUC, the
    labels scored named in summary.md, and the shifted rows counting only AP test images. One arm
    (the pretrained arms and their pairs run in the synthetic --quick test; MICLe on NIH in
    tests/stages/test_micle_pretraining.py)."""
    arms = ("scratch",)
    config = ExperimentConfig(data_dir=str(nih_build), output_dir=str(tmp_path), quick=True,
                              shift=SHIFT, **{**plan.QUICK_DEFAULTS, "arms": arms,
                                              "bootstrap_samples": 100})
    paths = runner.run_experiment(config, tf.distribute.get_strategy())
    rows = [r for r in results.read_csv(paths["results"]) if r["metric"] == "mean_auc"]
    assert {(r["arm"], r["protocol"], r["evaluation"]) for r in rows} >= {
        (arm, "finetune", evaluation) for arm in arms
        for evaluation in ("test", "view_position=PA (in distribution)", f"shift {SHIFT}")}
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows)
    ap_test = _views(nih_build, "test").count("view_position=AP")
    assert {int(r["num_images"]) for r in rows if r["evaluation"] == f"shift {SHIFT}"} == {ap_test}
    with open(paths["summary"]) as f:
        summary = f.read()
    assert "Effusion" in summary or "Infiltration" in summary  # the labels scored are listed


def _views(build: pathlib.Path, split: str) -> list[str]:
    """The view string of every image of a split of a build."""
    records = tf.data.TFRecordDataset(schema.shard_paths(str(build), split))
    return [view.decode() for record in records.as_numpy_iterator()
            for view in schema.parse_case(record)["view"].numpy()]
