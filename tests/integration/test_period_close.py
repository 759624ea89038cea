"""The period close (jobs/period_close.py, `close`, `report --period`): a month's roll-forward at its
edges, the month before beside it, the journal, sign-off once and all-or-nothing with its files, the
closed months append-only, and restatements in every later reconcile after a late app row, a back-dated
reward run, its clawback and a recovery, while the signed month still renders exactly as signed.

Defaults: 10% recurring reward, 100 points per USD, so a $20.00 payment gives 200 points ($2.00)."""
from __future__ import annotations

import json
import threading
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from core.db import make_engine
from core.reports import CannotWrite
from core.runner import run_job
from jobs import journal, period_close, reconcile, recurring_rewards
from jobs.period_close import AlreadySigned, NotEnded, close
from jobs.reconcile_summary import usd
from tests.builders import add_app_points, add_relationship, new_id, utc
from tests.integration.test_privileges import service_url  # noqa: F401  (the fixture: docs/privileges.sql's role)

MARCH, APRIL = date(2026, 3, 1), date(2026, 4, 1)
LAST_INSTANT_OF_MARCH = datetime(2026, 3, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)


def grant(engine, user, delta, created_at, type="ADMIN_GRANT"):
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=delta, type=type, created_at=created_at)


def reconciled(engine, settings, as_of):
    result = run_job(reconcile.JOB, settings=settings, engine=engine, as_of=as_of)
    assert result.status == "SUCCEEDED", result.error
    stem = f"reconciliation-{as_of:%Y%m%dT%H%M%SZ}-{result.run_id}"
    summary = json.loads((settings.reports_dir / f"{stem}.json").read_text(encoding="utf-8"))
    return summary, (settings.reports_dir / f"{stem}.journal.csv").read_text(encoding="utf-8")


def signed_rows(engine):
    with engine.connect() as conn:
        return conn.execute(text("SELECT period, signed_by FROM public.closed_months ORDER BY period")).all()


def assert_journal_is_the_roll_forward(lines, roll):
    result = journal.totals(lines)
    assert result["debit"] == result["credit"]
    liability = [line for line in lines if line["account"] == journal.LIABILITY]
    assert sum(line["points"] for line in liability) == roll["closing"] - roll["opening"]
    for line in liability:
        assert Decimal(line["credit"]) - Decimal(line["debit"]) == Decimal(usd(line["points"], Decimal(100)))


# ── the month's roll-forward ─────────────────────────────────────────────────

def test_a_month_holds_its_last_microsecond_and_not_the_next_months_first_instant(engine, settings):
    a, b, c = new_id(), new_id(), new_id()
    grant(engine, a, 1000, utc(2026, 2, 10))
    grant(engine, a, 1, utc(2026, 3, 1))  # the month's first instant: March's
    grant(engine, b, 100, LAST_INSTANT_OF_MARCH)  # its last microsecond: March's
    grant(engine, c, 10, utc(2026, 4, 1))  # the next month's first instant: April's
    grant(engine, a, -300, utc(2026, 3, 15), type="REDEMPTION_QUOTA")
    grant(engine, a, -50, utc(2026, 3, 20), type="EXPIRY")

    march = close(engine, settings, MARCH, sign_off=None).document
    april = close(engine, settings, APRIL, sign_off=None).document

    roll = march["roll_forward"]
    assert (roll["opening"], roll["issued"], roll["spent"], roll["expired"], roll["closing"]) == (
        1000, {"ADMIN_GRANT": 101}, {"REDEMPTION_QUOTA": 300}, 50, 751)
    assert roll["opening"] + roll["issued_total"] - roll["spent_total"] - roll["expired"] - roll["clawed_back"] \
        - roll["recovered"] == roll["expected_closing"] == roll["closing"]
    assert (roll["identity_holds"], roll["gap"], roll["closing_rows"]) == (True, 0, 5)
    assert (march["from"], march["to"], march["as_of"]) == (
        "2026-03-01T00:00:00+00:00", "2026-04-01T00:00:00+00:00", "2026-04-01T00:00:00+00:00")
    assert march["digest"]["rows"] == 4 and march["digest"]["points"] == -249
    assert (march["status"], march["signed_by"], march["outstanding_points"]) == ("DRAFT", None, 751)
    assert march["outstanding_money"] == {"usd": "7.51", "points_per_usd": "100"}

    schedule = march["liability_schedule"]
    assert schedule["outstanding_points"] == 751 and schedule["as_of"] == "2026-04-01T00:00:00+00:00"
    assert schedule["due_now_points"] + sum(month["points"] for month in schedule["months"]) \
        + schedule["later_points"] == 751
    assert march["breakage"]["expired_points"] == 50 and march["breakage"]["to"] == march["to"]
    assert april["roll_forward"]["opening"] == 751 and april["roll_forward"]["issued"] == {"ADMIN_GRANT": 10}
    assert april["roll_forward"]["closing"] == 761
    assert april["previous"] == {"period": "2026-03", "roll_forward": roll}
    assert march["previous"]["period"] == "2026-02" and march["previous"]["roll_forward"]["closing"] == 1000
    assert set(roll) == set(april["roll_forward"]) == {
        "previous_run_id", "period_after", "opening", "issued", "issued_total", "spent", "spent_total", "expired",
        "clawed_back", "recovered", "late_committed", "late_by_type", "expected_closing", "closing",
        "closing_rows", "identity", "identity_holds", "gap", "gap_explanation"}


def test_the_digest_changes_with_any_row_of_the_month_and_not_with_rows_outside_it(engine, settings):
    grant(engine, new_id(), 5, utc(2026, 3, 5))
    first = close(engine, settings, MARCH, sign_off=None).document["digest"]
    grant(engine, new_id(), 5, utc(2026, 4, 1))
    assert close(engine, settings, MARCH, sign_off=None).document["digest"] == first
    grant(engine, new_id(), 5, utc(2026, 3, 5))
    changed = close(engine, settings, MARCH, sign_off=None).document["digest"]
    assert (changed["rows"], changed["points"]) == (2, 10) and changed["hash"] != first["hash"]


def test_the_journal_balances_and_is_the_roll_forward_and_its_file(engine, settings):
    user = new_id()
    grant(engine, user, 700, utc(2026, 2, 1))
    grant(engine, user, 250, utc(2026, 3, 2), type="REFERRAL_RECURRING")
    grant(engine, user, 99, utc(2026, 3, 3))
    grant(engine, user, -120, utc(2026, 3, 4), type="REDEMPTION_QUOTA")
    grant(engine, user, -30, utc(2026, 3, 5), type="EXPIRY")

    closed = close(engine, settings, MARCH, sign_off=None)

    lines = closed.document["journal"]
    assert_journal_is_the_roll_forward(lines, closed.document["roll_forward"])
    assert {(line["account"], line["memo"]) for line in lines if line["account"] != journal.LIABILITY} == {
        ("Referral expense", "2026-03 issued.REFERRAL_RECURRING"), ("Promotional expense", "2026-03 issued.ADMIN_GRANT"),
        ("Redemptions", "2026-03 spent.REDEMPTION_QUOTA"), ("Breakage income", "2026-03 expired")}
    assert {line["date"] for line in lines} == {"2026-03-31"}
    assert closed.files.journal.name == "close-2026-03.draft.journal.csv"
    assert closed.files.journal.read_text(encoding="utf-8") == journal.journal_csv(lines)
    assert closed.files.json.read_text(encoding="utf-8") == closed.text
    assert closed.document["journal_file"] == closed.files.journal.name


# ── sign-off ─────────────────────────────────────────────────────────────────

def test_a_month_is_signed_off_once_with_its_files_and_never_changes(engine, settings):
    grant(engine, new_id(), 40, utc(2026, 3, 9))

    signed = close(engine, settings, MARCH, sign_off="Ada Controller")

    document = signed.document
    assert (document["status"], document["signed_by"]) == ("SIGNED", "Ada Controller")
    assert signed.files.journal.name == "close-2026-03.journal.csv" and signed.files.json.name == "close-2026-03.json"
    assert signed.files.json.read_text(encoding="utf-8") == signed.text
    with engine.connect() as conn:
        row = conn.execute(text("SELECT *, CAST(document AS text) AS text FROM public.closed_months")).one()
        assert period_close.stored_document(conn, MARCH) == signed.text
    assert (row.period, row.signed_by, row.opening_points, row.closing_points) == (MARCH, "Ada Controller", 0, 40)
    assert row.lines == {"opening": 0, "issued.ADMIN_GRANT": 40, "closing": 40}
    assert (row.digest_rows, row.digest_points, row.digest_hash) == (1, 40, document["digest"]["hash"])
    assert document["signed_at"] == row.signed_at.isoformat() and row.signed_session

    with pytest.raises(AlreadySigned, match=r"^2026-03 was signed off by Ada Controller at 20"):
        close(engine, settings, MARCH, sign_off="Bob")
    assert signed_rows(engine) == [(MARCH, "Ada Controller")]
    assert signed.files.json.read_text(encoding="utf-8") == signed.text

    draft = close(engine, settings, MARCH, sign_off=None)  # the month as known now, beside the signed files
    assert draft.signed_before.by == "Ada Controller" and draft.document["status"] == "DRAFT"
    assert draft.files.json.name == "close-2026-03.draft.json"
    assert signed.files.json.read_text(encoding="utf-8") == signed.text


def test_two_sign_offs_at_once_sign_the_month_once_and_its_files_are_the_winners(engine, settings):
    grant(engine, new_id(), 40, utc(2026, 3, 9))
    start = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def sign(name):
        start.wait()
        try:
            outcomes[name] = close(engine, settings, MARCH, sign_off=name)
        except AlreadySigned as refused:
            outcomes[name] = refused

    threads = [threading.Thread(target=sign, args=(name,)) for name in ("Ada", "Bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    ((_period, winner),) = signed_rows(engine)
    loser = "Bob" if winner == "Ada" else "Ada"
    assert isinstance(outcomes[loser], AlreadySigned) and f"signed off by {winner}" in str(outcomes[loser])
    document = json.loads((settings.reports_dir / "close-2026-03.json").read_text(encoding="utf-8"))
    assert document["signed_by"] == winner and outcomes[winner].document == document
    assert sorted(path.name for path in settings.reports_dir.iterdir()) == ["close-2026-03.journal.csv",
                                                                            "close-2026-03.json"]


@pytest.mark.parametrize("statement", [
    "UPDATE public.closed_months SET signed_by = 'Mallory'",
    "UPDATE public.closed_months SET document = CAST('{}' AS json)",
    "DELETE FROM public.closed_months",
    "TRUNCATE public.closed_months",
])
def test_a_signed_month_cannot_be_changed_or_removed(engine, settings, statement):
    close(engine, settings, MARCH, sign_off="Ada")

    with pytest.raises(DBAPIError, match="recorded fact"), engine.begin() as conn:
        conn.execute(text(statement))

    assert signed_rows(engine) == [(MARCH, "Ada")]


def test_a_month_not_yet_ended_cannot_be_signed_off(engine, settings):
    now = datetime.now(timezone.utc)
    this_month = date(now.year, now.month, 1)

    for period in (this_month, period_close.next_month(this_month)):
        with pytest.raises(NotEnded):
            close(engine, settings, period, sign_off="Ada")
    assert signed_rows(engine) == []
    assert close(engine, settings, this_month, sign_off=None).document["status"] == "DRAFT"


def test_a_sign_off_whose_files_cannot_be_written_records_nothing(engine, make_settings, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    settings = make_settings(reports_dir=blocked / "reports")

    with pytest.raises(CannotWrite):
        close(engine, settings, MARCH, sign_off="Ada")

    assert signed_rows(engine) == []


def test_a_sign_off_whose_row_is_not_recorded_leaves_no_file(engine, settings, monkeypatch):
    def refused(*args, **kwargs):
        raise RuntimeError("the database refused the row")

    monkeypatch.setattr(period_close, "_sign", refused)
    with pytest.raises(RuntimeError):
        close(engine, settings, MARCH, sign_off="Ada")

    assert signed_rows(engine) == []
    assert sorted(path.name for path in settings.reports_dir.iterdir()) == []


# ── restatements ─────────────────────────────────────────────────────────────

def march_lines(summary):
    (month,) = summary["restatements"]["months"]
    assert month["period"] == "2026-03" and month["signed_by"] == "Ada"
    return {line["key"]: (line["signed"], line["now"], line["change"], line["change_usd"]) for line in month["lines"]}


def test_restatements_of_a_signed_month_after_late_rows_a_back_dated_run_its_clawback_and_a_recovery(
        engine, settings, cli):
    """B refers C (rewarded Jan 5: month 1 = [Feb 5, Mar 5), month 2 = [Mar 5, Apr 5)). C pays in
    February, B earns 200 and spends them. March is signed off with nothing moving in it. Then, each
    followed by a reconcile: a late app row dated in March; C's February payment refunded and a late
    payment of March, rewarded by a run back-dated to March 10 (it credits 200, cannot claw month 1 back
    from B's empty balance and recovers the 200 from the credit); that payment refunded too and a run
    back-dated to March 20 claws month 2 back. Each reconcile lists March's changes by line, in points and
    money; `report --period 2026-03` stays byte for byte what was signed."""
    b, c, x = new_id(), new_id(), new_id()
    with engine.begin() as conn:
        add_relationship(conn, referrer=b, referred=c, status="REWARDED", rewarded_at=utc(2026, 1, 5))
        conn.execute(text("INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at)"
                          " VALUES (:id, :user, 2000, 'PAID', :paid_at)"),
                     {"id": (february := new_id()), "user": c, "paid_at": utc(2026, 2, 6)})
    assert run_job(recurring_rewards.JOB, settings=settings, engine=engine, as_of=utc(2026, 2, 10)).status == "SUCCEEDED"
    grant(engine, b, -200, utc(2026, 2, 12), type="REDEMPTION_QUOTA")
    grant(engine, x, 1000, utc(2026, 1, 15))
    first, _ = reconciled(engine, settings, utc(2026, 4, 1, 1))
    assert first["restatements"] is None

    signed = cli("close", "2026-03", "--sign-off", "Ada", "--json")
    assert signed.returncode == 0, signed.stderr
    as_signed = (settings.reports_dir / "close-2026-03.json").read_text(encoding="utf-8")
    assert signed.stdout == as_signed and json.loads(as_signed)["roll_forward"]["closing"] == 1000

    html_as_signed = cli("report", "--period", "2026-03", "--format", "html")
    assert html_as_signed.returncode == 0, html_as_signed.stderr
    assert 'data-key="roll_forward.closing" data-value="1000"' in html_as_signed.stdout
    unchanged, _ = reconciled(engine, settings, utc(2026, 4, 2, 1))
    assert unchanged["restatements"] == {"months": [], "total_change": 0, "total_change_usd": "0.00",
                                         "months_checked": 1}

    # 1. late app rows: one dated in March's last microsecond, one at April's first instant
    grant(engine, x, 50, LAST_INSTANT_OF_MARCH)
    grant(engine, x, 7, utc(2026, 4, 1))
    summary, journal_text = reconciled(engine, settings, utc(2026, 4, 3, 1))
    assert march_lines(summary) == {"issued.ADMIN_GRANT": (0, 50, 50, "0.50"), "closing": (1000, 1050, 50, "0.50")}
    assert summary["restatements"]["total_change"] == 50
    assert summary["roll_forward"]["late_by_type"] == {"ADMIN_GRANT": 57}
    assert "late.ADMIN_GRANT" in journal_text
    assert_journal_is_the_roll_forward(summary["journal"], summary["roll_forward"])
    assert journal_text == journal.journal_csv(summary["journal"])

    # 2. a back-dated run after a late payment: a reward and a recovery dated in March
    with engine.begin() as conn:
        conn.execute(text("UPDATE public.user_subscription_payments SET status = 'REFUNDED' WHERE id = :id"),
                     {"id": february})
        conn.execute(text("INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at)"
                          " VALUES (:id, :user, 2000, 'PAID', :paid_at)"),
                     {"id": (march_payment := new_id()), "user": c, "paid_at": utc(2026, 3, 6)})
    back_dated = cli("run", "recurring-rewards", "--as-of", "2026-03-10")
    assert back_dated.returncode == 0, back_dated.stderr
    summary, _ = reconciled(engine, settings, utc(2026, 4, 4, 1))
    assert march_lines(summary) == {
        "issued.ADMIN_GRANT": (0, 50, 50, "0.50"), "issued.REFERRAL_RECURRING": (0, 200, 200, "2.00"),
        "recovered": (0, -200, -200, "-2.00"), "closing": (1000, 1050, 50, "0.50")}
    assert_journal_is_the_roll_forward(summary["journal"], summary["roll_forward"])

    # 3. a clawback of a back-dated run: B has points again, the March payment is refunded
    grant(engine, b, 500, utc(2026, 4, 3))
    with engine.begin() as conn:
        conn.execute(text("UPDATE public.user_subscription_payments SET status = 'REFUNDED' WHERE id = :id"),
                     {"id": march_payment})
    assert cli("run", "recurring-rewards", "--as-of", "2026-03-20").returncode == 0
    summary, _ = reconciled(engine, settings, utc(2026, 4, 5, 1))
    assert march_lines(summary) == {
        "issued.ADMIN_GRANT": (0, 50, 50, "0.50"), "issued.REFERRAL_RECURRING": (0, 200, 200, "2.00"),
        "clawed_back": (0, -200, -200, "-2.00"), "recovered": (0, -200, -200, "-2.00"),
        "closing": (1000, 850, -150, "-1.50")}
    month = summary["restatements"]["months"][0]
    assert (month["closing_change"], month["closing_change_usd"]) == (-150, "-1.50")
    assert (summary["restatements"]["total_change"], summary["restatements"]["months_checked"]) == (-150, 1)

    # the signed month renders as signed, whatever happened since
    for attempt in range(2):
        again = cli("report", "--period", "2026-03", "--format", "json")
        assert again.returncode == 0 and again.stdout == as_signed
    table = cli("report", "--period", "2026-03", env={"COLUMNS": "80"})
    assert table.returncode == 0, table.stderr
    assert "2026-03: SIGNED" in table.stdout and "Signed off by Ada" in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
    assert "1,000" in table.stdout and "1,050" not in table.stdout
    # (the HTML is rendered again from the stored document: its numbers are the signed ones; compared
    # whole, it would also change with the template)
    html = cli("report", "--period", "2026-03", "--format", "html").stdout
    assert 'data-key="roll_forward.closing" data-value="1000"' in html
    assert not any(f'data-value="{restated}"' in html for restated in (850, 1050))
    workbook = settings.reports_dir.parent / "march.xlsx"
    assert cli("report", "--period", "2026-03", "--format", "xlsx", "--output", str(workbook)).returncode == 0
    assert workbook.read_bytes()[:2] == b"PK"
    csv_text = cli("report", "--period", "2026-03", "--format", "csv")
    assert csv_text.stdout == journal.journal_csv(json.loads(as_signed)["journal"])

    # and a new close of March shows it as known now, with its restatement
    now = close(engine, settings, MARCH, sign_off=None).document
    assert now["roll_forward"]["closing"] == 850 and now["restatements"]["months"][0]["closing_change"] == -150


def test_restatements_read_every_signed_month_at_once_and_a_change_moves_the_later_months_opening(engine, settings):
    user = new_id()
    grant(engine, user, 100, utc(2026, 1, 20))
    grant(engine, user, 10, utc(2026, 3, 20))
    close(engine, settings, date(2026, 1, 1), sign_off="Ada")
    close(engine, settings, MARCH, sign_off="Ada")
    grant(engine, user, 5, utc(2026, 1, 31, 12))

    summary, _ = reconciled(engine, settings, utc(2026, 4, 2))

    restated = summary["restatements"]
    assert restated["months_checked"] == 2 and restated["total_change"] == 5
    january, march = restated["months"]
    assert january["period"] == "2026-01" and {line["key"]: line["change"] for line in january["lines"]} == {
        "issued.ADMIN_GRANT": 5, "closing": 5}
    assert march["period"] == "2026-03" and {line["key"]: line["change"] for line in march["lines"]} == {
        "opening": 5, "closing": 5}


# ── the command line ─────────────────────────────────────────────────────────

def test_close_through_the_command_line(cli, settings):
    draft = cli("close", "2026-03", env={"COLUMNS": "80"})
    assert draft.returncode == 0, draft.stderr
    assert "Period close 2026-03: DRAFT" in draft.stdout and "Traceback" not in draft.stderr
    assert max(len(line) for line in draft.stdout.splitlines()) <= 80
    assert (settings.reports_dir / "close-2026-03.draft.journal.csv").is_file()

    signed = cli("close", "2026-03", "--sign-off", "Ada")
    assert signed.returncode == 0, signed.stderr
    assert "Signed off by Ada" in signed.stdout
    assert (settings.reports_dir / "close-2026-03.journal.csv").read_text(encoding="utf-8").startswith(
        "date,account,debit,credit,points,memo\n")

    again = cli("close", "2026-03", "--sign-off", "Bob")
    assert again.returncode == 1
    assert again.stderr.startswith("error: 2026-03 was signed off by Ada at ") and again.stderr.count("\n") == 1


@pytest.mark.parametrize("args", [
    ("close", "2026-13"), ("close", "26-03"), ("close", "2026-3"), ("close", "march"),
    ("close", "2026-03", "--sign-off", ""), ("close", "2026-03", "--sign-off", "  "),
    ("close", "2199-01", "--sign-off", "Ada"),
    ("report", "--period", "2026-00"), ("report", "7", "--period", "2026-03"),
])
def test_bad_input_exits_2_with_one_line(cli, args):
    result = cli(*args)

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_a_month_not_signed_has_no_period_report_and_a_bad_journal_setting_exits_2(cli):
    missing = cli("report", "--period", "2026-03")
    assert missing.returncode == 1 and missing.stderr.startswith("no signed-off report for 2026-03")

    bad = cli("close", "2026-03", env={"REWARDS_JOURNAL_ACCOUNTS": "EXPIRY"})
    assert bad.returncode == 2 and bad.stderr.startswith("error: REWARDS_JOURNAL_ACCOUNTS: ")


def test_the_journal_setting_names_the_counter_accounts(cli, engine, settings):
    grant(engine, new_id(), 300, utc(2026, 3, 3), type="REFERRAL_RECURRING")

    result = cli("close", "2026-03", "--json", env={"REWARDS_JOURNAL_ACCOUNTS": "REFERRAL_RECURRING=6100 Referral rewards"})

    assert result.returncode == 0, result.stderr
    accounts = {line["account"] for line in json.loads(result.stdout)["journal"]}
    assert accounts == {"6100 Referral rewards", journal.LIABILITY}


# ── the service role (docs/privileges.sql) ──────────────────────────────────

def test_the_service_role_signs_off_and_reconciles_but_cannot_change_a_signed_month(service_url, engine, settings,
                                                                                    cli):
    grant(engine, new_id(), 40, utc(2026, 3, 9))
    as_role = {"DATABASE_URL": service_url}

    signed = cli("close", "2026-03", "--sign-off", "Ada", env=as_role)
    assert signed.returncode == 0, signed.stderr
    grant(engine, new_id(), 2, utc(2026, 3, 10))
    reconciled = cli("run", "reconcile", "--as-of", "2026-04-02", "--json", env=as_role)
    assert reconciled.returncode == 0, reconciled.stderr
    as_signed = (settings.reports_dir / "close-2026-03.json").read_text(encoding="utf-8")
    assert cli("report", "--period", "2026-03", "--format", "json", env=as_role).stdout == as_signed
    assert json.loads(reconciled.stdout.splitlines()[-1])["status"] == "SUCCEEDED"

    role = make_engine(service_url, pool_size=1)
    try:
        for statement in ("UPDATE public.closed_months SET signed_by = 'Mallory'", "DELETE FROM public.closed_months"):
            with pytest.raises(DBAPIError, match="permission denied"), role.begin() as conn:
                conn.execute(text(statement))
    finally:
        role.dispose()
    assert signed_rows(engine) == [(MARCH, "Ada")]
