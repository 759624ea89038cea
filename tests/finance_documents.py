"""Hand-made finance documents for the report's tests: a closed month's period document in the shape of
the finance contract (section 2), consistent in itself (its identity holds, its schedule adds up to the
outstanding, its journal balances), so the renderers can be tested before and beside `close`."""
from __future__ import annotations

import copy
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

PRICE = Decimal(100)


def usd(points: int, price: Decimal | str = PRICE) -> str:
    return str((Decimal(points) / Decimal(price)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


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


# ── what every format must show: a second reading of the contract, not the renderers' code ──────────

def _flatten(value: Any, prefix: str = "") -> Any:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}{key}.")
    else:
        yield prefix[:-1], value


def line_points(roll: dict) -> dict[str, int]:
    """The roll-forward's lines as the document signs them (a second reading of the contract, not the
    renderer's code): issued +, spent / expired / clawed back / recovered -, the subtotals."""
    lines = {"opening": roll["opening"], "closing": roll["closing"], "expected": roll["expected_closing"],
             **{f"issued.{kind}": points for kind, points in roll["issued"].items()},
             **{f"spent.{kind}": -points for kind, points in roll["spent"].items()},
             "expired": -roll["expired"], "clawed_back": -roll["clawed_back"], "recovered": -roll["recovered"],
             **{f"late.{kind}": points for kind, points in (roll.get("late_by_type") or {}).items()}}
    lines["issued_total"] = roll["issued_total"]
    lines["used_total"] = -(roll["spent_total"] + roll["expired"] + roll["clawed_back"] + roll["recovered"])
    if not roll.get("late_by_type") and (roll["late_committed"]["rows"] or roll.get("previous_run_id")):
        lines["late"] = roll["late_committed"]["points"]
    return lines


def expected_numbers(document: dict, previous_roll: dict | None) -> dict[str, str]:
    """Every number the HTML must show, by its data-key, from the stored document (and the previous
    period's stored roll-forward): the roll-forward's lines with their money and the previous period's,
    the signed monthly table, restatements, the schedule, breakage and the journal."""
    price = document["outstanding_money"]["points_per_usd"]
    now = line_points(document["roll_forward"])
    before = line_points(previous_roll) if previous_roll else {}
    expected = {}
    for key in {*now, *before} - ({"late"} if "late" not in now else set()):
        points = now.get(key, 0)
        path = {"expected": "roll_forward.expected_closing", "late": "roll_forward.late_committed.points"}.get(
            key, "roll_forward." + key.replace("late.", "late_by_type."))
        expected[path] = str(points)
        expected[f"money.{key}"] = usd(points, price)
        if previous_roll:
            expected[f"previous.{key}"] = str(before.get(key, 0))
            expected[f"previous_money.{key}"] = usd(before.get(key, 0), price)
    for month in document.get("monthly") or []:
        signed = {"issued": month["issued"], "spent": -month["spent"], "expired": -month["expired"],
                  "clawed_back": -month["clawed_back"]}
        for field, value in {**signed, "net": sum(signed.values())}.items():
            expected[f"monthly.{month['month']}.{field}"] = str(value)
    restated = document.get("restatements")
    if restated:
        expected["restatements.total_change"] = str(restated["total_change"]) if restated["months"] else None
        for month in restated["months"]:
            for line in month["lines"]:  # a restated closing's change is the month's closing change
                for field in ("signed", "now") + (("change", "change_usd") if line["key"] != "closing" else ()):
                    expected[f"restatements.{month['period']}.{line['key']}.{field}"] = str(line[field])
            for field in ("closing_change", "closing_change_usd"):
                expected[f"restatements.{month['period']}.{field}"] = str(month[field])
    schedule = document.get("liability_schedule")
    if schedule:
        for field in ("outstanding_points", "due_now_points", "later_points", "total_points"):
            expected[f"liability_schedule.{field}"] = str(schedule[field])
        for month in schedule["months"]:
            expected[f"liability_schedule.months.{month['month']}.points"] = str(month["points"])
            expected[f"liability_schedule.months.{month['month']}.usd"] = month["usd"] or ""
    for field in ("expired_points", "issued_points", "rate"):
        if document.get("breakage"):
            expected[f"breakage.{field}"] = str(document["breakage"][field] or "")
    for number, line in enumerate(document.get("journal") or []):
        for field in ("debit", "credit", "points"):
            expected[f"journal.{number}.{field}"] = str(line[field])
    return {key: value for key, value in expected.items() if value is not None}


def check_every_number(dom: str, document: dict, previous_roll: dict | None) -> dict[str, str]:
    """Every data-key the page shows equals the document's number, and every number the document's lines,
    months, restatements, schedule and journal hold is shown."""
    shown = dict(re.findall(r'data-key="([^"]+)" data-value="([^"]*)"', dom))
    expected = expected_numbers(document, previous_roll)
    flat = dict(_flatten(document))
    for key, value in shown.items():
        want = expected[key] if key in expected else flat[key]
        assert value == ("" if want is None else str(want)), key
    assert set(expected) <= set(shown), set(expected) - set(shown)
    return shown


def evaluated(path: Path) -> dict[tuple[str, str], object]:
    """Every cell of the workbook as a spreadsheet computes it (the `formulas` evaluator): formulas and
    values alike, by (SHEET, cell)."""
    import formulas

    solution = formulas.ExcelModel().loads(str(path)).finish().calculate()
    values = {}
    for reference, value in solution.items():
        matched = re.fullmatch(r"'\[[^\]]+\](.+)'!([A-Z]+\d+)", reference)
        if matched:
            cell = value.value[0][0]
            values[(matched.group(1).upper(), matched.group(2))] = cell.item() if hasattr(cell, "item") else cell
    return values


def check_roll_forward_sheet(sheet, values, document: dict, previous_roll: dict | None) -> None:
    """The roll-forward's lines in the workbook: the stored lines are numbers, the subtotals, the
    expected closing and the closing are formulas, and as a spreadsheet computes them they are the
    document's numbers: the closing formula evaluates to the ledger's closing; every money cell is the
    points at the price of F2, to the cent; the previous period's column too."""
    roll = document["roll_forward"]
    now, before = line_points(roll), line_points(previous_roll) if previous_roll else {}
    rows = {row[0].value: row for row in sheet.iter_rows(min_row=5) if row[0].value}
    labels = {"Opening liability": "opening", "Total issued": "issued_total", "Total used up": "used_total",
              "Expected closing": "expected", "Closing liability": "closing"}
    for label, key in labels.items():
        points, money = rows[label][1], rows[label][2]
        assert values[("ROLL-FORWARD", points.coordinate)] == now[key], label
        assert f"{values[('ROLL-FORWARD', money.coordinate)]:.2f}" == usd(now[key]), label
        if previous_roll:
            assert values[("ROLL-FORWARD", rows[label][3].coordinate)] == before[key], label
    closing = rows["Closing liability"][1]
    assert isinstance(closing.value, str) and closing.value.startswith("=") and "B" in closing.value[1:]
    for formula_of in ("Total issued", "Total used up", "Expected closing"):
        assert str(rows[formula_of][1].value).startswith("="), formula_of
    ordered = [row for row in sheet.iter_rows(min_row=5) if row[0].value]
    labels_in_order = [row[0].value for row in ordered]
    sections = {"issued.": ordered[labels_in_order.index("Opening liability") + 1:labels_in_order.index("Total issued")],
                "spent.": ordered[labels_in_order.index("Total issued") + 1:labels_in_order.index("Total used up")]}
    for key, points in now.items():
        for prefix, section in sections.items():
            if key.startswith(prefix):
                row = next(r for r in section if r[6].value == key.removeprefix(prefix))
                assert row[1].value == points and isinstance(row[1].value, int), key
                assert f"{values[('ROLL-FORWARD', row[2].coordinate)]:.2f}" == usd(points), key
                assert row[5].value, key  # its meaning, in words
    assert {"EXPIRY", "REFERRAL_CLAWBACK"} <= {row[6].value for row in sections["spent."]}
    check = rows["Closing less the ledger (0: the identity holds)"][1]
    assert values[("ROLL-FORWARD", check.coordinate)] == 0
    assert rows["Ledger balance at the as-of (stored)"][1].value == roll["closing"]




def pdf_pages(path: Path) -> list[tuple[tuple[float, ...], int]]:
    """Each page of a PDF that Chromium printed, in order: its MediaBox (points) and how many text-showing
    operators (Tj/TJ) its content draws: a page that is all but blank draws next to none."""
    import zlib

    data = path.read_bytes()
    objects = {int(found.group(1)): found.group(2)
               for found in re.finditer(rb"(\d+) 0 obj(.*?)endobj", data, re.S)}
    tree = next(body for body in objects.values() if re.search(rb"/Type\s*/Pages\b", body))
    kids = [int(number) for number in re.findall(rb"(\d+) 0 R", re.search(rb"/Kids\s*\[([^\]]*)\]", tree).group(1))]
    pages = []
    for number in kids:
        page = objects[number]
        box = tuple(float(value) for value in re.search(rb"/MediaBox\s*\[([^\]]*)\]", page).group(1).split())
        contents = objects[int(re.search(rb"/Contents\s+(\d+) 0 R", page).group(1))]
        stream = contents[contents.index(b"stream") + 6:contents.rindex(b"endstream")].strip(b"\r\n")
        drawn = zlib.decompress(stream) if b"FlateDecode" in contents else stream
        pages.append((box, len(re.findall(rb"T[Jj]\b", drawn))))
    return pages
