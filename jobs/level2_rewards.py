"""level2-rewards: the referrer's referrer earns a reward for each paid month 0 .. N-1.

The level-2 beneficiary of a relationship `r` (referred user C) is, for `r.level = 1` (B invited
C), the referrer A of B's own relationship `r0` when `r0.level = 1` and `r0.status IN ('ACTIVE',
'REWARDED')`; for `r.level = 2`, `r.referrer_user_id`. There is none when that user is C, or for a
level-1 `r` B (a cycle or a self-referral). For each such `r` with `status = 'REWARDED'` and
`rewarded_at` set, and each paid month k in 0 .. REWARDS_L2_MONTHS - 1 (default 6): one
`REFERRAL_L2` row for the beneficiary, `ref_id = r.id`, key `l2:{r.id}:{k}`, worth
REWARDS_L2_REWARD (default 5%) of the month's basis payment; clawed back when that payment stops
being PAID (the recurring reward of the same month stands on the same payment). Months, basis,
holds, refunds and re-earning: jobs/rewards.py; the statements: jobs/rewards.sql.
"""
from __future__ import annotations

from core.job import Job, RunContext
from jobs.rewards import STATS_LABELS, RewardRule, check_payments_feed, run_reward_job
from jobs.settings import RuleSettings


def rule_for(settings: RuleSettings) -> RewardRule:
    return RewardRule(
        level=2, ledger_type="REFERRAL_L2", key_prefix="l2", note_label="level-2",
        first_month=0, last_month=settings.l2_months - 1, amount=settings.l2_reward,
        points_per_usd=settings.points_per_usd, hold_days=settings.reward_hold_days,
    )


def run(ctx: RunContext[RuleSettings]) -> None:
    run_reward_job(ctx, rule_for(ctx.settings))


JOB = Job(
    name="level2-rewards",
    run=run,
    check=check_payments_feed,
    settings_used=("l2_months", "l2_reward", "points_per_usd", "reward_hold_days", "recovery", "payments_table",
                   "batch_size"),
    description="referrers' referrers earn a share of each paid month 0..N-1 of level-2 referrals",
    stats_labels=STATS_LABELS,
)
