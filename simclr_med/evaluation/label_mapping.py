"""Which output of a model answers which label of another data set (distribution-shift evaluation).

Names are compared after normalisation (case, `_` / `-` / spaces) and through this table of
spellings of one finding across public data sets. A model is evaluated on the labels both sides
share; the rest are listed as not evaluated.

| finding                       | NIH ChestX-ray14     | CheXpert / MIMIC-CXR | other spellings             |
|-------------------------------|----------------------|----------------------|-----------------------------|
| pleural effusion              | `Effusion`           | `Pleural Effusion`   |                             |
| pleural thickening            | `Pleural_Thickening` | (none)               | `Pleural Thickening`        |
| atelectasis, cardiomegaly, consolidation, edema, pneumonia, pneumothorax: same name in both   |
| HAM10000 `akiec`, `bcc`, `bkl`, `df`, `mel`, `nv`, `vasc`: also their full names, e.g.        |
| `melanoma`, `melanocytic nevi`, `basal cell carcinoma`, `dermatofibroma`                      |

Deliberately NOT mapped, because the findings are not the same:
- NIH `Pleural_Thickening` vs CheXpert `Pleural Other` (thickening is only part of "other");
- NIH `Nodule`, `Mass` vs CheXpert `Lung Lesion` (one CheXpert label covers both);
- NIH `Infiltration` vs CheXpert `Lung Opacity` (opacity is broader);
- HAM10000 `akiec` vs ISIC 2019 `AK` (akiec also holds intraepithelial carcinoma).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

# Canonical finding -> its spellings (normalised by `normalise` before comparison).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "pleural effusion": ("Effusion", "Pleural Effusion"),
    "pleural thickening": ("Pleural_Thickening",),
    "akiec": ("akiec", "actinic keratoses and intraepithelial carcinoma", "actinic keratoses"),
    "bcc": ("bcc", "basal cell carcinoma"),
    "bkl": ("bkl", "benign keratosis-like lesions", "benign keratosis"),
    "df": ("df", "dermatofibroma"),
    "mel": ("mel", "melanoma"),
    "nv": ("nv", "melanocytic nevi", "melanocytic nevus", "nevus"),
    "vasc": ("vasc", "vascular lesions", "vascular lesion"),
}


def normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


_CANONICAL = {normalise(spelling): finding for finding, spellings in SYNONYMS.items()
              for spelling in spellings}


def canonical(name: str) -> str:
    """The finding a label name stands for."""
    key = normalise(name)
    return _CANONICAL.get(key, key)


@dataclasses.dataclass(frozen=True)
class LabelMatch:
    """Model output `model_index` (`model_name`) answers data set label `data_index`."""

    model_index: int
    data_index: int
    model_name: str
    data_name: str


def match_labels(model_names: Sequence[str], data_names: Sequence[str]) -> list[LabelMatch]:
    """The labels both sides share, in the data set's order."""
    by_finding: dict[str, int] = {}
    for index, name in enumerate(model_names):
        finding = canonical(name)
        if finding in by_finding:
            raise ValueError(f"model labels {model_names[by_finding[finding]]!r} and {name!r} "
                             "stand for the same finding")
        by_finding[finding] = index
    return [LabelMatch(by_finding[canonical(name)], j, model_names[by_finding[canonical(name)]],
                       name)
            for j, name in enumerate(data_names) if canonical(name) in by_finding]
