"""reconcile's summary and roll-forward (jobs/reconcile_summary.py), its files' formats
(jobs/reports/files.py) and its table at the terminal (cli/report.py): no database."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import fields
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from uuid import UUID

from cli.report import report_table
from cli.tables import aligned_lines
from jobs.reconcile_summary import (KINDS, CacheTotals, Found, LedgerTotals, Movement, PreviousReconcile, Snapshot,
                                    Summary, build_summary, month_starts, roll_forward)
from jobs.reports.files import CSV_HEADER, ReportFiles, csv_text, summary_json

AS_OF = datetime(2026, 6, 1, 1, tzinfo=timezone.utc)
PREVIOUS_AS_OF = datetime(2026, 5, 1, 1, tzinfo=timezone.utc)


def ledger(**values: int) -> LedgerTotals:
    defaults = dict(rows=8, balance=500, earned=1000, spent=-500, closing=500, rows_after_as_of=0,
                    points_after_as_of=0, dated_up_to_previous=730, rows_up_to_previous=5)
    return LedgerTotals(**{**defaults, **values})


def snapshot(*movements: Movement, previous: PreviousReconcile | None = None, **ledger_values: int) -> Snapshot:
    return Snapshot(previous=previous, ledger=ledger(**ledger_values), cache=CacheTotals(3, 675, 875, -200),
                    users_checked=4, movements=list(movements), months_from=datetime(2025, 7, 1, tzinfo=timezone.utc),
                    unrecovered=None)


def moved(kind: str, issued: int = 0, debited: int = 0, month: date | None = date(2026, 5, 1),
          in_period: bool = True) -> Movement:
    return Movement(kind, month, in_period, issued, debited)


PREVIOUS = PreviousReconcile(run_id=1, as_of=PREVIOUS_AS_OF, closing_balance=730, closing_rows=5)
PERIOD = (moved("REFERRAL_L2", issued=100), moved("REFERRAL_WELCOME", issued=50),
          moved("REDEMPTION_UNLOCK", debited=300), moved("EXPIRY", debited=80))


def test_the_roll_forward_adds_up_opening_issued_spent_and_expired_to_the_closing():
    roll = roll_forward(snapshot(*PERIOD, previous=PREVIOUS))

    assert (roll.opening, roll.issued, roll.spent, roll.expired) == (
        730, {"REFERRAL_L2": 100, "REFERRAL_WELCOME": 50}, {"REDEMPTION_UNLOCK": 300}, 80)
    assert (roll.expected_closing, roll.closing, roll.gap, roll.identity_holds) == (500, 500, 0, True)
    assert roll.period_after == "2026-05-01T01:00:00+00:00"


def test_expiries_and_clawbacks_are_lines_of_their_own_never_spending():
    roll = roll_forward(snapshot(moved("EXPIRY", debited=80), moved("REFERRAL_CLAWBACK", debited=20),
                                 closing=-100, dated_up_to_previous=0, rows_up_to_previous=0))

    assert (roll.spent, roll.expired, roll.clawed_back, roll.gap) == ({}, 80, 20, 0)


def test_rows_the_previous_run_did_not_see_are_late_committed_not_a_gap():
    roll = roll_forward(snapshot(*PERIOD, previous=PREVIOUS, closing=540, dated_up_to_previous=770,
                                 rows_up_to_previous=6))

    assert roll.late_committed == {"rows": 1, "points": 40}
    assert (roll.gap, roll.gap_explanation) == (0, None)


def test_points_changed_without_new_rows_are_a_gap_with_its_explanation():
    roll = roll_forward(snapshot(*PERIOD, previous=PREVIOUS, closing=470, dated_up_to_previous=700))

    assert (roll.late_committed, roll.gap, roll.identity_holds) == ({"rows": 0, "points": 0}, -30, False)
    assert roll.gap_explanation.startswith("-30 points: the ledger rows dated on or before the previous")
    assert "run 1" in roll.gap_explanation and "(5 rows then, 5 now)" in roll.gap_explanation


def test_the_summary_keys_come_in_the_order_its_fields_are_declared():
    summary = build_summary(3, AS_OF, snapshot(*PERIOD, previous=PREVIOUS), Found(), repaired=0,
                            repair_requested=False, files=None)

    text = summary_json(summary.as_dict())

    assert list(json.loads(text)) == [field.name for field in fields(Summary)]
    assert list(json.loads(text)["roll_forward"])[:3] == ["previous_run_id", "period_after", "opening"]
    assert text.startswith('{\n  "report": "points reconciliation",\n  "run_id": 3,\n') and text.endswith("}\n")


def test_the_summary_counts_every_kind_and_prices_the_liability():
    found = Found()
    found.add(["MISSING_BALANCE"], balance=-5, earned=-5, spent=0)
    found.add(["BALANCE_MISMATCH", "SPENT_MISMATCH"], balance=3, earned=0, spent=3)

    summary = build_summary(3, AS_OF, snapshot(*PERIOD, previous=PREVIOUS), found, repaired=0,
                            repair_requested=True, files=None, points_per_usd=Decimal(100))

    assert summary.discrepancies == {"total": 2, "by_kind": {kind: {"MISSING_BALANCE": 1, "BALANCE_MISMATCH": 1,
                                                                    "SPENT_MISMATCH": 1}.get(kind, 0) for kind in KINDS}}
    assert summary.verdict == "ATTENTION: 2 discrepancies"
    assert summary.outstanding_money == {"usd": "5.00", "points_per_usd": "100"}
    assert summary.net_drift == 175
    assert summary.with_repaired(2).repaired == 2


def test_the_monthly_lines_cover_twelve_months_and_leave_out_earlier_rows():
    summary = build_summary(3, AS_OF, snapshot(*PERIOD, moved("REFERRAL_L2", issued=7, month=None)), Found(),
                            repaired=0, repair_requested=False, files=None)

    assert [line["month"] for line in summary.monthly][::11] == ["2025-07", "2026-06"]
    assert summary.monthly[10] == {"month": "2026-05", "issued": 150, "spent": 300, "expired": 80, "clawed_back": 0}
    assert sum(line["issued"] for line in summary.monthly) == 150


def test_month_starts_cross_the_year_end():
    starts = month_starts(datetime(2025, 7, 1, tzinfo=timezone.utc))

    assert (len(starts), starts[6], starts[-1]) == (13, datetime(2026, 1, 1, tzinfo=timezone.utc),
                                                    datetime(2026, 7, 1, tzinfo=timezone.utc))


# ── the files ────────────────────────────────────────────────────────────────

def discrepancy(user: int, kinds: list[str], cached: int | None, ledger_balance: int) -> SimpleNamespace:
    return SimpleNamespace(user_id=UUID(int=user), kinds=kinds, cached_balance=cached, ledger_balance=ledger_balance,
                           drift=(cached or 0) - ledger_balance, cached_total_earned=cached,
                           ledger_total_earned=ledger_balance, cached_total_spent=None if cached is None else 0,
                           ledger_total_spent=0)


def test_the_files_of_a_run_are_named_by_its_as_of_in_utc_and_its_id(tmp_path):
    files = ReportFiles.for_run(tmp_path, AS_OF, 3)

    assert files.names() == {**{suffix: f"reconciliation-20260601T010000Z-3.{suffix}"
                                for suffix in ("csv", "json", "html", "xlsx")},
                             "findings": "reconciliation-20260601T010000Z-3-findings.csv"}
    assert files.csv.parent == tmp_path.resolve()


def test_the_csv_has_the_spec_header_kinds_joined_and_absent_cache_cells_empty():
    text = csv_text([discrepancy(2, ["MISSING_BALANCE"], None, 40)])

    assert text.splitlines() == [",".join(CSV_HEADER), f"{UUID(int=2)},MISSING_BALANCE,,40,-40,,40,,0"]


# ── the table at the terminal ────────────────────────────────────────────────

def test_aligned_lines_pad_columns_and_right_align_the_numbers_asked_for():
    assert aligned_lines(["", "ledger"], [["balance", "500"], ["total debits", "-1,500"]], right=(1,)) == [
        "              ledger", "------------  ------", "balance          500", "total debits  -1,500"]


def test_the_report_table_shows_headline_roll_forward_and_discrepancies():
    found = Found(total=1, by_kind=Counter({"MISSING_BALANCE": 1}))
    summary = build_summary(3, AS_OF, snapshot(*PERIOD, previous=PREVIOUS), found, repaired=0,
                            repair_requested=False, files={"csv": "r.csv", "json": "r.json", "html": "r.html",
                                                           "xlsx": "r.xlsx"})
    stored = SimpleNamespace(run_id=3, status="SUCCEEDED", summary=summary.as_dict(), csv_file="/srv/r.csv",
                             json_file="/srv/r.json")

    lines = report_table(stored, [discrepancy(2, ["MISSING_BALANCE"], None, 40)], width=80).splitlines()

    assert lines[:2] == ["Points reconciliation: run 3 (SUCCEEDED), as of 2026-06-01 01:00:00Z",
                         "Status: ATTENTION: 1 discrepancy"]
    assert max(len(line) for line in lines) <= 80
    assert "  Covers rows dated after 2026-05-01 01:00:00 UTC (run 1) up to 2026-06-01" in lines
    assert any(line.split()[:5] == ["Redeemed", "for", "unlocks", "-300", "-$3.00"] for line in lines)
    assert any(line.split()[:4] == ["Total", "used", "up", "-380"] for line in lines)
    assert "Discrepancies: 1 (MISSING_BALANCE 1)" in lines
    assert any(line.startswith(f"{UUID(int=2)}    -40  MISSING_BALANCE") for line in lines)
    assert lines[-5:] == [f"Files, in {Path('/srv')}:", "  r.csv", "  r.json", "  r.html", "  r.xlsx"]


def test_the_discrepant_users_drift_adds_up_by_field_and_missing_users_count_as_checked():
    found = Found()
    found.add(["MISSING_BALANCE"], balance=-40, earned=-50, spent=10)
    found.add(["ORPHAN_BALANCE"], balance=7, earned=7, spent=0)
    found.add(["CACHE_INCONSISTENT"], balance=0, earned=0, spent=0)

    assert found.drift == Counter(balance=-33, earned=-43, spent=10)
    assert found.users_checked(CacheTotals(rows=9, balance=0, earned=0, spent=0)) == 10
