"""The daemon's HTTP endpoints: /healthz answers 200 or 503 with what is wrong, /metrics answers while
the database does not, and the server's edges. (/metrics and /healthz against a database:
tests/integration/test_http.py.)"""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any, Iterator

import pytest
from prometheus_client import CollectorRegistry

from core.db import make_engine
from core.http import HttpServer, serve_http
from core.settings import ConfigError

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
