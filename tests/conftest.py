"""Shared test fixtures: real data location, logical CPU devices, quiet TensorFlow."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from simclr_med import paths, strategy

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"

# Every test process sees two logical CPU devices, so multi-replica code paths run for real.
strategy.configure_cpu_devices(2)


def _real_data_root() -> pathlib.Path | None:
    root = paths.real_data_root()
    return pathlib.Path(root) if root else None


@pytest.fixture(scope="session")
def real_data() -> pathlib.Path:
    """Folder holding `nih_cxr14_64px/` and `ham10000_220px_subset/`, or skip."""
    root = _real_data_root()
    if root is None:
        pytest.skip("real data not found: set SIMCLR_MED_DATA to a folder holding "
                    "nih_cxr14_64px/ and ham10000_220px_subset/ (default ../shared/data)")
    return root


@pytest.fixture(scope="session")
def simclr_tf2_fixtures() -> pathlib.Path:
    """Reference SimCLR TF2 checkpoints (../shared/fixtures/simclr_tf2), or skip."""
    path = pathlib.Path(os.environ.get("SIMCLR_MED_FIXTURES", FIXTURES)) / "simclr_tf2"
    if not path.is_dir():
        pytest.skip(f"SimCLR TF2 fixtures not found at {path}: set SIMCLR_MED_FIXTURES")
    return path
