"""Reliability without a database: the session options every connection starts with, and where the
daemon's HTTP endpoint listens by default. (Leases, waits, timeouts and clocks against a database:
tests/integration/test_reliability.py.)"""
from __future__ import annotations

from core.db import Timeouts, session_options
from jobs import load_settings


def test_session_options_put_ours_first_then_pgoptions_then_the_urls():
    options = session_options(Timeouts(statement=1, lock=2, idle_in_transaction=3), "-c a=url", "-c a=env")
    assert options == ("-c jit=off -c statement_timeout=1000 -c lock_timeout=2000 -c idle_in_transaction_session_timeout=3000"
                       " -c a=env -c a=url -c TimeZone=UTC")


def test_the_http_endpoint_listens_on_localhost_by_default():
    assert load_settings().http_host == "127.0.0.1"
