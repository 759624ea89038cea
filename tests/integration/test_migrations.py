"""`migrate`: files of migrations/ applied in order, each once, recorded with a checksum; an edited
applied file is refused; a database where the host applied 011 itself migrates; replicas take turns."""
from __future__ import annotations

import hashlib
import uuid
import shutil
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from core import migrations
from core.connect import reading
from core.db import make_engine
from core.migrations import MIGRATIONS_DIR, MigrationError
from tests.builders import utc

ON_DISK = sorted(path.name for path in MIGRATIONS_DIR.glob("[0-9][0-9][0-9]_*.sql"))
FILE_011 = "011_user_referrals_and_points.sql"
FILE_012 = "012_payments_idempotency_job_runs.sql"


@pytest.fixture
def empty_engine(empty_database_url):
    engine = make_engine(empty_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def migrations_copy(tmp_path) -> Path:
    """A copy of migrations/ that a test may edit."""
    return Path(shutil.copytree(MIGRATIONS_DIR, tmp_path / "migrations"))


def _pending(engine, directory: Path = MIGRATIONS_DIR) -> list[migrations.Migration]:
    with reading(engine) as fetch:
        return migrations.pending_among(migrations.read_applied(fetch), directory)


def _recorded(engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT version, name, checksum FROM public.rewards_schema_migrations ORDER BY version"))]


def _exists(engine, regclass: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": regclass}).scalar()


def _column_exists(engine, table: str, column: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = :table AND column_name = :column)"
        ), {"table": table, "column": column}).scalar()


def _run_sql_file(engine, path: Path) -> None:
    with engine.begin() as conn:
        conn.connection.dbapi_connection.cursor().execute(path.read_text(encoding="utf-8"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fresh_database_gets_every_file_in_order_recorded_with_its_checksum(empty_engine):
    applied = migrations.migrate(empty_engine)

    assert [f"{m.version}_{m.name}.sql" for m in applied] == ON_DISK
    assert _recorded(empty_engine) == [
        (name[:3], name[4:-4], _sha256(MIGRATIONS_DIR / name)) for name in ON_DISK
    ]
    for table in ("user_referral_codes", "user_referral_relationships", "user_point_transactions",
                  "user_point_balances", "user_subscription_payments", "job_runs"):
        assert _exists(empty_engine, f"public.{table}"), table
    for index in ("uq_upt_idempotency_key", "uq_job_runs_one_running", "uq_job_runs_one_per_tick",
                  "idx_usp_user_paid_at"):
        assert _exists(empty_engine, f"public.{index}"), index
    assert _column_exists(empty_engine, "user_referral_relationships", "expired_at")


def test_rerun_applies_nothing_and_nothing_is_pending(empty_engine):
    migrations.migrate(empty_engine)
    recorded = _recorded(empty_engine)

    assert migrations.migrate(empty_engine) == []
    assert _pending(empty_engine) == []
    assert _recorded(empty_engine) == recorded


def test_pending_lists_every_file_of_an_empty_database(empty_engine):
    assert [f"{m.version}_{m.name}.sql" for m in _pending(empty_engine)] == ON_DISK


def test_database_where_the_host_applied_011_itself_migrates_and_keeps_its_data(empty_engine):
    _run_sql_file(empty_engine, MIGRATIONS_DIR / FILE_011)
    with empty_engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO public.user_referral_relationships (referrer_user_id, referred_user_id, referral_code,"
            " created_at) VALUES (gen_random_uuid(), gen_random_uuid(), 'HOST', :at)"), {"at": utc(2026, 1, 1)})
        conn.execute(text("INSERT INTO public.user_point_transactions (user_id, delta, type)"
                          " VALUES (gen_random_uuid(), 50, 'ADMIN_GRANT')"))

    applied = migrations.migrate(empty_engine)

    assert [m.version for m in applied][:2] == ["011", "012"]
    assert [row[0] for row in _recorded(empty_engine)] == [name[:3] for name in ON_DISK]
    with empty_engine.connect() as conn:
        assert conn.execute(text(
            "SELECT referral_code, status, expired_at FROM public.user_referral_relationships")).one() == \
            ("HOST", "PENDING", None)
        assert conn.execute(text(
            "SELECT delta, idempotency_key FROM public.user_point_transactions")).one() == (50, None)


def test_edited_applied_file_is_refused_and_nothing_after_it_is_applied(empty_engine, migrations_copy):
    migrations.migrate(empty_engine, migrations_copy)
    edited = migrations_copy / FILE_012
    edited.write_text(edited.read_text(encoding="utf-8") + "\n-- a harmless-looking edit\n", encoding="utf-8")
    (migrations_copy / "999_after_the_edit.sql").write_text("CREATE TABLE public.after_the_edit (id int);\n")

    with pytest.raises(MigrationError, match=r"012_payments_idempotency_job_runs\.sql was edited"):
        migrations.migrate(empty_engine, migrations_copy)
    with pytest.raises(MigrationError, match=r"012_payments_idempotency_job_runs\.sql was edited"):
        _pending(empty_engine, migrations_copy)
    assert not _exists(empty_engine, "public.after_the_edit")
    assert "999" not in [row[0] for row in _recorded(empty_engine)]


def test_new_file_added_later_is_applied_alone(empty_engine, migrations_copy):
    migrations.migrate(empty_engine, migrations_copy)
    (migrations_copy / "999_added_later.sql").write_text("CREATE TABLE public.added_later (id int);\n")

    assert [m.version for m in _pending(empty_engine, migrations_copy)] == ["999"]
    assert [m.version for m in migrations.migrate(empty_engine, migrations_copy)] == ["999"]
    assert _exists(empty_engine, "public.added_later")


def test_failing_file_is_rolled_back_whole_unrecorded_and_releases_the_lock(empty_engine, migrations_copy):
    (migrations_copy / "999_broken.sql").write_text(
        "CREATE TABLE public.half_done (id int);\nSELECT no_such_function();\n")

    with pytest.raises(Exception, match="no_such_function"):
        migrations.migrate(empty_engine, migrations_copy)

    assert not _exists(empty_engine, "public.half_done")
    assert [row[0] for row in _recorded(empty_engine)] == [name[:3] for name in ON_DISK]
    assert [m.version for m in _pending(empty_engine, migrations_copy)] == ["999"]
    with empty_engine.connect() as conn:  # the session lock went with the failure
        assert conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                 " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                                 )).scalar() == 0


def test_files_not_named_like_migrations_are_ignored(empty_engine, migrations_copy):
    (migrations_copy / "notes.sql").write_text("SELECT broken;\n")
    (migrations_copy / "13_short_version.sql").write_text("SELECT broken;\n")

    applied = migrations.migrate(empty_engine, migrations_copy)

    assert [f"{m.version}_{m.name}.sql" for m in applied] == ON_DISK


# ── through the command line ────────────────────────────────────────────────────

def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_cli_migrate_applies_every_file_then_nothing(cli, empty_database_url):
    first = cli("migrate", env={"DATABASE_URL": empty_database_url})
    second = cli("migrate", env={"DATABASE_URL": empty_database_url})

    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"applied {name[:-4]}" for name in ON_DISK]
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["nothing to apply: the database is up to date"]


def test_cli_refuses_an_edited_applied_file_with_exit_2_and_one_line(cli, engine):
    with engine.begin() as conn:  # the state a database is in after someone edited 012 on disk
        conn.execute(text("UPDATE public.rewards_schema_migrations SET checksum = 'recorded-before-the-edit'"
                          " WHERE version = '012'"))

    for command in (["migrate"], ["run", "expire-pending", "--as-of", "2026-06-01"], ["health"]):
        result = cli(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert "012_payments_idempotency_job_runs.sql was edited" in _one_line(result.stderr)


@pytest.mark.slow
def test_two_concurrent_migrate_both_succeed_and_apply_each_file_once(cli, empty_database_url, empty_engine):
    results = {}

    def migrate_in_a_process(name: str) -> None:
        results[name] = cli("migrate", env={"DATABASE_URL": empty_database_url})

    with empty_engine.connect() as holder:
        # Hold the migration lock so that both processes are surely inside `migrate` at once.
        holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": migrations._ADVISORY_LOCK_KEY})
        threads = [threading.Thread(target=migrate_in_a_process, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        _wait_for_advisory_waiters(holder, 2)
        holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": migrations._ADVISORY_LOCK_KEY})
        holder.commit()
    for thread in threads:
        thread.join(timeout=60)

    assert [results[name].returncode for name in ("a", "b")] == [0, 0], [r.stderr for r in results.values()]
    outputs = sorted(results[name].stdout.splitlines() for name in ("a", "b"))
    assert outputs == sorted([[f"applied {name[:-4]}" for name in ON_DISK],
                              ["nothing to apply: the database is up to date"]])
    assert [row[0] for row in _recorded(empty_engine)] == [name[:3] for name in ON_DISK]


def _wait_for_advisory_waiters(conn, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = conn.execute(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")).scalar()
        conn.commit()
        if waiting >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{count} processes never waited for the migration lock")


def test_health_exits_0_when_migrated(cli):
    result = cli("health")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_health_exits_1_when_a_migration_is_pending(cli, engine):
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM public.rewards_schema_migrations WHERE version = '012'"))

    result = cli("health")

    assert result.returncode == 1
    assert _one_line(result.stderr) == "unhealthy: 1 migration(s) pending"


def test_health_exits_1_on_an_empty_database(cli, empty_database_url):
    result = cli("health", env={"DATABASE_URL": empty_database_url})

    assert result.returncode == 1
    assert _one_line(result.stderr) == f"unhealthy: {len(ON_DISK)} migration(s) pending"


def test_run_refuses_to_start_while_a_migration_is_pending(cli, engine):
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM public.rewards_schema_migrations WHERE version = '012'"))

    result = cli("run", "expire-pending", "--as-of", "2026-06-01")

    assert result.returncode == 2
    assert "1 migration(s) pending (012_payments_idempotency_job_runs)" in _one_line(result.stderr)


def test_016_records_the_basis_of_rewards_written_before_it_from_their_notes(empty_engine, migrations_copy):
    later = sorted(path for path in migrations_copy.glob("*.sql") if path.name >= "016")
    held_back = {path: path.read_text() for path in later}
    for path in later:
        path.unlink()
    migrations.migrate(empty_engine, migrations_copy)
    relationship, payment, referrer = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with empty_engine.begin() as conn:  # rows as the reward jobs wrote them before 016
        conn.execute(text(
            "INSERT INTO public.user_point_transactions (user_id, delta, type, ref_id, note, idempotency_key, created_at)"
            " VALUES (:user, 200, 'REFERRAL_RECURRING', :ref, :note1, :key1, '2026-03-01'),"
            "        (:user, 100, 'REFERRAL_L2', :ref, :note2, :key2, '2026-03-01'),"
            "        (:user, 50, 'REFERRAL_RECURRING', :ref, 'hand-written', :key3, '2026-03-01')"
        ), {"user": referrer, "ref": relationship,
            "note1": f"recurring month 3, basis payment {payment}", "key1": f"recurring:{relationship}:3",
            "note2": f"level-2 month 0, basis payment {payment}", "key2": f"l2:{relationship}:0",
            "key3": f"recurring:{relationship}:4"})
    for path, source in held_back.items():
        path.write_text(source)

    migrations.migrate(empty_engine, migrations_copy)

    with empty_engine.connect() as conn:
        rows = [tuple(row) for row in conn.execute(text(
            "SELECT idempotency_key, relationship_id, level, month, payment_id, beneficiary_user_id, points,"
            " clawback_key FROM public.referral_rewards ORDER BY level"))]
    assert rows == [(f"recurring:{relationship}:3", relationship, 1, 3, payment, referrer, 200, None),
                    (f"l2:{relationship}:0", relationship, 2, 0, payment, referrer, 100, None)]


def test_016_keeps_updated_at_of_a_payment_current_on_every_update(engine):
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at,"
                          " updated_at) VALUES (:id, :id, 100, 'PAID', '2026-01-01', '2026-01-01')"),
                     {"id": uuid.uuid4()})
        conn.execute(text("UPDATE public.user_subscription_payments SET status = 'REFUNDED'"))
        updated_at = conn.execute(text("SELECT updated_at FROM public.user_subscription_payments")).scalar_one()
    assert updated_at > utc(2026, 1, 1)  # the trigger set it on UPDATE
