"""The journal (jobs/journal.py): double-entry lines in money that balance and equal the roll-forward, the
counter-accounts by ledger type and REWARDS_JOURNAL_ACCOUNTS."""
from __future__ import annotations

import csv
import io
import random
from datetime import date
from decimal import Decimal

import pytest

from core.settings import ConfigError
from jobs import load_settings
from jobs.journal import HEADER, LIABILITY, account_for, journal_csv, journal_lines, parse_accounts, totals
from jobs.reconcile_summary import usd

ON = date(2026, 5, 31)


def roll(**changes):
    """A roll-forward dict as reconcile and the close store it (debits positive)."""
    base = {"opening": 1000, "issued": {"REFERRAL_RECURRING": 200, "ADMIN_GRANT": 55}, "spent": {"REDEMPTION_QUOTA": 75},
            "expired": 30, "clawed_back": 20, "recovered": 5, "late_committed": {"rows": 0, "points": 0},
            "late_by_type": {}}
    base.update(changes)
    movements = (sum(base["issued"].values()) - sum(base["spent"].values()) - base["expired"] - base["clawed_back"]
                 - base["recovered"] + base["late_committed"]["points"])
    base["closing"] = base["opening"] + movements
    return base


def lines_of(roll_forward, accounts=None, points_per_usd=Decimal(100)):
    return journal_lines(roll_forward, on=ON, period="2026-05", accounts=accounts or {}, points_per_usd=points_per_usd)


def test_every_movement_is_two_lines_on_opposite_sides_and_debits_equal_credits():
    lines = lines_of(roll())

    assert len(lines) == 2 * 6  # issued x2, spent, expired, clawed back, recovered
    result = totals(lines)
    assert result["debit"] == result["credit"] == Decimal("3.85")
    for first, second in zip(lines[::2], lines[1::2]):
        assert first["memo"] == second["memo"]
        assert (first["debit"], first["credit"]) == (second["credit"], second["debit"])
        assert LIABILITY in (first["account"], second["account"])


def test_the_liability_account_moves_as_the_roll_forward_in_points_and_line_by_line_in_money():
    forward = roll()
    liability = [line for line in lines_of(forward) if line["account"] == LIABILITY]

    assert sum(line["points"] for line in liability) == forward["closing"] - forward["opening"]
    for line in liability:
        net = Decimal(line["credit"]) - Decimal(line["debit"])
        assert net == Decimal(usd(line["points"], Decimal(100)))
    assert totals(lines_of(forward))["liability_net"] == Decimal(forward["closing"] - forward["opening"]) / 100


@pytest.mark.parametrize("seed", range(25))
def test_random_roll_forwards_balance_and_equal_their_movements(seed):
    rng = random.Random(seed)
    types = ["REFERRAL_RECURRING", "REFERRAL_L2", "ADMIN_GRANT", "REDEMPTION_QUOTA", "REDEMPTION_GIFT"]
    forward = roll(opening=rng.randint(0, 10**6),
                   issued={kind: rng.randint(0, 10**5) for kind in rng.sample(types, 3)},
                   spent={kind: rng.randint(0, 10**5) for kind in rng.sample(types, 2)},
                   expired=rng.randint(0, 999), clawed_back=rng.randint(0, 999), recovered=rng.randint(0, 999),
                   late_committed={"rows": 3, "points": 0}, late_by_type={})
    late = {"ADMIN_GRANT": rng.randint(-500, 500), "REFERRAL_L2": rng.randint(1, 500)}
    forward = roll(**{**forward, "late_committed": {"rows": 2, "points": sum(late.values())}, "late_by_type": late})
    price = Decimal(rng.choice(["100", "3", "7.5", "1000"]))

    lines = lines_of(forward, points_per_usd=price)

    result = totals(lines)
    assert result["debit"] == result["credit"]
    liability = [line for line in lines if line["account"] == LIABILITY]
    assert sum(line["points"] for line in liability) == forward["closing"] - forward["opening"]
    assert all(Decimal(line["credit"]) - Decimal(line["debit"]) == Decimal(usd(line["points"], price))
               for line in liability)
    assert {line["memo"] for line in lines if "late." in line["memo"]} == {f"2026-05 late.{kind}" for kind in late
                                                                            if late[kind]}


def test_a_late_debit_lowers_the_liability_and_a_line_of_0_points_is_left_out():
    forward = roll(issued={}, spent={}, expired=0, clawed_back=0, recovered=0,
                   late_committed={"rows": 1, "points": -40}, late_by_type={"REDEMPTION_QUOTA": -40, "EXPIRY": 0})

    lines = lines_of(forward)

    assert lines == [
        {"date": "2026-05-31", "account": LIABILITY, "debit": "0.40", "credit": "0.00", "points": -40,
         "memo": "2026-05 late.REDEMPTION_QUOTA"},
        {"date": "2026-05-31", "account": "Redemptions", "debit": "0.00", "credit": "0.40", "points": -40,
         "memo": "2026-05 late.REDEMPTION_QUOTA"},
    ]


@pytest.mark.parametrize("ledger_type, account", [
    ("REFERRAL_RECURRING", "Referral expense"), ("REFERRAL_L2", "Referral expense"),
    ("REFERRAL_WELCOME", "Referral expense"), ("ADMIN_GRANT", "Promotional expense"),
    ("PROMO_BONUS", "Promotional expense"), ("EXPIRY", "Breakage income"),
    ("REFERRAL_CLAWBACK", "Referral expense"), ("RECOVERY", "Referral expense"),
    ("REDEMPTION_QUOTA", "Redemptions"), ("REDEMPTION_GIFT", "Redemptions"),
])
def test_the_default_counter_accounts(ledger_type, account):
    assert account_for(ledger_type, {}) == account


def test_the_setting_names_accounts_and_recoveries_follow_the_clawbacks():
    accounts = parse_accounts(" REFERRAL_RECURRING = 6100 Referral rewards ,REFERRAL_CLAWBACK=6190 Clawbacks,")

    assert accounts == {"REFERRAL_RECURRING": "6100 Referral rewards", "REFERRAL_CLAWBACK": "6190 Clawbacks"}
    assert account_for("RECOVERY", accounts) == "6190 Clawbacks"
    assert account_for("REFERRAL_L2", accounts) == "Referral expense"
    issued = lines_of(roll(), accounts)[0]
    assert (issued["account"], issued["debit"], issued["memo"]) == ("6100 Referral rewards", "2.00",
                                                                    "2026-05 issued.REFERRAL_RECURRING")


@pytest.mark.parametrize("text", ["EXPIRY", "EXPIRY=", "=Breakage", "expiry=Breakage", "EXPIRY=A,EXPIRY=B",
                                  "EXPIRY=Points liability", "BAD TYPE=Account"])
def test_a_bad_pair_is_refused_naming_the_variable(monkeypatch, text):
    monkeypatch.setenv("REWARDS_JOURNAL_ACCOUNTS", text)

    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None)

    message = str(refused.value)
    assert message.startswith("REWARDS_JOURNAL_ACCOUNTS: ") and "\n" not in message


def test_the_csv_has_the_header_and_one_row_per_line():
    lines = lines_of(roll())

    rows = list(csv.reader(io.StringIO(journal_csv(lines))))

    assert tuple(rows[0]) == HEADER == ("date", "account", "debit", "credit", "points", "memo")
    assert [row[1:4] for row in rows[1:]] == [[line["account"], line["debit"], line["credit"]] for line in lines]
    assert [int(row[4]) for row in rows[1:]] == [line["points"] for line in lines]


def test_without_a_price_the_lines_keep_their_points_at_0_dollars():
    lines = lines_of(roll(), points_per_usd=Decimal(0))

    assert {(line["debit"], line["credit"]) for line in lines} == {("0.00", "0.00")}
    assert sum(line["points"] for line in lines if line["account"] == LIABILITY) == 125


def test_a_reconciles_journal_left_aside_is_known_as_its_runs_file():
    """A reconcile killed after its record and before its rename: the next one publishes the journal with
    the run's other files (settle_leftovers asks which run a name is of)."""
    from jobs.reconcile_publish import _run_of

    assert _run_of("reconciliation-20260601T010000Z-12.journal.csv") == 12
    assert _run_of("reconciliation-20260601T010000Z-12.csv") == 12
    assert _run_of("reconciliation-20260601T010000Z-12.journal.txt") is None
