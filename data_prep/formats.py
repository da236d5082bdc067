"""The four manifest formats: CheXpert, NIH ChestX-ray14, HAM10000 and generic CSVs.

Each format names the columns it needs and turns one CSV row into an `ImageRow`: the image path,
its ids, its view attributes and its own labels. Labels belong to images (an NIH patient's
follow-ups carry different findings); where a source labels a case (a HAM10000 lesion) every image
carries the case's label.

Views are stored per image as `key=value;key=value` (`frontal_lateral=Frontal;ap_pa=AP` for
CheXpert, `view_position=PA` for NIH), empty when the source has none.
"""

from __future__ import annotations

import functools
import posixpath
import re
from typing import Iterable

import tensorflow as tf

from data_prep import manifest
from data_prep.config import BuildConfig
from data_prep.manifest import BAD_LABEL, MISSING_VALUE, ImageRow, RowRejected, required
from simclr_med.data.schema import MULTICLASS, MULTILABEL
from simclr_med.errors import UserError

CHEXPERT_OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices")
CHEXPERT_COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
    "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax")
NIH_NO_FINDING = "No Finding"
HAM10000_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

# Where the official downloads put their images, relative to --image_root.
NIH_IMAGE_DIRS = ("images", "images_*/images")
HAM10000_IMAGE_DIRS = ("images", "HAM10000_images", "HAM10000_images_part_*")

_CHEXPERT_PATIENT_STUDY = re.compile(r"(?:^|/)(patient\d+)/(study\d+)/")
_UNSAFE_VIEW = re.compile(r"[;=\s]+")


def view_string(pairs: Iterable[tuple[str, str]]) -> str:
    """`key=value;key=value` for the non-empty values (`;`, `=` and spaces become `_`)."""
    return ";".join(_view_item(key, value) for key, value in pairs if value.strip())


@functools.lru_cache(maxsize=4096)
def _view_item(key: str, value: str) -> str:
    return f"{_UNSAFE_VIEW.sub('_', key.strip())}={_UNSAFE_VIEW.sub('_', value.strip())}"


def select_labels(spec: str, default: tuple[str, ...], available: tuple[str, ...],
                  presets: dict[str, tuple[str, ...]] | None = None) -> tuple[str, ...]:
    """Label names from a `--labels` value: "" (the default), `all`, a preset, or `A,B,...`."""
    presets = {"all": available, **(presets or {})}
    if not spec:
        return default
    if spec in presets:
        return presets[spec]
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        raise UserError(f"unknown label(s) {', '.join(map(repr, unknown))}; choose from "
                        f"{', '.join(presets)} or a comma-separated subset of "
                        f"{', '.join(available)}")
    return names


class BinaryLabel:
    """Parses one multi-label cell: 1 / 0 / -1 (uncertain) / blank, as (label, mask).

    Uncertain follows the policy: `ones` -> (1, 1), `zeros` -> (0, 1), `ignore` -> (0, 0), a masked
    entry that losses and metrics skip. `blank` is what an empty cell means.
    """

    def __init__(self, uncertainty: str, blank: tuple[float, float]) -> None:
        uncertain = {"ones": (1.0, 1.0), "zeros": (0.0, 1.0), "ignore": (0.0, 0.0)}[uncertainty]
        self._values = {1.0: (1.0, 1.0), 0.0: (0.0, 1.0), -1.0: uncertain}
        self._blank = blank
        self._cache: dict[str, tuple[float, float]] = {}

    def __call__(self, value: str, column: str) -> tuple[float, float]:
        if value not in self._cache:
            self._cache[value] = self._parse(value, column)
        return self._cache[value]

    def _parse(self, value: str, column: str) -> tuple[float, float]:
        if not value.strip():
            return self._blank
        try:
            return self._values[float(value)]
        except (KeyError, ValueError):
            raise RowRejected(BAD_LABEL, f"{column}={value!r} is not 1, 0, -1 or blank") from None


class FileIndex:
    """Finds image files by name in the image root and the official sub-folders (first wins)."""

    def __init__(self, root: str, patterns: tuple[str, ...]) -> None:
        # tf.io.gfile: the root may be a bucket (gs://...) as well as a local folder.
        folders = [root] + [folder for pattern in patterns
                            for folder in sorted(tf.io.gfile.glob(f"{root}/{pattern}"))]
        self._paths: dict[str, str] = {}
        for folder in folders:
            if tf.io.gfile.isdir(folder):
                relative = folder[len(root):].strip("/")
                for name in sorted(tf.io.gfile.listdir(folder)):
                    self._paths.setdefault(name, posixpath.join(relative, name))

    def __call__(self, name: str) -> str:
        """The file's path relative to the root, or `name` itself when it is nowhere."""
        return self._paths.get(name, name)


class ChexpertFormat:
    """CheXpert `train.csv` / `valid.csv`: cases by patient (or study), multi-label."""

    task = MULTILABEL

    def __init__(self, labels: str, uncertainty: str, case_key: str) -> None:
        self.names = select_labels(labels, CHEXPERT_COMPETITION, CHEXPERT_OBSERVATIONS,
                                   {"competition": CHEXPERT_COMPETITION})
        self.columns = ("Path", "Frontal/Lateral", "AP/PA", *self.names)
        self._label = BinaryLabel(uncertainty, blank=(0.0, 1.0))  # blank = not mentioned = negative
        self._by_study = case_key == "study"

    def parse(self, fields: dict[str, str], ref: str) -> ImageRow:
        path = required(fields, "Path")
        folders = _CHEXPERT_PATIENT_STUDY.search(path)
        if folders is None:
            raise RowRejected(MISSING_VALUE, f"Path {path!r} has no patientNNNNN/studyN/ folders")
        patient, study = folders.groups()
        labels, mask = zip(*(self._label(fields[name], name) for name in self.names))
        view = view_string([("frontal_lateral", fields["Frontal/Lateral"]),
                            ("ap_pa", fields["AP/PA"])])
        return ImageRow(ref=ref, path=path, image_id=path,
                        case_id=f"{patient}/{study}" if self._by_study else patient,
                        patient_id=patient, view=view, labels=labels, label_mask=mask)


class NihFormat:
    """ChestX-ray14 `Data_Entry_2017*.csv`: cases by patient, the 14 findings multi-hot."""

    task = MULTILABEL
    columns = ("Image Index", "Finding Labels", "Patient ID", "View Position")

    def __init__(self, labels: str, image_root: str) -> None:
        self.names = select_labels(labels, NIH_FINDINGS, NIH_FINDINGS)
        self._locate = FileIndex(image_root, NIH_IMAGE_DIRS)

    def parse(self, fields: dict[str, str], ref: str) -> ImageRow:
        name = required(fields, "Image Index")
        findings = {finding.strip() for finding in required(fields, "Finding Labels").split("|")}
        if findings == {NIH_NO_FINDING}:
            findings = set()
        unknown = findings.difference(NIH_FINDINGS)
        if unknown:
            raise RowRejected(BAD_LABEL, f"Finding Labels has unknown finding(s) "
                                         f"{', '.join(map(repr, sorted(unknown)))}")
        patient = required(fields, "Patient ID")
        return ImageRow(ref=ref, path=self._locate(name), image_id=name, case_id=patient,
                        patient_id=patient,
                        view=view_string([("view_position", fields["View Position"])]),
                        labels=tuple(float(label in findings) for label in self.names),
                        label_mask=(1.0,) * len(self.names))


class MulticlassLabel:
    """Class id of a cell: the index of its value in `names`, -1 when blank (unlabelled)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._ids = {name: index for index, name in enumerate(names)}

    def __call__(self, value: str, column: str) -> int:
        value = value.strip()
        if not value:
            return -1
        if value not in self._ids:
            raise RowRejected(BAD_LABEL, f"{column}={value!r} is not one of the classes")
        return self._ids[value]


class Ham10000Format:
    """`HAM10000_metadata.csv`: cases by lesion (the lesion stands in for the patient), 7 classes."""

    task = MULTICLASS
    columns = ("lesion_id", "image_id", "dx")
    names = HAM10000_CLASSES

    def __init__(self, image_root: str) -> None:
        self._locate = FileIndex(image_root, HAM10000_IMAGE_DIRS)
        self._label = MulticlassLabel(self.names)

    def parse(self, fields: dict[str, str], ref: str) -> ImageRow:
        image_id = required(fields, "image_id")
        lesion = required(fields, "lesion_id")
        return ImageRow(ref=ref, path=self._locate(f"{image_id}.jpg"), image_id=image_id,
                        case_id=lesion, patient_id=lesion,
                        class_id=self._label(fields["dx"], "dx"))


class GenericFormat:
    """Any CSV: an image path column, a case column, a patient column, labels by flags."""

    def __init__(self, config: BuildConfig, classes: tuple[str, ...]) -> None:
        self._config = config
        self._patient_column = config.patient_column or config.case_column
        if config.label_column:
            self.task, self.names = MULTICLASS, classes
            self._class = MulticlassLabel(classes)
        else:
            self.task, self.names = MULTILABEL, config.label_columns
            self._binary = BinaryLabel(config.uncertainty, blank=(0.0, 0.0))  # blank = unknown
        self.columns = tuple(dict.fromkeys(column for column in (
            config.image_column, config.image_id_column, config.case_column,
            self._patient_column, config.label_column, *config.label_columns,
            *config.view_columns) if column))

    def parse(self, fields: dict[str, str], ref: str) -> ImageRow:
        config = self._config
        path = required(fields, config.image_column)
        row = ImageRow(
            ref=ref, path=path,
            image_id=required(fields, config.image_id_column) if config.image_id_column else path,
            case_id=required(fields, config.case_column),
            patient_id=required(fields, self._patient_column),
            view=view_string((column, fields[column]) for column in config.view_columns))
        if config.label_column:
            row.class_id = self._class(fields[config.label_column], config.label_column)
        else:
            row.labels, row.label_mask = zip(*(self._binary(fields[column], column)
                                               for column in config.label_columns))
        return row


def make_format(config: BuildConfig) -> manifest.RowParser:
    """The row parser for `config.format`, with its task (`.task`) and label names (`.names`)."""
    if config.format == "chexpert":
        return ChexpertFormat(config.labels, config.uncertainty, config.case_key)
    if config.format == "nih":
        return NihFormat(config.labels, config.image_root)
    if config.format == "ham10000":
        return Ham10000Format(config.image_root)
    classes = config.classes
    if config.label_column and not classes:
        classes = tuple(manifest.distinct_values(config.manifests, config.label_column))
        if not classes:
            raise manifest.ManifestError(f"column {config.label_column!r} of "
                                         f"{', '.join(config.manifests)} has no values")
    return GenericFormat(config, classes)
