"""How a session connects, without SQLAlchemy: the URL, the session's options, and a bare psycopg2
connection for the commands that only read (`health`, `jobs`).

The engine (`core/db.py`) and that connection share one recipe, so both sessions get the
same timeouts, `TimeZone=UTC` and application name. `parse_url` reads a `DATABASE_URL` exactly as
SQLAlchemy's `make_url` does (its pattern, its unquoting), so settings can be checked without
importing SQLAlchemy (≈0.2 s of a command's start).
"""
from __future__ import annotations

import os
import re
from collections import namedtuple
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from core.sql import Fetch

if TYPE_CHECKING:
    from core.settings import CoreSettings

# SQLAlchemy's own pattern (sqlalchemy/engine/url.py, _parse_url), so both read a URL the same way.
_URL = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
        """,
    re.X,
)


@dataclass(frozen=True)
class DatabaseURL:
    drivername: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)


def parse_url(text: str) -> DatabaseURL:
    """A database URL's parts, as SQLAlchemy's `make_url` reads them; ValueError when it is not one."""
    match = _URL.match(text)
    if match is None:
        raise ValueError("Could not parse SQLAlchemy URL from given URL string")
    parts = match.groupdict()
    query: dict[str, str | tuple[str, ...]] = {}
    for key, value in parse_qsl(parts["query"] or ""):
        if key in query:
            earlier = query[key]
            query[key] = (*earlier, value) if isinstance(earlier, tuple) else (earlier, value)
        else:
            query[key] = value
    username, password, database = (unquote(parts[name]) if parts[name] is not None else None
                                    for name in ("username", "password", "database"))
    return DatabaseURL(parts["name"], username, password, parts["ipv4host"] or parts["ipv6host"],
                       int(parts["port"]) if parts["port"] is not None else None, database, query)


# The options whose values libpq checks only when it connects (fe-connect.c, libpq 17): checked at
# start instead, so a typo is refused naming DATABASE_URL and the daemon does not wait on it forever.
_OPTION_CHOICES: dict[str, tuple[str, ...]] = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
    "load_balance_hosts": ("disable", "random"),
    "sslnegotiation": ("postgres", "direct"),
    "sslcertmode": ("disable", "allow", "require"),
    "ssl_min_protocol_version": ("", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),  # without case
    "ssl_max_protocol_version": ("", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
}
_WITHOUT_CASE = ("ssl_min_protocol_version", "ssl_max_protocol_version")
# require_auth: a comma-separated list of these, each may be negated (`!password`)
_AUTH_METHODS = ("password", "md5", "gss", "sspi", "scram-sha-256", "none")
_INTEGER_OPTIONS = ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
                    "tcp_user_timeout")
_INTEGER = re.compile(r"\s*[+-]?\d{1,9}\s*")  # libpq's strtol into an int, blanks around it allowed
_SURROGATE = re.compile("[\udc80-\udcff]")  # a byte that was not UTF-8 in the environment (surrogateescape)


def check_url(text: str) -> DatabaseURL:
    """`text` as a PostgreSQL URL libpq will accept, or ValueError with a message that never quotes
    the user, password or host (a piece of the password may sit in any of them when it is mistyped)."""
    if _SURROGATE.search(text):
        raise ValueError("is not UTF-8 text (it has a byte that is not UTF-8)")
    try:
        url = parse_url(text)
    except ValueError:
        raise ValueError("must be a URL like postgresql://user:password@host:5432/dbname") from None
    if url.drivername not in ("postgresql", "postgres", "postgresql+psycopg2"):
        raise ValueError("must be a postgresql:// URL (its scheme is not postgresql)")
    if url.host and "@" in url.host:  # the rest of the password would show up as a host name
        raise ValueError("has an unescaped '@' in its user or password (write it as %40)")
    _check_escapes(_URL.match(text).groupdict())  # type: ignore[union-attr]  (parse_url matched it)
    _check_port(url.port)
    _check_options(url.query)
    return url


def _check_escapes(parts: dict[str, str | None]) -> None:
    """A %-escape must decode to UTF-8: SQLAlchemy would turn `%FF` into U+FFFD, a different password."""
    for part, label in (("username", "user name"), ("password", "password"), ("database", "database name")):
        try:
            unquote(parts[part] or "", errors="strict")
        except UnicodeDecodeError:
            raise ValueError(f"its {label} has a %-escape that is not UTF-8 text (like %FF)") from None


def _check_port(port: int | str | None) -> None:
    for item in str(port).split(",") if port is not None else ():
        if item.strip() and not (item.strip().isdigit() and 1 <= int(item) <= 65535):
            shown = f" {item.strip()}" if item.strip().isdigit() else ""
            raise ValueError(f"port{shown} is out of range (1 to 65535)")


def _check_options(query: Mapping[str, str | tuple[str, ...]]) -> None:
    """Refuse a query option libpq does not know, or a value it would refuse (only the option's name
    and its value from a fixed list are shown: an unknown option's value might be a password)."""
    import psycopg2.extensions

    for name, given in query.items():
        try:
            psycopg2.extensions.parse_dsn(f"{name}=x")
        except psycopg2.ProgrammingError:
            raise ValueError(f"unknown connection option {name!r} in its query string") from None
        for value in given if isinstance(given, tuple) else (given,):
            _check_option_value(name, value)


def _check_option_value(name: str, value: str) -> None:
    choices = _OPTION_CHOICES.get(name)
    if choices is not None and not any(value == choice or name in _WITHOUT_CASE and value.lower() == choice.lower()
                                       for choice in choices):
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choice for choice in choices if choice)}")
    if name == "require_auth" and any(method.removeprefix("!") not in _AUTH_METHODS for method in value.split(",")):
        raise ValueError(f"require_auth={value!r} is not a list of {', '.join(_AUTH_METHODS)} (each may be !negated)")
    if name in _INTEGER_OPTIONS and not _INTEGER.fullmatch(value):
        raise ValueError(f"{name} must be a whole number, not {value!r}")
    if name == "port":
        _check_port(value)


def without_password(text: str, url: str | None) -> str:
    """`text` with the password of `url` (as written in it, and decoded) blanked out."""
    match = _URL.match(url or "")
    written = match.group("password") if match else None
    for form in sorted({written, unquote(written or "")} - {None, ""}, key=len, reverse=True):
        text = text.replace(form, "***")  # type: ignore[arg-type]
    return text


@dataclass(frozen=True)
class Timeouts:
    """Seconds; 0 turns one off (PostgreSQL's own meaning of 0)."""

    connect: int = 0
    statement: int = 0
    lock: int = 0
    idle_in_transaction: int = 0

    @classmethod
    def from_settings(cls, settings: CoreSettings) -> Timeouts:
        return cls(settings.db_connect_timeout_seconds, settings.db_statement_timeout_seconds,
                   settings.db_lock_timeout_seconds, settings.db_idle_in_transaction_timeout_seconds)

    def session_options(self) -> list[str]:
        return [f"-c statement_timeout={self.statement * 1000}", f"-c lock_timeout={self.lock * 1000}",
                f"-c idle_in_transaction_session_timeout={self.idle_in_transaction * 1000}"]


def session_options(timeouts: Timeouts | None, url_options: str | None, env_options: str | None) -> str:
    """libpq `options`: our defaults first, then PGOPTIONS, then the URL's, then TimeZone=UTC.

    JIT is off by default: the jobs' statements run once per batch, and compiling one cost more than
    it saved (0.7 s of a 1.1 s expire-points batch at 200k users)."""
    parts = ["-c jit=off"] + (timeouts.session_options() if timeouts else [])
    parts += [given for given in (env_options, url_options) if given and given.strip()]
    parts.append("-c TimeZone=UTC")
    return " ".join(parts)


def session_arguments(query: Mapping[str, Any], timeouts: Timeouts | None) -> dict[str, Any]:
    """The psycopg2 arguments this product adds to a URL's: the merged `options`, the application
    name (the URL's, else ours) and the connect timeout (unless the URL sets one)."""
    url_options = query.get("options")
    if isinstance(url_options, tuple):
        url_options = " ".join(url_options)
    arguments: dict[str, Any] = {
        "options": session_options(timeouts, url_options, os.environ.get("PGOPTIONS")),
        "application_name": query.get("application_name", "rewards-jobs"),
    }
    if timeouts and timeouts.connect and "connect_timeout" not in query:
        arguments["connect_timeout"] = timeouts.connect
    return arguments


def psycopg2_arguments(url: DatabaseURL, timeouts: Timeouts | None) -> dict[str, Any] | None:
    """What the engine's psycopg2 dialect would pass to `psycopg2.connect` for this URL, or None for a
    URL whose reading is SQLAlchemy's own business (several hosts or ports, a repeated query option).
    One `?host=` (a socket folder, as the embedded server's URL has) passes through as it is."""
    several_hosts = any(mark in str(url.query.get("host", "")) for mark in ",:")
    if several_hosts or "port" in url.query or any(isinstance(v, tuple) for v in url.query.values()):
        return None
    given = {"host": url.host, "dbname": url.database, "user": url.username, "password": url.password,
             "port": url.port}
    arguments = {name: value for name, value in given.items() if value}
    arguments.update((name, value) for name, value in url.query.items()
                     if name not in ("options", "application_name"))
    arguments.update(session_arguments(url.query, timeouts))
    return arguments


class ReadFailed(Exception):
    """A read-only statement failed in the database; the driver's error is `orig` (as SQLAlchemy's
    DBAPIError has it), so the face reports both the same way."""

    def __init__(self, orig: Exception) -> None:
        super().__init__(str(orig))
        self.orig = orig


def reading_connection(settings: CoreSettings) -> Any | None:
    """A psycopg2 connection to `DATABASE_URL` with the engine's session options, for reads; or None
    when the URL needs the engine (no URL: the embedded database; several hosts)."""
    if not settings.database_url:
        return None
    arguments = psycopg2_arguments(parse_url(settings.database_url), Timeouts.from_settings(settings))
    if arguments is None:
        return None
    import psycopg2

    try:
        return psycopg2.connect(**arguments)
    except psycopg2.Error as error:
        raise ReadFailed(error) from error


def fetcher(dbapi_connection: Any) -> Fetch:
    """A `Fetch` over one DB-API connection (psycopg2's, or an engine's raw one): rows as named tuples."""
    def fetch(statement: str) -> list[Any]:
        import psycopg2

        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(statement)
                row = _row_type(tuple(column.name for column in cursor.description))
                return [row._make(values) for values in cursor.fetchall()]
        except psycopg2.Error as error:
            raise ReadFailed(error) from error

    return fetch


@lru_cache(maxsize=64)
def _row_type(columns: tuple[str, ...]) -> Any:
    return namedtuple("Row", columns, rename=True)  # type: ignore[misc]  (`?column?` becomes `_0`)
