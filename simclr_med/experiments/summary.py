"""`summary.md` (what ran, how, and the figures), `label_efficiency.png` and `shift.png`.

The plot shows each headline metric against the label fraction (log axis), one line per arm and
protocol: the mean over seeds, with error bars from the mean of the seeds' 95% patient-bootstrap
interval bounds.
"""

from __future__ import annotations

import collections
import os
from typing import Sequence

import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

from simclr_med.evaluation import plots

LABEL_EFFICIENCY_FILE = "label_efficiency.png"
SUMMARY_FILE = "summary.md"
SHIFT_FILE = "shift.png"


def mean_over_seeds(rows: Sequence[dict]) -> dict[tuple, tuple[float, float, float, int]]:
    """{(arm, protocol, evaluation, metric, label fraction): (value, low, high, seeds)}, means
    over the seeds."""
    grouped = collections.defaultdict(list)
    for row in rows:
        key = (row["arm"], row["protocol"], row["evaluation"], row["metric"],
               float(row["label_fraction"]))
        grouped[key].append([float(row[k]) for k in ("value", "ci95_low", "ci95_high")])
    return {key: (*np.mean(values, axis=0).tolist(), len(values))
            for key, values in grouped.items()}


def label_efficiency_figure(rows: Sequence[dict], metrics: Sequence[str],
                            evaluation: str = "test") -> Figure:
    means = mean_over_seeds(rows)
    figure = Figure(figsize=(5.5 * len(metrics), 4.2))
    for i, metric in enumerate(metrics):
        ax = figure.add_subplot(1, len(metrics), i + 1)
        lines = sorted({(a, p) for a, p, e, m, _ in means if m == metric and e == evaluation})
        for arm, protocol in lines:
            points = sorted((f, v) for (a, p, e, m, f), v in means.items()
                            if (a, p, e, m) == (arm, protocol, evaluation, metric))
            x = [f for f, _ in points]
            y = np.array([v[0] for _, v in points])
            low, high = np.array([v[1] for _, v in points]), np.array([v[2] for _, v in points])
            ax.errorbar(x, y, yerr=[np.maximum(y - low, 0), np.maximum(high - y, 0)],
                        marker="o", capsize=3, linestyle="-" if protocol == "finetune" else "--",
                        label=f"{arm} ({protocol})")
        ax.set_xscale("log")
        fractions = sorted({k[4] for k in means if k[3] == metric and k[2] == evaluation})
        ax.set_xticks(fractions, [f"{f:.0%}" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("label fraction (of training patients)")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} on the {evaluation} split")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def write_label_efficiency(output_dir: str, rows: Sequence[dict], metrics: Sequence[str]) -> str:
    path = os.path.join(output_dir, LABEL_EFFICIENCY_FILE)
    plots.save_png(label_efficiency_figure(rows, metrics), path)
    return path


def shift_figure(rows: Sequence[dict], metrics: Sequence[str],
                 evaluations: Sequence[str]) -> Figure:
    """Per metric, a bar per arm and evaluation (in distribution, shifted): mean over seeds,
    error bars from the mean 95% interval bounds."""
    means = mean_over_seeds(rows)
    figure = Figure(figsize=(5.5 * len(metrics), 4.2))
    arms = sorted({k[0] for k in means if k[2] in evaluations})
    width = 0.8 / len(evaluations)
    for i, metric in enumerate(metrics):
        ax = figure.add_subplot(1, len(metrics), i + 1)
        for j, evaluation in enumerate(evaluations):
            found = [next((v for k, v in means.items() if k[:4] == (arm, "finetune", evaluation,
                                                                   metric)), None)
                     for arm in arms]
            y = np.array([v[0] if v else np.nan for v in found])
            low = np.array([v[1] if v else np.nan for v in found])
            high = np.array([v[2] if v else np.nan for v in found])
            ax.bar(np.arange(len(arms)) + j * width, y, width, label=evaluation,
                   yerr=[np.maximum(y - low, 0), np.maximum(high - y, 0)], capsize=3)
        ax.set_xticks(np.arange(len(arms)) + width * (len(evaluations) - 1) / 2, arms)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric}: distribution shift")
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def write_shift(output_dir: str, rows: Sequence[dict], metrics: Sequence[str],
                evaluations: Sequence[str]) -> str:
    path = os.path.join(output_dir, SHIFT_FILE)
    plots.save_png(shift_figure(rows, metrics, evaluations), path)
    return path


def _table(rows: Sequence[dict], metrics: Sequence[str], evaluation: str) -> list[str]:
    means = mean_over_seeds(rows)
    fractions = sorted({k[4] for k in means if k[2] == evaluation})
    lines = []
    for metric in metrics:
        lines += [f"\n**{metric}** ({evaluation}; mean over seeds, [mean 95% CI bounds], seeds)\n",
                  "| arm | protocol | " + " | ".join(f"{f:g}" for f in fractions) + " |",
                  "|---|---|" + "---|" * len(fractions)]
        for arm, protocol in sorted({(a, p) for a, p, e, m, _ in means
                                     if m == metric and e == evaluation}):
            cells = []
            for f in fractions:
                v = means.get((arm, protocol, evaluation, metric, f))
                cells.append(f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}] ({v[3]})" if v else "")
            lines.append(f"| {arm} | {protocol} | " + " | ".join(cells) + " |")
    return lines


def _paired_table(paired: Sequence[dict]) -> list[str]:
    lines = ["| arm | vs | protocol | fraction | evaluation | metric | difference [95% CI] | "
             "seeds |", "|---|---|---|---|---|---|---|---|"]
    for r in paired:
        lines.append(f"| {r['arm']} | {r['reference']} ({r['reference_protocol']}) | "
                     f"{r['protocol']} | {float(r['label_fraction']):g} | {r['evaluation']} | "
                     f"{r['metric']} | {float(r['difference']):+.3f} "
                     f"[{float(r['ci95_low']):+.3f}, {float(r['ci95_high']):+.3f}] | "
                     f"{r['seeds']} |")
    return lines


def write_summary(output_dir: str, *, header: Sequence[str], rows: Sequence[dict],
                  paired: Sequence[dict], metrics: Sequence[str],
                  evaluations: Sequence[str]) -> str:
    """summary.md: `header` (what ran and how, as markdown lines), the tables, the paired
    differences."""
    lines = ["# The paper's comparison", "", *header, "", "## Results"]
    for evaluation in evaluations:
        lines += _table(rows, metrics, evaluation)
    lines += ["", "## Paired differences",
              "Each arm against scratch, and micle against simclr, on the same test patients: "
              "the paired bootstrap draws the patients once per resample for both arms; with "
              "several seeds the difference is averaged over seed pairs inside each resample.",
              "", *_paired_table(paired), "",
              f"Files: `results.csv` (one row per cell and metric), `paired_differences.csv`, "
              f"`{LABEL_EFFICIENCY_FILE}`; each cell's folder keeps its `predictions_test.csv`."]
    path = os.path.join(output_dir, SUMMARY_FILE)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
