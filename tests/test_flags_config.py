"""One source of configuration: every config field has a flag, whose default is the field's, and a
field without a flag stops the command when it starts (flags/entry_point.ConfigFlags).

Each flags module is imported in a fresh Python (several define flags of the same name, which
absl refuses in one process); none of them imports TensorFlow or the stages, so that is quick.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
from absl import flags

from flags import entry_point
from simclr_med import config

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS_MODULES = sorted(f"flags.{path.stem}" for path in (REPO / "flags").glob("*_flags.py"))
# These import simclr_med.serving (for the serving limits), which imports TensorFlow.
IMPORT_TENSORFLOW = ("flags.export_flags", "flags.predict_flags", "flags.pointing_game_flags")
STAGE_CODE = ("simclr_med.stages", "simclr_med.training", "simclr_med.models",
              "simclr_med.checkpoints", "simclr_med.evaluation", "simclr_med.data.augment")

# Run in a fresh Python: what the flags module's ConfigFlags find wrong, as JSON.
INSPECT = textwrap.dedent("""\
    import dataclasses, importlib, json, sys
    from absl import flags
    from flags import entry_point

    importlib.import_module(sys.argv[1])
    flags.FLAGS.mark_as_parsed()

    def normal(value):
        return tuple(value) if isinstance(value, list) else value

    report = {"configs": [], "missing": [], "defaults": [], "modules": sorted(sys.modules)}
    for spec in entry_point.config_flags():
        name = spec.config_class.__name__
        report["configs"].append(name)
        report["missing"] += spec.missing()
        if spec.preset_defaults:
            continue
        for field in dataclasses.fields(spec.config_class):
            if (field.name in spec.not_flags or field.default is dataclasses.MISSING
                    or spec.flag_name(field.name) not in flags.FLAGS):  # (missing)
                continue
            flag = flags.FLAGS[spec.flag_name(field.name)]
            if normal(flag.default) != normal(field.default):
                report["defaults"].append(f"{name}.{field.name} = {field.default!r}, but "
                                          f"--{flag.name} defaults to {flag.default!r}")
    print(json.dumps(report))
    """)


def _inspect(module: str) -> dict:
    completed = subprocess.run([sys.executable, "-c", INSPECT, module], cwd=REPO,
                               capture_output=True, text=True, timeout=300,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def reports() -> dict[str, dict]:
    return {module: _inspect(module) for module in FLAGS_MODULES}


@pytest.mark.subprocess
@pytest.mark.parametrize("module", FLAGS_MODULES)
def test_every_config_field_has_a_flag_with_the_fields_default(module, reports):
    report = reports[module]
    assert report["missing"] == []
    assert report["defaults"] == []


@pytest.mark.subprocess
def test_every_config_of_simclr_med_config_is_made_from_flags(reports):
    classes = {name for name, value in vars(config).items()
               if isinstance(value, type) and dataclasses.is_dataclass(value)}
    made = {name for report in reports.values() for name in report["configs"]}
    assert classes - made == set()
    assert {"BuildConfig", "ConvertArgs"} <= made


@pytest.mark.subprocess
@pytest.mark.parametrize("module", FLAGS_MODULES)
def test_flags_modules_import_no_stage_code(module, reports):
    modules = reports[module]["modules"]
    assert [m for m in modules if m.startswith(STAGE_CODE)] == []
    if module not in IMPORT_TENSORFLOW:
        assert "tensorflow" not in modules


@dataclasses.dataclass(frozen=True)
class _Toy:
    alpha: int = 1
    beta: str = ""
    gamma: float = 0.5


def _toy_flags() -> flags.FlagValues:
    values = flags.FlagValues()
    flags.DEFINE_integer("alpha", 1, "", flag_values=values)
    flags.DEFINE_string("toy_beta", "", "", flag_values=values)
    values.mark_as_parsed()
    return values


def test_a_field_without_a_flag_is_an_error_naming_the_class_and_field(monkeypatch):
    monkeypatch.setattr(entry_point, "_CONFIG_FLAGS", [])
    values = _toy_flags()
    spec = entry_point.ConfigFlags(_Toy, flag_names={"beta": "toy_beta"})
    assert spec.missing(values) == ["_Toy.gamma (--gamma)"]
    with pytest.raises(entry_point.MissingFlagError, match=r"_Toy\.gamma \(--gamma\)"):
        spec.build(values)
    with pytest.raises(entry_point.MissingFlagError, match=r"_Toy\.gamma"):
        entry_point.check_config_flags(values)
    exempt = entry_point.ConfigFlags(_Toy, flag_names={"beta": "toy_beta"},
                                     not_flags={"gamma": "a test's field"})
    assert exempt.build(values, gamma=2.0) == _Toy(1, "", 2.0)
    with pytest.raises(ValueError, match="no fields"):
        entry_point.ConfigFlags(_Toy, flag_names={"delta": "x"})


@pytest.mark.subprocess
def test_the_command_stops_at_start_up_before_main(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text(textwrap.dedent("""\
        import dataclasses
        from absl import flags
        from flags import entry_point

        @dataclasses.dataclass(frozen=True)
        class ToolConfig:
            size: int = 1
            colour: str = "red"

        flags.DEFINE_integer("size", 1, "Size.")
        TOOL = entry_point.ConfigFlags(ToolConfig)

        def main():
            print("main ran")

        entry_point.run(main)
        """))
    completed = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True,
                               text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert completed.returncode == 1
    assert "main ran" not in completed.stdout
    assert "Traceback (most recent call last)" in completed.stderr
    assert "MissingFlagError: config field(s) without a flag: ToolConfig.colour (--colour)" in (
        completed.stderr)
