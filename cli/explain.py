"""`explain USER_ID`: the answer to "where are my points?", rendered for a support person."""
from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Engine

from cli.tables import Column, print_table
from cli.terminal import stdout_console
from core.clock import when
from jobs.explain import EXPIRIES_SHOWN, LEDGER_ROWS_SHOWN, explain
from jobs.settings import RuleSettings


def _relationship(row: Any) -> str:
    dates = f"created {when(row.created_at, seconds=False)}"
    if row.rewarded_at:
        dates += f", rewarded {when(row.rewarded_at, seconds=False)}"
    if row.expired_at:
        dates += f", expired {when(row.expired_at, seconds=False)}"
    return f"{row.status} ({dates})"


def explain_user(engine: Engine, settings: RuleSettings, user_id: UUID, as_of: datetime) -> int:
    found = explain(engine, settings, user_id, as_of)
    console = stdout_console()
    balance = found.balance
    console.print(f"[bold]user {user_id}[/bold] as of {when(as_of)}")
    if not balance.ledger_rows and balance.cached_balance is None and not balance.in_referrals:
        console.print("no ledger rows, no balance row and no referral for this user id")
        return 0
    cached = "no balance row" if balance.cached_balance is None else f"{balance.cached_balance:,} cached"
    console.print(f"balance {balance.ledger_balance:,} points in the ledger ({balance.ledger_rows:,} rows), "
                  f"{cached}", markup=False)

    chain = []
    if found.referrer:
        chain.append(["referred by", str(found.referrer.referrer_user_id),
                      f"level {found.referrer.level}", _relationship(found.referrer)])
    for row in found.referrals:
        label = "level-1 referral" if row.reward_level == 1 else "level-2 referral"
        via = f" via {row.via_user_id}" if row.reward_level == 2 and row.via_user_id else ""
        chain.append([label, f"{row.referred_user_id}{via}", f"rel {row.id}", _relationship(row)])
    print_table([Column("who"), Column("user", shrink=True), Column("relationship", drop=1),
                 Column("status", flex=True)], chain or [["(none)", "", "", ""]], title="Referral chain")

    months = [[f"{'recurring' if m.reward_level == 1 else 'level-2'} {m.relationship_id}".split(" ")[0]
               + f" {str(m.relationship_id)[:8]}", m.month, m.state, m.points, m.why] for m in found.months]
    print_table([Column("reward"), Column("month"), Column("state"), Column("points"),
                 Column("why", flex=True, wrap=True)],
                months or [["(none: no REWARDED referral)", None, "", None, ""]],
                title="Reward months (paid / due / on hold / unpaid / clawed back / not yet)")

    ledger = [[when(row.created_at, seconds=False), row.type, row.delta, row.idempotency_key or "",
               f"{row.run_id} {row.job}" if row.run_id else "app"] for row in found.ledger]
    print_table([Column("created (UTC)"), Column("type"), Column("delta"), Column("key", shrink=True),
                 Column("written by", flex=True)], ledger or [["(none)", "", None, "", ""]],
                title=f"Ledger rows (newest {LEDGER_ROWS_SHOWN}, with the run that wrote each)")

    if not found.expiry_months:
        console.print("Points never expire (REWARDS_POINTS_EXPIRY_MONTHS=0).")
        return 0
    expiring = [[when(row.expires_at, seconds=False), row.points,
                 "overdue: the next expire-points run expires them" if row.expires_at <= as_of else ""]
                for row in found.expiring]
    print_table([Column("expires (UTC)"), Column("points"), Column("note", flex=True)],
                expiring or [["(nothing to expire)", None, ""]],
                title=f"Points expiring next (first {EXPIRIES_SHOWN}, FIFO, "
                      f"{found.expiry_months} months after earning)")
    return 0
