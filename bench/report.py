"""The benchmark's tables: per size (bound, job, rerun, memory, lock hold, targets), the daily run,
and the scale curve across sizes. Plain text for the terminal, Markdown for bench/RESULTS.md."""
from __future__ import annotations

from typing import Any

from bench.datasets import size_label

_MARK = {True: "yes", False: "NO", None: "n/a"}
_TARGETS = ("job_to_bound", "rerun_to_first", "peak_rss", "lock_hold")


def _num(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rows_done(run: dict[str, Any]) -> int | None:
    """What a run did, in rows: ledger rows written, relationships expired, discrepancies found, or
    users told of expiring points."""
    stats = run.get("stats") or {}
    if "rows_written" in stats:
        return sum(stats["rows_written"].values())
    for key in ("relationships_expired", "discrepancies", "users"):
        if key in stats:
            return int(stats[key])
    return 0 if run.get("status") == "SUCCEEDED" else None


def size_rows(size: dict[str, Any]) -> list[list[str]]:
    rows = []
    for job in size["jobs"]:
        bound, first, rerun = job["bound"], job["first"], job["rerun"] or {}
        targets = job["targets"]
        rows.append([
            job["job"],
            _num(bound["seconds"] if bound else None),
            _num(first["run_seconds"]), _num(first["wall_seconds"]),
            _num(job["job_to_bound"]),
            _num(rerun.get("run_seconds")), _num(job["rerun_to_first"]),
            _num(job["peak_rss_mb"], 0), _num(job["max_batch_seconds"], 3),
            f"{bound['rows'] if bound else '-'}/{_rows_done(first)}",
            " ".join(_MARK[targets[name]] for name in _TARGETS),
            first.get("status") or f"exit {first['exit_code']}",
        ])
    return rows


SIZE_HEADER = ["job", "bound s", "job s", "wall s", "job/bound", "rerun s", "rerun/first", "RSS MB",
               "max batch s", "rows bound/job", "targets*", "status"]
DAILY_HEADER = ["job", "bound s", "job s", "wall s", "job/bound", "to first run", "rows bound/job", "items",
                "RSS MB", "max batch s", "target**"]


def daily_rows(daily: dict[str, Any]) -> list[list[str]]:
    rows = []
    for entry in daily["jobs"]:
        run, bound = entry["run"], entry.get("bound")
        rows.append([entry["job"], _num(bound["seconds"] if bound else None), _num(run["run_seconds"]),
                     _num(run["wall_seconds"]), _num(entry.get("to_bound")), _num(entry["to_first"], 3),
                     f"{bound['rows'] if bound else '-'}/{_rows_done(run)}", str(run["stats"].get("items", "-")),
                     _num(run["peak_rss_mb"], 0), _num(run["stats"].get("max_batch_seconds"), 3),
                     _MARK[entry.get("target")]])
    return rows


def scale_rows(sizes: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Per job: job seconds (and bound seconds) at each size."""
    header = ["job"] + [f"{size_label(size['users'])} {(size.get('world') or {}).get('shape', 'default')} "
                        f"job s (bound s)" for size in sizes]
    jobs = [job["job"] for job in sizes[0]["jobs"]] if sizes else []
    rows = []
    for name in jobs:
        cells = [name]
        for size in sizes:
            match = next((j for j in size["jobs"] if j["job"] == name), None)
            if match is None:
                cells.append("-")
                continue
            bound = match["bound"]["seconds"] if match["bound"] else None
            cells.append(f"{_num(match['first']['run_seconds'])} ({_num(bound)})")
        rows.append(cells)
    return header, rows


def dataset_line(size: dict[str, Any]) -> str:
    counts = size["dataset"]
    generated = f", generated in {size['generate_seconds']:.0f} s" if size.get("generate_seconds") else ""
    if size.get("load_average") is not None:
        before = (f"{size['load_average_before']:.1f} before, " if size.get("load_average_before") is not None
                  else "")
        generated += f"; load average {before}{size['load_average']:.1f} after the runs"
    shape = (size.get("world") or {}).get("shape", "default")
    engine = f" on {size['engine']}" if size.get("engine") else ""
    return (f"{size['users']:,} users ({shape} shape): {counts['relationships']:,} relationships, {counts['payments']:,} payments, "
            f"{counts['ledger']:,} ledger rows, {counts['balances']:,} balance rows{engine}{generated}")


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).rjust(width) if i else str(cell).ljust(width)
                       for i, (cell, width) in enumerate(zip(line, widths))) for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


TARGETS_NOTE = ("*targets, in order: job <= 1.3 x bound; rerun <= 0.1 x first run; peak RSS <= 150 MB; "
                "longest batch transaction (row-lock hold) <= 2 s. **daily: job <= 1.5 x its exact daily bound "
                "(everything owed under the whole history, one statement, less what is written). "
                "job s = the run's time in job_runs; wall s = the whole `scheduler.py run` process "
                "(interpreter start included).")


def render(results: dict[str, Any], *, markdown: bool = False) -> str:
    table = _markdown_table if markdown else _text_table
    heading = (lambda text: f"### {text}") if markdown else (lambda text: f"== {text} ==")
    machine = results.get("machine", {})
    engine = f", engine: {machine['engine']}" if machine.get("engine") else ""
    parts = [f"machine: {machine.get('cpus')} CPUs, {machine.get('server')}{engine}, "
             f"batch size {machine.get('batch_size')}"]
    for size in results["sizes"]:
        parts += ["", heading(dataset_line(size)), "", table(SIZE_HEADER, size_rows(size))]
        daily = size.get("daily")
        if daily:
            added = daily["added"]
            changed = daily.get("changed") or {}
            changes = ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in changed.items())
            parts += ["", heading(f"daily run at {daily['as_of']} after one day of new data: "
                                  f"+{added['relationships']} relationships, +{added['payments']} payments, "
                                  f"+{added['ledger']} ledger rows; {changes}"
                                  + (f"; load average {daily['load_average']:.1f} after"
                                     if daily.get("load_average") is not None else "")), "",
                      table(DAILY_HEADER, daily_rows(daily))]
    if len(results["sizes"]) > 1:
        header, rows = scale_rows(results["sizes"])
        parts += ["", heading("scale curve"), "", table(header, rows)]
    parts += ["", TARGETS_NOTE]
    return "\n".join(parts)
