"""Settings: SPEC.md's defaults, and every bad value refused at start with one line naming the variable
(exit code 2, no traceback); a password never shows."""
from __future__ import annotations

import os
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
