"""The light connection of `health` and `jobs` (core/connect.py) connects exactly as the engine does,
and the registry gives names and schedules without loading a job module. No database needed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from core import db
from core.connect import Timeouts, parse_url, psycopg2_arguments

REPO = Path(__file__).resolve().parents[2]

URLS = [
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgres://u:p@db.example/rewards",
    "postgresql+psycopg2://u:p%40ss%2Fw0rd@db:6432/rewards?sslmode=require",
    "postgresql://u:pa/ss@db/rewards",  # an unescaped / in the password
    "postgresql://u@[::1]:5432/rewards?connect_timeout=3&application_name=ops",
    "postgresql:///rewards?options=-c%20search_path%3Dpublic",
    "postgresql://u@db/re%20wards?options=-c%20a%3D1&sslmode=disable&target_session_attrs=read-write",
    "postgresql://db",
    "postgresql://:@db/",
    "postgresql://postgres:@/rewards?host=/tmp/pg-socket",  # the embedded server's form
    "postgresql://u@db:5433/rewards?host=/var/run/postgresql&sslmode=disable",
]


@pytest.mark.parametrize("url", URLS)
def test_a_url_is_read_as_sqlalchemy_reads_it(url):
    ours, theirs = parse_url(url), make_url(url)

    assert (ours.drivername, ours.username, ours.password, ours.host, ours.port, ours.database, dict(ours.query)) == (
        theirs.drivername, theirs.username, theirs.password, theirs.host, theirs.port, theirs.database,
        dict(theirs.query))


@pytest.mark.parametrize("url", ["not a url", "postgresql://u@db:port/x", "postgresql://u@db:/x", "://db/x"])
def test_what_sqlalchemy_cannot_read_is_refused_too(url):
    with pytest.raises((ArgumentError, ValueError)):
        make_url(url)
    with pytest.raises(ValueError):
        parse_url(url)


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("timeouts", [None, Timeouts(connect=7, statement=60, lock=5, idle_in_transaction=30)])
def test_psycopg2_gets_the_arguments_the_engine_would_give_it(url, timeouts, monkeypatch):
    monkeypatch.setenv("PGOPTIONS", "-c work_mem=64MB")
    engine_url, added = db.connect_arguments(db.sqlalchemy_url(url), timeouts)
    _args, expected = PGDialect_psycopg2().create_connect_args(engine_url)
    expected.update(added)  # what create_engine(connect_args=…) adds at connect time

    assert psycopg2_arguments(parse_url(url), timeouts) == expected


@pytest.mark.parametrize("url", ["postgresql://u@/rewards?host=a:5432&host=b:5433",
                                 "postgresql://u@/rewards?host=a,b&port=5432,5433",
                                 "postgresql://u@/rewards?host=a,b",
                                 "postgresql://u@/rewards?host=a:5432",
                                 "postgresql://u@/rewards?host=/tmp&port=5433",
                                 "postgresql://u@db/rewards?sslmode=require&sslmode=disable"])
def test_a_url_of_several_hosts_is_left_to_the_engine(url):
    assert psycopg2_arguments(parse_url(url), None) is None


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
