"""The cases of a build, from planned to written, as both runners handle them.

`build.plan_cases` makes the `PlannedCase`s (images found, split, label-fraction rank);
`write_order` orders them; a runner reads each case's images (`images.load_image`), makes its
record from the images that could be read (`case_entries`, `case_record`) and counts the case
into `Written` in write order: the local runner as it streams, the Beam pipeline's launcher
from the outcomes the workers sent back.
"""

from __future__ import annotations

import collections
import dataclasses

from data_prep import images, splits
from data_prep.manifest import ImageRow
from data_prep.report import Ledger
from simclr_med.data import schema

SPLITS = (splits.TRAIN, splits.VALIDATION, splits.TEST)


@dataclasses.dataclass
class PlannedImage:
    """An image of the manifest whose file exists inside the image root, still to be read."""

    row: ImageRow
    path: str  # absolute, normalised
    size: int  # bytes on disk


@dataclasses.dataclass
class PlannedCase:
    """A case as planned before its images are read: its split, images and label-fraction rank."""

    case_id: str
    patient_id: str
    split: str
    images: list[PlannedImage] = dataclasses.field(default_factory=list)
    rank: float = 1.0


@dataclasses.dataclass
class SplitTally:
    """What one split received, per patient: images and cases written."""

    images: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    cases: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    unlabelled_images: int = 0

    def counts(self) -> dict[str, int]:
        return {"patients": len(self.images), "cases": sum(self.cases.values()),
                "images": sum(self.images.values())}


def write_order(cases: list[PlannedCase], seed: int) -> list[PlannedCase]:
    """The cases in the order they are written: by split, then a seeded hash of the case id."""
    return sorted(cases, key=lambda case: (SPLITS.index(case.split), splits.unit_hash(
        seed, "order", case.case_id), case.case_id))


def estimated_bytes(cases: list[PlannedCase]) -> dict[str, int]:
    """Per split, the size of its image files on disk (what `writer.ShardPlan` plans from)."""
    estimated = dict.fromkeys(SPLITS, 0)
    for case in cases:
        estimated[case.split] += sum(image.size for image in case.images)
    return estimated


@dataclasses.dataclass
class Written:
    """What the build wrote, case by case in write order: the tallies per split and the cases
    left without any image; the skipped images go to the ledger."""

    ledger: Ledger
    tallies: dict[str, SplitTally] = dataclasses.field(
        default_factory=lambda: {split: SplitTally() for split in SPLITS})
    empty_cases: int = 0

    def add(self, case: PlannedCase, outcomes: list[images.Outcome]) -> list[schema.ImageEntry]:
        """Counts one case from its images' outcomes; returns the entries of its record."""
        for image, outcome in zip(case.images, outcomes, strict=True):
            if outcome.reason:
                self.ledger.skip(outcome.reason, image.row.ref, outcome.detail)
        entries = case_entries(case, outcomes)
        if not entries:
            self.empty_cases += 1
            return entries
        self.ledger.images_written += len(entries)
        tally = self.tallies[case.split]
        tally.images[case.patient_id] += len(entries)
        tally.cases[case.patient_id] += 1
        tally.unlabelled_images += sum(
            1 for entry in entries if entry.class_id < 0 and not any(entry.label_mask))
        return entries


def case_entries(case: PlannedCase, outcomes: list[images.Outcome]) -> list[schema.ImageEntry]:
    """The case's images that could be read, as record entries."""
    return [schema.ImageEntry(encoded=outcome.encoded, image_id=image.row.image_id,
                              view=image.row.view, class_id=image.row.class_id,
                              labels=image.row.labels, label_mask=image.row.label_mask)
            for image, outcome in zip(case.images, outcomes, strict=True) if not outcome.reason]


def case_record(case: PlannedCase, entries: list[schema.ImageEntry], num_labels: int) -> bytes:
    return schema.encode_case(schema.Case(case.case_id, case.patient_id, entries, case.rank),
                              num_labels)
