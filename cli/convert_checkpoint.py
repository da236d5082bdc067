"""`python -m simclr_med.convert_checkpoint --source=... --output_dir=... [--image_size=...]`

Converts an official SimCLR TF2 checkpoint or SavedModel once into this package's format, which
`--init_checkpoint` (like the original) accepts. Flags: flags/convert_flags.py.
"""

from __future__ import annotations

from flags import entry_point

if __name__ == "__main__":  # hide TensorFlow's start-up notices, before the imports below load it
    entry_point.import_tensorflow_quietly()

from absl import flags

from flags import convert_flags
from simclr_med.checkpoints import official

flags.adopt_module_key_flags(convert_flags)


def main() -> None:
    args = convert_flags.convert_args()
    record, report = official.convert_reference_checkpoint(
        args.source, args.output_dir, args.image_size)
    config = record.model
    print(f"{report}\nsaved ResNet-{config.resnet_depth} (width {config.width_multiplier:g}, "
          f"sk_ratio {config.sk_ratio:g}, {config.num_proj_layers} projection layers, "
          f"{record.num_classes} classes) to {args.output_dir}")


if __name__ == "__main__":
    entry_point.run(main)
