"""The tiny network of the test suite: ResNet-18 at width 0.25 on 32 px images, which trains a
step in well under a second on a CPU. A test that needs another field says only that field:
`tiny(image_size=64)`."""

from __future__ import annotations

import dataclasses

from simclr_med.config import ModelConfig

TINY = ModelConfig(resnet_depth=18, width_multiplier=0.25, image_size=32)


def tiny(**changes) -> ModelConfig:
    return dataclasses.replace(TINY, **changes)



def model_folder(directory, names: tuple[str, ...], task: str = "multiclass",
                 config: ModelConfig = TINY, step: int = 1, logit_scale: float = 1.0,
                 seed: int = 0) -> str:
    """A model folder as fine-tuning leaves it (model_config.json, a checkpoint at `step`) of a
    model initialised from `seed`, its head's kernel multiplied by `logit_scale` (> 1: more
    confident)."""
    import keras

    from simclr_med.models.simclr import SimCLRModel

    keras.utils.set_random_seed(seed)
    model = SimCLRModel(config, len(names))
    model.build_for_image_size()
    kernel = model.supervised_head.dense.kernel
    kernel.assign(kernel * logit_scale)
    return save_model_folder(directory, model, names, task, step)


def save_model_folder(directory, model, names: tuple[str, ...], task: str = "multiclass",
                      step: int = 1) -> str:
    """Saves `model` (a SimCLRModel with a head for `names`) as a model folder."""
    from simclr_med.checkpoints import trained_model

    return trained_model.save(str(directory), model, tuple(names), task, step)
