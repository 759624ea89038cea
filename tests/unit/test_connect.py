"""The light connection of `health` and `jobs` (core/connect.py, libpq reading DATABASE_URL) connects
exactly as the engine does (SQLAlchemy reading it),
and the registry gives names and schedules without loading a job module. No database needed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg2.extensions
import pytest
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from core import db
from core.connect import Timeouts, check_url, light_dsn, read_url

REPO = Path(__file__).resolve().parents[2]

URLS = [
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgres://u:p@db.example/rewards",
    "postgresql+psycopg2://u:p%40ss%2Fw0rd@db:6432/rewards?sslmode=require",
    "postgresql://u@[::1]:5432/rewards?connect_timeout=3&application_name=ops",
    "postgresql:///rewards?options=-c%20search_path%3Dpublic",
    "postgresql://u@db/re%20wards?options=-c%20a%3D1&sslmode=disable&target_session_attrs=read-write",
    "postgresql://db",
    "postgresql://:@db/",
    "postgresql://postgres:@/rewards?host=/tmp/pg-socket",  # the embedded server's form
    "postgresql://u@db:5433/rewards?host=/var/run/postgresql&sslmode=disable",
]


@pytest.mark.parametrize("url", ["not a url", "postgresql://u@db:port/x", "://db/x"])
def test_what_sqlalchemy_cannot_read_is_refused_too(url):
    with pytest.raises((ArgumentError, ValueError)):
        make_url(url)
    with pytest.raises(ValueError, match="must be a URL like"):
        check_url(url)


def test_a_slash_in_the_password_which_libpq_would_read_as_the_host_part_is_refused():
    assert make_url("postgresql://u:pa/ss@db/rewards").password == "pa/ss"  # SQLAlchemy reads on
    assert psycopg2.extensions.parse_dsn("postgresql://u:pa/ss@db/rewards")["host"] == "u"  # libpq does not

    with pytest.raises(ValueError, match="has an unescaped '/' in its password"):
        check_url("postgresql://u:pa/ss@db/rewards")
    assert check_url("postgresql://u:pa%2Fss@db/rewards").parts["password"] == "pa/ss"


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("timeouts", [None, Timeouts(connect=7, statement=60, lock=5, idle_in_transaction=30)])
def test_libpq_gets_the_arguments_the_engine_would_give_it(url, timeouts, monkeypatch):
    monkeypatch.setenv("PGOPTIONS", "-c work_mem=64MB")
    engine_url, added = db.connect_arguments(db.sqlalchemy_url(url), timeouts)
    _args, expected = PGDialect_psycopg2().create_connect_args(engine_url)
    expected.update(added)  # what create_engine(connect_args=…) adds at connect time

    dsn = light_dsn(check_url(url), timeouts)
    assert dsn is not None
    assert psycopg2.extensions.parse_dsn(dsn) == {name: str(value) for name, value in expected.items() if value != ""}


@pytest.mark.parametrize("url", ["postgresql://u@/rewards?host=a:5432&host=b:5433",
                                 "postgresql://u@/rewards?host=a,b&port=5432,5433",
                                 "postgresql://u@/rewards?host=a,b",
                                 "postgresql://u@/rewards?host=a:5432",
                                 "postgresql://u@/rewards?host=/tmp&port=5433",
                                 "postgresql://u@db/rewards?sslmode=require&sslmode=disable",
                                 "postgresql://u@db/rewards?application_name=a+b"])
def test_a_url_of_several_hosts_a_repeated_option_or_a_plus_is_left_to_the_engine(url):
    assert light_dsn(read_url(url), None) is None


def test_a_repeated_application_name_reaches_the_engine_as_libpq_reads_it_the_last_one():
    url = "postgresql://u@db/rewards?application_name=first&application_name=last"
    assert psycopg2.extensions.parse_dsn(url)["application_name"] == "last"

    _engine_url, added = db.connect_arguments(db.sqlalchemy_url(url), None)

    assert added["application_name"] == "last"


def test_the_registry_names_jobs_and_schedules_without_loading_a_job_module():
    probe = ("import sys, jobs; names, schedules = jobs.NAMES, jobs.DEFAULT_SCHEDULES; "
             "print(sorted(m for m in sys.modules if m.startswith(('jobs.', 'core.job', 'sqlalchemy'))))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)

    assert done.stdout.strip() == "['jobs.settings']"


def test_the_pipeline_holds_each_registered_module_job_under_its_registered_name():
    import jobs

    assert tuple(job.name for job in jobs.PIPELINE) == jobs.NAMES
    assert list(jobs.JOBS) == list(jobs.NAMES) == list(jobs.DEFAULT_SCHEDULES)


def test_a_module_whose_job_has_another_name_than_registered_is_refused():
    import jobs

    with pytest.raises(RuntimeError, match="jobs/expire_pending.py defines the job 'expire-pending', "
                                           "registered as 'expire-soon'"):
        jobs._registered_job("expire-soon", "expire_pending")
