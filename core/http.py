"""The daemon's HTTP endpoints on `REWARDS_HTTP_PORT` (0 turns them off).

- `/healthz`: 200 when the scheduler loop runs (its heartbeat is fresh) and the database answers,
  else 503; the body is a small JSON object saying which part is unwell. It never waits on the
  database: the health check reads what a background probe last heard (`core/probe.py`).
- `/metrics`: Prometheus exposition (prometheus-client) of the runs of this process
  (`rewards_job_runs_total`, `rewards_job_duration_seconds`, `rewards_points_written_total`) and
  `rewards_job_last_success_timestamp_seconds` and `rewards_invariant_violations{kind}` (the latest
  rules audit's findings), read from `job_runs` at scrape time.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import structlog
from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.registry import CollectorRegistry
from sqlalchemy import Engine

from core.metrics import LastSuccessCollector
from core.settings import ConfigError

log = structlog.get_logger("rewards.http")

HealthCheck = Callable[[], tuple[bool, dict[str, str]]]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scrape never holds the process at exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
        return None  # one access line per probe would drown the run logs


def make_app(health: HealthCheck, registry: CollectorRegistry = REGISTRY) -> WSGIApplication:
    """The WSGI application serving /healthz and /metrics."""
    metrics_app: WSGIApplication = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            healthy, detail = health()
            return _reply(start_response, "200 OK" if healthy else "503 Service Unavailable",
                          {"status": "ok" if healthy else "unhealthy", **detail})
        return _reply(start_response, "404 Not Found", {"error": "not found; try /healthz or /metrics"})

    return app


def _reply(start_response: StartResponse, status: str, body: dict[str, str]) -> list[bytes]:
    payload = (json.dumps(body) + "\n").encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
                            ("Cache-Control", "no-store")])
    return [payload]


class HttpServer:
    """A running endpoint server; `close()` stops it and unregisters its collector."""

    def __init__(self, server: WSGIServer, collector: LastSuccessCollector, registry: CollectorRegistry) -> None:
        self._server, self._collector, self._registry = server, collector, registry
        self.port = server.server_port
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._registry.unregister(self._collector)


def serve_http(port: int, health: HealthCheck, engine: Engine, jobs: Sequence[str], *,
               host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> HttpServer | None:
    """Serve /healthz and /metrics on `port` in a background thread; None when port is 0."""
    if port == 0:
        return None
    try:
        server = make_server(host, port, make_app(health, registry), server_class=_ThreadingServer,
                             handler_class=_QuietHandler)
    except OSError as error:
        raise ConfigError(f"REWARDS_HTTP_PORT: cannot listen on port {port} of {host} ({error.strerror})") from None
    collector = LastSuccessCollector(engine, jobs)
    registry.register(collector)
    log.info("serving /healthz and /metrics", action="http_listening", host=host, port=server.server_port)
    return HttpServer(server, collector, registry)
