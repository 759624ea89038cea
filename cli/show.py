"""`show RUN_ID`: one run whole, for the person who must explain a ledger row or a report."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cli.summary import as_words, describe_stats, status_label, took
from cli.tables import Column, print_table
from cli.terminal import stdout_console
from core.clock import when
from core.logs import flatten

REPORT_SUFFIXES = (".csv", ".json", ".html", ".xlsx")


def files_written(stats: dict[str, Any]) -> list[Path]:
    """The files a run names in its stats, with their siblings of the same stem (a reconcile's
    CSV names its JSON, HTML and XLSX)."""
    named: list[Path] = []
    for value in flatten(stats).values():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and text.endswith(REPORT_SUFFIXES):
                named.append(Path(text))
    found = dict.fromkeys(named)
    for path in named:
        for suffix in REPORT_SUFFIXES:
            sibling = path.with_suffix(suffix)
            if sibling.exists():
                found.setdefault(sibling)
    return list(found)


def print_run(run: Any) -> None:
    stats = run.stats or {}
    stdout_console().print(f"[bold]run {run.id}[/bold]: {run.job} {status_label(run.status, run.dry_run)}")
    print_table([Column("field"), Column("value", wrap=True, flex=True)], show_header=False, rows=[
        ["trigger", run.trigger],
        ["as of", when(run.as_of)],
        ["scheduled for", when(run.scheduled_for) or "- (not a scheduled tick)"],
        ["started", when(run.started_at)],
        ["last heartbeat", when(run.heartbeat_at)],
        ["finished", f"{when(run.finished_at)} (took {took(run.duration)})" if run.finished_at else "-"],
        ["host, pid", f"{run.host}, pid {run.pid}"],
        ["error", run.error or "-"],
        ["summary", describe_stats(stats, job=run.job, brief=True)],
    ])
    settings = [[name, as_words(value)] for name, value in sorted((run.settings or {}).items())]
    print_table([Column("setting"), Column("value", wrap=True, flex=True)], settings or [["(none)", ""]],
                title="Settings it ran with")
    counts = [[name, value if isinstance(value, int) and not isinstance(value, bool) else as_words(value)]
              for name, value in sorted(flatten(stats).items())]
    print_table([Column("stat"), Column("value", wrap=True, flex=True)], counts or [["(none)", ""]], title="Stats")
    files = files_written(stats)
    print_table([Column("file", wrap=True, flex=True), Column("now")],
                [[str(path), "present" if path.exists() else "missing"] for path in files] or [["(none)", ""]],
                title="Files it wrote")
