"""level2-rewards: the referrer's referrer earns a reward for each paid month 0 .. N-1.

The level-2 beneficiary of a relationship `r` (referred user C) is, for `r.level = 1` (B invited
C), the referrer A of B's own relationship `r0` when `r0.level = 1` and `r0.status IN ('ACTIVE',
'REWARDED')`; for `r.level = 2`, `r.referrer_user_id`. There is none when that user is C, or for a
level-1 `r` B (a cycle or a self-referral). For each such `r` with `status = 'REWARDED'` and
`rewarded_at` set, and each paid month k in 0 .. REWARDS_L2_MONTHS - 1 (default 6): one
`REFERRAL_L2` row for the beneficiary, `ref_id = r.id`, key `l2:{r.id}:{k}`, worth
REWARDS_L2_REWARD (default 5%) of the month's basis payment. Month windows, basis payments,
amounts and the scan restriction are in core/rewards.py; bad data is skipped and counted.
"""
from __future__ import annotations

from core.job import Job, RunContext
from core.rewards import RewardQueries, RewardRule, run_reward_job
from core.settings import Settings
from core.sql import Queries

_queries = Queries(__file__)

LEDGER_TYPE = "REFERRAL_L2"


def _with_beneficiary(relationships: str) -> str:
    return _queries.raw("with_beneficiary").format(relationships=relationships)


def rule_for(settings: Settings) -> RewardRule:
    return RewardRule(
        job=JOB.name, ledger_type=LEDGER_TYPE, key_prefix="l2", note_label="level-2",
        first_month=0, last_month=settings.l2_months - 1,
        amount=settings.l2_reward, amount_variable="REWARDS_L2_REWARD",
        months_variable="REWARDS_L2_MONTHS", points_per_usd=settings.points_per_usd,
    )


QUERIES = RewardQueries(
    count_to_scan=_queries["count_to_scan"],
    count_missing_rewarded_at=_queries["count_missing_rewarded_at"],
    select_batch=_queries.render("select_batch", with_beneficiary=_with_beneficiary("batch")),
    relationships=_queries.raw("relationships").format(
        with_beneficiary=_with_beneficiary(_queries.raw("batch_range"))),
)


def run(ctx: RunContext) -> None:
    run_reward_job(ctx, rule_for(ctx.settings), QUERIES)


JOB = Job(
    name="level2-rewards",
    run=run,
    settings_used=("l2_months", "l2_reward", "points_per_usd", "payments_table", "batch_size"),
    description="referrers' referrers earn a share of each paid month 0..N-1 of level-2 referrals",
)
