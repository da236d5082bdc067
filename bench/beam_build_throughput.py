"""Build throughput of `data_prep` on Apache Beam's DirectRunner against the local runner.

    .venv/bin/python bench/beam_build_throughput.py [--image_size=112]

The HAM10000 subset (1,164 JPEGs of 220 px, its flat manifest), shrunk to `--image_size` (decode,
resize, PNG encode: work per image that workers share), built one after the other by the local
runner with 1 and 2 processes and by the DirectRunner with 1 worker (in this process) and 2 (two
worker processes). Each build is checked byte-identical to the first. Images/s is over the whole
build; the `images` stage is the per-image work and the shard writing (for Beam with the
pipeline's start-up, which dominates at this size).
"""

from __future__ import annotations

import filecmp
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flags import entry_point  # noqa: E402

entry_point.import_tensorflow_quietly()

from data_prep.build import build_dataset  # noqa: E402
from data_prep.config import BuildConfig  # noqa: E402
from flags import beam_bench_flags  # noqa: E402
from tests import data_root  # noqa: E402

RUNS = {
    "local, 1 process": ("local", 1, ()),
    "local, 2 processes": ("local", 2, ()),
    "DirectRunner, 1 worker": ("beam", 1, ("--runner=DirectRunner", "--direct_num_workers=1")),
    "DirectRunner, 2 workers": ("beam", 1, (
        "--runner=DirectRunner", "--direct_num_workers=2",
        "--direct_running_mode=multi_processing")),
}


def main() -> None:
    image_size = beam_bench_flags.image_size()
    root = data_root.real_data_root()
    if root is None:
        raise SystemExit("real data not found: set SIMCLR_MED_DATA (see tests/data_root.py)")
    ham = os.path.join(root, data_root.HAM_FOLDER)
    first = None
    with tempfile.TemporaryDirectory() as scratch:
        for name, (runner, workers, beam_args) in RUNS.items():
            output_dir = os.path.join(scratch, name.replace(" ", "").replace(",", "_"))
            report = build_dataset(BuildConfig(
                format="generic", manifests=(os.path.join(ham, "metadata.csv"),), image_root=ham,
                output_dir=output_dir, image_id_column="image_id", case_column="lesion_id",
                label_column="dx", image_size=image_size, num_workers=workers, runner=runner,
                progress=False), beam_args=beam_args)
            first = first or output_dir
            shards = sorted(f for f in os.listdir(first) if f.endswith(".tfrecord"))
            _, mismatch, errors = filecmp.cmpfiles(first, output_dir, shards, shallow=False)
            print(f"{name:24s}: {report['images_written']} images in {report['seconds']:6.2f} s = "
                  f"{report['images_per_second']:6.1f} images/s (images stage "
                  f"{report['stage_seconds']['images']:.2f} s); shards identical to the first: "
                  f"{not mismatch and not errors}", flush=True)


if __name__ == "__main__":
    entry_point.run(main)
