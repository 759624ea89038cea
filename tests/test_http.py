"""The daemon's HTTP endpoints: /healthz answers 200 or 503 with what is wrong, /metrics exposes the
last success of each job read from job_runs (the same on every replica), and the server's edges."""
from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any, Iterator

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from core.daemon import Daemon
from jobs import PIPELINE
from core.db import make_engine
from core.http import HttpServer, serve_http
from core.settings import ConfigError
from tests.builders import utc

JOBS = ("expire-pending", "recurring-rewards")
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(server: HttpServer, path: str) -> tuple[int, str, str]:
    """(status, content type, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start an endpoint server on a free port with its own registry: `serve(health, on_engine=...)`;
    without an engine, its database never answers (tests of /healthz and paths need none)."""
    servers: list[HttpServer] = []
    unreachable = make_engine(UNREACHABLE)

    def start(health: Any = lambda: (True, {}), *, on_engine: Any = unreachable) -> HttpServer:
        server = serve_http(free_port(), health, on_engine, JOBS, host="127.0.0.1", registry=CollectorRegistry())
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
    unreachable.dispose()


def last_success(exposition: str, job: str) -> float:
    [value] = re.findall(rf'^rewards_job_last_success_timestamp_seconds{{job="{job}"}} (\S+)$', exposition, re.M)
    return float(value)


def add_run(conn: Any, job: str, status: str, finished_at: Any, *, dry_run: bool = False) -> None:
    conn.execute(text(
        "INSERT INTO public.job_runs (job, trigger, as_of, status, dry_run, finished_at, host, pid)"
        " VALUES (:job, 'manual', :finished_at, :status, :dry_run, :finished_at, 'test', 1)"),
        {"job": job, "status": status, "dry_run": dry_run, "finished_at": finished_at})


def test_healthz_is_200_with_its_checks_when_healthy(serve):
    server = serve(lambda: (True, {"scheduler": "running", "database": "ok"}))
    status, content_type, body = get(server, "/healthz")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {"status": "ok", "scheduler": "running", "database": "ok"}


def test_healthz_is_503_saying_what_is_wrong_when_unhealthy(serve):
    server = serve(lambda: (False, {"scheduler": "running", "database": "unreachable: OperationalError: down"}))
    status, _, body = get(server, "/healthz")
    assert status == 503
    assert json.loads(body) == {"status": "unhealthy", "scheduler": "running",
                                "database": "unreachable: OperationalError: down"}


def test_metrics_report_each_jobs_last_non_dry_success_from_job_runs(serve, engine):
    last = utc(2026, 6, 1, 0, 5, 7)
    with engine.begin() as conn:
        add_run(conn, "expire-pending", "SUCCEEDED", last - timedelta(days=1))
        add_run(conn, "expire-pending", "SUCCEEDED", last)
        add_run(conn, "expire-pending", "SUCCEEDED", last + timedelta(hours=1), dry_run=True)
        add_run(conn, "expire-pending", "FAILED", last + timedelta(hours=2))
        add_run(conn, "recurring-rewards", "FAILED", last)
    server = serve(on_engine=engine)

    status, content_type, body = get(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert "# TYPE rewards_job_last_success_timestamp_seconds gauge" in body
    assert last_success(body, "expire-pending") == last.timestamp()
    assert last_success(body, "recurring-rewards") == 0.0  # never succeeded


def test_metrics_answer_without_the_last_successes_while_the_database_does_not(serve):
    status, _, body = get(serve(), "/metrics")
    assert status == 200
    assert "# TYPE rewards_job_last_success_timestamp_seconds gauge" not in body


def test_an_unknown_path_is_404(serve):
    assert get(serve(), "/")[0] == 404
    assert get(serve(), "/metrics/extra")[0] == 404


def test_port_0_turns_the_endpoints_off():
    assert serve_http(0, lambda: (True, {}), make_engine(UNREACHABLE), JOBS) is None


def test_a_port_in_use_is_refused_naming_the_variable():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match=r"^REWARDS_HTTP_PORT: cannot listen on port \d+"):
            serve_http(taken.getsockname()[1], lambda: (True, {}), make_engine(UNREACHABLE), JOBS,
                       host="127.0.0.1", registry=CollectorRegistry())


def test_closing_the_server_frees_the_port_and_its_collector():
    registry = CollectorRegistry()
    server = serve_http(free_port(), lambda: (True, {}), make_engine(UNREACHABLE), JOBS, host="127.0.0.1",
                        registry=registry)
    server.close()
    assert list(registry.collect()) == []
    with pytest.raises(OSError):
        get(server, "/healthz")


def test_daemon_health_needs_a_running_scheduler_and_an_answering_database(make_settings, engine):
    settings = make_settings()
    assert Daemon(settings, engine, jobs=PIPELINE).health() == (False, {"scheduler": "not started", "database": "ok"})
    unreachable = make_engine(UNREACHABLE)
    healthy, detail = Daemon(settings, unreachable, jobs=PIPELINE).health()
    assert not healthy and detail["database"].startswith("unreachable: OperationalError")
    unreachable.dispose()
