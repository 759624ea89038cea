"""How a session connects, without SQLAlchemy: the URL, the session's options, and a bare psycopg2
connection for the commands that only read (`health`, `jobs`).

The engine (`core/db.py`) and that connection share one recipe, so both sessions get the
same timeouts, `TimeZone=UTC` and application name. libpq reads a `DATABASE_URL` here (psycopg2's
`parse_dsn`), so settings are checked and the light connection made without importing SQLAlchemy
(≈0.2 s of a command's start); the engine reads it with SQLAlchemy's `make_url`. Where the two readings
could differ, `check_url` refuses the URL (a `/` or `@` unescaped in the password, a %-escape that is
not UTF-8) or the light connection leaves it to the engine (several hosts, a repeated option, a `+`).
"""
from __future__ import annotations

import os
import re
from collections import namedtuple
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple, Required, TypedDict, cast
from urllib.parse import parse_qsl, unquote

from core.sql import Fetch

if TYPE_CHECKING:
    import psycopg2.extensions
    from sqlalchemy import Connection, Engine

    from core.settings import CoreSettings

_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2")
_SCHEME = re.compile(r"[\w+]+")
# The user information as SQLAlchemy's `make_url` finds it (its pattern): a user, then `:` and a password
# up to the first `@`. Only to redact a password as written, and to see a `/` in it, which would end
# libpq's host part where SQLAlchemy reads on.
_USERINFO = re.compile(r"[^:/]*(?::(?P<password>[^@]*))?@")
_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
_NOT_UTF8 = "%01"  # stands in for a %-escape that is not UTF-8, to learn from libpq which part holds it


@dataclass(frozen=True)
class DatabaseURL:
    """A `DATABASE_URL` as libpq reads it, and its query string as SQLAlchemy reads it."""

    libpq_text: str  # the URL under the scheme libpq knows (postgresql://)
    parts: Mapping[str, str]  # libpq's keywords: host, port, dbname, user, password, options, …
    query_text: str  # the query string as written (after the first `?` past the user information)

    @property
    def query(self) -> list[tuple[str, str]]:
        """The query's pairs in order, as SQLAlchemy's `make_url` reads them (`parse_qsl`)."""
        return parse_qsl(self.query_text)


def _split_scheme(text: str) -> tuple[str, str]:
    scheme, found, rest = text.partition("://")
    if not found or not _SCHEME.fullmatch(scheme):
        raise ValueError("must be a URL like postgresql://user:password@host:5432/dbname")
    return scheme, rest


def _query_text(rest: str) -> str:
    userinfo = _USERINFO.match(rest)
    return (rest[userinfo.end():] if userinfo else rest).partition("?")[2]


def read_url(text: str) -> DatabaseURL:
    """`text` read by libpq (psycopg2's `parse_dsn`); ValueError when libpq cannot read it (its own
    message is not kept: it quotes the URL, password and all)."""
    import psycopg2.extensions

    _scheme, rest = _split_scheme(text)
    libpq_text = "postgresql://" + rest
    try:
        parts = psycopg2.extensions.parse_dsn(libpq_text)
    except (psycopg2.ProgrammingError, UnicodeDecodeError):
        raise ValueError("must be a URL like postgresql://user:password@host:5432/dbname") from None
    return DatabaseURL(libpq_text, parts, _query_text(rest))


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
    """`text` as a PostgreSQL URL libpq will accept and SQLAlchemy reads alike, or ValueError with a
    message that never quotes the user, password or host (a piece of the password may sit in any of them
    when it is mistyped)."""
    if _SURROGATE.search(text):
        raise ValueError("is not UTF-8 text (it has a byte that is not UTF-8)")
    scheme, rest = _split_scheme(text)
    if scheme not in _SCHEMES:
        raise ValueError("must be a postgresql:// URL (its scheme is not postgresql)")
    userinfo = _USERINFO.match(rest)
    if userinfo and "/" in (userinfo["password"] or ""):  # libpq would read the rest as the host and port
        raise ValueError("has an unescaped '/' in its password (write it as %2F)")
    _check_options(parse_qsl(_query_text(rest)))  # before libpq reads it: its refusal quotes the URL
    _check_escapes(rest)
    url = read_url(text)
    if "@" in url.parts.get("host", "") + url.parts.get("port", ""):  # the rest of the password, as a host
        raise ValueError("has an unescaped '@' in its user or password (write it as %40)")
    _check_port(url.parts.get("port"))
    return url


def _check_escapes(rest: str) -> None:
    """A %-escape must decode to UTF-8: SQLAlchemy would turn `%FF` into U+FFFD, a different password."""
    marked = _ESCAPES.sub(lambda found: found[0] if _utf8(found[0]) else _NOT_UTF8, rest)
    if marked == rest:
        return
    parts = read_url("postgresql://" + marked).parts
    for part, label in (("password", "password"), ("user", "user name"), ("dbname", "database name")):
        if unquote(_NOT_UTF8) in parts.get(part, ""):
            raise ValueError(f"its {label} has a %-escape that is not UTF-8 text (like %FF)")
    raise ValueError("has a %-escape that is not UTF-8 text (like %FF)")


def _utf8(escapes: str) -> bool:
    try:
        unquote(escapes, errors="strict")
    except UnicodeDecodeError:
        return False
    return True


def _check_port(port: str | None) -> None:
    for item in (port or "").split(","):
        if not item.strip():
            continue
        try:
            number = int(item)
        except ValueError:
            raise ValueError("must be a URL like postgresql://user:password@host:5432/dbname") from None
        if not 1 <= number <= 65535:
            raise ValueError(f"port{f' {number}' if number >= 0 else ''} is out of range (1 to 65535)")


def _check_options(query: list[tuple[str, str]]) -> None:
    """Refuse a query option libpq does not know, or a value it would refuse (only the option's name
    and its value from a fixed list are shown: an unknown option's value might be a password)."""
    import psycopg2.extensions

    for name, value in query:
        try:
            psycopg2.extensions.parse_dsn(f"{name}=x")
        except psycopg2.ProgrammingError:
            raise ValueError(f"unknown connection option {name!r} in its query string") from None
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
    userinfo = _USERINFO.match((url or "").partition("://")[2])
    written = userinfo["password"] if userinfo else None
    for form in sorted({form for form in (written, unquote(written or "")) if form}, key=len, reverse=True):
        text = text.replace(form, "***")
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


class SessionArguments(TypedDict, total=False):
    """The psycopg2 connect arguments this product adds to a URL's (`session_arguments`)."""

    options: Required[str]
    application_name: Required[str]
    connect_timeout: int


def session_arguments(query: Mapping[str, str | tuple[str, ...]], timeouts: Timeouts | None) -> SessionArguments:
    """The psycopg2 arguments this product adds to a URL's (`query`: SQLAlchemy's reading of it, a repeated
    name's values in a tuple, or libpq's keywords): the merged `options`, the application name (the URL's,
    the last of several as libpq reads them, else ours) and the connect timeout (unless the URL sets one)."""
    url_options = query.get("options")
    if isinstance(url_options, tuple):
        url_options = " ".join(url_options)
    application_name = query.get("application_name", "rewards-jobs")
    arguments: SessionArguments = {
        "options": session_options(timeouts, url_options, os.environ.get("PGOPTIONS")),
        "application_name": application_name if isinstance(application_name, str) else application_name[-1],
    }
    if timeouts and timeouts.connect and "connect_timeout" not in query:
        arguments["connect_timeout"] = timeouts.connect
    return arguments


def light_dsn(url: DatabaseURL, timeouts: Timeouts | None) -> str | None:
    """The libpq connection string of the light connection: the URL, with the arguments the engine adds
    (`session_arguments`). None for a URL whose reading is SQLAlchemy's own business: several hosts or
    ports, a repeated query option, a `+` in the query (a space to SQLAlchemy, a `+` to libpq). One
    `?host=` (a socket folder, as the embedded server's URL has) is libpq's to read."""
    import psycopg2.extensions

    names = [name for name, _value in url.query]
    hosts = [value for name, value in url.query if name == "host"]
    if (len(set(names)) < len(names) or "port" in names or any(mark in host for host in hosts for mark in ",:")
            or "+" in url.query_text):
        return None
    return psycopg2.extensions.make_dsn(url.libpq_text, **session_arguments(url.parts, timeouts))


class ReadFailed(Exception):
    """A read-only statement failed in the database; the driver's error is `orig` (as SQLAlchemy's
    DBAPIError has it), so the face reports both the same way."""

    def __init__(self, orig: Exception) -> None:
        super().__init__(str(orig))
        self.orig = orig


def reading_connection(settings: CoreSettings) -> psycopg2.extensions.connection | None:
    """A psycopg2 connection to `DATABASE_URL` with the engine's session options, for reads; or None
    when the URL needs the engine (no URL: the embedded database; several hosts)."""
    if not settings.database_url:
        return None
    dsn = light_dsn(read_url(settings.database_url), Timeouts.from_settings(settings))
    if dsn is None:
        return None
    import psycopg2

    try:
        return psycopg2.connect(dsn)
    except psycopg2.Error as error:
        raise ReadFailed(error) from error


@contextmanager
def reading(engine: Engine) -> Iterator[Fetch]:
    """A `Fetch` on one connection of the engine's pool: the reads that `health` and `jobs` make on
    their light connection run the same way, on the same adapter (`fetcher`), for the daemon and jobs."""
    with engine.connect() as conn:
        yield fetch_on(conn)


def fetch_on(conn: Connection) -> Fetch:
    """`fetcher` on the DB-API connection under a SQLAlchemy one; its errors are SQLAlchemy's
    (`DBAPIError`'s subclasses), as every other statement on an engine raises them."""
    fetch = fetcher(cast("psycopg2.extensions.connection", conn.connection.dbapi_connection))  # the driver

    def fetch_as_the_engine_does(statement: str) -> Sequence[Any]:
        try:
            return fetch(statement)
        except ReadFailed as failed:
            import psycopg2
            from sqlalchemy.exc import DBAPIError

            raise DBAPIError.instance(statement, None, failed.orig, psycopg2.Error) from failed.orig

    return fetch_as_the_engine_does


def fetcher(dbapi_connection: psycopg2.extensions.connection) -> Fetch:
    """The one adapter of the read-only statements: a `Fetch` over one psycopg2 connection (a bare one,
    or one of an engine's) whose rows read by attribute; the driver's errors become `ReadFailed`."""
    def fetch(statement: str) -> list[NamedTuple]:
        import psycopg2

        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(statement)  # (a statement without rows has no description: fetchall raises)
                row = _row_type(tuple(column.name for column in cursor.description or ()))
                return [row._make(values) for values in cursor.fetchall()]
        except psycopg2.Error as error:
            raise ReadFailed(error) from error

    return fetch


@lru_cache(maxsize=64)
def _row_type(columns: tuple[str, ...]) -> type[NamedTuple]:
    """A named tuple of these columns (typeshed calls `namedtuple`'s result a plain tuple class)."""
    return cast("type[NamedTuple]", namedtuple("Row", columns, rename=True))  # rename: `?column?` becomes `_0`
