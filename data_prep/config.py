"""`BuildConfig`: everything one data set build needs, as a plain dataclass.

`python -m data_prep.build` turns its flags into one; library callers (the demo, tests, notebooks)
construct it directly and call `data_prep.build.build_dataset(config)`.
"""

from __future__ import annotations

import dataclasses
import os
import shlex

FORMATS = ("chexpert", "nih", "ham10000", "generic")
UNCERTAINTY_POLICIES = ("ones", "zeros", "ignore")
CASE_KEYS = ("patient", "study")
ON_ERROR = ("skip", "fail")
RUNNERS = ("local", "beam")
# Fields whose `python -m data_prep.build` flag has another name; the others have the field's.
FLAG_NAMES = {"manifests": "manifest"}
_PATH_FIELDS = ("manifests", "image_root", "output_dir")
_NOT_RECORDED = ("overwrite", "progress", "runner")  # how to run, not what to build


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """One build: where the manifest and images are, how to read them, where the output goes.

    Paths in a manifest are relative to `image_root` (absolute paths must still lie inside it).
    `nih` and `ham10000` manifests name files only; they are looked up in `image_root` and in the
    official sub-folders (`images/`, `images_NNN/images/`, `HAM10000_images_part_N/`).
    """

    format: str
    manifests: tuple[str, ...]
    image_root: str
    output_dir: str
    # generic format: column names
    image_column: str = "path"
    image_id_column: str = ""  # default: the image path as written in the manifest
    case_column: str = ""
    patient_column: str = ""  # default: the case column
    label_column: str = ""  # one multi-class column ...
    label_columns: tuple[str, ...] = ()  # ... or several 0/1 columns (multi-label)
    classes: tuple[str, ...] = ()  # multi-class names in class-id order (default: sorted values)
    view_columns: tuple[str, ...] = ()  # stored per image as `column=value;...`
    split_column: str = ""  # honour an official split (train / validation / test) instead of hashing
    # chexpert / nih
    labels: str = ""  # chexpert: competition (default) | all | A,B,...; nih: all (default) | A,B,...
    uncertainty: str = "ignore"  # CheXpert -1.0 (and generic -1): ones | zeros | ignore (masked)
    case_key: str = "patient"  # chexpert: patient | study
    # splits
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    # images
    image_size: int = 0  # > 0: shrink so that the shorter side is this many pixels
    max_image_pixels: int = 100_000_000  # larger images are refused (`too_large`), not decoded
    # run
    num_workers: int = 0  # 0: one per CPU core
    shard_size_mb: float = 128.0
    on_error: str = "skip"
    runner: str = "local"  # local: data_prep.parallel; beam: data_prep.beam_pipeline
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not self.manifests:
            raise ValueError("no manifest given")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be skip or fail, got {self.on_error!r}")
        if self.runner not in RUNNERS:
            raise ValueError(f"runner must be local or beam, got {self.runner!r}")
        if self.uncertainty not in UNCERTAINTY_POLICIES:
            raise ValueError(f"uncertainty must be one of {', '.join(UNCERTAINTY_POLICIES)}, "
                             f"got {self.uncertainty!r}")
        if self.case_key not in CASE_KEYS:
            raise ValueError(f"case_key must be patient or study, got {self.case_key!r}")
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave some patients for training, "
                             f"got {self.val_fraction} + {self.test_fraction}")
        if self.image_size < 0 or self.max_image_pixels <= 0 or self.shard_size_mb <= 0:
            raise ValueError("image_size must be >= 0; max_image_pixels and shard_size_mb > 0")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.format == "generic":
            self._check_generic()

    def _check_generic(self) -> None:
        if not self.case_column:
            raise ValueError("generic format: --case_column is required (the column grouping "
                             "images into cases; name the image column for single-image cases)")
        if bool(self.label_column) == bool(self.label_columns):
            raise ValueError("generic format: give exactly one of --label_column (multi-class) "
                             "and --label_columns (multi-label)")
        if self.classes and not self.label_column:
            raise ValueError("--classes applies to a multi-class --label_column only")

    def command_line(self) -> str:
        """The `python -m data_prep.build` command of this build: its flags that differ from
        their defaults, with absolute local paths (report.json records it, so that a damaged
        build can be rebuilt)."""
        args = ["python", "-m", "data_prep.build"]
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in _NOT_RECORDED or value == field.default:
                continue
            if field.name in _PATH_FIELDS:
                value = (tuple(map(_absolute, value)) if isinstance(value, tuple)
                         else _absolute(value))
            name = FLAG_NAMES.get(field.name, field.name)
            if isinstance(value, bool):
                args.append(f"--{'' if value else 'no'}{name}")
            else:
                args.append(f"--{name}={','.join(value) if isinstance(value, tuple) else value}")
        return shlex.join(args)

    @property
    def workers(self) -> int:
        """Worker processes to use (num_workers, or the number of CPU cores when 0)."""
        return self.num_workers or os.cpu_count() or 1


def _absolute(path: str) -> str:
    """A local path made absolute; URLs (gs://...) as they are."""
    return path if "://" in path else os.path.abspath(path)
