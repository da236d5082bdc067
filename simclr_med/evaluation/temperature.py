"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): the
logits are divided by a temperature T > 0 fitted on held-out images, which makes over-confident
probabilities (T > 1) or under-confident ones (T < 1) match how often they are right.

Multi-class: one T for all classes, minimising the softmax negative log-likelihood (NLL) of the
labelled images. Multi-label: one T per label, minimising that label's sigmoid NLL over its
unmasked entries (a label without any keeps T = 1 and is listed as not fitted). The search is
scipy's bounded Brent method on log T.

A positive temperature keeps every image's ranking of the classes, so top-k accuracy does not
change, and a per-label T keeps each label's ranking of the images, so multi-label AUCs do not
change either. A multi-class one-vs-rest AUC can move slightly: p_c = 1 / (1 + sum_j
exp((z_j - z_c) / T)) may order two images differently at another T (logit gaps (-1, -1) against
(0, -10): the first is more probable at T = 1, the second at T = 100).

`calibration.json` in the model folder records the fit (`record`); `run.py --mode=export
--calibrate` reads it (`load`) to serve calibrated probabilities.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from scipy import optimize, special

from simclr_med.data import schema
from simclr_med.errors import UserError
from simclr_med.evaluation import metrics

CALIBRATION_FILE = "calibration.json"
LOG_T_BOUNDS = (-np.log(100.0), np.log(100.0))  # T in [0.01, 100]
_XATOL = 1e-6  # on log T


def multiclass_nll(logits: np.ndarray, class_id: np.ndarray, temperature: float = 1.0) -> float:
    """Mean softmax NLL of the labelled images (class id >= 0) at `temperature`."""
    keep = class_id >= 0
    log_probs = special.log_softmax(logits[keep].astype(np.float64) / temperature, axis=1)
    return float(-log_probs[np.arange(keep.sum()), class_id[keep]].mean())


def sigmoid_nll(logits: np.ndarray, positive: np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary NLL of one label's entries at `temperature`: log(1 + exp(-s z / T)),
    s = +1 for a positive, -1 for a negative."""
    sign = np.where(positive, 1.0, -1.0)
    return float(np.logaddexp(0.0, -sign * logits.astype(np.float64) / temperature).mean())


def _fit(nll) -> float:
    """argmin over T of nll(T), searched on log T within LOG_T_BOUNDS."""
    found = optimize.minimize_scalar(lambda log_t: nll(np.exp(log_t)), bounds=LOG_T_BOUNDS,
                                     method="bounded", options={"xatol": _XATOL})
    return float(np.exp(found.x))


def fit_multiclass(logits: np.ndarray, class_id: np.ndarray) -> float:
    """The temperature of minimum softmax NLL over the labelled images."""
    if not (class_id >= 0).any():
        raise UserError("temperature scaling needs labelled images in the calibration split")
    return _fit(lambda t: multiclass_nll(logits, class_id, t))


def fit_multilabel(logits: np.ndarray, labels: np.ndarray, label_mask: np.ndarray) -> np.ndarray:
    """[L] temperatures: per label, the one of minimum sigmoid NLL over its unmasked entries
    (1 for a label without any)."""
    temperatures = np.ones(logits.shape[1])
    for j in range(logits.shape[1]):
        counted = label_mask[:, j] > 0
        if counted.any():
            positive = labels[counted, j] > 0.5
            temperatures[j] = _fit(lambda t: sigmoid_nll(logits[counted, j], positive, t))
    if not (label_mask > 0).any():
        raise UserError("temperature scaling needs labelled images in the calibration split")
    return temperatures


def fit(targets: metrics.Targets, logits: np.ndarray) -> np.ndarray:
    """Temperatures for the logits of evaluated classes or labels [N, names]: [1] (multi-class,
    broadcast over the classes) or [L]."""
    if targets.task == schema.MULTICLASS:
        fitted = np.array([fit_multiclass(logits, targets.class_id)])
    else:
        fitted = fit_multilabel(logits, targets.labels, targets.label_mask)
    names = ["all classes"] if targets.task == schema.MULTICLASS else list(targets.names)
    for bound, meaning in zip(LOG_T_BOUNDS, ("every entry is right: the NLL falls towards 0/1 "
                                             "probabilities", "the logits carry little "
                                             "information: the NLL falls towards chance")):
        reached = [name for name, t in zip(names, np.log(fitted)) if abs(t - bound) < 1e-3]
        if reached:
            logging.warning("temperature scaling: T = %g, the end of its range, for %s on the "
                            "calibration split: %s", np.exp(bound), ", ".join(reached), meaning)
    return fitted


def nll(targets: metrics.Targets, logits: np.ndarray, temperature: np.ndarray) -> float:
    """Multi-class: the softmax NLL; multi-label: the mean over labels of their sigmoid NLLs."""
    if targets.task == schema.MULTICLASS:
        return multiclass_nll(logits, targets.class_id, float(temperature[0]))
    values = [sigmoid_nll(logits[counted, j], targets.labels[counted, j] > 0.5,
                          float(temperature[j]))
              for j in range(logits.shape[1])
              for counted in [targets.label_mask[:, j] > 0] if counted.any()]
    return float(np.mean(values))


def record(targets: metrics.Targets, logits: np.ndarray, probabilities, *, fitted_on: str,
           global_step: int, model_names: Sequence[str]) -> dict:
    """Fits the temperature on a calibration split and describes the fit (calibration.json).

    `probabilities(logits)` turns logits into probabilities (softmax or sigmoid); `model_names`
    are the model's names of the evaluated classes or labels, the keys of multi-label
    temperatures (the serving export divides each output by its label's T).
    """
    temperature = fit(targets, logits)
    before = metrics.compute(targets, probabilities(logits))
    after = metrics.compute(targets, probabilities(logits / temperature))
    ece = "ece" if targets.task == schema.MULTICLASS else "mean_ece"
    counted = (targets.class_id >= 0 if targets.task == schema.MULTICLASS
               else targets.label_mask.max(axis=1) > 0)
    result = {
        "temperature": (float(temperature[0]) if targets.task == schema.MULTICLASS
                        else dict(zip(model_names, temperature.tolist()))),
        "fitted_on": fitted_on, "num_images": int(counted.sum()), "global_step": int(global_step),
        "task": targets.task,
        "nll_before": nll(targets, logits, np.ones_like(temperature)),
        "nll_after": nll(targets, logits, temperature),
        "ece_before": before[ece], "ece_after": after[ece],
    }
    if targets.task == schema.MULTILABEL:
        result["not_fitted"] = [name for name, counted in
                                zip(model_names, (targets.label_mask > 0).any(axis=0))
                                if not counted]
    return result


def temperatures(calibration: dict, model_names: Sequence[str]) -> np.ndarray:
    """The temperature of each of the model's outputs ([1] multi-class, [L] multi-label) from a
    calibration.json; a label without one is a UserError."""
    value = calibration["temperature"]
    if not isinstance(value, dict):
        return np.array([float(value)])
    missing = [name for name in model_names if name not in value]
    if missing:
        raise UserError(f"{CALIBRATION_FILE} has no temperature for the labels {missing} (it was "
                        f"fitted on {calibration['fitted_on']!r}, whose data set lacks them)")
    return np.array([float(value[name]) for name in model_names])


def load(model_dir: str) -> dict:
    """The model folder's calibration.json; a UserError naming the command that writes it when
    there is none."""
    path = os.path.join(model_dir, CALIBRATION_FILE)
    if not tf.io.gfile.exists(path):
        raise UserError(f"no {path}: fit a temperature first with `python run.py --mode=eval "
                        f"--calibrate --model_dir={model_dir} --data_dir=<its data> "
                        "--calibration_split=validation`")
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)
