"""The rules audit of every reconcile (SPEC v3 "The rules audit"; docs/rules.md "The invariant").

In reconcile's REPEATABLE READ snapshot, statements written apart from the jobs' SQL (a second reading of
docs/rules.md, `rules_audit.sql`; jobs/rewards.sql and expire_points.sql are neither called nor copied)
check:

- REWARD_INVARIANT, per level after its last successful run (its as-of and the settings it recorded;
  today's settings when it recorded none): at most one standing reward per (referred user, level,
  month); a standing reward's basis holds; a paid month with a price above 0 has a standing reward;
  every recorded reward has its credit in the ledger.
- REWARD_KEY_MISMATCH: every reward key of the ledger (recurring:, l2:, whatever the row's type) has its
  record, of the level's type, for the same beneficiary and amount, and that amount is what the rule
  gives for the reward's basis under the settings of the run that wrote it: a key that exists with
  another amount (e.g. one inserted before the job ran) is reported, never counted as the month paid.
- RECOVERY_INVARIANT: taken + expired + unrecovered = points and 0 <= recovered <= unrecovered for every
  clawed-back reward; the recover: rows of a beneficiary add up to what the clawbacks record as
  recovered; with recovery on, outstanding points per beneficiary and level only where the balance (at
  the level's run) is 0.
- EXPIRY_INVARIANT, after the last expire-points run: no user's due (lots before its cutoff less their
  own clawbacks, less every consuming debit) above 0.

A finding is reported (the run's table, the findings CSV, the report's section, the run's stats and
/metrics), never acted on: the audit only reads.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterable, TextIO
from uuid import UUID

from sqlalchemy import Connection, Row

from core.settings import env_name
from core.sql import Queries
from jobs.reconcile_summary import FINDING_KINDS
from jobs.settings import RewardAmount, RuleSettings, quote_table_name

_queries = Queries(__file__)

FINDINGS_HEADER = ("kind", "user_id", "referred_user_id", "level", "month", "reward_key", "points", "detail")
_LEVELS = {1: ("recurring-rewards", "REFERRAL_RECURRING", "recurring", "recurring_reward", "recurring_months"),
           2: ("level2-rewards", "REFERRAL_L2", "l2", "l2_reward", "l2_months")}


@dataclass(frozen=True)
class Finding:
    kind: str
    user_id: UUID | None
    referred_user_id: UUID | None
    level: int | None
    month: int | None
    reward_key: str | None
    points: int | None
    detail: str

    def cells(self) -> list[str]:
        return ["" if value is None else str(value) for value in (
            self.kind, self.user_id, self.referred_user_id, self.level, self.month, self.reward_key, self.points,
            self.detail)]


@dataclass(frozen=True)
class _Run:
    job: str
    as_of: datetime
    settings: dict[str, str]
    finished_at: datetime | None

    def setting(self, name: str, default: object) -> str:
        value = self.settings.get(env_name(name))
        return str(default) if value is None else str(value)


def audit(conn: Connection, settings: RuleSettings) -> list[Finding]:
    """Every finding in this snapshot, in kind order (REWARD, RECOVERY, EXPIRY).

    Over the whole history hash and merge joins are right at any size; the statements' CTEs, read
    several times, are materialized without statistics, and a nested loop over them is quadratic (4.2 s
    instead of 0.18 s for the level-1 statement at 2,000 users). So nested loops are off while the audit
    runs, and back as they were for the rest of reconcile's transaction."""
    previous = conn.execute(_queries["nested_loops_off"]).scalar_one()
    try:
        return _audit(conn, settings)
    finally:
        conn.execute(_queries["nested_loops_back"], {"previous": previous})


def _audit(conn: Connection, settings: RuleSettings) -> list[Finding]:
    runs = {row.job: _Run(row.job, row.as_of, dict(row.settings or {}), row.finished_at)
            for row in conn.execute(_queries["last_runs"])}
    found: list[Finding] = []
    for level, (job, ledger_type, prefix, reward_setting, months_setting) in _LEVELS.items():
        run = runs.get(job)
        if run is None:
            continue
        amount = RewardAmount.parse(run.setting(reward_setting, getattr(settings, reward_setting)))
        months = int(run.setting(months_setting, getattr(settings, months_setting)))
        feed = quote_table_name(run.setting("payments_table", settings.payments_table))
        first, last = (1, months) if level == 1 else (0, months - 1)
        found += _findings(conn.execute(_queries.render("reward_findings", feed=feed), {
            "level": level, "as_of": run.as_of, "first_month": first, "last_month": last,
            "hold_days": int(run.setting("reward_hold_days", settings.reward_hold_days)),
            "fixed_points": amount.points, "percent": amount.percent,
            "points_per_usd": Decimal(run.setting("points_per_usd", settings.points_per_usd))}))
        found += _findings(conn.execute(_queries["reward_ledger_findings"], {
            "level": level, "ledger_type": ledger_type, "prefix": prefix,
            "prices": json.dumps(_prices(conn, level, reward_setting, settings))}))
    found += _recovery(conn, runs, settings)
    expiry = runs.get("expire-points")
    if expiry is not None:
        months = int(expiry.setting("points_expiry_months", settings.points_expiry_months))
        if months > 0:
            cutoff = conn.execute(_queries["cutoff"], {"as_of": expiry.as_of, "months": months}).scalar_one()
            found += _findings(conn.execute(_queries["expiry_findings"], {"as_of": expiry.as_of, "cutoff": cutoff}))
    return sorted(found, key=lambda f: (FINDING_KINDS.index(f.kind), str(f.user_id or ""), f.level or 0,
                                        f.month or 0, f.reward_key or "", f.detail))


def _prices(conn: Connection, level: int, reward_setting: str, settings: RuleSettings) -> list[dict[str, object]]:
    """The price rule of every run that wrote rewards of `level`, from the settings it recorded (today's
    for a setting it did not record): [{run_id, fixed_points, percent, points_per_usd}]."""
    run_ids = list(conn.execute(_queries["reward_runs"], {"level": level}).scalars())
    prices: list[dict[str, object]] = []
    for row in conn.execute(_queries["run_settings"], {"run_ids": run_ids}) if run_ids else ():
        run = _Run("", datetime.min, dict(row.settings or {}), None)
        try:
            amount = RewardAmount.parse(run.setting(reward_setting, getattr(settings, reward_setting)))
            points_per_usd = Decimal(run.setting("points_per_usd", settings.points_per_usd))
        except (ArithmeticError, ValueError):  # a setting this version cannot read: that run is not priced
            continue
        prices.append({"run_id": int(row.id), "fixed_points": amount.points,
                       "percent": None if amount.percent is None else str(amount.percent),
                       "points_per_usd": str(points_per_usd)})
    return prices


def _recovery(conn: Connection, runs: dict[str, _Run], settings: RuleSettings) -> list[Finding]:
    one, two = runs.get("recurring-rewards"), runs.get("level2-rewards")
    recovery = any(run.setting("recovery", settings.recovery).lower() in ("true", "on")
                   for run in (one, two) if run is not None)

    def later(run: _Run | None, than: _Run | None) -> bool:  # did `run` finish after `than`, at the same as-of?
        return bool(run and than and run.as_of == than.as_of and run.finished_at and than.finished_at
                    and run.finished_at > than.finished_at)

    return _findings(conn.execute(_queries["recovery_findings"], {
        "as_of_1": one.as_of if one else None, "as_of_2": two.as_of if two else None,
        "check_balance": recovery and (one is not None or two is not None),
        "level_2_after": later(two, one), "level_1_after": later(one, two)}))


def _findings(rows: Iterable[Row[Any]]) -> list[Finding]:
    return [Finding(row.kind, row.user_id, row.referred_user_id, row.level, row.month, row.reward_key,
                    None if row.points is None else int(row.points), row.detail) for row in rows]


def by_kind(findings: list[Finding]) -> dict[str, int]:
    return {kind: sum(1 for finding in findings if finding.kind == kind) for kind in FINDING_KINDS}


def write_csv(out: TextIO, findings: list[Finding]) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FINDINGS_HEADER)
    writer.writerows(finding.cells() for finding in findings)


def insert(conn: Connection, run_id: int, findings: list[Finding]) -> None:
    """The findings into reconciliation_findings (migration 024), numbered in report order."""
    if not findings:
        return
    conn.execute(_queries["insert_findings"], {
        "run_id": run_id, "numbers": list(range(1, len(findings) + 1)),
        "kinds": [f.kind for f in findings],
        "user_ids": [None if f.user_id is None else str(f.user_id) for f in findings],
        "referred_user_ids": [None if f.referred_user_id is None else str(f.referred_user_id) for f in findings],
        "levels": [f.level for f in findings], "months": [f.month for f in findings],
        "reward_keys": [f.reward_key for f in findings], "points": [f.points for f in findings],
        "details": [f.detail for f in findings]})
