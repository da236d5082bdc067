"""Where the real data sets are found: `SIMCLR_MED_DATA`, else `../shared/data` when it exists."""

from __future__ import annotations

import os
import pathlib

DATA_ENV = "SIMCLR_MED_DATA"
NIH_FOLDER = "nih_cxr14_64px"
HAM_FOLDER = "ham10000_220px_subset"


def real_data_root() -> str | None:
    """The folder holding `nih_cxr14_64px/` and `ham10000_220px_subset/`, or None.

    An explicit `SIMCLR_MED_DATA` wins (and is returned only if it exists); otherwise
    `../shared/data` next to the working directory or next to this checkout.
    """
    if os.environ.get(DATA_ENV):
        path = pathlib.Path(os.environ[DATA_ENV]).expanduser()
        return str(path) if path.is_dir() else None
    checkout = pathlib.Path(__file__).resolve().parents[1]
    for base in (pathlib.Path.cwd(), checkout):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return str(candidate)
    return None
