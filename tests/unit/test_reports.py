"""Files that appear whole: written aside, then renamed into place; a crash or a full disk leaves the
old file (or none) and no part file, and names the file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.reports import atomic_text_file

REPO = Path(__file__).resolve().parents[2]


def test_an_atomic_file_keeps_its_old_content_until_the_new_one_is_complete(tmp_path: Path):
    target = tmp_path / "report.csv"
    target.write_text("old\n")

    with pytest.raises(RuntimeError):
        with atomic_text_file(target) as out:
            out.write("half of the new")
            assert target.read_text() == "old\n"
            raise RuntimeError("crash")

    assert target.read_text() == "old\n"
    assert [path.name for path in tmp_path.iterdir()] == ["report.csv"]
    with atomic_text_file(target) as out:
        out.write("new\n")
    assert target.read_text() == "new\n"


def test_a_full_disk_names_the_file(tmp_path):
    target = tmp_path / "report.json"
    code = ("import resource, sys; from pathlib import Path; from core.reports import write_text_atomically\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
            "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"write_text_atomically(Path({str(target)!r}), 'x' * 100000)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)

    assert done.returncode == 1
    assert str(target) in done.stderr.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []  # nothing under the final name, no .part left behind


def _imports_of(path: Path) -> set[str]:
    """The modules `path` imports, also inside functions (`from jobs.reports import charts` names charts)."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_the_report_modules_import_one_another_without_a_circle():
    folder = REPO / "jobs" / "reports"
    modules = {f"jobs.reports.{path.stem}": path for path in folder.glob("*.py") if path.stem != "__init__"}
    edges = {name: _imports_of(path) & modules.keys() - {name} for name, path in modules.items()}

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(step == goal or (step not in seen and reaches(step, goal, seen | {step}))
                   for step in edges[start])

    assert [name for name in modules if reaches(name, name)] == []
