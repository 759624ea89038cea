"""`balance USER_ID [--as-of WHEN] [--json]`: one user's ledger balance at an instant, their lots and
when each expires, through the real command line and in-process; each lot's expiry is when
expire-points really takes it."""
from __future__ import annotations

import argparse
import json
from datetime import datetime

import pytest

from cli.command_balance import cmd_balance
from cli.usage import UsageError
from tests.builders import new_id, utc
from tests.integration.test_liability import MICROSECOND, _expire, _expired_at, _reward, _row

AS_OF = "2026-06-15T12:00:00Z"


@pytest.fixture
def user(engine):
    """Four lots (one clawed back in part), a redemption of the oldest, a row after the as-of."""
    user = new_id()
    with engine.begin() as conn:
        _row(conn, user, 100, "ADMIN_GRANT", utc(2025, 5, 31, 9))                   # 60 taken by the redemption
        _reward(conn, user, 80, utc(2025, 7, 31, 18), clawed=30, clawed_at=utc(2025, 9, 1))
        _row(conn, user, 25, "ADMIN_GRANT", utc(2026, 3, 1))
        _row(conn, user, -60, "REDEMPTION_GIFT_CARD", utc(2025, 12, 1))
        _row(conn, user, 7, "ADMIN_GRANT", utc(2026, 7, 1))                         # after the as-of
    return user


def test_json_gives_the_balance_the_lots_and_the_next_expiry(cli, user):
    completed = cli("balance", str(user), "--as-of", AS_OF, "--json")
    assert completed.returncode == 0, completed.stderr
    found = json.loads(completed.stdout)
    assert (found["user_id"], found["as_of"]) == (str(user), "2026-06-15T12:00:00+00:00")
    assert (found["balance"], found["earned"], found["spent"], found["clawed_back"], found["expired"]) == (
        115, 205, 60, 30, 0)
    assert [(lot["points"], lot["remaining"], lot["expires_at"]) for lot in found["lots"]] == [
        (100, 40, "2026-05-31T09:00:00+00:00"),     # past its expiry: the next run takes it
        (80, 50, "2026-07-31T18:00:00+00:00"),      # its own clawback took 30 of it, not of the oldest
        (25, 25, "2027-03-01T00:00:00+00:00")]
    assert found["lots"][1]["type"] == "REFERRAL_RECURRING"
    assert found["expiring_next"] == {"expires_at": "2026-05-31T09:00:00+00:00", "points": 40}


def test_each_lots_expiry_is_when_expire_points_takes_it(engine, settings, user, cli):
    found = json.loads(cli("balance", str(user), "--as-of", AS_OF, "--json").stdout)
    for lot in found["lots"]:
        expires_at = datetime.fromisoformat(lot["expires_at"])
        _expire(engine, settings, expires_at)
        assert _expired_at(engine, expires_at, user) == 0, lot
        _expire(engine, settings, expires_at + MICROSECOND)
        assert _expired_at(engine, expires_at + MICROSECOND, user) == lot["remaining"], lot
    after = json.loads(cli("balance", str(user), "--as-of", "2027-06-01", "--json").stdout)
    assert after["expired"] == 115 and after["balance"] == 7
    assert after["expiring_next"] == {"expires_at": "2027-07-01T00:00:00+00:00", "points": 7}


def test_the_human_form_fits_80_columns_and_says_what_is_overdue(cli, user):
    completed = cli("balance", str(user), "--as-of", AS_OF, env={"COLUMNS": "80"})
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert f"user {user}" in out and "balance 115 points" in out and "clawed back 30" in out
    assert "next expiry: 40 points after 2026-05-31 09:00:00Z\noverdue:" in out
    for cells in (["2025-05-31 09:00", "100", "40", "2026-05-31 09:00"], ["2026-03-01 00:00", "25", "2027-03-01 00:00"]):
        assert any(all(c in line for c in cells) for line in out.splitlines()), cells
    assert "(" not in out.split("Lots")[1].replace("(UTC)", "").replace("(debits", "")  # no repr


def test_a_lot_used_up_is_counted_not_listed_and_no_expiry_says_never(cli, engine, user):
    with engine.begin() as conn:
        _row(conn, user, -40, "REDEMPTION_GIFT_CARD", utc(2026, 6, 1))
    out = cli("balance", str(user), "--as-of", AS_OF, env={"REWARDS_POINTS_EXPIRY_MONTHS": "0",
                                                          "COLUMNS": "120"}).stdout
    assert "1 older lot used up or expired" in out and "Points never expire" in out
    assert "2025-05-31" not in out and "never" in out.split("Lots")[1]


def test_an_as_of_before_any_row_shows_nothing_left_and_an_unknown_user_exits_1(cli, user):
    before = cli("balance", str(user), "--as-of", "2025-01-01", "--json")
    assert before.returncode == 0 and json.loads(before.stdout)["lots"] == []
    unknown = cli("balance", str(new_id()))
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert len(unknown.stderr.strip().splitlines()[-1:]) == 1 and "no user" in unknown.stderr


@pytest.mark.parametrize("args, word", [(["not-a-uuid"], "USER_ID"), ([str(new_id()), "--as-of", "yesterday"], "--as-of"),
                                        ([], "USER_ID")])
def test_bad_usage_exits_2_with_one_line(cli, args, word):
    completed = cli("balance", *args)
    assert completed.returncode == 2 and completed.stdout == ""
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and word in lines[0] and "Traceback" not in completed.stderr


def test_in_process_the_command_prints_the_same_document(capsys, settings, user):
    args = argparse.Namespace(user_id=str(user), as_of=AS_OF, json=True)
    assert cmd_balance(args, settings) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["balance"] == 115 and len(found["lots"]) == 3
    with pytest.raises(UsageError):
        cmd_balance(argparse.Namespace(user_id="42", as_of=None, json=False), settings)
    assert cmd_balance(argparse.Namespace(user_id=str(new_id()), as_of=None, json=False), settings) == 1
    assert "no user" in capsys.readouterr().err


def test_explain_reads_the_same_lots_for_the_points_expiring_next(cli, user):
    explained = cli("explain", str(user), "--as-of", AS_OF, "--json")
    balance = json.loads(cli("balance", str(user), "--as-of", AS_OF, "--json").stdout)
    assert explained.returncode == 0, explained.stderr
    expiring = [(datetime.fromisoformat(row["expires_at"]), row["points"])
                for row in json.loads(explained.stdout)["expiring"]]
    assert expiring == [(datetime.fromisoformat(lot["expires_at"]), lot["remaining"])
                        for lot in balance["lots"] if lot["remaining"]]
    assert len(expiring) == 3
