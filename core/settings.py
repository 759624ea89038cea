"""Settings of the machinery, from the environment or `.env`, validated once at start.

`CoreSettings` holds what every job shares and knows no job: the database, batches, report folder,
the daemon (leases, retries, catch-up), timeouts, HTTP and logs. The rules' settings are added by a
subclass in `jobs/settings.py`, and one `REWARDS_SCHEDULE_<JOB>` per registered job by
`with_schedules` (`jobs/__init__.py`), so core code is typed against this class and reads only its fields.

A bad value raises `ConfigError` with one line naming the variable; the CLI turns it into exit code 2.
So do a `.env` that is not UTF-8 and a `REWARDS_` name that is no setting (a typo would be ignored).
Secrets (the database password) are never echoed back.
"""
from __future__ import annotations

import codecs
import difflib
import os
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import AfterValidator, Field, ValidationError, create_model, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

ENV_PREFIX = "REWARDS_"
ENV_FILE = ".env"

# REWARDS_ variables that are not settings of the program but knobs of its own test suite and CI
# (.ci/run, tests/integration/citus/, tests/integration/test_rewards_any_history.py): a command started
# from a shell that set them must not be refused. tests/unit/test_settings.py keeps this list complete.
NOT_SETTINGS = frozenset({
    "REWARDS_CI_CITUS", "REWARDS_TEST_CITUS", "REWARDS_CITUS_PORT",
    "REWARDS_ANY_HISTORY_SEED", "REWARDS_ANY_HISTORY_FIRST_SEED", "REWARDS_ANY_HISTORY_EXAMPLES",
    "REWARDS_ANY_HISTORY_CITUS_EXAMPLES", "REWARDS_ANY_HISTORY_STATS", "REWARDS_SOAK_HISTORIES",
})


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


def cron_trigger(expression: str) -> CronTrigger:
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
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


class CoreSettings(BaseSettings):
    model_config = SettingsConfigDict(
        # extra="ignore": a .env shared with other programs (docker compose's POSTGRES_PASSWORD, …) is
        # fine; a REWARDS_ name that is not a setting is refused by `load_settings` (from .env and the
        # environment alike, which extra="forbid" would not see). utf-8-sig: a BOM would hide the first name.
        env_prefix=ENV_PREFIX, env_file=ENV_FILE, env_file_encoding="utf-8-sig", extra="ignore", frozen=True,
        populate_by_name=True,
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
        from core.connect import check_url

        check_url(value.strip())  # as SQLAlchemy and libpq read it, without importing SQLAlchemy
        return value.strip()

    @field_validator("data_dir", "reports_dir", mode="before")
    @classmethod
    def _directory(cls, value: object) -> object:  # the raw input, before pydantic reads it as a Path
        if isinstance(value, str) and not value.strip():
            raise ValueError("must be a directory path, not empty")
        return value

    @field_validator("http_host")
    @classmethod
    def _http_host(cls, value: str) -> str:
        import ipaddress

        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOST_NAME.fullmatch(value):
                raise ValueError("must be an IP address or a host name (like 127.0.0.1 or 0.0.0.0)") from None
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


# The settings class a generic piece of core is handed: `CoreSettings` or a subclass (the rules' `RuleSettings`,
# and the face's `PipelineSettings` with one schedule per job), whose fields core never reads beyond its own.
AnySettings = TypeVar("AnySettings", bound=CoreSettings)


def schedule_field(job: str) -> str:
    """The settings field of a job's schedule: `reconcile` → `schedule_reconcile` (REWARDS_SCHEDULE_RECONCILE)."""
    return "schedule_" + job.replace("-", "_")


def with_schedules(base: type[AnySettings], defaults: Mapping[str, str], *, name: str) -> type[AnySettings]:
    """`base` with one validated cron field per job, `REWARDS_SCHEDULE_<JOB>`, defaulting to `defaults[job]`:
    a subclass called `name`, built at run time (the jobs are known only then), so typed as `base`."""
    # (type, default) by field name; Any: pydantic's keywords mix these with `__base__` and the like
    fields: dict[str, Any] = {schedule_field(job): (Schedule, default) for job, default in defaults.items()}
    return create_model(name, __base__=base, __module__=base.__module__, **fields)


def env_name(field: str) -> str:
    """The environment variable that sets a settings field (of `CoreSettings` or a subclass)."""
    known = CoreSettings.model_fields.get(field)
    alias = known.validation_alias if known else None
    return alias if isinstance(alias, str) else ENV_PREFIX + field.upper()


_SECRET_VARIABLES = {"DATABASE_URL"}


def load_settings(settings_class: type[AnySettings], **overrides: Any) -> AnySettings:
    """Read and validate the settings; raise `ConfigError` naming the first bad variable.

    `overrides` are raw values of any field (Any: pydantic validates them here, at run time)."""
    dot_env = read_env_file(Path(ENV_FILE))
    refuse_unknown_names(settings_class, {"the environment": os.environ, ENV_FILE: dot_env})
    try:
        return settings_class(**overrides)
    except ValidationError as error:
        raise ConfigError(_first_problem(error, settings_class)) from None


def _first_problem(error: ValidationError, settings_class: type[CoreSettings]) -> str:
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a check across several variables names them itself
        return message
    location = str(first["loc"][0])
    name = env_name(location) if location in settings_class.model_fields else location
    if name in _SECRET_VARIABLES:
        return f"{name}: {message}"
    return f"{name}: {message} (got {first.get('input')!r})"


def known_names(settings_class: type[CoreSettings]) -> set[str]:
    """The environment variables of every field: DATABASE_URL, REWARDS_BATCH_SIZE, REWARDS_SCHEDULE_<JOB>, …"""
    names = set()
    for field, info in settings_class.model_fields.items():
        alias = info.validation_alias
        names.add(alias if isinstance(alias, str) else ENV_PREFIX + field.upper())
    return names


def refuse_unknown_names(settings_class: type[CoreSettings], sources: Mapping[str, Iterable[str]]) -> None:
    """A REWARDS_ name that is no setting is a typo whose value would be silently ignored: refuse it,
    naming the closest setting. Names are matched without case, as pydantic-settings reads them."""
    known = known_names(settings_class)
    for source, names in sources.items():
        for name in sorted(names):
            upper = name.upper()
            if upper.startswith(ENV_PREFIX) and upper not in known and upper not in NOT_SETTINGS:
                raise ConfigError(_not_a_setting(name, source, known))


_SCHEDULE_PREFIX = ENV_PREFIX + "SCHEDULE_"


def _not_a_setting(name: str, source: str, known: set[str]) -> str:
    where = "" if source == "the environment" else f" (in {source})"
    return f"{name}{where} is not a setting; {_closest_setting(name.upper(), known)}"


def _closest_setting(name: str, known: set[str]) -> str:
    """`did you mean …?`; a schedule is compared with the schedules only, as one for a job that is not
    registered is not a setting at all."""
    prefix = _SCHEDULE_PREFIX if name.startswith(_SCHEDULE_PREFIX) else ENV_PREFIX
    # Compared without the prefix they share, which would make any two names look alike.
    by_suffix = {candidate.removeprefix(prefix): candidate for candidate in sorted(known)
                 if prefix == ENV_PREFIX or candidate.startswith(prefix)}
    closest = difflib.get_close_matches(name.removeprefix(prefix), by_suffix, n=1, cutoff=0.6)
    if closest:
        return f"did you mean {by_suffix[closest[0]]}?"
    if prefix == _SCHEDULE_PREFIX:
        jobs = ", ".join(suffix.lower().replace("_", "-") for suffix in by_suffix)
        return f"there is no job {name.removeprefix(prefix).lower().replace('_', '-')} (the jobs: {jobs})"
    return "no setting has a similar name (see README.md, Configuration)"


def read_env_file(path: Path) -> dict[str, str | None]:
    """The variables of `.env` (none when there is no such file), read as pydantic-settings reads them;
    ConfigError when it cannot be read or is not UTF-8 text (it would fail deep in python-dotenv)."""
    if not path.is_file():
        return {}
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror})") from None
    try:
        raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(_not_utf8(path, raw, error.start)) from None
    from dotenv import dotenv_values

    return dotenv_values(path, encoding="utf-8-sig")


def _not_utf8(path: Path, raw: bytes, position: int) -> str:
    """Which line (and variable) of a file is not UTF-8; never a byte of it: the value may be a password."""
    for encoding, marks in (("UTF-32", (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)),
                            ("UTF-16", (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))):
        if raw.startswith(marks):
            return f"{path}: is {encoding} text; save it as UTF-8"
    line_number = raw.count(b"\n", 0, position) + 1
    line = raw.split(b"\n")[line_number - 1]
    name = _ENV_NAME.match(line)
    variable = f"{name.group(1).decode()} ({path} line {line_number})" if name else f"{path} line {line_number}"
    return f"{variable}: not UTF-8 text; save {path} as UTF-8"


_ENV_NAME = re.compile(rb"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=")
