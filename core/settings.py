"""Settings of the machinery, from the environment or `.env`, validated once at start.

`CoreSettings` holds what every job shares and knows no job: the database, batches, report folder,
the daemon (leases, retries, catch-up), timeouts, HTTP and logs. The rules' settings are added by a
subclass in `jobs/settings.py`, and one `REWARDS_SCHEDULE_<JOB>` per registered job by
`with_schedules` (`jobs/__init__.py`), so core code is typed against this class and reads only its fields.

A bad value raises `ConfigError` with one line naming the variable; the CLI turns it into exit code 2.
Secrets (the database password) are never echoed back.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, Field, ValidationError, create_model, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "REWARDS_"


class ConfigError(Exception):
    """A setting or argument is wrong; the message is one line that names it."""


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


Schedule = Annotated[str, AfterValidator(_validate_cron)]


class CoreSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True, populate_by_name=True
    )

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    embedded: bool = True
    data_dir: Path = Path("./.rewards-data")

    batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    reports_dir: Path = Path("./reports")

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

    http_port: int = Field(default=9108, ge=0, le=65535)
    http_host: str = "127.0.0.1"
    log_format: str = "auto"
    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from core.connect import parse_url

        try:
            url = parse_url(value.strip())  # as SQLAlchemy reads it, without importing SQLAlchemy
        except ValueError:  # never echo a piece of the URL: it may be the password
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
        """The job's cron expression, or None when it is `off` (`with_schedules` adds the fields)."""
        try:
            expression = getattr(self, schedule_field(job))
        except AttributeError:
            raise ConfigError(f"{env_name(schedule_field(job))}: no such setting (is {job} registered?)") from None
        return None if expression == "off" else expression


# The name core/job.py and the reward jobs import for their type hints (the same class).
Settings = CoreSettings
AnySettings = TypeVar("AnySettings", bound=CoreSettings)


def schedule_field(job: str) -> str:
    """The settings field of a job's schedule: `reconcile` → `schedule_reconcile` (REWARDS_SCHEDULE_RECONCILE)."""
    return "schedule_" + job.replace("-", "_")


def with_schedules(base: type[AnySettings], defaults: Mapping[str, str], *,
                   name: str = "Settings") -> type[AnySettings]:
    """`base` with one validated cron field per job, `REWARDS_SCHEDULE_<JOB>`, defaulting to `defaults[job]`."""
    fields: dict[str, Any] = {schedule_field(job): (Schedule, default) for job, default in defaults.items()}
    return create_model(name, __base__=base, __module__=base.__module__, **fields)


def _check_connection_options(url: Any) -> None:
    """Refuse a URL query option libpq does not know (only the option's name is shown, never its value)."""
    import psycopg2.extensions

    for name in url.query:
        try:
            psycopg2.extensions.parse_dsn(f"{name}=x")
        except psycopg2.ProgrammingError:
            raise ValueError(f"unknown connection option {name!r} in its query string") from None


def env_name(field: str) -> str:
    """The environment variable that sets a settings field (of `CoreSettings` or a subclass)."""
    known = CoreSettings.model_fields.get(field)
    alias = known.validation_alias if known else None
    return alias if isinstance(alias, str) else ENV_PREFIX + field.upper()


_SECRET_VARIABLES = {"DATABASE_URL"}


def load_settings(settings_class: type[AnySettings], **overrides: Any) -> AnySettings:
    """Read and validate the settings; raise `ConfigError` naming the first bad variable."""
    try:
        return settings_class(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        if not first["loc"]:  # a check across several variables names them itself
            raise ConfigError(first["msg"].removeprefix("Value error, ")) from None
        location = str(first["loc"][0])
        name = env_name(location) if location in settings_class.model_fields else location
        message = first["msg"].removeprefix("Value error, ")
        if name in _SECRET_VARIABLES:
            raise ConfigError(f"{name}: {message}") from None
        raise ConfigError(f"{name}: {message} (got {first.get('input')!r})") from None
