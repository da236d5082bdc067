"""Pictures of an evaluation: ROC curves per class or label, the multi-class confusion matrix and
the reliability diagram.

Drawn on `matplotlib.figure.Figure` objects (the Agg renderer, no pyplot state, no display needed)
and saved as PNG next to the eval json: `roc_<split>.png`, `confusion_matrix_<split>.png`,
`reliability_<split>.png` (and `reliability_<split>_calibrated.png` after temperature scaling).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn import metrics as skm

from simclr_med.data import schema
from simclr_med.evaluation import calibration
from simclr_med.evaluation.metrics import Targets

_LEGEND_INSIDE_MAX = 8  # more curves than this: the legend goes beside the axes


def write_all(directory: str, split: str, targets: Targets, probs: np.ndarray,
              title: str) -> list[str]:
    """Writes the plots of one evaluation; returns their paths."""
    paths = [os.path.join(directory, f"roc_{split}.png")]
    save_png(roc_figure(targets, probs, title), paths[0])
    if targets.task == schema.MULTICLASS:
        paths.append(os.path.join(directory, f"confusion_matrix_{split}.png"))
        save_png(confusion_figure(targets, probs, title), paths[1])
    paths.append(os.path.join(directory, f"reliability_{split}.png"))
    save_png(reliability_figure(targets, probs, title), paths[-1])
    return paths


def write_calibrated(directory: str, split: str, targets: Targets, probs: np.ndarray,
                     title: str) -> str:
    """Writes `reliability_<split>_calibrated.png`, the reliability diagram of temperature-scaled
    probabilities; returns its path."""
    path = os.path.join(directory, f"reliability_{split}_calibrated.png")
    save_png(reliability_figure(targets, probs, f"{title}\nafter temperature scaling"), path)
    return path


def save_png(figure: Figure, path: str) -> None:
    with tf.io.gfile.GFile(path, "wb") as f:
        figure.savefig(f, format="png", dpi=120, bbox_inches="tight")


def _curves(targets: Targets, probs: np.ndarray):
    """(name, positive [n], score [n]) per class (one-vs-rest) or label, counted entries only."""
    for j, name in enumerate(targets.names):
        if targets.task == schema.MULTICLASS:
            counted = targets.class_id >= 0
            positive = targets.class_id[counted] == j
        else:
            counted = targets.label_mask[:, j] > 0
            positive = targets.labels[counted, j] > 0.5
        yield name, positive, probs[counted, j]


def roc_figure(targets: Targets, probs: np.ndarray, title: str) -> Figure:
    """ROC curve of every class (one-vs-rest) or label with both outcomes, AUC in the legend."""
    many = len(targets.names) > _LEGEND_INSIDE_MAX
    figure = Figure(figsize=(9.5 if many else 6.5, 6))
    axes = figure.subplots()
    colours = colormaps["tab20" if many else "tab10"]
    aucs = []
    for i, (name, positive, score) in enumerate(_curves(targets, probs)):
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = skm.roc_curve(positive, score)
        aucs.append(skm.roc_auc_score(positive, score))
        axes.plot(fpr, tpr, color=colours(i % colours.N), linewidth=1.6,
                  linestyle="--" if many and i % 2 else "-",
                  label=f"{name} (AUC {aucs[-1]:.3f}, {int(positive.sum())} positive)")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance (AUC 0.5)")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
             ylabel="True positive rate (sensitivity)",
             title=f"ROC curves{' (one-vs-rest)' if targets.task == schema.MULTICLASS else ''}"
                   f", mean AUC {np.mean(aucs) if aucs else float('nan'):.3f} over {len(aucs)} "
                   f"{'classes' if targets.task == schema.MULTICLASS else 'labels'}"
                   f"\n{title}")
    axes.set_aspect("equal")
    axes.grid(alpha=0.3)
    if many:
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    else:
        axes.legend(loc="lower right", fontsize=8)
    return figure


def confusion_figure(targets: Targets, probs: np.ndarray, title: str) -> Figure:
    """Counts of (true class, predicted class = highest probability) over labelled images."""
    counted = targets.class_id >= 0
    num_classes = len(targets.names)
    matrix = skm.confusion_matrix(targets.class_id[counted], probs[counted].argmax(axis=1),
                                  labels=np.arange(num_classes))
    side = max(5.0, 0.7 * num_classes + 2.5)
    figure = Figure(figsize=(side + 1.2, side))
    axes = figure.subplots()
    display = skm.ConfusionMatrixDisplay(matrix, display_labels=list(targets.names))
    display.plot(ax=axes, cmap="Blues", colorbar=True, values_format="d")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    axes.set(xlabel="Predicted class", ylabel="True class",
             title=f"Confusion matrix (top-1 accuracy {accuracy:.3f}, {matrix.sum()} images)"
                   f"\n{title}")
    axes.tick_params(axis="x", labelrotation=45)
    return figure


def _outcomes(targets: Targets, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correct, confidence) of the counted entries: the top class of each labelled image
    (multi-class), or every unmasked (image, label) entry pooled over the labels (multi-label)."""
    if targets.task == schema.MULTICLASS:
        counted = targets.class_id >= 0
        return calibration.multiclass_outcome(targets.class_id[counted], probs[counted])
    counted = targets.label_mask > 0
    return targets.labels[counted] > 0.5, probs[counted]


def reliability_figure(targets: Targets, probs: np.ndarray, title: str,
                       bins: int = calibration.BINS) -> Figure:
    """Accuracy (multi-class: of the top class; multi-label: share of positives) per equal-width
    confidence bin against the diagonal, with the number of entries of each bin above its bar."""
    table = calibration.reliability(*_outcomes(targets, probs), bins)
    figure = Figure(figsize=(6.5, 6))
    axes = figure.subplots()
    width = np.diff(table.edges)
    filled = table.count > 0
    axes.bar(table.edges[:-1][filled], table.accuracy[filled], width=width[filled], align="edge",
             color="tab:blue", edgecolor="white", alpha=0.85, label="observed")
    axes.bar(table.edges[:-1][filled], (table.confidence - table.accuracy)[filled],
             bottom=table.accuracy[filled], width=width[filled], align="edge", fill=False,
             edgecolor="tab:red", hatch="//", linewidth=0.6, label="gap to mean confidence")
    for left, w, acc, count in zip(table.edges[:-1][filled], width[filled],
                                   table.accuracy[filled], table.count[filled]):
        axes.text(left + w / 2, min(acc, 0.93) + 0.02, f"{int(count)}", ha="center",
                  va="bottom", fontsize=7, rotation=90)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1,
              label="perfect calibration")
    if targets.task == schema.MULTICLASS:
        kind = "top-class probability"
        ylabel = "Accuracy of the top class"
    else:
        kind = f"label probability, pooled over {len(targets.names)} labels"
        ylabel = "Share of positives"
    axes.set(xlim=(0, 1), ylim=(0, 1.05), xlabel=f"Confidence ({kind})", ylabel=ylabel,
             title=f"Reliability diagram ({kind})\nECE {table.ece:.3f}, "
                   f"{int(table.count.sum())} entries in {bins} bins; {title}")
    axes.set_aspect("equal")
    axes.grid(alpha=0.3)
    axes.text(0.98, 0.02, "numbers above bars: entries per bin", transform=axes.transAxes,
              ha="right", va="bottom", fontsize=7, color="dimgrey")
    axes.legend(loc="upper left", fontsize=8)
    return figure
