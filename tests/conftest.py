"""Shared test fixtures: real data location, logical CPU devices, quiet TensorFlow.

Tests of the real data sets, of the reference checkpoints and of Apache Beam skip where those are
missing (a clone without ../shared, an install without the `beam` extra); with
SIMCLR_MED_REQUIRE_DATA=1 (as `.ci/run` sets it) a missing one is an error instead, so CI cannot
pass by skipping them.

A test that starts a Python process (a command line, a fresh TensorFlow, a cluster of workers)
is marked `subprocess`; `make test-fast` leaves those out, with the `slow` and `multiprocess`
ones. The mark is checked: an unmarked test that starts a process fails, naming itself.
"""

import contextlib
import os
import pathlib
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
import tensorflow as tf

from simclr_med.training import strategy
from tests import data_root

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"

REQUIRE_DATA = "SIMCLR_MED_REQUIRE_DATA"

# Every test process sees two logical CPU devices, so multi-replica code paths run for real.
strategy.configure_cpu_devices(2)


class UnmarkedSubprocess(AssertionError):
    pass


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _processes_refused_unless_marked(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _processes_refused_unless_marked(item):
        return (yield)


@contextlib.contextmanager
def _processes_refused_unless_marked(item):
    """While an unmarked test (and the fixtures it sets up) runs, `subprocess.Popen` raises."""
    if any(item.get_closest_marker(m) for m in ("subprocess", "multiprocess")):
        yield
        return

    def refuse(popen, *args, **kwargs):
        raise UnmarkedSubprocess(f"{item.nodeid} starts a process: mark it "
                                 "@pytest.mark.subprocess (make test-fast leaves it out)")

    original = subprocess.Popen.__init__
    subprocess.Popen.__init__ = refuse
    try:
        yield
    finally:
        subprocess.Popen.__init__ = original


def skip_unless_required(reason: str) -> None:
    """Skips the test for missing data or fixtures, or fails it when CI requires them."""
    if os.environ.get(REQUIRE_DATA, "") not in ("", "0"):
        pytest.fail(f"{reason} ({REQUIRE_DATA} is set: missing data is an error)", pytrace=False)
    pytest.skip(reason)


def _real_data_root() -> pathlib.Path | None:
    root = data_root.real_data_root()
    return pathlib.Path(root) if root else None


@pytest.fixture(scope="session")
def real_data() -> pathlib.Path:
    """Folder holding `nih_cxr14_64px/` and `ham10000_220px_subset/`, or skip (see above)."""
    root = _real_data_root()
    if root is None:
        skip_unless_required("real data not found: set SIMCLR_MED_DATA to a folder holding "
                             "nih_cxr14_64px/ and ham10000_220px_subset/ (default ../shared/data)")
    return root


@pytest.fixture(scope="session")
def two_cpu_strategy():
    """The MirroredStrategy over the two logical CPUs, one per process (see build_strategy), on
    a GPU machine too: two replicas, both on CPU devices."""
    from simclr_med.config import StrategyConfig

    mirrored = strategy.build_strategy(StrategyConfig(strategy="mirrored", num_cpu_devices=2, precision="float32"))
    devices = [tf.DeviceSpec.from_string(d) for d in mirrored.extended.worker_devices]
    assert mirrored.num_replicas_in_sync == 2, mirrored.extended.worker_devices
    assert [(d.device_type, d.device_index) for d in devices] == [("CPU", 0), ("CPU", 1)], devices
    return mirrored


@pytest.fixture(scope="session")
def simclr_tf2_fixtures() -> pathlib.Path:
    """Reference SimCLR TF2 checkpoints (../shared/fixtures/simclr_tf2), or skip (see above)."""
    path = pathlib.Path(os.environ.get("SIMCLR_MED_FIXTURES", FIXTURES)) / "simclr_tf2"
    if not path.is_dir():
        skip_unless_required(f"SimCLR TF2 fixtures not found at {path}: set SIMCLR_MED_FIXTURES")
    return path


@pytest.fixture(scope="session")
def apache_beam():
    """The `apache_beam` module (the `beam` extra, which `make` installs), or skip (see above)."""
    try:
        import apache_beam
    except ImportError:
        skip_unless_required("apache-beam is not installed: pip install 'simclr-med[beam]'")
    return apache_beam


def _build(tmp_path_factory, name: str, **kwargs) -> pathlib.Path:
    from data_prep.build import build_dataset
    from data_prep.config import BuildConfig

    output = tmp_path_factory.mktemp(name) / "build"
    build_dataset(BuildConfig(output_dir=str(output), num_workers=1, progress=False, **kwargs))
    return output


@pytest.fixture(scope="session")
def nih_build(real_data, tmp_path_factory) -> pathlib.Path:
    """The NIH ChestX-ray14 subset built with `--format=nih` from NIH's official table."""
    folder = real_data / data_root.NIH_FOLDER
    return _build(tmp_path_factory, "nih", format="nih", image_root=str(folder),
                  manifests=(str(folder / "Data_Entry_2017_v2020.csv.gz"),))


@pytest.fixture(scope="session")
def ham_build(real_data, tmp_path_factory) -> pathlib.Path:
    """The HAM10000 subset built with `--format=ham10000` from the official metadata."""
    folder = real_data / data_root.HAM_FOLDER
    return _build(tmp_path_factory, "ham", format="ham10000", image_root=str(folder),
                  manifests=(str(folder / "HAM10000_metadata.csv"),))


@pytest.fixture(scope="session")
def synthetic_build(tmp_path_factory) -> pathlib.Path:
    """The built-in synthetic data set (what run.py uses without --data_dir)."""
    from data_prep import synthetic

    return pathlib.Path(synthetic.default_build(str(tmp_path_factory.mktemp("synthetic"))))
