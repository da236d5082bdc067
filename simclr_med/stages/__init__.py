"""One module per pipeline stage, each a function `run.py` calls with plain config objects and a
model folder, a data source or a model: `pretrain` (SimCLR or MICLe), `finetune`, `evaluate`,
`linear_eval` and `export`.

Top layer: stages import everything below them (models, data, training, checkpoints,
evaluation) and nothing of the library imports a stage but another stage.
"""
