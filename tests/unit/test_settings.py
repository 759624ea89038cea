"""Settings: SPEC.md's defaults, and every bad value refused at start with one line naming the variable
(exit code 2, no traceback); a password never shows."""
from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path

import pytest

import scheduler
from core.settings import ConfigError
from jobs import load_settings
from jobs.settings import RewardAmount

PASSWORD = "Sup3rS3cretPw"

BAD_VALUES = [
    ("REWARDS_EMBEDDED", "maybe"),
    ("REWARDS_DATA_DIR", ""),
    ("REWARDS_PENDING_EXPIRY_DAYS", "0"),
    ("REWARDS_PENDING_EXPIRY_DAYS", "-3"),
    ("REWARDS_PENDING_EXPIRY_DAYS", "ninety"),
    ("REWARDS_PENDING_EXPIRY_DAYS", "9.5"),
    ("REWARDS_PENDING_EXPIRY_DAYS", "36501"),
    ("REWARDS_RECURRING_MONTHS", "-1"),
    ("REWARDS_RECURRING_MONTHS", "twelve"),
    ("REWARDS_RECURRING_MONTHS", "1201"),
    ("REWARDS_L2_MONTHS", "-1"),
    ("REWARDS_L2_MONTHS", "6 months"),
    ("REWARDS_RECURRING_REWARD", "101%"),
    ("REWARDS_RECURRING_REWARD", "-5"),
    ("REWARDS_RECURRING_REWARD", "ten"),
    ("REWARDS_RECURRING_REWARD", "2.5"),
    ("REWARDS_L2_REWARD", "-1%"),
    ("REWARDS_L2_REWARD", "5 %"),
    ("REWARDS_L2_REWARD", ""),
    ("REWARDS_POINTS_PER_USD", "-1"),
    ("REWARDS_POINTS_PER_USD", "NaN"),
    ("REWARDS_POINTS_PER_USD", "lots"),
    ("REWARDS_POINTS_EXPIRY_MONTHS", "-1"),
    ("REWARDS_POINTS_EXPIRY_MONTHS", "1201"),
    ("REWARDS_PAYMENTS_TABLE", "payments; DROP TABLE public.user_point_transactions"),
    ("REWARDS_PAYMENTS_TABLE", 'public."payments"'),
    ("REWARDS_PAYMENTS_TABLE", "a.b.c"),
    ("REWARDS_PAYMENTS_TABLE", ""),
    ("REWARDS_BATCH_SIZE", "0"),
    ("REWARDS_BATCH_SIZE", "1e3"),
    ("REWARDS_BATCH_SIZE", "1000001"),
    ("REWARDS_REPORTS_DIR", ""),
    ("REWARDS_RECONCILE_REPAIR", "perhaps"),
    ("REWARDS_SCHEDULE_EXPIRE_PENDING", "61 * * * *"),
    ("REWARDS_SCHEDULE_RECURRING_REWARDS", "daily"),
    ("REWARDS_SCHEDULE_LEVEL2_REWARDS", "* * *"),
    ("REWARDS_SCHEDULE_EXPIRE_POINTS", "0 0 32 * *"),
    ("REWARDS_SCHEDULE_EXPIRE_POINTS", "0 0 31 2 *"),
    ("REWARDS_SCHEDULE_EXPIRE_PENDING", "0 0 * * 8"),
    ("REWARDS_SCHEDULE_RECONCILE", ""),
    ("REWARDS_MISFIRE_GRACE_SECONDS", "0"),
    ("REWARDS_MISFIRE_GRACE_SECONDS", "soon"),
    ("REWARDS_RUN_LEASE_SECONDS", "0"),
    ("REWARDS_RUN_LEASE_SECONDS", "-300"),
    ("REWARDS_HTTP_PORT", "-1"),
    ("REWARDS_HTTP_PORT", "65536"),
    ("REWARDS_HTTP_PORT", "http"),
    ("REWARDS_LOG_FORMAT", "xml"),
    ("REWARDS_LOG_LEVEL", "LOUD"),
    ("REWARDS_MIGRATE_ON_START", "sometimes"),
]

BAD_DATABASE_URLS = [
    f"mysql://rewards:{PASSWORD}@db/rewards",                 # not PostgreSQL
    f"postgresql://rewards:{PASSWORD}@db:port/rewards",       # port not a number
    f"postgresql://rewards:{PASSWORD[:5]}@{PASSWORD[5:]}@db/rewards",   # unescaped @ in the password
    f"postgresql://rewards:{PASSWORD[:5]}@{PASSWORD[5:]}:x@db/rewards",  # ... and a colon after it
    f"{PASSWORD} is not a URL",
]


@pytest.fixture
def clean_env(monkeypatch, tmp_path) -> Path:
    """No setting from the outside world: no REWARDS_* variable, no DATABASE_URL, no .env file.
    Logging stays as it is: structlog must not keep pytest's capture stream after the test."""
    for name in list(os.environ):
        if name.startswith("REWARDS_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("core.logs.configure_logging", lambda *args, **kwargs: None)
    return tmp_path


def _cli_in_process(capsys, *args: str) -> tuple[int, str, str]:
    code = scheduler.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_defaults_match_the_spec(clean_env):
    settings = load_settings()

    assert settings.database_url is None
    assert settings.embedded is True
    assert settings.data_dir == Path("./.rewards-data")
    assert settings.pending_expiry_days == 90
    assert settings.recurring_months == 12
    assert settings.l2_months == 6
    assert settings.recurring_reward == RewardAmount(percent=Decimal("10"))
    assert settings.l2_reward == RewardAmount(percent=Decimal("5"))
    assert settings.points_per_usd == Decimal("100")
    assert settings.points_expiry_months == 12
    assert settings.payments_table == "public.user_subscription_payments"
    assert settings.payments_table_sql == '"public"."user_subscription_payments"'
    assert settings.batch_size == 5000
    assert settings.reports_dir == Path("./reports")
    assert settings.reconcile_repair is False
    assert settings.run_lease_seconds == 300
    assert settings.http_port == 9108
    assert settings.log_format == "auto"
    for job in ("expire-pending", "recurring-rewards", "level2-rewards", "expire-points", "reconcile"):
        assert settings.schedule_for(job), job


def test_values_come_from_the_environment_and_from_dot_env(clean_env, monkeypatch):
    (clean_env / ".env").write_text("REWARDS_BATCH_SIZE=7\nREWARDS_L2_REWARD=150\n")
    monkeypatch.setenv("REWARDS_L2_REWARD", "2.5%")

    settings = load_settings()

    assert settings.batch_size == 7
    assert settings.l2_reward == RewardAmount(percent=Decimal("2.5"))  # the environment wins over .env


@pytest.mark.parametrize("text, expected", [
    ("150", RewardAmount(points=150)),
    ("0", RewardAmount(points=0)),
    ("2.5%", RewardAmount(percent=Decimal("2.5"))),
    ("0%", RewardAmount(percent=Decimal("0"))),
    ("100%", RewardAmount(percent=Decimal("100"))),
])
def test_reward_amounts_are_whole_points_or_a_percentage(clean_env, monkeypatch, text, expected):
    monkeypatch.setenv("REWARDS_RECURRING_REWARD", text)

    assert load_settings().recurring_reward == expected


@pytest.mark.parametrize("variable, value", [
    ("REWARDS_PENDING_EXPIRY_DAYS", "1"),
    ("REWARDS_PENDING_EXPIRY_DAYS", "36500"),
    ("REWARDS_RECURRING_MONTHS", "0"),
    ("REWARDS_POINTS_EXPIRY_MONTHS", "0"),
    ("REWARDS_BATCH_SIZE", "1"),
    ("REWARDS_BATCH_SIZE", "1000000"),
    ("REWARDS_HTTP_PORT", "0"),
    ("REWARDS_HTTP_PORT", "65535"),
    ("REWARDS_POINTS_PER_USD", "0"),
    ("REWARDS_PAYMENTS_TABLE", "billing.paid_subscriptions_v"),
    ("REWARDS_LOG_LEVEL", "debug"),
])
def test_values_at_the_edges_of_their_range_are_accepted(clean_env, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)

    load_settings()


@pytest.mark.parametrize("value", ["off", "OFF", " off "])
def test_a_schedule_can_be_turned_off(clean_env, monkeypatch, value):
    monkeypatch.setenv("REWARDS_SCHEDULE_EXPIRE_POINTS", value)

    settings = load_settings()

    assert settings.schedule_for("expire-points") is None
    assert settings.schedule_for("expire-pending") == "5 0 * * *"


@pytest.mark.parametrize("variable, value", BAD_VALUES, ids=[f"{v}={x!r}" for v, x in BAD_VALUES])
def test_a_bad_value_is_refused_in_one_line_naming_the_variable(clean_env, monkeypatch, capsys, variable, value):
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigError) as refused:
        load_settings()
    code, out, err = _cli_in_process(capsys, "health")

    assert str(refused.value).startswith(f"{variable}: ")
    assert "\n" not in str(refused.value)
    assert code == 2
    assert out == ""
    assert err == f"error: {refused.value}\n"


@pytest.mark.parametrize("url", BAD_DATABASE_URLS)
def test_a_bad_database_url_is_refused_without_showing_any_of_the_password(clean_env, monkeypatch, capsys, url):
    monkeypatch.setenv("DATABASE_URL", url)

    code, out, err = _cli_in_process(capsys, "health")

    assert code == 2
    assert err.startswith("error: DATABASE_URL: ") and err.count("\n") == 1
    for piece in (PASSWORD, PASSWORD[:5], PASSWORD[5:]):
        assert piece not in out + err


def test_a_bad_value_in_dot_env_is_refused_like_one_from_the_environment(clean_env):
    (clean_env / ".env").write_text("REWARDS_BATCH_SIZE=lots\n")

    with pytest.raises(ConfigError, match=r"^REWARDS_BATCH_SIZE: .*'lots'"):
        load_settings()


def test_embedded_off_without_database_url_is_refused(clean_env, monkeypatch, capsys):
    monkeypatch.setenv("REWARDS_EMBEDDED", "false")

    code, out, err = _cli_in_process(capsys, "health")

    assert code == 2
    assert err == "error: DATABASE_URL: not set, and REWARDS_EMBEDDED=false forbids the embedded database\n"


@pytest.mark.parametrize("variable, value, message", [
    ("REWARDS_RETRY_BASE_SECONDS", "inf", "REWARDS_RETRY_BASE_SECONDS: Input should be a finite number"),
    ("REWARDS_RETRY_MAX_SECONDS", "nan", "REWARDS_RETRY_MAX_SECONDS: Input should be a finite number"),
    ("REWARDS_RETRY_BASE_SECONDS", "1e9", "REWARDS_RETRY_BASE_SECONDS: Input should be less than or equal to 86400"),
    ("REWARDS_MAX_CLOCK_SKEW_SECONDS", "0", "REWARDS_MAX_CLOCK_SKEW_SECONDS: Input should be greater than 0"),
    ("REWARDS_DB_STATEMENT_TIMEOUT_SECONDS", "-1", "REWARDS_DB_STATEMENT_TIMEOUT_SECONDS: Input should be greater"),
    ("REWARDS_RECONCILE_WAIT_SECONDS", "x", "REWARDS_RECONCILE_WAIT_SECONDS: Input should be a valid integer"),
    ("DATABASE_URL", "postgresq://rewards:canary-password@db/rewards", "DATABASE_URL: must be a postgresql:// URL"),
    ("DATABASE_URL", "postgresql://rewards:canary-password@db/rewards?sslmod=require",
     "DATABASE_URL: unknown connection option 'sslmod'"),
])
def test_a_bad_setting_is_refused_at_start_with_exit_2_and_one_line(main_in_process, variable, value, message):
    code, out, err = main_in_process("jobs", env={variable: value})

    assert code == 2 and out == ""
    assert err.startswith("error: " + message) and err.count("\n") == 1, err
    assert "canary-password" not in err


@pytest.mark.parametrize(("variable", "value"), [
    ("REWARDS_RECURRING_REWARD", "ten"), ("REWARDS_RECURRING_REWARD", "-5"),
    ("REWARDS_RECURRING_REWARD", "10%%"), ("REWARDS_RECURRING_REWARD", "150%"),
    ("REWARDS_L2_REWARD", "ten"), ("REWARDS_L2_REWARD", "-5"),
    ("REWARDS_L2_REWARD", "10%%"), ("REWARDS_L2_REWARD", "150%"),
    ("REWARDS_RECURRING_REWARD", "3000000000"), ("REWARDS_L2_REWARD", "2147483648"),
    ("REWARDS_POINTS_PER_USD", "1e400"), ("REWARDS_POINTS_PER_USD", "NaN"), ("REWARDS_POINTS_PER_USD", "-1"),
    ("REWARDS_REWARD_HOLD_DAYS", "366"), ("REWARDS_REWARD_HOLD_DAYS", "-1"),
])
def test_bad_reward_setting_exits_2_with_one_line_naming_it(main_in_process, variable, value):
    code, _, err = main_in_process("run", "recurring-rewards", "--dry-run", env={variable: value})

    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert variable in lines[0]


# ── DATABASE_URL as libpq will read it: refused at start, naming the variable, never quoting the password ──

@pytest.mark.parametrize("url, message", [
    (f"postgresql://rewards:{PASSWORD}@db:99999/rewards", "port 99999 is out of range (1 to 65535)"),
    (f"postgresql://rewards:{PASSWORD}@db:0/rewards", "port 0 is out of range (1 to 65535)"),
    (f"postgresql://rewards:{PASSWORD}@db:-5/rewards", "port is out of range (1 to 65535)"),
    (f"postgresql://rewards:{PASSWORD}@db/rewards?port=70000", "port 70000 is out of range (1 to 65535)"),
    (f"postgresql://rewards:{PASSWORD}@db/rewards?sslmode=bogus",
     "sslmode='bogus' is not one of disable, allow, prefer, require, verify-ca, verify-full"),
    (f"postgresql://rewards:{PASSWORD}@db/rewards?sslmode=REQUIRE", "sslmode='REQUIRE' is not one of"),
    (f"postgresql://rewards:{PASSWORD}@db/rewards?target_session_attrs=primary-ish",
     "target_session_attrs='primary-ish' is not one of"),
    (f"postgresql://rewards:{PASSWORD}@db/rewards?connect_timeout=abc", "connect_timeout must be a whole number"),
    (f"postgresql://rewards:{PASSWORD}@db/rewards?connect_timeout=1_0", "connect_timeout must be a whole number"),
    (f"postgresql://rewards:{PASSWORD}@db/rewards?keepalives_idle=1.5", "keepalives_idle must be a whole number"),
    (f"postgresql://rewards:{PASSWORD}@db/rewards?require_auth=sometimes", "require_auth='sometimes' is not a list"),
    (f"postgresql://rewards:{PASSWORD}@db/rewards?ssl_min_protocol_version=TLSv9",
     "ssl_min_protocol_version='TLSv9' is not one of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3"),
    (f"postgresql://rewards:{PASSWORD}%FF@db/rewards", "its password has a %-escape that is not UTF-8 text"),
    (f"postgresql://rew%C3ards:{PASSWORD}@db/rewards", "its user name has a %-escape that is not UTF-8 text"),
    (f"postgresql://rewards:{PASSWORD}\udcff@db/rewards", "is not UTF-8 text"),  # a raw 0xFF byte in the environment
    (f"postgresql+asyncpg://rewards:{PASSWORD}@db/rewards", "must be a postgresql:// URL"),
])
def test_a_database_url_libpq_would_refuse_is_refused_at_start(clean_env, url, message):
    with pytest.raises(ConfigError) as refused:
        load_settings(database_url=url)

    assert str(refused.value).startswith(f"DATABASE_URL: {message}")
    assert PASSWORD not in str(refused.value)


@pytest.mark.parametrize("query", ["sslmode=verify-full", "connect_timeout=5", "connect_timeout=%205%20",
                                   "require_auth=!password,!md5", "ssl_min_protocol_version=tlsv1.2",
                                   "target_session_attrs=read-write&keepalives=1", "port=5432,5433&host=a,b"])
def test_a_database_url_with_good_options_is_accepted(clean_env, query):
    assert load_settings(database_url=f"postgresql://rewards:{PASSWORD}@db/rewards?{query}").database_url


def test_a_value_libpq_refuses_when_it_connects_exits_2_naming_database_url(main_in_process, monkeypatch):
    """For an option whose values the start check does not list (libpq's message names it, not the password)."""
    import psycopg2

    def refuse(*args, **kwargs):
        raise psycopg2.OperationalError('could not parse network address "999.1.1.1": Name or service not known\n')

    monkeypatch.setattr(psycopg2, "connect", refuse)

    code, out, err = main_in_process(
        "health", env={"DATABASE_URL": f"postgresql://rewards:{PASSWORD}@db/rewards?hostaddr=999.1.1.1"})

    assert (code, out) == (2, "")
    assert err == 'error: DATABASE_URL: could not parse network address "999.1.1.1": Name or service not known\n'


def test_a_server_that_refuses_the_connection_is_a_failed_run_not_a_bad_setting(main_in_process, monkeypatch):
    import psycopg2

    def refuse(*args, **kwargs):
        raise psycopg2.OperationalError('connection to server at "db" (10.0.0.1), port 5432 failed: '
                                        'FATAL:  invalid value for parameter "TimeZone": "x"\n')

    monkeypatch.setattr(psycopg2, "connect", refuse)

    code, _, err = main_in_process("health", env={"DATABASE_URL": f"postgresql://rewards:{PASSWORD}@db/rewards"})

    assert code == 1
    assert err.startswith("error: database: connection to server") and err.count("\n") == 1


# ── .env in any encoding: one line naming the variable and the line, never a byte of the file ──

def test_a_dot_env_that_is_not_utf8_is_refused_naming_the_line_and_its_variable(clean_env, capsys):
    (clean_env / ".env").write_bytes(b"REWARDS_BATCH_SIZE=10\nDATABASE_URL=postgresql://rewards:"
                                     + "Sup3rS3cr\xe9tPw".encode("latin-1") + b"@db/rewards\n")

    code, out, err = _cli_in_process(capsys, "run", "expire-pending")

    assert (code, out) == (2, "")
    assert err == "error: DATABASE_URL (.env line 2): not UTF-8 text; save .env as UTF-8\n"


def test_a_dot_env_in_utf16_is_refused_in_one_line(clean_env, capsys):
    (clean_env / ".env").write_text("REWARDS_BATCH_SIZE=10\n", encoding="utf-16")

    code, _, err = _cli_in_process(capsys, "run", "expire-pending")

    assert code == 2
    assert err == "error: .env: is UTF-16 text; save it as UTF-8\n"


def test_a_dot_env_with_a_byte_order_mark_is_read_from_its_first_line(clean_env):
    (clean_env / ".env").write_text("REWARDS_BATCH_SIZE=7\n", encoding="utf-8-sig")

    assert load_settings().batch_size == 7


def test_a_dot_env_that_cannot_be_read_is_refused_in_one_line(clean_env, capsys, monkeypatch):
    (clean_env / ".env").write_text("REWARDS_BATCH_SIZE=7\n")

    def unreadable(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", unreadable)  # chmod 000 does not stop root
    code, _, err = _cli_in_process(capsys, "health")

    assert code == 2
    assert err == "error: .env: cannot be read (Permission denied)\n"


def test_an_unexpected_error_before_logging_is_one_line_without_the_password(clean_env, monkeypatch, capsys):
    """structlog's default output (before logging is set up) prints a traceback with every local variable."""
    url = f"postgresql://rewards:{PASSWORD}@db/rewards"
    monkeypatch.setenv("DATABASE_URL", url)

    def broken(**overrides):
        raise RuntimeError(f"cannot read {url}")

    monkeypatch.setattr("jobs.load_settings", broken)
    code, out, err = _cli_in_process(capsys, "run", "expire-pending")

    assert (code, out) == (1, "")
    assert err == "error: RuntimeError: cannot read postgresql://rewards:***@db/rewards\n"


# ── a REWARDS_ name that is not a setting ──

@pytest.mark.parametrize("name, suggestion", [
    ("REWARDS_BATCHSIZE", "did you mean REWARDS_BATCH_SIZE?"),
    ("rewards_batch_sise", "did you mean REWARDS_BATCH_SIZE?"),
    ("REWARDS_DATABASE_URL", "did you mean DATABASE_URL?"),
    ("REWARDS_RECURRING_REWARDS", "did you mean REWARDS_RECURRING_REWARD?"),
    ("REWARDS_SCHEDULE_EXPIRE_SOON", "did you mean REWARDS_SCHEDULE_EXPIRING_SOON?"),
    ("REWARDS_SCHEDULE_PAYOUTS", "there is no job payouts (the jobs: expire-pending, expire-points, "
                                 "expiring-soon, level2-rewards, reconcile, recurring-rewards)"),
    ("REWARDS_COLOUR", "no setting has a similar name (see README.md, Configuration)"),
])
def test_a_rewards_variable_that_is_not_a_setting_is_refused_naming_the_closest(
        clean_env, monkeypatch, capsys, name, suggestion):
    monkeypatch.setenv(name, "abc")

    code, out, err = _cli_in_process(capsys, "health")

    assert (code, out) == (2, "")
    assert err == f"error: {name} is not a setting; {suggestion}\n"


def test_a_misspelt_setting_in_dot_env_is_refused_saying_where(clean_env, capsys):
    (clean_env / ".env").write_text("DATABASE_URL=postgresql://rewards@db/rewards\nREWARDS_BATCHSIZE=abc\n")

    code, _, err = _cli_in_process(capsys, "run", "expire-pending")

    assert code == 2
    assert err == "error: REWARDS_BATCHSIZE (in .env) is not a setting; did you mean REWARDS_BATCH_SIZE?\n"


def test_other_programs_variables_in_dot_env_are_left_alone(clean_env):
    (clean_env / ".env").write_text("POSTGRES_PASSWORD=x\nREWARDSX=1\nREWARDS_BATCH_SIZE=9\n")

    assert load_settings().batch_size == 9


def test_every_schedule_of_a_registered_job_and_every_tooling_knob_is_accepted(clean_env, monkeypatch):
    from core.settings import NOT_SETTINGS
    from jobs import NAMES

    for job in NAMES:
        monkeypatch.setenv(f"REWARDS_SCHEDULE_{job.upper().replace('-', '_')}", "off")
    for name in NOT_SETTINGS:
        monkeypatch.setenv(name, "1")

    assert all(load_settings().schedule_for(job) is None for job in NAMES)


REPO = Path(__file__).resolve().parents[2]
# How the project's own tooling reads a variable: os.environ.get("X"), os.environ["X"], ${X…}, export X=.
_READ_FROM_ENVIRONMENT = re.compile(
    r"""environ(?:\.get\(|\[)\s*["'](REWARDS_\w+)|\$\{?(REWARDS_\w+)|export (REWARDS_\w+)""")


def test_the_rewards_variables_the_tooling_reads_are_settings_or_known_knobs():
    """A knob added to the tests, CI, bench or image with the REWARDS_ prefix would make every command
    refuse to start where it is set: it must be listed in NOT_SETTINGS (or named otherwise)."""
    from core.settings import NOT_SETTINGS, known_names
    from jobs import PipelineSettings

    files = [path for folder in ("tests", "bench", ".ci", "cli", "core", "jobs") for path in (REPO / folder).rglob("*")
             if path.is_file() and path.suffix in ("", ".py", ".sh", ".yml", ".yaml", ".toml")]
    read = {name for path in files + [REPO / "Dockerfile"]
            for match in _READ_FROM_ENVIRONMENT.finditer(path.read_text(errors="replace")) for name in match.groups()
            if name}

    assert {"REWARDS_TEST_CITUS", "REWARDS_CI_CITUS", "REWARDS_ANY_HISTORY_SEED"} <= read  # the scan finds them
    assert read - known_names(PipelineSettings) - NOT_SETTINGS == set()
    assert NOT_SETTINGS - read == set()  # no stale entry
