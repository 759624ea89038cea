"""`explain USER_ID`: the answer to "where are my points?", rendered for a support person (or, with
`--json`, as one JSON document of the same content for scripts)."""
from __future__ import annotations

import sys
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Engine

from cli.tables import Column, print_table
from cli.terminal import print_json, stdout_console
from core.clock import when
from jobs.explain import EXPIRIES_SHOWN, LEDGER_ROWS_SHOWN, Explanation, MonthState, explain
from jobs.settings import RuleSettings

EXIT_OK, EXIT_NOT_FOUND = 0, 1
LEVEL_NAMES = {1: "recurring", 2: "level-2"}


def _relationship(row: Any) -> str:
    dates = f"created {when(row.created_at, seconds=False)}"
    if row.rewarded_at:
        dates += f", rewarded {when(row.rewarded_at, seconds=False)}"
    if row.expired_at:
        dates += f", expired {when(row.expired_at, seconds=False)}"
    return f"{row.status} ({dates})"


def explain_user(engine: Engine, settings: RuleSettings, user_id: UUID, as_of: datetime, *,
                 as_json: bool = False) -> int:
    found = explain(engine, settings, user_id, as_of)
    if not found.exists:
        print(f"no user {user_id}: no ledger row, balance row, referral or reward", file=sys.stderr)
        return EXIT_NOT_FOUND
    if as_json:
        print_json(as_document(found))
    else:
        _print(found)
    return EXIT_OK


def _month(month: MonthState) -> dict[str, Any]:
    return {"relationship_id": month.relationship_id, "referred_user_id": month.referred_user_id,
            "level": month.reward_level, "month": month.month, "starts_at": month.starts_at,
            "ends_at": month.ends_at, "state": month.state, "points": month.points, "why": month.why,
            "key": month.key}


def as_document(found: Explanation) -> dict[str, Any]:
    """Everything `explain` shows, with stable keys."""
    balance = found.balance
    return {
        "user_id": found.user_id, "as_of": found.as_of,
        "balance": {"ledger": int(balance.ledger_balance), "ledger_rows": int(balance.ledger_rows),
                    "cached": balance.cached_balance},
        "referrer": None if found.referrer is None else {
            "referrer_user_id": found.referrer.referrer_user_id, "relationship_id": found.referrer.id,
            "level": found.referrer.level, "status": found.referrer.status},
        "referrals": [{"relationship_id": r.id, "referred_user_id": r.referred_user_id, "level": r.reward_level,
                       "via_user_id": r.via_user_id, "status": r.status, "rewarded_at": r.rewarded_at}
                      for r in found.referrals],
        "months": [_month(month) for month in found.months],
        "to_be_written": [{"key": f.idempotency_key, "action": f.action, "referred_user_id": f.referred_user_id,
                           "month": f.month, "points": None if f.points is None else int(f.points)}
                          for f in found.to_write],
        "outstanding_unrecovered": {LEVEL_NAMES[level]: points for level, points in found.outstanding.items()},
        "ledger": [{"created_at": row.created_at, "type": row.type, "delta": row.delta,
                    "key": row.idempotency_key, "run_id": row.run_id, "job": row.job} for row in found.ledger],
        "expiring": [{"expires_at": row.expires_at, "points": int(row.points)} for row in found.expiring],
    }


def _print(found: Explanation) -> None:
    console = stdout_console()
    balance = found.balance
    console.print(f"[bold]user {found.user_id}[/bold] as of {when(found.as_of)}")
    cached = "no balance row" if balance.cached_balance is None else f"{balance.cached_balance:,} cached now"
    console.print(f"balance {balance.ledger_balance:,} points in the ledger at the as-of ({balance.ledger_rows:,}"
                  f" rows), {cached}", markup=False)
    for level, points in sorted(found.outstanding.items()):
        console.print(f"{points:,} {LEVEL_NAMES[level]} points clawed back but not recovered yet: owed back from"
                      f" the next credits", markup=False)

    _print_chain(found)
    _print_months(found.months)
    _print_ledger(found)
    if not found.expiry_months:
        console.print("Points never expire (REWARDS_POINTS_EXPIRY_MONTHS=0).")
        return
    expiring = [[when(row.expires_at, seconds=False), int(row.points),
                 "overdue: the next expire-points run expires them" if row.expires_at <= found.as_of else ""]
                for row in found.expiring]
    print_table([Column("expires (UTC)"), Column("points"), Column("note", flex=True, wrap=True)],
                expiring or [["(nothing to expire)", None, ""]],
                title=f"Points expiring next (first {EXPIRIES_SHOWN}, FIFO lots, "
                      f"{found.expiry_months} months after earning)")


def _print_chain(found: Explanation) -> None:
    chain = []
    if found.referrer:
        chain.append(["referred by", str(found.referrer.referrer_user_id),
                      f"level {found.referrer.level}", _relationship(found.referrer)])
    for row in found.referrals:
        label = "level-1 referral" if row.reward_level == 1 else "level-2 referral"
        via = f"\nvia {row.via_user_id}" if row.reward_level == 2 and row.via_user_id else ""
        chain.append([label, f"{row.referred_user_id}{via}", f"rel {row.id}", _relationship(row)])
    print_table([Column("who"), Column("user"), Column("relationship", drop=1),
                 Column("status", flex=True, wrap=True)], chain or [["(none)", "", "", ""]], title="Referral chain")


def _print_months(months: list[MonthState]) -> None:
    """One table per rewarded referral, headed by the referred user's whole id."""
    title = "Reward months, as the reward jobs derive them at the as-of"
    if not months:
        stdout_console().print(f"{title}: none (no rewarded referral)", markup=False, style="bold")
        return
    stdout_console().print(title, markup=False, style="bold")
    groups: dict[tuple[int, UUID, UUID], list[MonthState]] = {}
    for month in months:
        groups.setdefault((month.reward_level, month.referred_user_id, month.relationship_id), []).append(month)
    for (level, referred, _relationship), group in groups.items():
        print_table([Column("month"), Column("state"), Column("points"), Column("why", flex=True, wrap=True)],
                    [[m.month, m.state, m.points, m.why] for m in sorted(group, key=lambda m: m.month)],
                    title=f"{LEVEL_NAMES[level]} reward for referred user {referred}")


def _print_ledger(found: Explanation) -> None:
    ledger = [[when(row.created_at, seconds=False), row.type, row.delta, row.idempotency_key or "",
               f"{row.run_id} {row.job}" if row.run_id else ("app" if row.idempotency_key is None else "")]
              for row in found.ledger]
    # At 80 columns the key (a month's whole key) is kept before the date and the writing run.
    print_table([Column("created (UTC)", drop=2), Column("type"), Column("delta"), Column("key"),
                 Column("written by", drop=1)], ledger or [["(none)", "", None, "", ""]],
                title=f"Ledger rows dated up to the as-of (newest {LEDGER_ROWS_SHOWN}, with the run that wrote each)")
