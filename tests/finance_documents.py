"""Hand-made finance documents for the report's tests: a closed month's period document in the shape of
the finance contract (section 2), consistent in itself (its identity holds, its schedule adds up to the
outstanding, its journal balances), so the renderers can be tested before and beside `close`."""
from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

PRICE = Decimal(100)


def usd(points: int, price: Decimal = PRICE) -> str:
    return str((Decimal(points) / price).quantize(Decimal("0.01")))


def roll_forward(opening: int, issued: dict[str, int], spent: dict[str, int], expired: int, clawed_back: int,
                 recovered: int, period_after: str) -> dict[str, Any]:
    closing = opening + sum(issued.values()) - sum(spent.values()) - expired - clawed_back - recovered
    return {"previous_run_id": None, "period_after": period_after, "opening": opening, "issued": issued,
            "issued_total": sum(issued.values()), "spent": spent, "spent_total": sum(spent.values()),
            "expired": expired, "clawed_back": clawed_back, "recovered": recovered,
            "late_committed": {"rows": 0, "points": 0}, "late_by_type": {}, "expected_closing": closing,
            "closing": closing, "closing_rows": 4321, "identity": "opening + issued - spent - expired - clawed_back"
            " - recovered + late_committed = closing", "identity_holds": True, "gap": 0, "gap_explanation": None}


def period_document(*, status: str = "SIGNED", restated: bool = True) -> dict[str, Any]:
    """May 2026, signed off, April beside it; a restatement of March; the schedule and breakage at the
    month's end; its journal."""
    may = roll_forward(1_250_000, {"REFERRAL_RECURRING": 84_350, "REFERRAL_L2": 4_215, "ADMIN_GRANT": 12_000,
                                   "REFERRAL_WELCOME": 6_400},
                       {"REDEMPTION_QUOTA": 61_877, "ADMIN_GRANT": 1_250}, 9_433, 2_100, 340,
                       "2026-05-01T00:00:00+00:00")
    april = roll_forward(1_190_000, {"REFERRAL_RECURRING": 80_100, "REFERRAL_FIRST_PAYMENT": 9_000,
                                     "REFERRAL_WELCOME": 5_800},
                         {"REDEMPTION_QUOTA": 24_900}, 8_000, 1_900, 100, "2026-04-01T00:00:00+00:00")
    april_moved = april["closing"] - april["opening"]
    april["opening"], april["closing"] = 1_250_000 - april_moved, 1_250_000  # April closes at May's opening
    april["expected_closing"] = april["closing"]
    closing = may["closing"]
    months = [f"2026-{m:02d}" for m in range(6, 13)] + [f"2027-{m:02d}" for m in range(1, 6)]
    scheduled = [31_000 + 1_700 * k for k in range(12)]
    due_now = 2_345
    later = closing - due_now - sum(scheduled)
    journal = journal_lines(may)
    document: dict[str, Any] = {
        "report": "period close", "period": "2026-05",
        "from": "2026-05-01T00:00:00+00:00", "to": "2026-06-01T00:00:00+00:00", "as_of": "2026-06-01T00:00:00+00:00",
        "status": status, "signed_by": "Dana Controller" if status == "SIGNED" else None,
        "signed_at": "2026-06-03T09:12:44+00:00" if status == "SIGNED" else None,
        "outstanding_points": closing, "outstanding_money": {"usd": usd(closing), "points_per_usd": str(PRICE)},
        "roll_forward": may,
        "previous": {"period": "2026-04", "roll_forward": april},
        "liability_schedule": {
            "as_of": "2026-06-01T00:00:00+00:00", "outstanding_points": closing, "due_now_points": due_now,
            "months": [{"month": month, "points": points, "usd": usd(points)} for month, points in zip(months, scheduled)],
            "later_points": later, "total_points": closing, "usd": {"total": usd(closing)}},
        "breakage": {"from": "2025-06-01T00:00:00+00:00", "to": "2026-06-01T00:00:00+00:00",
                     "expired_points": 97_310, "issued_points": 1_204_550, "rate": "0.0808"},
        "journal": journal, "journal_file": "close-2026-05.journal.csv",
        "digest": {"rows": 4321, "points": closing - may["opening"], "hash": "9f2c4e61d0b3a7e85f1c2d3b4a5968778695a4b3"},
        "restatements": {
            "months": [{"period": "2026-03", "signed_by": "Dana Controller", "signed_at": "2026-04-02T10:00:00+00:00",
                        "lines": [{"key": "issued.REFERRAL_RECURRING", "signed": 70_000, "now": 70_450, "change": 450,
                                   "change_usd": usd(450)},
                                  {"key": "clawed_back", "signed": -1_200, "now": -1_330, "change": -130,
                                   "change_usd": usd(-130)}],
                        "closing_change": 320, "closing_change_usd": usd(320)}],
            "total_change": 320, "total_change_usd": usd(320), "months_checked": 2} if restated else
        {"months": [], "total_change": 0, "total_change_usd": usd(0), "months_checked": 2},
    }
    return document


ACCOUNTS = {"REFERRAL_RECURRING": "Referral expense", "REFERRAL_L2": "Referral expense",
            "REFERRAL_WELCOME": "Referral expense", "ADMIN_GRANT": "Promotional expense",
            "REDEMPTION_QUOTA": "Redemptions", "EXPIRY": "Breakage income", "REFERRAL_CLAWBACK": "Referral expense",
            "RECOVERY": "Referral expense"}


def journal_lines(roll: dict[str, Any], on: str = "2026-05-31") -> list[dict[str, Any]]:
    """Two lines per movement (the liability and its counter-account), as the contract's journal."""
    movements = [*((kind, points) for kind, points in roll["issued"].items()),
                 *((kind, -points) for kind, points in roll["spent"].items()),
                 ("EXPIRY", -roll["expired"]), ("REFERRAL_CLAWBACK", -roll["clawed_back"]),
                 ("RECOVERY", -roll["recovered"])]
    lines = []
    for kind, points in movements:
        if not points:
            continue
        money = usd(abs(points))
        liability = {"debit": "0.00", "credit": money} if points > 0 else {"debit": money, "credit": "0.00"}
        counter = {"debit": liability["credit"], "credit": liability["debit"]}
        lines += [{"date": on, "account": ACCOUNTS[kind], **counter, "points": points, "memo": f"2026-05 {kind}"},
                  {"date": on, "account": "Points liability", **liability, "points": points,
                   "memo": f"2026-05 {kind}"}]
    return lines


def with_gap(document: dict[str, Any], gap: int) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    roll = changed["roll_forward"]
    roll["closing"] += gap
    roll["identity_holds"], roll["gap"] = False, gap
    roll["gap_explanation"] = f"{gap:+,} points: rows were removed"
    changed["outstanding_points"] = roll["closing"]
    return changed
