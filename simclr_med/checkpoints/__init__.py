"""Checkpoints: this package's format and model record (`native`), the official SimCLR TF2
checkpoints and SavedModels and their conversion (`official`), and `--init_checkpoint`, which
takes either (`initial_weights`).

Imports models and config; never data, training or stages.
"""
