"""data_prep.splits: patient hash splits and nested, stratified label-fraction ranks."""

from __future__ import annotations

import collections
import random

import numpy as np
import pytest

from data_prep import splits
from data_prep.manifest import ImageRow, ManifestError

PATIENTS = [f"p{i:05d}" for i in range(20000)]


def test_hash_split_shares_and_independence_from_other_patients():
    assigned = {p: splits.hash_split(p, 0.1, 0.2, seed=0) for p in PATIENTS}
    shares = collections.Counter(assigned.values())
    assert abs(shares["test"] / len(PATIENTS) - 0.2) < 0.015
    assert abs(shares["validation"] / len(PATIENTS) - 0.1) < 0.015
    # a patient's split is a function of its id and the seed alone
    assert all(splits.hash_split(p, 0.1, 0.2, seed=0) == assigned[p] for p in PATIENTS[::97])
    reseeded = [splits.hash_split(p, 0.1, 0.2, seed=1) for p in PATIENTS]
    assert sum(a != b for a, b in zip(assigned.values(), reseeded)) > len(PATIENTS) * 0.3


def test_official_split_must_be_patient_disjoint():
    rows = [ImageRow("m:2", "a", "a", "c1", "p1", split="train"),
            ImageRow("m:3", "b", "b", "c2", "p2", split="test"),
            ImageRow("m:4", "c", "c", "c3", "p1", split="train")]
    assert splits.official_splits(rows) == {"p1": "train", "p2": "test"}
    rows.append(ImageRow("m:5", "d", "d", "c4", "p2", split="validation"))
    with pytest.raises(ManifestError, match="p2: test, validation"):
        splits.official_splits(rows)


def _imbalanced_strata(sizes: dict[str, int]) -> dict[str, str]:
    return {f"{stratum}-{i}": stratum for stratum, size in sizes.items() for i in range(size)}


SIZES = {"class/0": 700, "class/1": 230, "class/2": 60, "class/3": 10}


def test_ranks_are_a_permutation_in_unit_interval():
    strata = _imbalanced_strata(SIZES)
    ranks = splits.label_fraction_ranks(strata, seed=0)
    n = len(strata)
    assert sorted(ranks.values()) == pytest.approx([(i + 1) / n for i in range(n)])


@pytest.mark.parametrize("fraction", splits.STANDARD_FRACTIONS)
def test_fractions_are_exact_size_and_stratified(fraction):
    strata = _imbalanced_strata(SIZES)
    members = splits.fraction_members(splits.label_fraction_ranks(strata, seed=3), fraction)
    n = len(strata)
    assert len(members) == int(np.floor(fraction * n + 1e-9))
    counts = collections.Counter(strata[p] for p in members)
    for stratum, size in SIZES.items():
        assert abs(counts[stratum] - size * len(members) / n) <= 1.0, stratum


def test_fractions_are_nested():
    ranks = splits.label_fraction_ranks(_imbalanced_strata(SIZES), seed=0)
    subsets = [set(splits.fraction_members(ranks, f)) for f in splits.STANDARD_FRACTIONS]
    assert all(small <= large for small, large in zip(subsets, subsets[1:]))
    assert subsets[-1] == set(ranks)


def test_ranks_independent_of_input_order_and_depend_on_seed():
    strata = _imbalanced_strata(SIZES)
    items = list(strata.items())
    random.Random(5).shuffle(items)
    assert splits.label_fraction_ranks(dict(items), seed=0) == \
        splits.label_fraction_ranks(strata, seed=0)
    assert splits.label_fraction_ranks(strata, seed=1) != \
        splits.label_fraction_ranks(strata, seed=0)


def test_float32_comparison_matches_the_stored_rank():
    ranks = splits.label_fraction_ranks({f"p{i}": "s" for i in range(10)}, seed=0)
    assert [len(splits.fraction_members(ranks, f)) for f in (0.1, 0.2, 0.3, 0.7, 1.0)] == \
        [1, 2, 3, 7, 10]


def test_multiclass_stratum_is_the_majority_class():
    strata = splits.multiclass_strata({"a": [2, 2, 1], "b": [3, 1], "c": [-1, -1], "d": [-1, 0]})
    assert strata == {"a": "class/2", "b": "class/1", "d": "class/0"}


def test_multilabel_stratum_is_the_rarest_positive_label():
    def image(*values, mask=(1, 1, 1)):
        return tuple(map(float, values)), tuple(map(float, mask))

    labels = {
        "common": [image(1, 0, 0)], "also-common": [image(1, 0, 0)],
        "both": [image(1, 0, 0), image(0, 1, 0)],  # label 1 is rarer than label 0
        "negative": [image(0, 0, 0)],
        "masked-positive": [image(0, 0, 1, mask=(1, 1, 0))],  # a masked 1 does not count
        "unlabelled": [image(0, 0, 0, mask=(0, 0, 0))],
    }
    assert splits.multilabel_strata(labels) == {
        "common": "label/0", "also-common": "label/0", "both": "label/1",
        "negative": "negative", "masked-positive": "negative"}
