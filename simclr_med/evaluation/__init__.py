"""Scoring predictions: top-1 accuracy, AUC and their confidence intervals (`metrics`), matching a
model's labels with a data set's (`label_mapping`) and ROC and confusion-matrix plots (`plots`);
Grad-CAM saliency maps of a model (`saliency`).

Works on NumPy arrays of labels and probabilities: imports only `simclr_med.data.schema` (task
names), never training or stages; `saliency` alone runs a model (`simclr_med.models`).
"""
