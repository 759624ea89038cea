"""reconcile's audit: what one snapshot of the ledger and the cache shows, as a value (`Audit`).

In one REPEATABLE READ READ ONLY transaction (`_read_only_snapshot`): the cache's totals, the comparison
of every user's cache row with the ledger (`discrepancies`, streamed through COPY; each chunk of
discrepant users is handed, in a short transaction of its own that renews the lease, to the
publisher's `store`), the movements by type and month since the previous reconcile (the roll-forward's
lines; the earlier months carried on or charted afresh), the period's clawbacks, then the rules audit.
Nothing here writes a file or a table of its own: what is published of an audit, and how (or, in a dry
run, that nothing is), is `jobs/reconcile_publish.py`'s. The rule itself is stated in `jobs/reconcile.py`.
"""
from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Callable, Iterator, NamedTuple, Sequence, Unpack

from sqlalchemy import Connection, Engine, Row

from core.job import RunContext
from core.sql import Queries
from core.stream import copy_rows
from jobs import liability, period_close, rules_audit
from jobs.reconcile_summary import (MONTHS_CHARTED, RECOVERY, CacheTotals, ClawbackTotals, Found, LedgerTotals,
                                    Movement, PreviousReconcile, Snapshot, Summary, TypeTotals, Unrecovered,
                                    add_totals, build_summary, month_starts)
from jobs.settings import RuleSettings

_queries = Queries(__file__)
SqlRow = Row[Unpack[tuple[object, ...]]]  # a row of a query in the .sql file: its columns named by the SQL

# The comparison's full join hashes every user's ledger sums at once: with PostgreSQL's default 4MB it
# splits into batches on disk. Spills to disk beyond it, so memory stays bounded.
AUDIT_WORK_MEM = "256MB"


@dataclass(frozen=True)
class Audit:
    """What one snapshot showed: its totals, movements and findings by kind (`snapshot`), the discrepant
    users counted by kind with their drift (`found`), and the rules audit's findings one by one."""

    snapshot: Snapshot
    found: Found
    findings: list[rules_audit.Finding]

    @property
    def repairable(self) -> int:
        """The discrepant users whose cache row differs from the ledger's sums (what a repair changes)."""
        return self.found.repairable

    def summary(self, ctx: RunContext[RuleSettings], *, repaired: int, files: dict[str, str] | None) -> Summary:
        """The run's summary and roll-forward, with the repairs made and the files' names (None: no file)."""
        return build_summary(ctx.run_id, ctx.as_of, self.snapshot, self.found, repaired=repaired,
                             repair_requested=ctx.repair, files=files, points_per_usd=ctx.settings.points_per_usd,
                             journal_accounts=ctx.settings.journal_accounts)


# Where each chunk of discrepant users goes, on the connection of the chunk's own transaction.
Store = Callable[[Connection, Sequence["Discrepancy"]], None]


def audit(ctx: RunContext[RuleSettings], store: Store) -> Audit:
    """Read the snapshot: compare, roll forward, audit the rules; hand the discrepant users to `store`."""
    with _read_only_snapshot(ctx.engine) as conn:
        previous = _previous_reconcile(conn, ctx)
        window = {"as_of": ctx.as_of, "previous_as_of": previous.as_of if previous else None}
        months_from = conn.execute(_queries["months_charted_from"], {"as_of": ctx.as_of,
                                                                      "months": MONTHS_CHARTED}).scalar_one()
        starts = month_starts(months_from)
        conn.exec_driver_sql(f"SET LOCAL work_mem = '{AUDIT_WORK_MEM}'")
        cache = _cache_totals(conn)
        found = _stream_discrepancies(ctx, conn, store)
        lines = _movements(conn, window, starts, after=window["previous_as_of"])  # every row on a first reconcile
        ledger = _ledger_totals(cache, found, _rows_up_to(conn, previous), lines)
        counted = previous is not None and previous.counted(ledger.rows_up_to_previous,
                                                            ledger.dated_up_to_previous)
        carried = previous.monthly if previous is not None and counted else None
        by_type_up_to_previous = None
        if previous and (not counted or previous.ledger_by_type is None):
            # rows came late (or an old summary): the ledger by type up to the previous as-of, read once,
            # gives the late lines by type and charts the months afresh
            earlier = _movements(conn, window, starts, up_to=previous.as_of)
            by_type_up_to_previous = _by_type(earlier)
            if carried is None:
                lines += earlier
        snapshot = Snapshot(previous=previous, ledger=ledger, cache=cache, users_checked=found.users_checked(cache),
                            movements=_charted(lines, starts), months_from=months_from,
                            unrecovered=_unrecovered(conn, window), monthly_carried=carried,
                            ledger_by_type_up_to_previous=by_type_up_to_previous)
        findings = rules_audit.audit(conn, ctx.settings)
        snapshot = _with_finance(ctx, conn, replace(snapshot, findings=rules_audit.by_kind(findings)))
    _renew_lease(ctx)
    return Audit(snapshot, found, findings)


def _with_finance(ctx: RunContext[RuleSettings], conn: Connection, snapshot: Snapshot) -> Snapshot:
    """What finance reads beside the roll-forward, in the same snapshot: the signed months' restatements
    (one statement over every month signed), the liability schedule at the as-of and the breakage."""
    schedule, breakage = liability.schedule_and_breakage(conn, ctx.as_of, ctx.settings)
    return replace(snapshot, restatements=period_close.restatements(conn, ctx.settings.points_per_usd),
                   liability_schedule=schedule, breakage=breakage)


@contextmanager
def _read_only_snapshot(engine: Engine) -> Iterator[Connection]:
    """One REPEATABLE READ READ ONLY transaction: every statement in it sees the same snapshot."""
    with engine.connect() as conn:
        conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            conn.execute(_queries["one_snapshot_per_node"])
            yield conn


def _line_type(line: SqlRow) -> str:
    """The roll-forward's line of a movement: its ledger type, recoveries (recover: keys) apart."""
    return RECOVERY if line.recovery else line.type


def _by_type(lines: Sequence[SqlRow]) -> TypeTotals:
    return add_totals({}, *({_line_type(line): [int(line.rows), int(line.earned), -int(line.spent)]}
                           for line in lines))


def _previous_reconcile(conn: Connection, ctx: RunContext[RuleSettings]) -> PreviousReconcile | None:
    row = conn.execute(_queries["previous_reconcile"], {"as_of": ctx.as_of, "run_id": ctx.run_id}).first()
    if row is None:
        return None
    return PreviousReconcile(row.run_id, row.as_of, int(row.closing_balance), int(row.closing_rows), row.monthly,
                             ledger_by_type=row.ledger_by_type, clawbacks=ClawbackTotals.stored(row.clawbacks))


def _movements(conn: Connection, window: dict[str, datetime | None], starts: list[datetime], *,
               from_: datetime | None = None, after: datetime | None = None,
               up_to: datetime | None = None) -> list[SqlRow]:
    return list(conn.execute(_queries["movements"], {**window, "month_starts": starts, "from": from_, "after": after,
                                                     "up_to": up_to}))


def _rows_up_to(conn: Connection, previous: PreviousReconcile | None) -> int:
    """The ledger rows dated up to the previous reconcile's as-of (none without one)."""
    if previous is None:
        return 0
    return int(conn.execute(_queries["rows_up_to"], {"up_to": previous.as_of}).scalar_one())


def _unrecovered(conn: Connection, window: dict[str, datetime | None]) -> Unrecovered:
    """Clawbacks of the period."""
    row = conn.execute(_queries["unrecovered_clawbacks"], window).one()._asdict()
    seen = ClawbackTotals(*(int(row[name]) for name in ClawbackTotals.__dataclass_fields__))
    if window["previous_as_of"] is None:
        return Unrecovered(seen)
    before = ClawbackTotals(*(int(row[f"{name}_before"]) for name in ClawbackTotals.__dataclass_fields__))
    return Unrecovered(seen, before)


def _cache_totals(conn: Connection) -> CacheTotals:
    row = conn.execute(_queries["cache_totals"]).one()
    return CacheTotals(int(row.rows), int(row.balance), int(row.earned), int(row.spent))


def _ledger_totals(cache: CacheTotals, found: Found, rows_up_to_previous: int,
                   lines: list[SqlRow]) -> LedgerTotals:
    """The ledger's totals: the cache's less the discrepant users' drift; the splits by date from the
    movement lines, which hold every row dated after the previous as-of (all rows without one)."""
    def window(column: str, wanted: Callable[[SqlRow], bool] = lambda line: True) -> int:
        return sum(int(getattr(line, column)) for line in lines if wanted(line))

    balance = cache.balance - found.drift["balance"]
    after_as_of = window("balance", lambda line: line.after_as_of)
    return LedgerTotals(
        rows=rows_up_to_previous + window("rows"), balance=balance, earned=cache.earned - found.drift["earned"],
        spent=cache.spent - found.drift["spent"], closing=balance - after_as_of,
        rows_after_as_of=window("rows", lambda line: line.after_as_of), points_after_as_of=after_as_of,
        dated_up_to_previous=balance - window("balance"), rows_up_to_previous=rows_up_to_previous)


def _charted(lines: list[SqlRow], month_starts: list[datetime]) -> list[Movement]:
    """The movements the summary reads: dated at or before the as-of, in the period or the charted
    months (month None: before them)."""
    def month(bucket: int) -> date | None:
        return month_starts[bucket - 1].date() if 1 <= bucket <= MONTHS_CHARTED else None

    return [Movement(_line_type(line), month(line.month), line.in_period, int(line.earned), -int(line.spent),
                     int(line.rows))
            for line in lines
            if not line.after_as_of and (line.in_period or month(line.month) is not None)]


class Discrepancy(NamedTuple):
    """One row of `discrepancies`, from COPY's text (the fields of CSV_HEADER)."""
    user_id: str
    kinds: tuple[str, ...]
    cached_balance: int | None
    ledger_balance: int
    drift: int
    cached_total_earned: int | None
    ledger_total_earned: int
    cached_total_spent: int | None
    ledger_total_spent: int

    @property
    def cache_true(self) -> bool:
        """The cache row equals the ledger's sums (a repair leaves it as it is)."""
        return (self.cached_balance, self.cached_total_earned, self.cached_total_spent) == (
            self.ledger_balance, self.ledger_total_earned, self.ledger_total_spent)

    @classmethod
    def parsed(cls, values: Sequence[str | None]) -> Discrepancy:
        (user_id, kinds, cached_balance, ledger_balance, drift, cached_earned, ledger_earned, cached_spent,
         ledger_spent) = values
        return cls(str(user_id), tuple(kinds.split("|")) if kinds else (), _int_or_none(cached_balance),
                   _int(ledger_balance), _int(drift), _int_or_none(cached_earned), _int(ledger_earned),
                   _int_or_none(cached_spent), _int(ledger_spent))


def _int_or_none(text: str | None) -> int | None:
    return None if text is None else int(text)


def _int(text: str | None) -> int:
    """A number `discrepancies` never leaves NULL (the ledger's sums and the drift are coalesced)."""
    assert text is not None
    return int(text)


def _stream_discrepancies(ctx: RunContext[RuleSettings], conn: Connection, store: Store) -> Found:
    """Count the discrepant users as they stream; hand each chunk to `store`."""
    conn.execute(_queries["group_users_in_index_order"])
    found = Found()
    chunk_numbers = itertools.count(1)

    def take(values: list[tuple[str | None, ...]]) -> None:
        chunk = [Discrepancy.parsed(row) for row in values]
        for row in chunk:
            found.add(row.kinds, balance=row.drift,
                      earned=(row.cached_total_earned or 0) - row.ledger_total_earned,
                      spent=(row.cached_total_spent or 0) - row.ledger_total_spent, cache_true=row.cache_true)
        _store_chunk(ctx, chunk, store)
        ctx.progress(job=ctx.job, batches=next(chunk_numbers), items=found.total, total=None)
        ctx.check_stop()

    copy_rows(conn, _queries["discrepancies"], {}, take, ctx.settings.batch_size)
    conn.execute(_queries["hash_groups_again"])
    _renew_lease(ctx)
    return found


def _store_chunk(ctx: RunContext[RuleSettings], chunk: Sequence[Discrepancy], store: Store) -> None:
    """One short transaction of its own: renew the lease, hand the chunk to `store` (rows of this run)."""
    with ctx.engine.begin() as conn:
        ctx.heartbeat(conn)
        store(conn, chunk)


def _renew_lease(ctx: RunContext[RuleSettings]) -> None:
    """A heartbeat in a transaction of its own."""
    with ctx.engine.begin() as own:
        ctx.heartbeat(own)
