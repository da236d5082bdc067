"""Patient-level splits and the nested, class-stratified label-fraction order.

Splits. A patient's split comes from a stable hash (BLAKE2b) of the seed and the patient id, read as
a number u in [0, 1): u < test_fraction -> test, u < test_fraction + val_fraction -> validation,
else train. It depends on nothing else: not on row order, not on the other patients, so adding
patients to a manifest never moves the ones already there, and no patient is ever in two splits.
An official split column can be honoured instead (`official_splits`): it must be patient-disjoint.

Label fractions. Every labelled training patient gets a rank in (0, 1]; the fine-tuning subset for
fraction f is the training patients with rank <= f (compare in float32, as the records store it).
The ranks come from one ordering of the patients, so the subsets are nested by construction (the 1%
set is a prefix of the 10% set). The ordering is stratified: patients are grouped into strata; in
stratum s of size n_s, the i-th patient (in seeded-hash order) gets the key (i + o_s) / n_s, where
o_s in [0, 1) is a seeded per-stratum offset; all patients are then sorted by key. Any prefix of
that order holds n_s * k / N patients of stratum s, give or take one (systematic sampling), so
every fraction has the class proportions of the whole training split. The per-stratum offset gives
every stratum the same chance to be among the first few, which matters at 1% of a small data set.

Strata. Multi-class: a patient's most frequent class over its labelled images (ties: lower class
id). Multi-label: the patient's rarest positive label, rarity counted as the number of training
patients positive for it (ties: lower label index); patients with no positive label form one
`negative` stratum. Placing a patient by its rarest finding keeps rare labels, which decide a
mean AUC, represented in proportion in every fraction; the common labels follow from the many
patients that carry them. Patients with no labelled image at all are left out of the order and
get rank 1.0 (fine-tuning has nothing to learn from them), like every validation and test patient.
"""

from __future__ import annotations

import collections
import hashlib
from typing import Iterable

import numpy as np

from data_prep.manifest import ImageRow, ManifestError

TRAIN, VALIDATION, TEST = "train", "validation", "test"
STANDARD_FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.5, 1.0)


def unit_hash(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from the parts (same on every machine)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def hash_split(patient_id: str, val_fraction: float, test_fraction: float, seed: int) -> str:
    u = unit_hash(seed, "split", patient_id)
    if u < test_fraction:
        return TEST
    return VALIDATION if u < test_fraction + val_fraction else TRAIN


def official_splits(rows: Iterable[ImageRow]) -> dict[str, str]:
    """Each patient's split from the rows' split column; a patient in two splits is an error."""
    splits: dict[str, str] = {}
    conflicts: dict[str, set[str]] = collections.defaultdict(set)
    for row in rows:
        first = splits.setdefault(row.patient_id, row.split)
        if first != row.split:
            conflicts[row.patient_id].update((first, row.split))
    if conflicts:
        examples = "; ".join(f"{patient}: {', '.join(sorted(names))}"
                             for patient, names in sorted(conflicts.items())[:5])
        raise ManifestError(f"the split column puts {len(conflicts)} patient(s) in more than one "
                            f"split ({examples}); a patient must stay in one split: fix the column "
                            f"or leave it out to split by patient hash")
    return splits


def multiclass_strata(class_ids: dict[str, list[int]]) -> dict[str, str]:
    """Stratum per patient from its images' class ids (-1 = unlabelled); unlabelled ones omitted."""
    strata = {}
    for patient, ids in class_ids.items():
        counts = collections.Counter(i for i in ids if i >= 0)
        if counts:
            strata[patient] = f"class/{min(counts, key=lambda c: (-counts[c], c))}"
    return strata


def multilabel_strata(labels: dict[str, list[tuple[tuple[float, ...], tuple[float, ...]]]]
                      ) -> dict[str, str]:
    """Stratum per patient from its images' (labels, mask): the rarest positive label."""
    positives: dict[str, set[int]] = {}
    for patient, images in labels.items():
        if any(any(mask) for _, mask in images):
            positives[patient] = {index for values, mask in images
                                  for index, (value, known) in enumerate(zip(values, mask))
                                  if known and value > 0.5}
    frequency = collections.Counter(index for found in positives.values() for index in found)
    return {patient: (f"label/{min(found, key=lambda i: (frequency[i], i))}" if found
                      else "negative")
            for patient, found in positives.items()}


def label_fraction_ranks(strata: dict[str, str], seed: int) -> dict[str, float]:
    """Rank in (0, 1] per patient of `strata`; see the module docstring."""
    members: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)
    for patient, stratum in strata.items():
        members[stratum].append((unit_hash(seed, "fraction", patient), patient))
    keys = []
    for stratum, patients in members.items():
        patients.sort()
        offset = unit_hash(seed, "stratum", stratum)
        keys.extend(((i + offset) / len(patients), h, patient)
                    for i, (h, patient) in enumerate(patients))
    keys.sort()
    return {patient: (position + 1) / len(keys) for position, (_, _, patient) in enumerate(keys)}


def fraction_members(ranks: dict[str, float], fraction: float) -> list[str]:
    """The patients of the subset for `fraction`, compared in float32 like the stored ranks."""
    limit = np.float32(fraction)
    return sorted(patient for patient, rank in ranks.items() if np.float32(rank) <= limit)
