"""The benchmark's pieces that need no database: a bound for every job, size labels, where the server
comes from, statement labels, bad usage. (End to end on a tiny dataset: tests/integration/test_bench.py.)"""
from __future__ import annotations

import pytest

from bench import __main__ as bench_cli
from bench.datasets import BenchError, server_url, size_label
from bench.run import has_bound
from jobs import PIPELINE
from tests.unit.conftest import NO_DATABASE_URL


def test_every_job_of_the_pipeline_has_a_bound_statement():
    assert [job.name for job in PIPELINE if not has_bound(job.name)] == []


def test_size_labels_name_the_databases():
    assert [size_label(n) for n in (600_000, 2_000_000, 60_000, 1500)] == ["600k", "2m", "60k", "1500"]


def test_the_server_comes_from_the_option_then_bench_database_url_then_database_url(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/plain")
    monkeypatch.setenv("BENCH_DATABASE_URL", "postgresql://db/bench")
    assert server_url("postgresql://db/given") == "postgresql://db/given"
    assert server_url() == "postgresql://db/bench"
    monkeypatch.delenv("BENCH_DATABASE_URL")
    assert server_url() == "postgresql://db/plain"
    monkeypatch.delenv("DATABASE_URL")
    with pytest.raises(BenchError, match="--database-url"):
        server_url()


def test_bad_usage_exits_2_with_one_line(capsys):
    assert bench_cli.main(["run", "--jobs", "no-such-job", "--database-url", NO_DATABASE_URL]) == 2
    assert "--jobs: unknown no-such-job" in capsys.readouterr().err
    assert bench_cli.main(["generate", "--users", "0", "--database-url", NO_DATABASE_URL]) == 2


def test_statement_label_is_the_first_comment_line_else_the_first_words():
    from bench.profile import statement_label

    assert statement_label("-- name: x --\nSELECT 1") == "name: x --"
    assert statement_label("\n  -- The next batch\nSELECT 1") == "The next batch"
    assert statement_label("SELECT count(*)\nFROM t") == "SELECT count(*)"
