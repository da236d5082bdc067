"""`python -m simclr_med.experiment --data_dir=BUILD --output_dir=DIR [--quick]`: the paper's
comparison (scratch, SimCLR, MICLe, SimCLR then MICLe, and ImageNet-initialised arms) over label
fractions and seeds, with paired bootstrap differences. Flags: flags/experiment_flags.py; the
work: simclr_med/experiments/runner.py."""

from __future__ import annotations

if __name__ == "__main__":  # the command: hide TensorFlow's start-up notices before it loads
    from flags import entry_point

    entry_point.import_tensorflow_quietly()

from absl import flags, logging

from flags import entry_point, experiment_flags, strategy_flags
from simclr_med.experiments.runner import run_experiment
from simclr_med.training.strategy import build_strategy


def main() -> None:
    paths = run_experiment(experiment_flags.experiment_config(),
                           build_strategy(strategy_flags.strategy_config()))
    print("the comparison is done:\n" + "\n".join(f"  {name}: {path}"
                                                  for name, path in paths.items()))


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    flags.adopt_module_key_flags(experiment_flags)
    flags.adopt_module_key_flags(strategy_flags)
    entry_point.run(main)
