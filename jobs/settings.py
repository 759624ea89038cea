"""The rules' settings: `RuleSettings` adds them to the machinery's `CoreSettings`.

Each is read from `REWARDS_<NAME>` (or `.env`) and validated at start like the core ones: a bad
value stops the program with exit code 2 and one line naming the variable. The registry
(`jobs/__init__.py`) adds one schedule per registered job and is what the face loads.
Job modules type their settings against `RuleSettings`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from core.settings import CoreSettings, env_name

LEDGER_INT_MAX = 2**31 - 1

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


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


class RuleSettings(CoreSettings):
    # expire-pending
    pending_expiry_days: int = Field(default=90, ge=1, le=36_500)
    # recurring-rewards and level2-rewards
    recurring_months: int = Field(default=12, ge=0, le=1200)
    l2_months: int = Field(default=6, ge=0, le=1200)
    recurring_reward: Annotated[RewardAmount, NoDecode] = RewardAmount(percent=Decimal("10"))
    l2_reward: Annotated[RewardAmount, NoDecode] = RewardAmount(percent=Decimal("5"))
    points_per_usd: Decimal = Field(default=Decimal("100"), ge=0, le=LEDGER_INT_MAX, allow_inf_nan=False)
    reward_hold_days: int = Field(default=0, ge=0, le=365)
    # on: unrecovered clawback points are recovered from the beneficiary's later balance (docs/rules.md)
    recovery: bool = True
    payments_table: str = "public.user_subscription_payments"
    # expire-points
    points_expiry_months: int = Field(default=12, ge=0, le=1200)
    # expiring-soon: the CRM is told of points expiring in (as_of, as_of + this many days]; 0 = off
    expiry_notice_days: int = Field(default=30, ge=0, le=366)
    # reconcile: repair the cache too; wait this long for a running ledger writer of the pipeline, then exit 3
    reconcile_repair: bool = False
    reconcile_wait_seconds: int = Field(default=600, ge=0, le=86_400)
    # the journal (close and reconcile): the counter-account of the points liability per ledger type,
    # `TYPE=Account name` pairs separated by commas; a type not named takes its default (jobs/journal.py)
    journal_accounts: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)

    @field_validator("recurring_reward", "l2_reward", mode="before")
    @classmethod
    def _reward(cls, value: object) -> RewardAmount:
        return value if isinstance(value, RewardAmount) else RewardAmount.parse(str(value))

    @field_validator("journal_accounts", mode="before")
    @classmethod
    def _journal_accounts(cls, value: object) -> object:
        from jobs.journal import parse_accounts  # only when the variable is set: the registry loads this module

        return parse_accounts(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _rewards_can_be_stored(self) -> RuleSettings:
        """A percentage whose smallest reward (of a 1-cent payment) is already over INT never pays."""
        for name, amount in (("recurring_reward", self.recurring_reward), ("l2_reward", self.l2_reward)):
            if amount.percent and amount.percent * self.points_per_usd / 10000 > LEDGER_INT_MAX:
                raise ValueError(f"{env_name(name)}={amount} with REWARDS_POINTS_PER_USD={self.points_per_usd}"
                                 f" gives more than {LEDGER_INT_MAX} points for a 1-cent payment: no reward"
                                 f" could ever be stored")
        return self

    @field_validator("recovery", mode="before")
    @classmethod
    def _on_or_off(cls, value: object) -> object:
        """REWARDS_RECOVERY is `on` or `off` (true/false are accepted too)."""
        if isinstance(value, str) and value.strip().lower() not in ("on", "off", "true", "false"):
            raise ValueError("must be on or off")
        return value

    @field_validator("payments_table")
    @classmethod
    def _payments_table(cls, value: str) -> str:
        quote_table_name(value)
        return value

    @property
    def payments_table_sql(self) -> str:
        return quote_table_name(self.payments_table)
