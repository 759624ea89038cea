"""What a person sees in a terminal: the CLI runs in a pseudo-terminal (pexpect, its window size set
as a terminal sets it) and its output is replayed on a terminal emulator (pyte), as a screen."""
from __future__ import annotations

import os
import re
import sys

import pexpect
import pyte
import pytest

from sqlalchemy import text

from tests.builders import add_relationship, new_id, utc
from tests.conftest import REPO
from tests.integration.test_recurring_rewards import pay

WIDTH, HEIGHT = 100, 40
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
GLUED_LOG = re.compile(r"\S\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}Z \[")


def in_terminal(database_url: str, tmp_path, *args: str, width: int = WIDTH, height: int = HEIGHT,
                **env: str) -> tuple[str, list[str]]:
    """Run the CLI in a width×height pseudo-terminal: (everything it wrote, the screen at the end).
    The window size is the terminal's own (no COLUMNS): the CLI must measure it."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDS_") and k not in ("COLUMNS", "LINES")}
    full_env.update({"DATABASE_URL": database_url, "REWARDS_REPORTS_DIR": str(tmp_path / "reports"),
                     "TERM": "xterm-256color", **env})
    child = pexpect.spawn(sys.executable, [str(REPO / "scheduler.py"), *args], cwd=str(tmp_path), env=full_env,
                          dimensions=(height, width), encoding="utf-8", timeout=120)
    written = child.read()
    child.close()
    assert child.exitstatus == 0, written
    screen = pyte.Screen(width, height)
    pyte.Stream(screen).feed(written.replace("\n", "\r\n") if "\r\n" not in written else written)
    return written, [line.rstrip() for line in screen.display]


@pytest.mark.slow
def test_a_run_shows_a_progress_bar_that_ends_cleanly_with_log_lines_above_it_and_one_summary(database_url, engine,
                                                                                              tmp_path):
    with engine.begin() as conn:
        for _ in range(30):
            add_relationship(conn, created_at=utc(2025, 1, 1))

    written, screen = in_terminal(database_url, tmp_path, "run-all", "--as-of", "2026-06-01",
                                  REWARDS_BATCH_SIZE="1", REWARDS_LOG_FORMAT="auto")

    assert "━" in written and re.search(r"batch \d+ of 30, \d+ of 30", ANSI.sub("", written))  # a bar, of how many
    shown = [line for line in screen if line]
    assert not any("━" in line for line in shown), shown  # the bar is gone at the end
    assert not any(GLUED_LOG.search(line) for line in ANSI.sub("", written).splitlines())
    summaries = [line for line in shown if re.match(r"^[a-z0-9-]+ SUCCEEDED in ", line)]
    assert [line.split()[0] for line in summaries] == ["expire-pending", "recurring-rewards", "level2-rewards",
                                                       "expire-points", "expiring-soon", "reconcile"]
    assert "  30 relationships expired" in shown
    assert not any("run started" in line or "run finished" in line for line in shown)  # said once, by the summary
    assert any(line.startswith("20") and "reconciliation done" in line and "{" not in line for line in shown)


# ── every listing at 80 and 200 columns, read as a person reads it ──────────────

TALL = 400  # rows: the whole output stays on the screen
REPR = re.compile(r"\{'|'\}|\['|\bTrue\b|\bFalse\b|\bNone\b|datetime\.|UUID\(|Decimal\(")


@pytest.fixture
def pipeline_world(engine, settings):
    """A referred B, B referred C (paid for ten months), C referred D: every job has something to say;
    then the whole pipeline ran, and once more as a dry run. Returns (B, the ledger's keys of B)."""
    from core.runner import run_job
    from jobs import PIPELINE

    a, b, c, d = new_id(), new_id(), new_id(), new_id()
    with engine.begin() as conn:
        add_relationship(conn, referrer=a, referred=b, status="REWARDED", rewarded_at=utc(2025, 6, 1))
        add_relationship(conn, referrer=b, referred=c, status="REWARDED", rewarded_at=utc(2025, 7, 10))
        add_relationship(conn, referrer=c, referred=d, status="REWARDED", rewarded_at=utc(2025, 8, 10))
    for month in range(8, 13):
        pay(engine, c, utc(2025, month, 12))
        pay(engine, d, utc(2025, month, 15))
    for month in range(1, 6):
        pay(engine, c, utc(2026, month, 12))
    for job in PIPELINE:
        assert run_job(job, settings=settings, engine=engine, as_of=utc(2026, 6, 1)).status == "SUCCEEDED"
    for job in PIPELINE:
        run_job(job, settings=settings, engine=engine, as_of=utc(2026, 6, 1), dry_run=True)
    with engine.connect() as conn:
        keys = [row[0] for row in conn.execute(text(
            "SELECT idempotency_key FROM public.user_point_transactions WHERE user_id = :b"
            " AND idempotency_key IS NOT NULL"), {"b": b})]
        reconcile_run = conn.execute(text("SELECT max(id) FROM public.job_runs WHERE job = 'reconcile'"
                                          " AND NOT dry_run")).scalar_one()
    assert len(keys) >= 10
    return b, keys, reconcile_run


def _screen_text(database_url, tmp_path, width, *command) -> list[str]:
    """The screen's non-blank lines, once no line written was wider than the terminal (the screen
    would wrap such a line and hide it)."""
    written, screen = in_terminal(database_url, tmp_path, *command, width=width, height=TALL)
    lines = ANSI.sub("", written).replace("\r\n", "\n").splitlines()
    assert len(lines) >= 3 and all(len(line) <= width for line in lines), (command, lines)
    return [line for line in screen if line]


@pytest.mark.slow
@pytest.mark.parametrize("width", [80, 200])
def test_every_listing_fits_the_terminal_and_shows_ids_keys_and_statuses_whole(database_url, tmp_path, width,
                                                                               pipeline_world):
    from jobs import PIPELINE

    user, keys, reconcile_run = pipeline_world
    screens = {name: _screen_text(database_url, tmp_path, width, *command) for name, command in {
        "jobs": ["jobs"], "history": ["history", "--limit", "50"], "show": ["show", str(reconcile_run)],
        "explain": ["explain", str(user), "--as-of", "2026-06-01"]}.items()}

    for name, lines in screens.items():
        assert not [line for line in lines if REPR.search(line)], (name, lines)
    for name in ("jobs", "history"):
        shown = "\n".join(screens[name])
        assert all(job.name in shown for job in PIPELINE), (name, shown)
        assert "SUCCEEDED (dry run)" in shown and not re.search(r"SUCC?E?E?D?E?\w*…", shown), shown
    # Only history's last column (free text) may be cut; no id, key or status anywhere is.
    assert all(line.endswith("…") for line in screens["history"] if "…" in line), screens["history"]
    for name in ("jobs", "show", "explain"):
        assert not any("…" in line for line in screens[name]), (name, screens[name])
    explained = "\n".join(screens["explain"])
    assert str(user) in explained
    assert all(key in explained for key in keys), (keys, explained)  # each month's key whole: no two look alike
    summary = " ".join(" ".join(screens["show"]).split())  # as read across the wrapped lines
    assert "upstream runs: expire-points run " in summary and ", recurring-rewards run " in summary
