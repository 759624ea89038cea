"""The house's layers hold: the face (scheduler.py, cli/) → jobs/ (the rules) → core/ (machinery that
knows no job and no face). Each module imports only from its own layer and those below it."""
from __future__ import annotations

import ast
import os
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
                 for path in sorted((REPO / layer).rglob("*.py"))}
    assert {module: names for module, names in offenders.items() if names} == {}


def test_the_check_sees_an_import_hidden_in_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from jobs import PIPELINE\n    return PIPELINE\n")

    assert imported_packages(module) == {"jobs"}


# ── core knows no job ─────────────────────────────────────────────────────────

def code_strings(path: Path) -> set[str]:
    """The string literals of a module's code (docstrings, which may name a job as an example, left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


def sql_without_comments(path: Path) -> str:
    return "\n".join(line.split("--")[0] for line in path.read_text(encoding="utf-8").splitlines())


def test_core_names_no_registered_job_in_its_code_or_sql():
    from jobs import PIPELINE

    names = {job.name for job in PIPELINE}
    texts = {path: code_strings(path) for path in sorted((REPO / "core").rglob("*.py"))}
    texts.update({path: {sql_without_comments(path)} for path in sorted((REPO / "core").rglob("*.sql"))})
    offenders = {str(path.relative_to(REPO)): sorted(name for name in names if any(name in text for text in found))
                 for path, found in texts.items()}
    assert {module: found for module, found in offenders.items() if found} == {}


def test_core_settings_hold_no_schedule_and_no_setting_of_a_job():
    from core.settings import CoreSettings
    from jobs import PIPELINE

    prefixes = ("schedule_", *(job.name.replace("-", "_") for job in PIPELINE))
    assert [field for field in CoreSettings.model_fields if field.startswith(prefixes)] == []


def test_every_registered_job_has_a_schedule_setting_with_its_default(monkeypatch):
    from jobs import DEFAULT_SCHEDULES, PIPELINE, load_settings

    for name in [name for name in os.environ if name.startswith("REWARDS_SCHEDULE_")]:
        monkeypatch.delenv(name)
    settings = load_settings(_env_file=None)

    assert {job.name: settings.schedule_for(job.name) for job in PIPELINE} == DEFAULT_SCHEDULES


def test_the_code_check_sees_a_job_name_in_a_literal_but_not_in_a_docstring(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('"""Runs before reconcile."""\nJOB = "reconcile"\n')

    assert code_strings(module) == {"reconcile"}


# ── the process is the face's ─────────────────────────────────────────────────

PROCESS_CALLS = {"print", "exit", "quit", "os._exit", "sys.exit", "signal.signal", "signal.set_wakeup_fd",
                 "signal.alarm"}


def process_calls(path: Path) -> set[str]:
    """The calls of a module that decide about the process (exit, signals, printing), by dotted name,
    and `signal` when it is imported at all."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            target = node.func
            name = (target.id if isinstance(target, ast.Name) else
                    f"{target.value.id}.{target.attr}" if isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name) else "")
            if name in PROCESS_CALLS:
                found.add(name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found.update("signal" for name in names if name.split(".")[0] == "signal")
    return found


def test_core_neither_exits_nor_handles_signals_nor_prints():
    offenders = {str(path.relative_to(REPO)): sorted(process_calls(path))
                 for path in sorted((REPO / "core").rglob("*.py"))}
    assert {module: calls for module, calls in offenders.items() if calls} == {}


def test_the_process_check_sees_exits_signals_and_prints(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os, sys\nfrom signal import SIGTERM\n"
                      "def f():\n    print('x')\n    sys.exit(1)\n    os._exit(0)\n")

    assert process_calls(module) == {"print", "sys.exit", "os._exit", "signal"}
