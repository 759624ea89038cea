"""What a person sees in a terminal: the CLI runs in a pseudo-terminal (pexpect) and its output is
replayed on a 100×40 terminal emulator (pyte), as a screen."""
from __future__ import annotations

import os
import re
import sys

import pexpect
import pyte
import pytest

from tests.builders import add_relationship, utc
from tests.conftest import REPO

WIDTH, HEIGHT = 100, 40
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
GLUED_LOG = re.compile(r"\S\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}Z \[")


def in_terminal(database_url: str, tmp_path, *args: str, **env: str) -> tuple[str, list[str]]:
    """Run the CLI in a 100×40 pseudo-terminal: (everything it wrote, the screen at the end)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDS_")}
    full_env.update({"DATABASE_URL": database_url, "REWARDS_REPORTS_DIR": str(tmp_path / "reports"),
                     "TERM": "xterm-256color", "COLUMNS": str(WIDTH), "LINES": str(HEIGHT), **env})
    child = pexpect.spawn(sys.executable, [str(REPO / "scheduler.py"), *args], cwd=str(tmp_path), env=full_env,
                          dimensions=(HEIGHT, WIDTH), encoding="utf-8", timeout=120)
    written = child.read()
    child.close()
    assert child.exitstatus == 0, written
    screen = pyte.Screen(WIDTH, HEIGHT)
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


@pytest.mark.slow
def test_tables_fit_a_100_column_terminal(database_url, engine, tmp_path, settings):
    from core.runner import run_job
    from jobs import PIPELINE

    for job in PIPELINE:  # long outcomes: every stat of every job
        run_job(job, settings=settings, engine=engine, as_of=utc(2026, 6, 1))

    for command in (["history"], ["jobs"], ["show", "5"]):
        written, screen = in_terminal(database_url, tmp_path, *command)
        lines = ANSI.sub("", written).replace("\r\n", "\n").splitlines()
        assert len(lines) >= 3 and all(len(line) <= WIDTH for line in lines), lines
