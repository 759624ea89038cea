"""The house's layers hold: the face (scheduler.py, cli/) → jobs/ (the rules) → core/ (machinery that
knows no job and no face). Each module imports only from its own layer and those below it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {"core": {"jobs", "cli", "scheduler", "bench"}, "jobs": {"cli", "scheduler", "bench"}}


def imported_packages(path: Path) -> set[str]:
    """The top-level names a module imports, at any depth (imports inside functions count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    offenders = {str(path.relative_to(REPO)): sorted(imported_packages(path) & FORBIDDEN[layer])
                 for path in sorted((REPO / layer).glob("*.py"))}
    assert {module: names for module, names in offenders.items() if names} == {}


def test_the_check_sees_an_import_hidden_in_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from jobs import PIPELINE\n    return PIPELINE\n")

    assert imported_packages(module) == {"jobs"}
