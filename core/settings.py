"""Settings from the environment or `.env`, validated once at start.

A bad value raises `ConfigError` with one line naming the variable; the CLI turns it into exit code 2.
Secrets (the database password) are never echoed back.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

JOB_NAMES = ("expire-pending", "recurring-rewards", "level2-rewards", "expire-points", "reconcile")

DEFAULT_SCHEDULES = {
    "expire-pending": "5 0 * * *",
    "recurring-rewards": "15 0 * * *",
    "level2-rewards": "30 0 * * *",
    "expire-points": "45 0 * * *",
    "reconcile": "0 1 * * *",
}

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


def _validate_cron(expression: str) -> str:
    from apscheduler.triggers.cron import CronTrigger

    expression = expression.strip()
    if expression.lower() == "off":
        return "off"
    try:
        CronTrigger.from_crontab(expression, timezone="UTC")
    except ValueError as error:
        raise ValueError(f"must be a 5-field cron expression in UTC or 'off' ({error})") from None
    return expression


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REWARDS_", env_file=".env", extra="ignore", frozen=True, populate_by_name=True
    )

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    embedded: bool = True
    data_dir: Path = Path("./.rewards-data")

    pending_expiry_days: int = Field(default=90, ge=1)
    recurring_months: int = Field(default=12, ge=0)
    l2_months: int = Field(default=6, ge=0)
    recurring_reward: Annotated[RewardAmount, NoDecode] = RewardAmount(percent=Decimal("10"))
    l2_reward: Annotated[RewardAmount, NoDecode] = RewardAmount(percent=Decimal("5"))
    points_per_usd: Decimal = Field(default=Decimal("100"), ge=0)
    points_expiry_months: int = Field(default=12, ge=0)
    payments_table: str = "public.user_subscription_payments"

    batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    reports_dir: Path = Path("./reports")
    reconcile_repair: bool = False

    schedule_expire_pending: str = DEFAULT_SCHEDULES["expire-pending"]
    schedule_recurring_rewards: str = DEFAULT_SCHEDULES["recurring-rewards"]
    schedule_level2_rewards: str = DEFAULT_SCHEDULES["level2-rewards"]
    schedule_expire_points: str = DEFAULT_SCHEDULES["expire-points"]
    schedule_reconcile: str = DEFAULT_SCHEDULES["reconcile"]
    misfire_grace_seconds: int = Field(default=3600, ge=1)
    run_lease_seconds: int = Field(default=300, ge=1)
    migrate_on_start: bool = False

    http_port: int = Field(default=9108, ge=0, le=65535)
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
        except ArgumentError:
            raise ValueError("must be a URL like postgresql://user:password@host:5432/dbname") from None
        if not url.drivername.startswith("postgres"):
            raise ValueError("must be a postgresql:// URL")
        return value.strip()

    @field_validator("recurring_reward", "l2_reward", mode="before")
    @classmethod
    def _reward(cls, value: Any) -> RewardAmount:
        return value if isinstance(value, RewardAmount) else RewardAmount.parse(value)

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
        location = str(first["loc"][0]) if first["loc"] else "?"
        name = env_name(location) if location in Settings.model_fields else location
        message = first["msg"].removeprefix("Value error, ")
        if name in _SECRET_VARIABLES:
            raise ConfigError(f"{name}: {message}") from None
        raise ConfigError(f"{name}: {message} (got {first.get('input')!r})") from None
