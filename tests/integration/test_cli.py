"""The command line against a database: usage errors in a real process (no traceback; each usage
error's message: tests/unit/test_cli.py), `jobs`, `history`, `run-all` with its exit codes (1 when a
job failed, else 3 when one was running elsewhere), and bad settings in a real process."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import text

import scheduler
from core import runs
from jobs import PIPELINE
from tests.builders import add_payment, add_relationship, new_id, utc

AS_OF = utc(2026, 6, 1)


@pytest.fixture
def main_in_process(monkeypatch, tmp_path, database_url, capsys):
    """`scheduler.main(args)` in this process against the test database: (exit code, stdout, stderr).
    Logging is left as pytest set it (structlog must not keep pytest's capture stream)."""
    for name in list(os.environ):
        if name.startswith("REWARDS_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REWARDS_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("COLUMNS", "200")  # every column shown (80, the default when piped: test_terminal.py)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("core.logs.configure_logging", lambda *args, **kwargs: None)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()  # drop what the test printed before (structlog's default prints to stdout)
        code = scheduler.main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def _statuses(engine) -> dict[str, list[str]]:
    with engine.connect() as conn:
        found: dict[str, list[str]] = {}
        for job, status in conn.execute(text("SELECT job, status FROM public.job_runs ORDER BY id")):
            found.setdefault(job, []).append(status)
    return found


def _freeze_relationships(conn) -> None:
    """Make every UPDATE of a relationship fail, so that expire-pending fails when it has work."""
    conn.execute(text(
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'relationships are frozen'; END $$;"
        " CREATE TRIGGER frozen BEFORE UPDATE ON public.user_referral_relationships"
        " FOR EACH ROW EXECUTE FUNCTION public.refuse();"))


# ── usage errors ────────────────────────────────────────────────────────────────


@pytest.mark.slow
def test_usage_error_in_a_real_process_has_no_traceback(cli):
    for args in (["frob"], ["run", "no-such-job"], ["run", "expire-pending", "--repair"], ["history", "--limit", "0"]):
        result = cli(*args, timeout=30)

        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr


# ── jobs and history ────────────────────────────────────────────────────────────

def test_jobs_lists_every_job_with_schedule_next_fire_last_success_and_last_run(main_in_process, monkeypatch,
                                                                              engine):
    monkeypatch.setenv("REWARDS_SCHEDULE_RECONCILE", "off")
    succeeded = runs.claim(engine, job="expire-pending", trigger="manual", as_of=AS_OF, scheduled_for=None,
                           dry_run=False, settings={}, lease_seconds=300)
    runs.finish(engine, succeeded, status="SUCCEEDED", stats={}, error=None)
    dry = runs.claim(engine, job="expire-pending", trigger="manual", as_of=AS_OF, scheduled_for=None,
                     dry_run=True, settings={}, lease_seconds=300)
    runs.finish(engine, dry, status="SUCCEEDED", stats={"dry_run": True}, error=None)

    code, out, err = main_in_process("jobs")

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["job", "schedule", "(UTC)", "next", "fire", "(UTC)", "last", "success", "(UTC)",
                                "last", "run", "status", "trigger", "as", "of", "(UTC)"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == [job.name for job in PIPELINE]
    assert "5 0 * * *" in rows["expire-pending"]
    assert f"run {succeeded} " in rows["expire-pending"]  # the last success is the real run ...
    assert re.search(rf"run {dry} +SUCCEEDED \(dry run\) +manual +2026-06-01 00:00$", rows["expire-pending"])  # ... not the dry one
    assert rows["reconcile"].split()[1:] == ["off", "never", "never", "never", "run"]
    for name in ("recurring-rewards", "level2-rewards", "expire-points"):
        assert rows[name].endswith("never                   never run")


def test_jobs_and_history_with_json_give_one_document_with_stable_keys(main_in_process, engine):
    finished = runs.claim(engine, job="expire-pending", trigger="manual", as_of=AS_OF, scheduled_for=None,
                          dry_run=False, settings={"REWARDS_BATCH_SIZE": 10}, lease_seconds=300)
    runs.finish(engine, finished, status="SUCCEEDED", stats={"relationships_expired": 2}, error=None)

    jobs_code, jobs_out, _ = main_in_process("jobs", "--json")
    history_code, history_out, _ = main_in_process("history", "--json")
    show_code, show_out, _ = main_in_process("show", str(finished), "--json")

    assert (jobs_code, history_code, show_code) == (0, 0, 0)
    jobs = json.loads(jobs_out)["jobs"]
    assert [job["job"] for job in jobs] == [job.name for job in PIPELINE]
    assert set(jobs[0]) == {"job", "schedule", "next_fire", "last_success", "last_run"}
    assert jobs[0]["last_run"]["run_id"] == finished and jobs[0]["last_success"]["run_id"] == finished
    assert jobs[0]["last_run"]["as_of"] == "2026-06-01T00:00:00+00:00" and jobs[1]["last_run"] is None
    (run,) = json.loads(history_out)["runs"]
    assert set(run) == {"run_id", "job", "status", "dry_run", "trigger", "as_of", "scheduled_for", "started_at",
                        "finished_at", "duration_seconds", "host", "pid", "error", "stats"}
    assert (run["run_id"], run["status"], run["stats"]) == (finished, "SUCCEEDED", {"relationships_expired": 2})
    shown = json.loads(show_out)
    assert shown == run | {"heartbeat_at": shown["heartbeat_at"], "settings": {"REWARDS_BATCH_SIZE": 10}}


@pytest.mark.slow
def test_piped_listings_take_COLUMNS_or_80(cli, engine, monkeypatch):
    finished = runs.claim(engine, job="recurring-rewards", trigger="manual", as_of=AS_OF, scheduled_for=None,
                          dry_run=True, settings={}, lease_seconds=300)
    runs.finish(engine, finished, status="SUCCEEDED", stats={"dry_run": True, "relationships_scanned": 12}, error=None)
    monkeypatch.delenv("COLUMNS", raising=False)

    for command in (["jobs"], ["history"]):
        narrow, wide = cli(*command), cli(*command, env={"COLUMNS": "200"})

        assert narrow.returncode == wide.returncode == 0, narrow.stderr + wide.stderr
        assert max(len(line) for line in narrow.stdout.splitlines()) <= 80, narrow.stdout
        assert max(len(line) for line in wide.stdout.splitlines()) > 80, wide.stdout
        for result in (narrow, wide):
            assert "recurring-rewards" in result.stdout and "SUCCEEDED (dry run)" in result.stdout
            assert "…" not in result.stdout.replace("…\n", "\n")  # only a last, free-text column is cut


def test_a_run_or_user_that_does_not_exist_exits_1_with_one_line(main_in_process):
    for command in (["show", "999"], ["show", "999", "--json"], ["explain", str(new_id())],
                    ["explain", str(new_id()), "--json"], ["report", "999"]):
        code, out, err = main_in_process(*command)

        assert code == 1, (command, err)
        assert out == "" and err.count("\n") == 1 and err.startswith("no "), (command, err)


def test_history_lists_recent_runs_newest_first_one_line_each_with_host_and_pid(main_in_process, engine, settings):
    from core.runner import run_job
    from jobs import expire_pending

    with engine.begin() as conn:
        add_relationship(conn, created_at=utc(2026, 1, 1))
    first = run_job(expire_pending.JOB, settings=settings, engine=engine, as_of=AS_OF)
    second = run_job(expire_pending.JOB, settings=settings, engine=engine, as_of=utc(2026, 6, 2), dry_run=True)
    other = runs.claim(engine, job="reconcile", trigger="manual", as_of=AS_OF, scheduled_for=None,
                       dry_run=False, settings={}, lease_seconds=300)

    code, out, err = main_in_process("history")

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["run", "job", "status", "trigger", "as", "of", "(UTC)", "started", "(UTC)", "took",
                                "host:pid", "outcome"]
    assert [line.split()[0] for line in lines[2:]] == [str(other), str(second.run_id), str(first.run_id)]
    assert "1 relationships expired" in lines[4] and f"{runs.HOST}:{os.getpid()}" in lines[4]
    assert "SUCCEEDED (dry run)" in lines[3] and "dry run, nothing changed" in lines[3]
    assert "would" not in lines[4] and "batches" not in out and "cutoff" not in out  # no bookkeeping
    assert "RUNNING" in lines[2]
    assert all(len(line) <= 200 for line in lines)  # piped: at most COLUMNS wide


def test_history_filters_by_job_status_since_and_limit(main_in_process, engine):
    def finished(job: str, status: str, as_of) -> int:
        run_id = runs.claim(engine, job=job, trigger="manual", as_of=as_of, scheduled_for=None,
                            dry_run=False, settings={}, lease_seconds=300)
        runs.finish(engine, run_id, status=status, stats={}, error="boom" if status == "FAILED" else None)
        return run_id

    failed = finished("expire-pending", "FAILED", AS_OF)
    succeeded = finished("expire-pending", "SUCCEEDED", AS_OF)
    reconciled = finished("reconcile", "SUCCEEDED", AS_OF)
    with engine.begin() as conn:  # the first run started long ago
        conn.execute(text("UPDATE public.job_runs SET started_at = '2026-01-01' WHERE id = :id"), {"id": failed})

    def ids(*args: str) -> list[str]:
        code, out, err = main_in_process("history", *args)
        assert code == 0, err
        return [line.split()[0] for line in out.splitlines()[2:]]

    assert ids("--job", "expire-pending") == [str(succeeded), str(failed)]
    assert ids("--status", "failed") == [str(failed)]
    assert ids("--since", "2026-02-01") == [str(reconciled), str(succeeded)]
    assert ids("--job", "expire-pending", "--status", "SUCCEEDED", "--limit", "1") == [str(succeeded)]
    assert ids("--since", "2099-01-01") == []


def test_history_of_an_empty_database_prints_the_header_only(main_in_process):
    code, out, _ = main_in_process("history")

    assert code == 0
    assert len(out.splitlines()) == 2


# ── run-all ─────────────────────────────────────────────────────────────────────

@pytest.mark.slow
def test_run_all_runs_every_job_in_order_for_one_as_of_and_exits_0(cli, engine):
    result = cli("run-all", "--as-of", "2026-06-01")

    assert result.returncode == 0, result.stderr
    with engine.connect() as conn:
        rows = list(conn.execute(text("SELECT job, status, as_of FROM public.job_runs ORDER BY id")))
    assert [(row.job, row.status, row.as_of) for row in rows] == [(job.name, "SUCCEEDED", AS_OF) for job in PIPELINE]


@pytest.mark.slow
def test_run_all_goes_on_past_a_failed_job_and_exits_1(cli, engine):
    with engine.begin() as conn:
        add_relationship(conn, created_at=utc(2025, 1, 1))
        _freeze_relationships(conn)

    result = cli("run-all", "--as-of", "2026-06-01")

    assert result.returncode == 1
    expected = {job.name: ["SUCCEEDED"] for job in PIPELINE} | {"expire-pending": ["FAILED"]}
    assert _statuses(engine) == expected


@pytest.mark.slow
def test_run_all_with_a_missing_payments_view_is_refused_at_start_with_exit_2(cli, engine):
    with engine.begin() as conn:  # work for recurring-rewards, so that it reads the payments
        referred = new_id()
        add_relationship(conn, referred=referred, status="REWARDED", created_at=utc(2026, 1, 1),
                         rewarded_at=utc(2026, 1, 10))
        add_payment(conn, user=referred, paid_at=utc(2026, 2, 10))

    result = cli("run-all", "--as-of", "2026-06-01", env={"REWARDS_PAYMENTS_TABLE": "public.no_such_payments_view"})

    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: REWARDS_PAYMENTS_TABLE: no table or view named public.no_such_payments_view")
    assert _statuses(engine) == {}  # nothing ran: a bad feed is a configuration error


@pytest.mark.slow
def test_run_all_with_a_job_running_elsewhere_exits_3_and_runs_the_others(cli, engine):
    holder = runs.claim(engine, job="expire-pending", trigger="manual", as_of=AS_OF, scheduled_for=None,
                        dry_run=False, settings={}, lease_seconds=300)

    result = cli("run-all", "--as-of", "2026-06-01")

    assert result.returncode == 3
    assert f"expire-pending is already running elsewhere: run {holder} (manual)" in result.stderr
    expected = {job.name: ["SUCCEEDED"] for job in PIPELINE} | {"expire-pending": ["RUNNING", "SKIPPED"]}
    assert _statuses(engine) == expected


@pytest.mark.slow
def test_run_all_with_a_failure_and_a_job_running_elsewhere_exits_1(cli, engine):
    with engine.begin() as conn:
        add_relationship(conn, created_at=utc(2025, 1, 1))
        _freeze_relationships(conn)
    runs.claim(engine, job=PIPELINE[-1].name, trigger="manual", as_of=AS_OF, scheduled_for=None,
               dry_run=False, settings={}, lease_seconds=300)

    result = cli("run-all", "--as-of", "2026-06-01")

    assert result.returncode == 1


@pytest.mark.slow
def test_without_database_url_commands_use_the_embedded_database_migrated_on_first_use(cli):
    # Not under pytest's tmp_path: pytest keeps it private, and the embedded server may run as another user.
    with tempfile.TemporaryDirectory(prefix=f"rewards-embedded-test-{os.getpid()}-") as directory:
        env = {"DATABASE_URL": "", "REWARDS_DATA_DIR": str(Path(directory) / "data")}

        first = cli("run", "expire-pending", "--as-of", "2026-06-01", "--json", env=env)
        health = cli("health", env=env)
        history = cli("history", env=env)

    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.strip().splitlines()[-1])["status"] == "SUCCEEDED"
    assert (health.returncode, health.stdout.strip()) == (0, "ok")
    assert history.returncode == 0, history.stderr
    assert len(history.stdout.splitlines()) == 3  # header, rule, the one run: the same database again
    for result in (first, health, history):  # each says which database, in one line on stderr
        announced = [line for line in result.stderr.splitlines() if line.startswith("using the embedded PostgreSQL")]
        assert announced == [f"using the embedded PostgreSQL under {Path(directory) / 'data'} (DATABASE_URL is not set)"]


# ── settings in a real process: exit code 2, one line, no traceback, no password ──
# (each bad value's message: tests/unit/test_settings.py, in-process)

PASSWORD = "Sup3rS3cretPw"


@pytest.mark.slow
def test_a_process_with_a_bad_setting_exits_2_with_one_line(cli):
    env = {"DATABASE_URL": f"postgresql://rewards:{PASSWORD[:5]}@{PASSWORD[5:]}@db/rewards"}
    for command in (["migrate"], ["run", "expire-pending"], ["daemon"]):
        result = cli(*command, env=env, timeout=30)

        assert result.returncode == 2, (command, result.stderr)
        assert result.stdout == ""
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert PASSWORD[5:] not in result.stderr


@pytest.mark.slow
def test_an_unreachable_database_fails_in_one_line_without_the_password(cli):
    result = cli("health", env={"DATABASE_URL": f"postgresql://rewards:{PASSWORD}@127.0.0.1:1/rewards"})

    assert result.returncode == 1
    assert result.stderr.startswith("error: database: ") and result.stderr.count("\n") == 1
    assert PASSWORD not in result.stdout + result.stderr
