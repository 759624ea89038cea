"""`pip install .` puts one folder, rewards_jobs/, into site-packages (nothing named core, jobs, cli or
bench): every package and data file of the source tree is listed under it in pyproject.toml."""
from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALLED = ("cli", "core", "jobs")  # beside scheduler.py and migrations/; bench/ and tests/ stay out


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def _source_packages() -> set[str]:
    return {"rewards_jobs." + ".".join(init.parent.relative_to(REPO).parts)
            for top in INSTALLED for init in (REPO / top).rglob("__init__.py")}


def test_every_package_installs_under_rewards_jobs_and_nothing_else():
    config = _setuptools()

    assert config["package-dir"] == {"rewards_jobs": "."}
    assert set(config["packages"]) == {"rewards_jobs"} | _source_packages()
    assert "py-modules" not in config


def test_every_sql_and_template_file_is_package_data():
    data = _setuptools()["package-data"]
    missing = []
    for path in [*REPO.glob("migrations/*"), *(p for top in INSTALLED for p in (REPO / top).rglob("*") if p.is_file())]:
        if path.suffix == ".py" or "__pycache__" in path.parts:
            continue
        package = path.parent
        while not (package / "__init__.py").exists() and package != REPO:
            package = package.parent
        name = "rewards_jobs" + "".join("." + part for part in package.relative_to(REPO).parts)
        if not any(path.relative_to(package).match(pattern) for pattern in data.get(name, [])):
            missing.append(str(path.relative_to(REPO)))
    assert missing == []


def test_the_command_runs_scheduler_main_of_the_installed_folder():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    assert project["scripts"] == {"rewards-jobs": "rewards_jobs.scheduler:main"}
