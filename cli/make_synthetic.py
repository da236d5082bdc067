"""`python -m simclr_med.make_synthetic --output_dir=DIR`: writes the SYNTHETIC image folder
(`images/*.png`, `metadata.csv`) that `data_prep.build --format=generic` turns into a data set."""

from __future__ import annotations

import os

from flags import entry_point

if __name__ == "__main__":  # hide TensorFlow's start-up notices, before the imports below load it
    entry_point.import_tensorflow_quietly()

from data_prep import synthetic
from flags import synthetic_flags


def main() -> None:
    manifest = synthetic.write_image_folder(**synthetic_flags.args())
    print(f"wrote the SYNTHETIC image folder {os.path.dirname(manifest)} (manifest {manifest})")


if __name__ == "__main__":
    entry_point.run(main)
