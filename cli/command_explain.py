"""`explain USER_ID`: for support, one user's referrals, reward months, ledger rows and next expiries."""
from __future__ import annotations

import argparse
from uuid import UUID

from cli.database import engine
from cli.explain import explain_user
from cli.usage import UsageError, as_of
from jobs.settings import RuleSettings


def cmd_explain(args: argparse.Namespace, settings: RuleSettings) -> int:
    try:
        user_id = UUID(args.user_id)
    except ValueError:
        raise UsageError(f"USER_ID: not a UUID: {args.user_id!r}") from None
    when = as_of(args)
    return explain_user(engine(settings), settings, user_id, when, as_json=args.json)
