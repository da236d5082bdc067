"""The shape of the house: which part of the code may import which (see the README's layout).

Read from the source with `ast`, so nothing is imported and a violation names the file and line.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A module may import modules of a lower layer, and modules of its own package.
LAYERS = {
    "simclr_med.errors": 0,
    "simclr_med.config": 1, "simclr_med.serving": 1,
    "simclr_med.models": 2, "simclr_med.data": 2,
    "simclr_med.checkpoints": 3, "simclr_med.evaluation": 3,
    "simclr_med.training": 4,
    "simclr_med.stages": 5,
    "simclr_med.experiments": 6,
}
# The builders see of the library only the record schema, the shard checks and the errors.
DATA_PREP_MAY_IMPORT = ("simclr_med.data.schema", "simclr_med.data.integrity", "simclr_med.errors")
SHIMS = ("simclr_med.predict", "simclr_med.convert_checkpoint", "simclr_med.make_synthetic",
         "simclr_med.experiment")


def _modules(*packages: str) -> dict[str, pathlib.Path]:
    found = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules("simclr_med", "data_prep", "cli", "flags")


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) for every absolute import of a module of this repository."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                found.append((node.lineno, target if target in MODULES else node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in
            ("simclr_med", "data_prep", "cli", "flags", "tests")]


def _layer(module: str) -> tuple[str, int] | None:
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return prefix, layer
    return None


def _violations(module: str, path: pathlib.Path) -> list[str]:
    own = _layer(module)
    wrong = []
    for line, target in _imports(path):
        where = f"{path.relative_to(ROOT)}:{line} imports {target}"
        if module.startswith("data_prep"):
            if target.startswith("simclr_med") and target not in DATA_PREP_MAY_IMPORT:
                wrong.append(f"{where}: data_prep may import only {DATA_PREP_MAY_IMPORT}")
            continue
        if module in SHIMS or own is None:
            continue
        other = _layer(target)
        if other is None:
            wrong.append(f"{where}: the library imports no entry point, flags or data_prep")
        elif other[0] != own[0] and other[1] >= own[1]:
            wrong.append(f"{where}: {own[0]} (layer {own[1]}) may not import "
                         f"{other[0]} (layer {other[1]})")
    return wrong


def test_every_library_module_has_a_layer():
    library = [m for m in MODULES if m.startswith("simclr_med.") and m not in SHIMS]
    assert [m for m in library if _layer(m) is None] == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(
    ("simclr_med", "data_prep"))))
def test_imports_run_one_way(module):
    assert _violations(module, MODULES[module]) == []


def test_the_shims_only_hand_over_to_their_command():
    for shim in SHIMS:
        assert _imports(MODULES[shim]) == [], shim
        assert f'"cli.{shim.split(".")[1]}"' in MODULES[shim].read_text()


def _cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle, as the list of its modules (first = last), or []."""
    state: dict[str, int] = {}

    def visit(module: str, stack: list[str]) -> list[str]:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target, stack)):
                return found
        stack.pop()
        state[module] = 2
        return []

    for module in sorted(edges):
        if module not in state and (found := visit(module, [])):
            return found
    return []


def test_no_import_cycle():
    edges = {m: {t for _, t in _imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    assert _cycle(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_an_unmarked_test_cannot_start_a_process():
    """`make test-fast` leaves out the `subprocess` tests: conftest refuses a process to any
    test without the mark, so none slips into the fast tier."""
    with pytest.raises(AssertionError, match="starts a process: mark it"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.mark.subprocess
def test_a_marked_test_may_start_one():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
