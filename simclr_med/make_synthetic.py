"""`python -m simclr_med.make_synthetic --output_dir=DIR`: writes the SYNTHETIC image folder
(`images/*.png`, `metadata.csv`) that `data_prep.build --format=generic` turns into a data set."""

from __future__ import annotations

import os

from absl import app

from flags import synthetic_flags
from simclr_med import synthetic


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    manifest = synthetic.write_image_folder(**synthetic_flags.args())
    print(f"wrote the SYNTHETIC image folder {os.path.dirname(manifest)} (manifest {manifest})")


if __name__ == "__main__":
    app.run(main)
