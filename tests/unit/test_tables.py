"""The one table formatter: at any width whole columns drop by priority, ids, keys and statuses are
never cut (folded only when one alone is wider than the terminal), and nothing is wider than asked."""
from __future__ import annotations

import io

import pytest
from rich.console import Console

from cli.tables import Column, build_table
from cli.summary import as_words, describe_stats, describe_with_labels

RUN_ID = "1234567"
KEY = "recurring:3fa85f64-5717-4562-b3fc-2c963f66afa6:10"
COLUMNS = [Column("run"), Column("job"), Column("status"), Column("host:pid", drop=2),
           Column("as of (UTC)", drop=1), Column("outcome", flex=True)]
ROWS = [[RUN_ID, "recurring-rewards", "SUCCEEDED (dry run)", "worker-17.example.internal:123456",
         "2026-06-01 00:00", "wrote 608 REFERRAL_RECURRING rows (160,092 points); 133 scanned"]]


def rendered(columns, rows, width: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    with console.capture() as captured:
        console.print(build_table(columns, rows, width=width))
    return [line.rstrip() for line in captured.get().splitlines()]


@pytest.mark.parametrize("width", [72, 80, 120, 200])
def test_no_line_is_wider_than_asked_and_ids_and_statuses_are_whole(width):
    lines = rendered(COLUMNS, ROWS, width)

    assert all(len(line) <= width for line in lines), lines
    text = "\n".join(lines)
    for whole in (RUN_ID, "recurring-rewards", "SUCCEEDED (dry run)"):
        assert whole in text, (width, lines)


def test_at_80_columns_optional_columns_drop_highest_first_and_free_text_is_cut():
    header = rendered(COLUMNS, ROWS, 80)[0]

    assert "host:pid" not in header and "worker-17" not in "\n".join(rendered(COLUMNS, ROWS, 80))
    assert header.split() == ["run", "job", "status", "outcome"]
    assert rendered(COLUMNS, ROWS, 80)[2].endswith("…")  # only the outcome is cut


def test_at_200_columns_every_column_shows_whole():
    lines = rendered(COLUMNS, ROWS, 200)

    assert lines[0].split() == ["run", "job", "status", "host:pid", "as", "of", "(UTC)", "outcome"]
    assert "…" not in "\n".join(lines) and ROWS[0][-1] in lines[2]


def test_a_key_wider_than_the_terminal_folds_onto_more_lines_rather_than_being_cut():
    lines = rendered([Column("type"), Column("key")], [["REFERRAL_RECURRING", KEY]], 40)

    assert all(len(line) <= 40 for line in lines) and "…" not in "\n".join(lines)
    folded = "".join(line[len("REFERRAL_RECURRING  "):] for line in lines[2:])
    assert folded == KEY


def test_stats_read_as_words_never_as_a_python_repr():
    upstream = {"recurring-rewards": {"run_id": 2, "status": "SUCCEEDED", "as_of": "2026-06-01T00:00:00+00:00"},
                "expire-points": {"run_id": 4, "status": "SUCCEEDED", "as_of": "2026-06-01T00:00:00+00:00"}}

    line = describe_stats({"discrepancies": 0, "upstream_runs": upstream, "sent": ["a.csv", "b.json"],
                           "flags": {"recovery": True}}, job="reconcile", brief=True)

    assert "upstream runs: expire-points run 4, recurring-rewards run 2" in line
    assert "sent: a.csv, b.json" in line and "flags: recovery yes" in line
    assert not any(mark in line for mark in ("{", "}", "[", "'", "True"))
    assert as_words({}) == "none" and as_words([]) == "none"


def test_a_run_s_stats_are_told_with_the_labels_its_job_declares_in_their_order():
    labels = {"users_expired": "users' points expired", "users_checked": "users checked", "cutoff": None}

    line = describe_with_labels({"users_checked": 1200, "users_expired": 3, "cutoff": "2026-01-01",
                                 "batches": 2, "upstream_runs": {}}, labels)

    assert line == "3 users' points expired; 1,200 users checked; upstream runs: none"


def test_each_registered_job_labels_its_own_stats():
    line = describe_stats({"relationships_expired": 4, "cutoff": "2026-01-01"}, job="expire-pending")

    assert line == "4 relationships expired"
