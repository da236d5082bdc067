"""`results.csv` and `paired_differences.csv`, recomputed from the cells' saved predictions.

Every figure comes from a cell's `predictions_test.csv` through `simclr_med.evaluation.metrics`,
so the table can always be recomputed from the files. Headline metrics: multi-class top-1
accuracy and macro AUC; multi-label the mean AUC over the labels with at least
`min_test_positives` positive test images (labels rarer than that give AUCs too noisy to
average; the labels used are listed in summary.md).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from simclr_med.data import schema
from simclr_med.evaluation import metrics
from simclr_med.experiments.paired import Predictions, paired_difference

PREDICTIONS_FILE = "predictions_test.csv"
RESULTS_FILE = "results.csv"
PAIRED_FILE = "paired_differences.csv"
RESULT_COLUMNS = ("arm", "protocol", "label_fraction", "seed", "metric", "value", "ci95_low",
                  "ci95_high", "evaluation", "setting", "num_images", "num_patients", "cell")
PAIRED_COLUMNS = ("arm", "reference", "protocol", "reference_protocol", "label_fraction",
                  "evaluation", "metric", "difference", "ci95_low", "ci95_high", "seeds")


def read_predictions(path: str, task: str) -> Predictions:
    """A `predictions_<split>.csv` of `evaluate.write_predictions`, back into arrays."""
    with tf.io.gfile.GFile(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} holds no prediction")
    names = tuple(c[len("prob/"):] for c in rows[0] if c.startswith("prob/"))
    probs = np.array([[float(r[f"prob/{n}"]) for n in names] for r in rows])
    ids = {k: np.array([r[k] for r in rows]) for k in ("image_id", "patient_id")}
    if task == schema.MULTICLASS:
        index = {n: i for i, n in enumerate(names)}
        class_id = np.array([index[r["label"]] if r["label"] else -1 for r in rows])
        targets = metrics.Targets(task, names, class_id=class_id)
    else:
        cells = np.array([[r[f"label/{n}"] for n in names] for r in rows])
        targets = metrics.Targets(task, names, labels=np.where(cells == "1", 1.0, 0.0),
                                  label_mask=(cells != "").astype(float))
    return Predictions(targets, probs, ids["image_id"], ids["patient_id"])


def scored_labels(predictions: Predictions, min_positives: int) -> tuple[str, ...]:
    """Multi-label: the labels with at least `min_positives` counted positive test images."""
    t = predictions.targets
    positives = ((t.labels > 0.5) & (t.label_mask > 0)).sum(axis=0)
    return tuple(n for n, count in zip(t.names, positives) if count >= min_positives)


def restricted(predictions: Predictions, labels: Sequence[str]) -> Predictions:
    """Multi-label predictions of `labels` only (multi-class ones unchanged)."""
    t = predictions.targets
    if t.task == schema.MULTICLASS:
        return predictions
    columns = [t.names.index(n) for n in labels]
    targets = metrics.Targets(t.task, tuple(labels), labels=t.labels[:, columns],
                              label_mask=t.label_mask[:, columns])
    return dataclasses.replace(predictions, targets=targets, probs=predictions.probs[:, columns])


def headline_metrics(task: str) -> tuple[str, ...]:
    return ("top1_accuracy", "auc_macro") if task == schema.MULTICLASS else ("mean_auc",)


@dataclasses.dataclass(frozen=True)
class ScoredCell:
    """A finished cell and where its predictions are."""

    arm: str
    protocol: str
    label_fraction: float
    seed: int
    evaluation: str  # "test", or the shift's name
    setting: str
    folder: str  # relative to the output folder


def result_rows(output_dir: str, cells: Sequence[ScoredCell], task: str, labels: Sequence[str],
                samples: int) -> list[dict]:
    """One row per cell and headline metric, with its patient-bootstrap interval."""
    rows = []
    for cell in cells:
        p = restricted(read_predictions(os.path.join(output_dir, cell.folder, PREDICTIONS_FILE),
                                        task), labels)
        scores = metrics.with_intervals(p.targets, p.probs, p.patient_id, samples)
        for name in headline_metrics(task):
            score = scores.get(name, {"value": float("nan"), "ci95": [float("nan")] * 2})
            rows.append({"arm": cell.arm, "protocol": cell.protocol,
                         "label_fraction": cell.label_fraction, "seed": cell.seed,
                         "metric": name, "value": score["value"], "ci95_low": score["ci95"][0],
                         "ci95_high": score["ci95"][1], "evaluation": cell.evaluation,
                         "setting": cell.setting, "num_images": p.targets.num_images,
                         "num_patients": len(np.unique(p.patient_id)), "cell": cell.folder})
    return rows


def comparisons(arms: Sequence[str]) -> list[tuple[str, str]]:
    """(arm, reference) pairs: every arm against scratch, and micle against simclr."""
    pairs = [(arm, "scratch") for arm in arms if arm != "scratch" and "scratch" in arms]
    if "micle" in arms and "simclr" in arms:
        pairs.append(("micle", "simclr"))
    return pairs


def paired_rows(output_dir: str, cells: Sequence[ScoredCell], task: str, labels: Sequence[str],
                samples: int) -> list[dict]:
    """Paired differences (`comparisons`) per protocol, label fraction, evaluation and headline
    metric. A fine-tuned arm is compared with the reference's fine-tuning, a linear probe with the
    reference's linear probe if it has one (else with its fine-tuning: scratch has no probe);
    the linear probe has one seed, which is paired with each seed of the reference."""
    by_key: dict[tuple, dict[int, str]] = {}
    for cell in cells:
        key = (cell.arm, cell.protocol, cell.label_fraction, cell.evaluation)
        by_key.setdefault(key, {})[cell.seed] = cell.folder

    def load(folders: dict[int, str], seeds: Sequence[int]) -> list[Predictions]:
        """Each seed's predictions; a one-seed cell (the linear probe) stands for every seed."""
        only = next(iter(folders.values()))
        return [restricted(read_predictions(os.path.join(
            output_dir, folders.get(s, only), PREDICTIONS_FILE), task), labels) for s in seeds]

    rows = []
    arms = list(dict.fromkeys(cell.arm for cell in cells))
    for (arm, protocol, fraction, evaluation), folders in sorted(by_key.items()):
        for candidate, reference in comparisons(arms):
            if arm != candidate:
                continue
            ref_protocol = (protocol if (reference, protocol, fraction, evaluation) in by_key
                            else "finetune")
            ref_folders = by_key.get((reference, ref_protocol, fraction, evaluation))
            if not ref_folders:
                continue
            seeds = sorted(ref_folders) if len(folders) < len(ref_folders) else sorted(folders)
            a, b = load(folders, seeds), load(ref_folders, seeds)
            for name in headline_metrics(task):
                d = paired_difference(a, b, name, samples)
                rows.append({"arm": arm, "reference": reference, "protocol": protocol,
                             "reference_protocol": ref_protocol, "label_fraction": fraction,
                             "evaluation": evaluation, "metric": name, "difference": d.value,
                             "ci95_low": d.ci95[0], "ci95_high": d.ci95[1], "seeds": d.seeds})
    return rows


def write_csv(path: str, columns: Sequence[str], rows: Sequence[dict]) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: str) -> list[dict]:
    with tf.io.gfile.GFile(path) as f:
        return list(csv.DictReader(f))
