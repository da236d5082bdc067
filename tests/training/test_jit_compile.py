"""`--jit_compile`: the XLA-compiled training step trains as the plain one does; replicas on
logical CPU devices, which XLA cannot compile for, are refused before anything is written."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from simclr_med.config import OptimConfig, PretrainConfig, TrainConfig
from simclr_med.data import augment
from simclr_med.data.reader import open_build
from simclr_med.errors import UserError
from simclr_med.stages.pretrain import pretrain
from tests.tiny import TINY

# XLA fuses and reorders float32 sums: measured relative differences of the loss after 4 steps
# are ~1e-6; a step that trained differently (another batch, no update) differs by > 1e-2.
LOSS_RTOL = 1e-4


def _pretrain(build, model_dir, strategy, jit: bool) -> dict:
    return pretrain(
        TINY, OptimConfig(optimizer="lars", learning_rate=1.0),
        augment.preset("simclr"), open_build(str(build)),
        TrainConfig(model_dir=str(model_dir), train_batch_size=8, train_steps=4,
                    steps_per_loop=2, checkpoint_steps=4, jit_compile=jit),
        PretrainConfig(temperature=0.5), strategy)


def test_the_compiled_step_trains_as_the_plain_one(synthetic_build, tmp_path):
    strategy = tf.distribute.get_strategy()
    plain = _pretrain(synthetic_build, tmp_path / "plain", strategy, jit=False)
    compiled = _pretrain(synthetic_build, tmp_path / "xla", strategy, jit=True)
    assert (plain["jit_compile"], compiled["jit_compile"]) == (False, True)
    assert compiled["global_step"] == plain["global_step"] == 4
    assert plain["precision"] == compiled["precision"] == "float32"
    for key in ("loss", "contrast_entropy"):
        np.testing.assert_allclose(compiled[key], plain[key], rtol=LOSS_RTOL, err_msg=key)


def test_mirrored_cpu_replicas_are_refused(synthetic_build, tmp_path, two_cpu_strategy):
    with pytest.raises(UserError, match="--jit_compile cannot compile a step for 2 replicas"):
        _pretrain(synthetic_build, tmp_path / "xla", two_cpu_strategy, jit=True)
    assert not (tmp_path / "xla").exists() or not any((tmp_path / "xla").iterdir())
