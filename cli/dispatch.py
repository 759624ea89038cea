"""Runs a parsed command, and turns what goes wrong into one line and an exit code.

Bad settings, a bad `.env`, a `DATABASE_URL` libpq refuses or a bad argument: `error: …`, exit 2.
A database that does not answer: `error: database: …`, exit 1. A bug: its type and first line,
exit 1 (the traceback at DEBUG, once logging is set up). A password never reaches the screen.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import traceback
from collections.abc import Callable

from cli.database import configure_logging
from cli.usage import EXIT_FAILED, EXIT_USAGE, UsageError
from core.connect import ReadFailed, without_password
from core.migrations import MigrationError
from core.settings import ConfigError
import jobs  # its attribute at call time: tests replace `jobs.load_settings`
from jobs.settings import RuleSettings

Handler = Callable[[argparse.Namespace, RuleSettings], int]

# Commands that log nothing: their start leaves out structlog (the embedded database's path sets it up).
QUIET_COMMANDS = ("health", "jobs")


def dispatch(args: argparse.Namespace) -> int:
    settings = None
    try:
        settings = jobs.load_settings()
        if args.command not in QUIET_COMMANDS:
            configure_logging(settings)
        return handler_of(args)(args, settings)
    except (UsageError, ConfigError, MigrationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:
        return failed(error, args, settings)


def handler_of(args: argparse.Namespace) -> Handler:
    """The command's handler, `module:function` in the parser's table: only its module is imported."""
    module, _, function = args.handler.partition(":")
    handler: Handler = getattr(importlib.import_module(module), function)
    return handler


def failed(error: Exception, args: argparse.Namespace, settings: RuleSettings | None) -> int:
    refused = url_refused(error)
    if refused is not None:
        print(f"error: DATABASE_URL: {_without_password(refused, settings)}", file=sys.stderr)
        return EXIT_USAGE
    reason = database_failure(error)
    if reason is not None:  # unreachable, timed out, permission denied, …: one line, exit 1
        print(f"error: database: {_without_password(reason, settings)}", file=sys.stderr)
        return EXIT_FAILED
    return unexpected(error, args, settings)


# libpq's refusal of a connection option's value, before any server saw it (`core.connect.check_url`
# refuses the usual ones at start; this is for the others).
_URL_REFUSED = re.compile(r"(?:connection to server .*? failed: )?((?:invalid|could not match|could not parse "
                          r"network address) .*)")


def url_refused(error: Exception) -> str | None:
    if _engine_refused_url(error):
        return str(error).strip()
    reason = database_failure(error)
    if reason is None or getattr(getattr(error, "orig", None), "pgcode", None) is not None or "FATAL:" in reason:
        return None  # a server's answer (it has a SQLSTATE, or a FATAL), not libpq's
    match = _URL_REFUSED.fullmatch(reason)
    return match.group(1) if match else None


def _engine_refused_url(error: Exception) -> bool:
    """SQLAlchemy's ArgumentError while it created the engine: its own reading of DATABASE_URL (several
    hosts and ports that do not pair, …); it quotes no part of the URL."""
    sqlalchemy_errors = sys.modules.get("sqlalchemy.exc")  # not imported: no SQLAlchemy error can occur
    return (sqlalchemy_errors is not None and isinstance(error, sqlalchemy_errors.ArgumentError)
            and any(frame.f_code.co_name == "create_engine" for frame, _ in traceback.walk_tb(error.__traceback__)))


def unexpected(error: Exception, args: argparse.Namespace, settings: RuleSettings | None) -> int:
    """A bug: one line for the operator, the traceback at DEBUG once logging is set up (never before:
    structlog's default prints every local variable, the settings' password among them)."""
    if settings is not None:
        import structlog  # only now: `health` and `jobs` leave structlog out unless something breaks

        if args.command in QUIET_COMMANDS:
            configure_logging(settings)
        structlog.get_logger("rewards.cli").debug("unexpected error", exc_info=True)
    first_line = (str(error).strip().splitlines() or [""])[0]
    print(f"error: {type(error).__name__}: {_without_password(first_line, settings)}", file=sys.stderr)
    return EXIT_FAILED


def _without_password(text: str, settings: RuleSettings | None) -> str:
    return without_password(text, settings.database_url if settings is not None else os.environ.get("DATABASE_URL"))


def database_failure(error: Exception) -> str | None:
    """The first line of the driver's message when `error` is the database's (SQLAlchemy's DBAPIError,
    or a light read's ReadFailed, which carry the driver's error alike); None for any other error."""
    sqlalchemy_errors = sys.modules.get("sqlalchemy.exc")  # not imported: no SQLAlchemy error can occur
    if not isinstance(error, ReadFailed) and not (
            sqlalchemy_errors is not None and isinstance(error, sqlalchemy_errors.DBAPIError)):
        return None
    orig = error.orig
    return (str(orig).strip().splitlines() or ["unreachable"])[0] if orig else "unreachable"
