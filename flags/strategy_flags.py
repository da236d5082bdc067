"""Flags of the distribution strategy and precision, shared by `run.py` and
`python -m simclr_med.experiment`."""

from __future__ import annotations

from absl import flags

from flags.entry_point import ConfigFlags
from simclr_med.config import PRECISIONS, STRATEGIES, StrategyConfig

STRATEGY = ConfigFlags(StrategyConfig)

flags.DEFINE_enum("strategy", StrategyConfig.strategy, list(STRATEGIES), "Distribution strategy.")
flags.DEFINE_string("tpu", StrategyConfig.tpu, "TPU address or name for --strategy=tpu.")
flags.DEFINE_integer("num_cpu_devices", StrategyConfig.num_cpu_devices, "mirrored: replicate "
                     "over N logical CPU devices (even where there are GPUs).")
flags.DEFINE_enum("precision", StrategyConfig.precision, list(PRECISIONS),
                  "Computation precision.")


def strategy_config() -> StrategyConfig:
    return STRATEGY.build()
