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


def _shape_label(world: dict[str, Any]) -> str:
    shape = world.get("shape", "default")
    return f"{shape} {world.get('seed')}" if shape == "random" else shape


def scale_rows(sizes: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Per job: job seconds (and bound seconds) at each size."""
    header = ["job"] + [f"{size_label(size['users'])} {_shape_label(size.get('world') or {})} job s (bound s)"
                        for size in sizes]
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
    world = size.get("world") or {}
    shape = world.get("shape", "default")
    if shape == "random":
        shape = f"random shape, seed {world.get('seed')}"
    engine = f" on {size['engine']}" if size.get("engine") else ""
    shape = shape if shape.startswith("random") else f"{shape} shape"
    return (f"{size['users']:,} users ({shape}): {counts['relationships']:,} relationships, {counts['payments']:,} payments, "
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


def shape_line(size: dict[str, Any]) -> str | None:
    """The drawn parameters of a random shape, one line (None for a fixed shape)."""
    shape = size.get("shape")
    if not shape:
        return None
    cells = [f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
             for name, value in shape.items() if name != "seed"]
    return "shape drawn: " + ", ".join(cells)


# Issue 26's targets over every dataset: the WORST ratio of each job.
WORST_FIRST, WORST_DAILY, WORST_RERUN = 1.3, 1.5, 0.2
_NO_RERUN_TARGET = ("reconcile", "expiring-soon")  # a full audit and a notice: they report on every run


def _rows_equal(bound: dict[str, Any] | None, run: dict[str, Any]) -> bool | None:
    return None if bound is None else bound["rows"] == _rows_done(run)


def worst(sizes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per job, over every measured dataset: the worst first, daily and rerun ratio (with the dataset it
    came from) and whether the rows equalled the bound's in every run."""
    result: dict[str, dict[str, Any]] = {}
    for size in sizes:
        label = f"{size_label(size['users'])}/{(size.get('world') or {}).get('seed')}"
        daily = {entry["job"]: entry for entry in (size.get("daily") or {}).get("jobs", [])}
        for job in size["jobs"]:
            entry = result.setdefault(job["job"], {"first": None, "daily": None, "rerun": None,
                                                   "rows_equal": True, "runs": 0})
            candidates = [("first", job["job_to_bound"]), ("rerun", job["rerun_to_first"]),
                          ("daily", daily[job["job"]]["to_bound"] if job["job"] in daily else None)]
            for kind, value in candidates:
                if value is not None and (entry[kind] is None or value > entry[kind][0]):
                    entry[kind] = (value, label)
            checks = [_rows_equal(job["bound"], job["first"])]
            if job["job"] in daily:
                checks.append(_rows_equal(daily[job["job"]].get("bound"), daily[job["job"]]["run"]))
            entry["rows_equal"] = entry["rows_equal"] and all(check is not False for check in checks)
            entry["runs"] += 1
    return result


def worst_rows(sizes: list[dict[str, Any]]) -> list[list[str]]:
    def cell(value: tuple[float, str] | None, limit: float | None) -> str:
        if value is None:
            return "-"
        mark = "" if limit is None or value[0] <= limit else " NO"
        return f"{value[0]:.2f} ({value[1]}){mark}"

    rows = []
    for name, entry in worst(sizes).items():
        rerun_limit = None if name in _NO_RERUN_TARGET else WORST_RERUN
        rows.append([name, str(entry["runs"]), cell(entry["first"], WORST_FIRST), cell(entry["daily"], WORST_DAILY),
                     cell(entry["rerun"], rerun_limit), "yes" if entry["rows_equal"] else "NO"])
    return rows


WORST_HEADER = ["job", "datasets", "worst first/bound (size/seed)", "worst daily/bound", "worst rerun/first",
                "rows equal"]


def render(results: dict[str, Any], *, markdown: bool = False) -> str:
    table = _markdown_table if markdown else _text_table
    heading = (lambda text: f"### {text}") if markdown else (lambda text: f"== {text} ==")
    machine = results.get("machine", {})
    engine = f", engine: {machine['engine']}" if machine.get("engine") else ""
    parts = [f"machine: {machine.get('cpus')} CPUs, {machine.get('server')}{engine}, "
             f"batch size {machine.get('batch_size')}"]
    for size in results["sizes"]:
        parts += ["", heading(dataset_line(size))]
        drawn = shape_line(size)
        if drawn:
            parts += ["", drawn]
        parts += ["", table(SIZE_HEADER, size_rows(size))]
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
        parts += ["", heading(f"worst ratio of each job over {len(results['sizes'])} datasets (issue 26: first "
                              f"<= {WORST_FIRST}, daily <= {WORST_DAILY}, rerun <= {WORST_RERUN}; NO: missed)"),
                  "", table(WORST_HEADER, worst_rows(results["sizes"]))]
    parts += ["", TARGETS_NOTE]
    return "\n".join(parts)
