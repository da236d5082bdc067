"""`report_<split>.html`: one evaluation on one page, to read in a browser or attach to a mail.

The page stands alone: every picture is inlined as a `data:image/png;base64,...` URL and the style
sheet is in the page, so it needs no network, no script and no other file. It shows the metrics
with their 95% intervals, the evaluation's figures (ROC, confusion matrix, reliability diagrams,
the embedding map when there is one), the temperature when the evaluation fitted one, and a grid
of the model's most confident errors.

Pure: it takes the eval json, PNG bytes and captions; the caller (`stages.evaluate`) draws and
reads them. `metric_rows` is also what the printed metrics table is made of.
"""

from __future__ import annotations

import base64
import dataclasses
import html
from typing import Optional, Sequence

import numpy as np

from simclr_med.data import schema
from simclr_med.evaluation.metrics import Targets

MOST_CONFIDENT_ERRORS = 12

_STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
.figures figure { margin: 0; max-width: 520px; }
.figures img { max-width: 100%; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 0.8em; }
.grid figure { margin: 0; font-size: 0.8em; }
.grid img { width: 128px; image-rendering: pixelated; }
figcaption { color: #555; overflow-wrap: anywhere; }
.note { color: #555; font-size: 0.9em; }
"""


@dataclasses.dataclass(frozen=True)
class Picture:
    """A PNG and its caption: a figure, or an image of the error grid."""

    png: bytes
    caption: str


@dataclasses.dataclass(frozen=True)
class ConfidentError:
    """An image the model got wrong with high probability."""

    index: int  # its row in the evaluation
    column: int  # the evaluated class or label `predicted` is
    image_id: str
    truth: str  # the true class; multi-label: the image's positive labels
    predicted: str  # the wrong top class; multi-label: the false-positive label
    probability: float  # of `predicted`

    @property
    def caption(self) -> str:
        return f"{self.image_id}: true {self.truth}, predicted {self.predicted} " \
               f"({self.probability:.3f})"


def confident_errors(targets: Targets, probs: np.ndarray, image_id: np.ndarray,
                     count: int = MOST_CONFIDENT_ERRORS) -> list[ConfidentError]:
    """The `count` most confident errors, most confident first. Multi-class: labelled images
    whose top class is wrong, by its probability. Multi-label: false positives, i.e. unmasked
    negative entries, by the label's probability (an image appears once per such label)."""
    if targets.task == schema.MULTICLASS:
        top = probs.argmax(axis=1)
        rows = np.flatnonzero((targets.class_id >= 0) & (top != targets.class_id))
        columns = top[rows]
    else:
        rows, columns = np.nonzero((targets.label_mask > 0) & (targets.labels < 0.5))
    order = np.argsort(-probs[rows, columns], kind="stable")[:count]
    return [ConfidentError(int(i), int(j), str(image_id[i]), _truth(targets, i),
                           targets.names[j], float(probs[i, j]))
            for i, j in zip(rows[order], columns[order])]


def _truth(targets: Targets, row: int) -> str:
    if targets.task == schema.MULTICLASS:
        return targets.names[targets.class_id[row]]
    positive = [name for name, value, mask in zip(targets.names, targets.labels[row],
                                                  targets.label_mask[row])
                if mask > 0 and value > 0.5]
    return ", ".join(positive) or "no finding"


def metric_rows(result: dict) -> list[tuple[str, str, str]]:
    """(metric, value, 95% interval) of an eval json as text, headline metrics first (linear
    before knn/, overall before per-class or per-label), then the undefined metrics."""
    ordered = sorted(result["metrics"].items(), key=lambda item: (
        item[0].startswith("knn/"), "/" in item[0].removeprefix("knn/"), item[0]))
    rows = [(name, f"{entry['value']:.3f}", f"[{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]")
            for name, entry in ordered]
    rows += [(name, "n/a", f"({reason})")
             for name, reason in result.get("undefined_metrics", {}).items()]
    return rows


def alignment_note(result: dict) -> str:
    """Which labels were evaluated, where model and data set differ ("" where they do not)."""
    if not (result.get("renamed") or any(result.get("not_evaluated", {}).values())):
        return ""
    return (f"labels evaluated: {', '.join(result['evaluated'])}; renamed (data -> model): "
            f"{result['renamed']}; not evaluated: {result['not_evaluated']}")


def _image(png: bytes, alt: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'


def _figures(pictures: Sequence[Picture], css_class: str) -> str:
    return (f'<div class="{css_class}">' + "".join(
        f"<figure>{_image(p.png, p.caption)}<figcaption>{html.escape(p.caption)}</figcaption>"
        "</figure>" for p in pictures) + "</div>")


def _metrics_table(result: dict) -> str:
    cells = "".join(f"<tr><td>{html.escape(name)}</td><td class=number>{html.escape(value)}</td>"
                    f"<td class=number>{html.escape(interval)}</td></tr>"
                    for name, value, interval in metric_rows(result))
    bootstrap = result.get("bootstrap", {})
    note = (f"95% intervals: percentile bootstrap over {bootstrap['unit']}s, "
            f"{bootstrap['samples']} resamples (seed {bootstrap['seed']})." if bootstrap else "")
    return (f"<table><tr><th>metric</th><th>value</th><th>95% CI</th></tr>{cells}</table>"
            f'<p class="note">{html.escape(note)}</p>')


def _calibration(calibration: dict) -> str:
    value = calibration["temperature"]
    temperatures = (f"T = {value:.4f}" if not isinstance(value, dict)
                    else ", ".join(f"{name}: {t:.4f}" for name, t in value.items()))
    text = (f"Temperature scaling fitted on the {calibration['fitted_on']} split "
            f"({calibration['num_images']} images, step {calibration['global_step']}): "
            f"{temperatures}. On that split, NLL {calibration['nll_before']:.4f} -> "
            f"{calibration['nll_after']:.4f} and ECE {calibration['ece_before']:.4f} -> "
            f"{calibration['ece_after']:.4f}. Accuracy and the AUCs above are of the raw "
            "probabilities; the *_calibrated rows are the ECE after dividing the logits by T.")
    return f"<p>{html.escape(text)}</p>"


def render(result: dict, *, model_dir: str, created: str, figures: Sequence[Picture],
           errors: Sequence[Picture], embedding_map: Optional[Picture] = None) -> str:
    """The page of one evaluation: `result` its eval json, `created` the date shown, `figures`
    its plots, `errors` the pictures of its most confident errors (captions say truth and
    prediction), `embedding_map` the model's embedding map if there is one."""
    title = f"Evaluation of {model_dir} on the {result['split']} split"
    facts = (f"Data set {result['data_dir']}; checkpoint {result.get('checkpoint', '')} (global "
             f"step {result['global_step']}); {result['num_images']} images of "
             f"{result['num_patients']} patients; written {created}.")
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(facts)}</p>"]
    if alignment_note(result):
        parts.append(f'<p class="note">{html.escape(alignment_note(result))}</p>')
    parts += ["<h2>Metrics</h2>", _metrics_table(result)]
    if "calibration" in result:
        parts += ["<h2>Calibration</h2>", _calibration(result["calibration"])]
    parts += ["<h2>Figures</h2>", _figures(figures, "figures")]
    kind = ("most confident wrong top classes" if result.get("task") == schema.MULTICLASS
            else "most confident false positives")
    parts.append(f"<h2>Errors: the {len(errors)} {html.escape(kind)}</h2>")
    parts.append(_figures(errors, "grid") if errors else "<p>No errors.</p>")
    if embedding_map is not None:
        parts += ["<h2>Embedding map</h2>", _figures([embedding_map], "figures")]
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
