"""Build throughput of `data_prep` on the real subsets, and the manifest stages at CheXpert scale.

    .venv/bin/python bench/build_throughput.py

1. The NIH (1000 PNGs, 64 px) and HAM10000 (1164 JPEGs, 220 px) folders, each from its official
   table (which lists every image of the full data set, so most rows end as missing_file) and
   from its flat manifest of the images present, with 1 and 2 worker processes; and HAM10000
   shrunk to 112 px (decode, resize, PNG encode: more work per image). Images/s is over the whole
   build, from reading the CSV to the last file written.
2. A generated CheXpert `train.csv` of 223,414 rows over a folder of hard links to one small JPEG,
   built with 2 workers and one case per study: how long reading the table, grouping and splitting
   take at that size, and the image rate when decoding costs next to nothing.
"""

from __future__ import annotations

import itertools
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flags import entry_point  # noqa: E402

entry_point.import_tensorflow_quietly()

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from data_prep import formats  # noqa: E402
from data_prep.build import build_dataset  # noqa: E402
from data_prep.config import BuildConfig  # noqa: E402
from tests import data_root  # noqa: E402

CHEXPERT_ROWS = 223_414
LINKS_PER_FILE = 50_000  # file systems allow some 65,000 hard links to one file
WORKERS = (1, 2)
REPEATS = 3  # the fastest of three builds is printed


def _real_builds(root: str) -> dict[str, dict]:
    nih, ham = os.path.join(root, data_root.NIH_FOLDER), os.path.join(root, data_root.HAM_FOLDER)
    return {
        "NIH official table": dict(format="nih", manifests=(
            os.path.join(nih, "Data_Entry_2017_v2020.csv.gz"),), image_root=nih),
        "NIH flat manifest": dict(format="generic", manifests=(
            os.path.join(nih, "metadata.csv"),), image_root=nih, image_id_column="image_id",
            case_column="patient_id", label_columns=formats.NIH_FINDINGS),
        "HAM official table": dict(format="ham10000", manifests=(
            os.path.join(ham, "HAM10000_metadata.csv"),), image_root=ham),
        "HAM flat manifest": dict(format="generic", manifests=(
            os.path.join(ham, "metadata.csv"),), image_root=ham, image_id_column="image_id",
            case_column="lesion_id", label_column="dx"),
        "HAM resized to 112 px": dict(format="generic", manifests=(
            os.path.join(ham, "metadata.csv"),), image_root=ham, image_id_column="image_id",
            case_column="lesion_id", label_column="dx", image_size=112),
    }


def _build(output_dir: str, num_workers: int, **kwargs) -> dict:
    return build_dataset(BuildConfig(output_dir=output_dir, num_workers=num_workers,
                                     overwrite=True, progress=False, **kwargs))


def _line(name: str, report: dict) -> str:
    stages = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in
                       report["stage_seconds"].items())
    return (f"{name:22s} {report['num_workers']} worker(s): {report['rows_in']:7d} rows, "
            f"{report['images_written']:6d} images in {report['seconds']:6.2f} s = "
            f"{report['images_per_second']:7.1f} images/s ({stages})")


def write_chexpert_folder(root: str) -> str:
    """A CheXpert-layout train.csv of CHEXPERT_ROWS rows over hard links to one JPEG.

    Patients have 1-4 studies of 1-2 views (about 3.75 rows per patient, as CheXpert's 3.5).
    """
    rng = np.random.default_rng(0)
    os.makedirs(root)
    pixels = rng.integers(0, 256, (40, 32), dtype=np.uint8)
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(formats.CHEXPERT_OBSERVATIONS)
    cells = np.array(["", "1.0", "0.0", "-1.0"])
    lines = [header]
    for patient in itertools.count(1):
        for study in range(1, int(rng.integers(1, 5)) + 1):
            folder = f"CheXpert-v1.0-small/train/patient{patient:05d}/study{study}"
            os.makedirs(os.path.join(root, folder))
            for view in range(1, int(rng.integers(1, 3)) + 1):
                path = f"{folder}/view{view}_{'frontal' if view == 1 else 'lateral'}.jpg"
                source = os.path.join(root, f"view{len(lines) // LINKS_PER_FILE}.jpg")
                if not os.path.exists(source):
                    Image.fromarray(pixels).save(source, quality=90)
                os.link(source, os.path.join(root, path))
                labels = ",".join(rng.choice(cells, len(formats.CHEXPERT_OBSERVATIONS)))
                position = "Frontal,AP" if view == 1 else "Lateral,"
                lines.append(f"{path},Female,60,{position},{labels}")
        if len(lines) > CHEXPERT_ROWS:
            break
    manifest = os.path.join(root, "train.csv")
    with open(manifest, "w") as f:
        f.write("\n".join(lines[:CHEXPERT_ROWS + 1]) + "\n")
    return manifest


def main() -> None:
    print(f"{os.cpu_count()} CPU cores")
    root = data_root.real_data_root()
    with tempfile.TemporaryDirectory() as scratch:
        if root is None:
            print("real data not found (set SIMCLR_MED_DATA): NIH and HAM builds skipped")
        else:
            for name, kwargs in _real_builds(root).items():
                _build(os.path.join(scratch, "warm-up"), 2, **kwargs)  # warm the file cache
                for workers in WORKERS:
                    runs = [_build(os.path.join(scratch, name), workers, **kwargs)
                            for _ in range(REPEATS)]
                    print(_line(name, min(runs, key=lambda report: report["seconds"])))
        start = time.perf_counter()
        manifest = write_chexpert_folder(os.path.join(scratch, "chexpert"))
        print(f"generated {CHEXPERT_ROWS} CheXpert rows in {time.perf_counter() - start:.1f} s")
        report = _build(os.path.join(scratch, "chexpert-build"), 2, format="chexpert",
                        manifests=(manifest,), image_root=os.path.dirname(manifest),
                        case_key="study")
        print(_line("CheXpert-size table", report))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak memory of the main process: {peak:.0f} MiB")


if __name__ == "__main__":
    entry_point.run(main)
