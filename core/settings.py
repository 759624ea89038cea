"""Settings from the environment or `.env`, validated once at start.

A bad value raises `ConfigError` with one line naming the variable; the CLI turns it into exit code 2.
Secrets (the database password) are never echoed back.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

JOB_NAMES = ("expire-pending", "recurring-rewards", "level2-rewards", "expire-points", "expiring-soon", "reconcile")

DEFAULT_SCHEDULES = {
    "expire-pending": "5 0 * * *",
    "recurring-rewards": "15 0 * * *",
    "level2-rewards": "30 0 * * *",
    "expire-points": "45 0 * * *",
    "expiring-soon": "50 0 * * *",
    "reconcile": "0 1 * * *",
}

LEDGER_INT_MAX = 2**31 - 1

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class ConfigError(Exception):
    """A setting or argument is wrong; the message is one line that names it."""


@dataclass(frozen=True)
class RewardAmount:
    """Whole points (`150`) or a percentage of the basis payment (`2.5%`)."""

    points: int | None = None
    percent: Decimal | None = None

    @classmethod
    def parse(cls, text: str) -> RewardAmount:
        text = str(text).strip()
        if re.fullmatch(r"\d+", text):
            if int(text) > LEDGER_INT_MAX:
                raise ValueError(f"{text} points do not fit the ledger (at most {LEDGER_INT_MAX})")
            return cls(points=int(text))
        if re.fullmatch(r"\d+(\.\d+)?%", text):
            percent = Decimal(text[:-1])
            if percent <= 100:
                return cls(percent=percent)
        raise ValueError("must be whole points >= 0 (like 150) or a percentage from 0% to 100% (like 2.5%)")

    def __str__(self) -> str:
        return f"{self.points}" if self.points is not None else f"{self.percent}%"


def quote_table_name(name: str) -> str:
    """`schema.table` or `table`, each part a plain identifier, returned double-quoted for SQL."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(_IDENTIFIER.match(part) for part in parts):
        raise ValueError("must be a table or view name like public.user_subscription_payments")
    return ".".join(f'"{part}"' for part in parts)


_CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")  # crontab numbering, 7 = Sunday
_CRON_WEEKDAY_ITEM = re.compile(r"^(\*|\d)(?:-(\d))?(?:/(\d+))?$")


def _crontab_weekdays(field: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday) as weekday names: APScheduler 3 counts 0 as Monday."""
    if field == "*":
        return field
    names: list[str] = []
    for item in field.split(","):
        match = _CRON_WEEKDAY_ITEM.match(item)
        if not match:  # names (mon-fri) mean the same to both
            names.append(item)
            continue
        first, last, step = match.groups()
        start = 0 if first == "*" else int(first)
        end = (6 if first == "*" else start) if last is None else int(last)
        if end > 7 or start > end or step == "0":
            raise ValueError(f"bad day of week {item!r} (0-7, 0 and 7 are Sunday)")
        names.extend(_CRON_WEEKDAYS[day] for day in range(start, end + 1, int(step or 1)))
    return ",".join(dict.fromkeys(names))


def cron_trigger(expression: str) -> Any:
    """An APScheduler CronTrigger in UTC from a crontab expression with standard meaning.

    Five fields (minute hour day month weekday), or six with seconds first (`*/5 * * * * *`,
    for tests and demos). Weekdays count as in crontab: 0 and 7 are Sunday.
    """
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"wrong number of fields: got {len(fields)}, expected 5 (or 6 with seconds first)")
    if len(fields) == 5:
        fields.insert(0, "0")
    second, minute, hour, day, month, weekday = fields
    return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                       day_of_week=_crontab_weekdays(weekday), timezone="UTC")


def _validate_cron(expression: str) -> str:
    expression = expression.strip()
    if expression.lower() == "off":
        return "off"
    try:
        trigger = cron_trigger(expression)
    except ValueError as error:
        raise ValueError(f"must be a cron expression in UTC or 'off' ({error})") from None
    if trigger.get_next_fire_time(None, datetime.now(timezone.utc)) is None:  # like 0 0 31 2 *
        raise ValueError("never fires (no such date); use 'off' to turn a job off")
    return expression


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REWARDS_", env_file=".env", extra="ignore", frozen=True, populate_by_name=True
    )

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    embedded: bool = True
    data_dir: Path = Path("./.rewards-data")

    pending_expiry_days: int = Field(default=90, ge=1, le=36_500)
    recurring_months: int = Field(default=12, ge=0, le=1200)
    l2_months: int = Field(default=6, ge=0, le=1200)
    recurring_reward: Annotated[RewardAmount, NoDecode] = RewardAmount(percent=Decimal("10"))
    l2_reward: Annotated[RewardAmount, NoDecode] = RewardAmount(percent=Decimal("5"))
    points_per_usd: Decimal = Field(default=Decimal("100"), ge=0, le=LEDGER_INT_MAX, allow_inf_nan=False)
    reward_hold_days: int = Field(default=0, ge=0, le=365)
    points_expiry_months: int = Field(default=12, ge=0, le=1200)
    # expiring-soon: the CRM is told of points expiring in (as_of, as_of + this many days]; 0 = off
    expiry_notice_days: int = Field(default=30, ge=0, le=366)
    payments_table: str = "public.user_subscription_payments"

    batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    reports_dir: Path = Path("./reports")
    reconcile_repair: bool = False

    schedule_expire_pending: str = DEFAULT_SCHEDULES["expire-pending"]
    schedule_recurring_rewards: str = DEFAULT_SCHEDULES["recurring-rewards"]
    schedule_level2_rewards: str = DEFAULT_SCHEDULES["level2-rewards"]
    schedule_expire_points: str = DEFAULT_SCHEDULES["expire-points"]
    schedule_expiring_soon: str = DEFAULT_SCHEDULES["expiring-soon"]
    schedule_reconcile: str = DEFAULT_SCHEDULES["reconcile"]
    misfire_grace_seconds: int = Field(default=3600, ge=1)
    run_lease_seconds: int = Field(default=300, ge=1)
    # How often the daemon looks for a job whose last success is older than its previous tick.
    catch_up_check_seconds: int = Field(default=60, ge=1, le=3600)
    migrate_on_start: bool = False
    # The daemon retries a FAILED run after retry_base_seconds, doubling up to retry_max_seconds,
    # at most retry_attempts times, never past the job's next tick.
    retry_base_seconds: float = Field(default=30, gt=0, le=86_400, allow_inf_nan=False)
    retry_max_seconds: float = Field(default=900, gt=0, le=86_400, allow_inf_nan=False)
    retry_attempts: int = Field(default=4, ge=0, le=100)

    # Nothing waits forever (0 turns a timeout off). Options given in DATABASE_URL
    # (`?options=-c statement_timeout=…`, `?connect_timeout=…`) or PGOPTIONS win over these.
    db_connect_timeout_seconds: int = Field(default=10, ge=0, le=3600)
    db_statement_timeout_seconds: int = Field(default=900, ge=0, le=86_400)
    db_lock_timeout_seconds: int = Field(default=60, ge=0, le=86_400)
    db_idle_in_transaction_timeout_seconds: int = Field(default=300, ge=0, le=86_400)
    max_clock_skew_seconds: float = Field(default=5, gt=0, le=3600, allow_inf_nan=False)
    # A reconcile waits this long for a running ledger writer of the pipeline, then exits 3.
    reconcile_wait_seconds: int = Field(default=600, ge=0, le=86_400)

    http_port: int = Field(default=9108, ge=0, le=65535)
    http_host: str = "127.0.0.1"
    log_format: str = "auto"
    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value.strip())
        except (ArgumentError, ValueError):  # never echo a piece of the URL: it may be the password
            raise ValueError("must be a URL like postgresql://user:password@host:5432/dbname") from None
        if url.drivername not in ("postgresql", "postgres", "postgresql+psycopg2"):
            raise ValueError("must be a postgresql:// URL (its scheme is not postgresql)")
        _check_connection_options(url)
        if url.host and "@" in url.host:  # the rest of the password would show up as a host name
            raise ValueError("has an unescaped '@' in its user or password (write it as %40)")
        return value.strip()

    @field_validator("data_dir", "reports_dir", mode="before")
    @classmethod
    def _directory(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must be a directory path, not empty")
        return value

    @field_validator("recurring_reward", "l2_reward", mode="before")
    @classmethod
    def _reward(cls, value: Any) -> RewardAmount:
        return value if isinstance(value, RewardAmount) else RewardAmount.parse(value)

    @model_validator(mode="after")
    def _rewards_can_be_stored(self) -> Settings:
        """A percentage whose smallest reward (of a 1-cent payment) is already over INT never pays."""
        for name, amount in (("recurring_reward", self.recurring_reward), ("l2_reward", self.l2_reward)):
            if amount.percent and amount.percent * self.points_per_usd / 10000 > LEDGER_INT_MAX:
                raise ValueError(f"{env_name(name)}={amount} with REWARDS_POINTS_PER_USD={self.points_per_usd}"
                                 f" gives more than {LEDGER_INT_MAX} points for a 1-cent payment: no reward"
                                 f" could ever be stored")
        return self

    @field_validator("payments_table")
    @classmethod
    def _payments_table(cls, value: str) -> str:
        quote_table_name(value)
        return value

    @field_validator(
        "schedule_expire_pending",
        "schedule_recurring_rewards",
        "schedule_level2_rewards",
        "schedule_expire_points",
        "schedule_expiring_soon",
        "schedule_reconcile",
    )
    @classmethod
    def _schedule(cls, value: str) -> str:
        return _validate_cron(value)

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value.lower() not in ("json", "console", "auto"):
            raise ValueError("must be json, console or auto")
        return value.lower()

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value.upper()

    def schedule_for(self, job: str) -> str | None:
        """The job's cron expression, or None when it is `off`."""
        expression = getattr(self, "schedule_" + job.replace("-", "_"))
        return None if expression == "off" else expression

    @property
    def payments_table_sql(self) -> str:
        return quote_table_name(self.payments_table)


def _check_connection_options(url: Any) -> None:
    """Refuse a URL query option libpq does not know (only the option's name is shown, never its value)."""
    import psycopg2.extensions

    for name in url.query:
        try:
            psycopg2.extensions.parse_dsn(f"{name}=x")
        except psycopg2.ProgrammingError:
            raise ValueError(f"unknown connection option {name!r} in its query string") from None


def env_name(field: str) -> str:
    """The environment variable that sets a field of `Settings`."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else "REWARDS_" + field.upper()


_SECRET_VARIABLES = {"DATABASE_URL"}


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings; raise `ConfigError` naming the first bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        if not first["loc"]:  # a check across several variables names them itself
            raise ConfigError(first["msg"].removeprefix("Value error, ")) from None
        location = str(first["loc"][0]) if first["loc"] else "?"
        name = env_name(location) if location in Settings.model_fields else location
        message = first["msg"].removeprefix("Value error, ")
        if name in _SECRET_VARIABLES:
            raise ConfigError(f"{name}: {message}") from None
        raise ConfigError(f"{name}: {message} (got {first.get('input')!r})") from None
