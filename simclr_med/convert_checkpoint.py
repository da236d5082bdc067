"""`python -m simclr_med.convert_checkpoint --source=... --output_dir=... [--image_size=...]`

Converts an official SimCLR TF2 checkpoint or SavedModel once into this package's format, which
`--init_checkpoint` (like the original) accepts. Flags: flags/convert_flags.py.
"""

from __future__ import annotations

from absl import app, flags

from flags import convert_flags
from simclr_med import reference_checkpoint

flags.adopt_module_key_flags(convert_flags)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    args = convert_flags.convert_args()
    try:
        record, report = reference_checkpoint.convert_reference_checkpoint(
            args.source, args.output_dir, args.image_size)
    except reference_checkpoint.ReferenceCheckpointError as error:
        raise SystemExit(f"convert_checkpoint: {error}") from error
    config = record.model
    print(f"{report}\nsaved ResNet-{config.resnet_depth} (width {config.width_multiplier:g}, "
          f"sk_ratio {config.sk_ratio:g}, {config.num_proj_layers} projection layers, "
          f"{record.num_classes} classes) to {args.output_dir}")


if __name__ == "__main__":
    app.run(main)
