"""Scoring predictions: top-1 accuracy, AUC and their confidence intervals (`metrics`), matching a
model's labels with a data set's (`label_mapping`) and ROC and confusion-matrix plots (`plots`).

Works on NumPy arrays of labels and probabilities: imports only `simclr_med.data.schema` (task
names), never models, training or stages.
"""
