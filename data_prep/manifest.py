"""Reading a manifest: a CSV (optionally gzipped) with one row per image.

The reader streams the file, checks the header once (missing columns are an error naming the file
and the columns), and hands every row to a format's `parse` (see `data_prep.formats`), which turns
it into an `ImageRow` or rejects it with a reason. Nothing is dropped silently: every data row ends
as an `ImageRow` or a `Skip`, and `Manifest.rows_in` counts them all.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import os
from typing import Iterator, Protocol, TextIO

from simclr_med.errors import UserError

MALFORMED_ROW = "malformed_row"
MISSING_VALUE = "missing_value"
BAD_LABEL = "bad_label"
BAD_SPLIT = "bad_split"
DUPLICATE = "duplicate"

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation",
                  "valid": "validation", "val": "validation", "dev": "validation",
                  "test": "test", "testing": "test"}


class ManifestError(UserError, ValueError):
    """The manifest as a whole cannot be read (missing file or columns, not a CSV)."""


class RowRejected(Exception):
    """One row cannot be used; `reason` is the report's skip reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(slots=True)
class ImageRow:
    """One image as the manifest describes it, before its file is read."""

    ref: str  # "<manifest file name>:<line>", for messages
    path: str  # relative to the image root, as written in the manifest
    image_id: str
    case_id: str
    patient_id: str
    view: str = ""
    class_id: int = -1  # multi-class; -1 = unlabelled
    labels: tuple[float, ...] = ()  # multi-label
    label_mask: tuple[float, ...] = ()
    split: str = ""  # official split, "" = split by patient hash


@dataclasses.dataclass(frozen=True)
class Skip:
    reason: str
    ref: str
    detail: str


@dataclasses.dataclass
class Manifest:
    rows: list[ImageRow]
    skips: list[Skip]
    rows_in: int


class RowParser(Protocol):
    """A manifest format: its task and label names, the columns it needs, and how one row
    becomes an `ImageRow`."""

    task: str  # simclr_med.data.schema.MULTICLASS or MULTILABEL
    names: tuple[str, ...]  # class names (class id = index) or label names (column = index)
    columns: tuple[str, ...]

    def parse(self, fields: dict[str, str], ref: str) -> ImageRow: ...


def _open_text(path: str) -> TextIO:
    """The manifest as text: a local file, or one in a bucket (gs://...) through tf.io.gfile."""
    if "://" in path:
        import tensorflow as tf

        if tf.io.gfile.isdir(path) or not tf.io.gfile.exists(path):
            raise ManifestError(f"manifest {path!r} not found")
        with tf.io.gfile.GFile(path, "rb") as f:  # not an io stream: read whole (a table)
            binary = io.BytesIO(f.read())
    elif not os.path.isfile(path):
        raise ManifestError(f"manifest {path!r} not found")
    else:
        binary = open(path, "rb")
    if path.endswith(".gz"):
        binary = gzip.GzipFile(fileobj=binary, mode="rb")
    return io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")


def _records(path: str, columns: tuple[str, ...]) -> Iterator[tuple[str, list[str], list[str]]]:
    """Yields (ref, header, values) per non-blank data row, after checking the header."""
    name = os.path.basename(path)
    with _open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = [column.strip() for column in next(reader, [])]
            if not header:
                raise ManifestError(f"{path}: empty file, expected a header row")
            missing = [column for column in columns if column not in header]
            if missing:
                raise ManifestError(
                    f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
                    f"the header has {', '.join(map(repr, header))}")
            repeated = sorted({column for column in header if header.count(column) > 1})
            if repeated:
                raise ManifestError(f"{path}: column(s) {', '.join(map(repr, repeated))} "
                                    f"appear more than once in the header")
            for values in reader:
                if values:
                    yield f"{name}:{reader.line_num}", header, values
        except (csv.Error, UnicodeDecodeError, EOFError, OSError) as error:
            raise ManifestError(f"{path}: line {reader.line_num}: not a readable CSV "
                                f"({error})") from error


def read_manifest(paths: tuple[str, ...], parser: RowParser, split_column: str = "") -> Manifest:
    """Reads every row of the manifest files through `parser`.

    `split_column` names a column holding an official split (train / valid(ation) / val / test,
    case-insensitive) to honour instead of the hash split.
    """
    columns = parser.columns + ((split_column,) if split_column else ())
    rows, skips, rows_in = [], [], 0
    for path in paths:
        for ref, header, values in _records(path, columns):
            rows_in += 1
            if len(values) != len(header):
                skips.append(Skip(MALFORMED_ROW, ref, f"{len(values)} fields, the header has "
                                                       f"{len(header)}"))
                continue
            fields = dict(zip(header, values))
            try:
                row = parser.parse(fields, ref)
                if split_column:
                    row.split = parse_split(fields[split_column], split_column)
            except RowRejected as rejected:
                skips.append(Skip(rejected.reason, ref, rejected.detail))
                continue
            rows.append(row)
    return Manifest(rows=rows, skips=skips, rows_in=rows_in)


def distinct_values(paths: tuple[str, ...], column: str) -> list[str]:
    """Sorted distinct non-empty values of one column over all manifest files."""
    values: set[str] = set()
    for path in paths:
        for _, header, row in _records(path, (column,)):
            if len(row) == len(header):
                values.add(row[header.index(column)].strip())
    values.discard("")
    return sorted(values)


def parse_split(value: str, column: str) -> str:
    split = _SPLIT_ALIASES.get(value.strip().lower())
    if split is None:
        raise RowRejected(BAD_SPLIT, f"{column}={value!r} is not one of train, validation, test")
    return split


def required(fields: dict[str, str], column: str) -> str:
    """The stripped value of a column that must not be empty."""
    value = fields[column].strip()
    if not value:
        raise RowRejected(MISSING_VALUE, f"empty {column!r}")
    return value
