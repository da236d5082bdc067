"""Checkpoints: this package's format and model record (`native`), the official SimCLR TF2
checkpoints and SavedModels and their conversion (`official`), `--init_checkpoint`, which takes
either (`initial_weights`), and the loader of a trained model for evaluation, export and linear
evaluation (`trained_model`).

Imports models and config; never data, training or stages.
"""
