"""Every command ends a user error with one line `<command>: error: <message>` and exit status 2,
keeps the traceback of a bug, and starts without TensorFlow's C++ start-up notices."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from data_prep.config import BuildConfig
from flags import entry_point
from simclr_med.errors import UserError

pytestmark = pytest.mark.subprocess  # every test here runs a command line or a fresh process

REPO = pathlib.Path(__file__).resolve().parents[1]

# TensorFlow 2.21's start-up notices on a CPU with AVX-512 (absl's pre-init banner, then INFO).
BANNER = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
          "STDERR\n")
ONEDNN = ("I0000 00:00:1796158390.196371   15899 port.cc:153] oneDNN custom operations are on. "
          "You may see slightly different numerical results ...\n")
NOTICES = ("oneDNN custom operations", "cpu_feature_guard", "absl::InitializeLog")


def _run(*command: str, env: dict | None = None, cwd: pathlib.Path = REPO
         ) -> subprocess.CompletedProcess:
    """`command` in a fresh Python, with TF_CPP_MIN_LOG_LEVEL unset as in a user's shell (the
    test process sets it) unless `env` sets it."""
    base = {k: v for k, v in os.environ.items() if k != entry_point.TF_LOG_LEVEL}
    return subprocess.run([sys.executable, *command], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=300)


def _bad_manifest(folder: pathlib.Path) -> list[str]:
    (folder / "m.csv").write_text("Path,Sex\na,b\n")
    return ["--format=chexpert", f"--manifest={folder / 'm.csv'}", f"--image_root={folder}",
            f"--output_dir={folder / 'out'}"]


# Each command fails before any heavy work, most after importing TensorFlow, so that the one
# line being all of stderr also shows that no start-up notice got through.
CASES = {
    "run.py": (lambda d: ["run.py", "--mode=export", f"--model_dir={d}"],
               "is not a simclr-med model folder"),
    "data_prep.build": (lambda d: ["-m", "data_prep.build", *_bad_manifest(d)],
                        "m.csv: missing column(s) 'Frontal/Lateral', 'AP/PA'"),
    "simclr_med.convert_checkpoint": (
        lambda d: ["-m", "simclr_med.convert_checkpoint", f"--source={d}",
                   f"--output_dir={d / 'out'}"], "not a checkpoint folder or SavedModel"),
    "simclr_med.predict": (lambda d: ["-m", "simclr_med.predict", f"--export_dir={d}", "x.png"],
                           "no serving SavedModel"),
    "simclr_med.make_synthetic": (lambda d: ["-m", "simclr_med.make_synthetic"],
                                  "--output_dir must have a value"),
    "simclr_med.experiment": (lambda d: ["-m", "simclr_med.experiment", f"--data_dir={d}",
                                         f"--output_dir={d / 'out'}", "--quick"],
                              "dataset_info.json not found"),
    "augment_throughput.py": (lambda d: ["bench/augment_throughput.py", "extra"],
                              "unexpected arguments: extra"),
    "pretrain_step.py": (lambda d: ["bench/pretrain_step.py", "--setting=depth=18,colour=1"],
                         "expected key=value with a key among depth, width"),
    "input_pipeline.py": (lambda d: ["bench/input_pipeline.py", "--setting=size=big"],
                          "size must be an int, got 'big'"),
    "loss_curve.py": (lambda d: ["bench/loss_curve.py", "--precisions=float32,float64"],
                      "--precisions must be among auto, float32"),
    "inference.py": (lambda d: ["bench/inference.py", "--setting=depth"],
                     "expected key=value with a key among depth, width, size"),
}


@pytest.mark.parametrize("command", CASES)
def test_a_user_error_is_one_line_and_exit_status_2(command, tmp_path):
    arguments, expected = CASES[command]
    completed = _run(*arguments(tmp_path))
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.startswith(f"{command}: error: ")
    assert expected in completed.stderr
    assert completed.stderr.count("\n") == 1, completed.stderr


def _script(tmp_path: pathlib.Path, body: str) -> str:
    """A command `tool.py` whose main() runs `body`, started through `entry_point.run`."""
    path = tmp_path / "tool.py"
    path.write_text(textwrap.dedent(f"""\
        from flags import entry_point
        from simclr_med.errors import UserError

        def main():
            {body}

        entry_point.run(main)
        """))
    return str(path)


def test_a_bug_keeps_its_traceback(tmp_path):
    completed = _run(_script(tmp_path, "raise RuntimeError('a bug')"))
    assert completed.returncode == 1
    assert "Traceback (most recent call last)" in completed.stderr
    assert completed.stderr.rstrip().endswith("RuntimeError: a bug")


def test_verbosity_1_shows_the_traceback_of_a_user_error(tmp_path):
    script = _script(tmp_path, "raise UserError('no such folder')")
    quiet, verbose = _run(script), _run(script, "--verbosity=1")
    assert (quiet.returncode, quiet.stderr) == (2, "tool.py: error: no such folder\n")
    assert verbose.returncode == 1
    assert "Traceback (most recent call last)" in verbose.stderr
    assert "UserError: no such folder" in verbose.stderr


def test_tensorflow_starts_quietly_unless_the_user_sets_its_log_level():
    """With TF_CPP_MIN_LOG_LEVEL set, TensorFlow logs as ever; without, its notices are gone,
    and whatever else reaches stderr while it loads (here: a line written as tensorflow.python
    is imported) is kept."""
    start = ("import os, sys; sys.addaudithook(lambda event, args: event == 'import' and "
             "args[0] == 'tensorflow.python' and os.write(2, b'kept\\n')); "
             "from flags import entry_point; entry_point.import_tensorflow_quietly(); "
             "import tensorflow as tf; print(float(tf.constant(1.0) + 1))")
    chatty = _run("-c", start, env={entry_point.TF_LOG_LEVEL: "0"})
    assert chatty.returncode == 0, chatty.stderr
    if not any(notice in chatty.stderr for notice in NOTICES):
        pytest.skip("this CPU's TensorFlow prints no start-up notice")
    quiet = _run("-c", start)
    assert quiet.returncode == 0 and quiet.stdout == "2.0\n"
    assert quiet.stderr == "kept\n"


def test_only_start_up_info_lines_are_dropped():
    assert entry_point.is_start_up_notice(BANNER) and entry_point.is_start_up_notice(ONEDNN)
    warning = ONEDNN.replace("I0000", "W0000", 1)
    kept = [warning, "DeprecationWarning: something\n", "I0000 is an id\n", "\n"]
    assert not any(entry_point.is_start_up_notice(line) for line in kept)


def test_a_config_refusing_a_flag_value_is_a_user_error():
    with pytest.raises(UserError, match="--case_column is required"):
        entry_point.from_flags(BuildConfig, format="generic", manifests=("m.csv",),
                               image_root=".", output_dir="out")
