"""`balance USER_ID [--as-of WHEN]`: one user's ledger balance at an instant, their lots (FIFO, as
expire-points counts them) and when each expires."""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from uuid import UUID

from cli.database import engine
from cli.tables import Column, print_table
from cli.terminal import print_json, stdout_console
from cli.usage import UsageError, as_of
from core.clock import when
from jobs.liability import UserBalance, user_balance
from jobs.settings import RuleSettings

EXIT_OK, EXIT_NOT_FOUND = 0, 1


def cmd_balance(args: argparse.Namespace, settings: RuleSettings) -> int:
    try:
        user_id = UUID(args.user_id)
    except ValueError:
        raise UsageError(f"USER_ID: not a UUID: {args.user_id!r}") from None
    instant = as_of(args)
    with engine(settings).connect() as conn:
        found = user_balance(conn, user_id, instant, settings)
    if found is None:
        print(f"no user {user_id}: no ledger row", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        print_json(found)
    else:
        _print(found, settings.points_expiry_months)
    return EXIT_OK


def _print(found: UserBalance, expiry_months: int) -> None:
    console = stdout_console()
    console.print(f"[bold]user {found['user_id']}[/bold] as of {when(found['as_of'])}")
    console.print(f"balance {found['balance']:,} points in the ledger at the as-of", markup=False)
    console.print(f"earned {found['earned']:,}, spent {found['spent']:,}, expired {found['expired']:,},"
                  f" clawed back {found['clawed_back']:,}", markup=False)
    for line in _next_expiry(found, expiry_months):
        console.print(line, markup=False)
    held = [lot for lot in found["lots"] if lot["remaining"] > 0]
    rows = [[when(lot["earned_at"], seconds=False), lot["type"], lot["points"], lot["remaining"],
             when(lot["expires_at"], seconds=False) if lot["expires_at"] else "never"] for lot in held]
    print_table([Column("earned (UTC)"), Column("type", drop=1), Column("points", drop=2), Column("remaining"),
                 Column("expires (UTC)")], rows or [["(no points left)", "", None, None, ""]],
                title="Lots with points left, oldest first (debits take the oldest first)")
    used_up = len(found["lots"]) - len(held)
    if used_up:
        console.print(f"{used_up:,} older lot{'s' if used_up != 1 else ''} used up or expired"
                      f" (--json lists every lot)", markup=False)


def _next_expiry(found: UserBalance, expiry_months: int) -> list[str]:
    if not expiry_months:
        return ["Points never expire (REWARDS_POINTS_EXPIRY_MONTHS=0)."]
    upcoming = found["expiring_next"]
    if upcoming is None:
        return ["Nothing to expire."]
    lines = [f"next expiry: {upcoming['points']:,} points after {when(upcoming['expires_at'])}"]
    if datetime.fromisoformat(upcoming["expires_at"]) <= datetime.fromisoformat(found["as_of"]):
        lines.append("overdue: the next expire-points run expires them")
    return lines
