"""One module per pipeline stage, each a function `run.py` calls with plain config objects:
`pretrain` (SimCLR or MICLe), `finetune`, `evaluate`, `linear_eval` and `export`.

Top layer: stages import everything below them (models, data, training, checkpoints,
evaluation) and nothing imports a stage except entry points and other stages.
"""
