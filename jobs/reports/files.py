"""The files of a reconcile run: their names, the CSV of discrepant users and the JSON summary's text.

`reconciliation-{as_of:%Y%m%dT%H%M%SZ}-{run}.{csv,json,html,xlsx}` under `REWARDS_REPORTS_DIR`, and the
rules audit's `…-findings.csv` beside them. The CSV's header is fixed by SPEC.md; the JSON is the summary
as built, keys in its order.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, TextIO

from jobs.reports.document import DiscrepancyRow

if TYPE_CHECKING:
    from _csv import Writer

CSV_HEADER = ("user_id", "kinds", "cached_balance", "ledger_balance", "drift", "cached_total_earned",
              "ledger_total_earned", "cached_total_spent", "ledger_total_spent")


@dataclass(frozen=True)
class ReportFiles:
    csv: Path
    json: Path
    html: Path
    xlsx: Path
    findings: Path

    # What a killed run leaves aside (core.reports.FileSet's `.NAME.part`), for the next run to settle.
    LEFTOVERS = ".reconciliation-*.part"

    @classmethod
    def for_run(cls, reports_dir: Path, as_of: datetime, run_id: int) -> ReportFiles:
        stem = f"reconciliation-{as_of.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{run_id}"
        directory = reports_dir.resolve()
        return cls(csv=directory / f"{stem}.csv", json=directory / f"{stem}.json", html=directory / f"{stem}.html",
                   xlsx=directory / f"{stem}.xlsx", findings=directory / f"{stem}-findings.csv")

    @staticmethod
    def run_of(name: str) -> int | None:
        """The run whose file `name` is (None: not a reconcile's file)."""
        matched = _FILE_NAME.fullmatch(name)
        return int(matched.group(1)) if matched else None

    def names(self) -> dict[str, str]:
        return {"csv": self.csv.name, "json": self.json.name, "html": self.html.name, "xlsx": self.xlsx.name,
                "findings": self.findings.name}


_FILE_NAME = re.compile(r"reconciliation-\d{8}T\d{6}Z-(\d+)(?:\.csv|\.json|\.html|\.xlsx|-findings\.csv)")


def csv_row(row: DiscrepancyRow) -> list[str]:
    """One discrepancy as CSV cells: kinds joined by `|`, an absent cache value left empty."""
    values = [getattr(row, column) for column in CSV_HEADER[2:]]
    return [str(row.user_id), "|".join(row.kinds), *("" if value is None else str(value) for value in values)]


def csv_writer(out: TextIO) -> Writer:
    """A CSV writer on `out` that has written the header."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    return writer


def csv_text(rows: Iterable[DiscrepancyRow]) -> str:
    out = io.StringIO()
    csv_writer(out).writerows(csv_row(row) for row in rows)
    return out.getvalue()


def summary_json(summary: Mapping[str, object]) -> str:
    """The `.json` file's text; `report --format json` prints the same."""
    return json.dumps(summary, indent=2) + "\n"
