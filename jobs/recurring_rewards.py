"""recurring-rewards: the referrer earns a reward for each paid month 1 .. N of a level-1 relationship.

For each relationship `r` with `level = 1`, `status = 'REWARDED'`, `rewarded_at` set and
`referrer_user_id <> referred_user_id`, and each paid month k in 1 .. REWARDS_RECURRING_MONTHS
(default 12): one `REFERRAL_RECURRING` row for `r.referrer_user_id`, `ref_id = r.id`, key
`recurring:{r.id}:{k}`, worth REWARDS_RECURRING_REWARD (default 10%) of the month's basis payment;
clawed back when that payment stops being PAID. Months, basis, holds, refunds and re-earning:
jobs/rewards.py; the statements: jobs/rewards.sql.
"""
from __future__ import annotations

from core.job import Job, RunContext
from jobs.rewards import STATS_LABELS, RewardRule, check_payments_feed, run_reward_job
from jobs.settings import RuleSettings


def rule_for(settings: RuleSettings) -> RewardRule:
    return RewardRule(
        level=1, ledger_type="REFERRAL_RECURRING", key_prefix="recurring", note_label="recurring",
        first_month=1, last_month=settings.recurring_months, amount=settings.recurring_reward,
        points_per_usd=settings.points_per_usd, hold_days=settings.reward_hold_days,
    )


def run(ctx: RunContext[RuleSettings]) -> None:
    run_reward_job(ctx, rule_for(ctx.settings))


JOB = Job(
    name="recurring-rewards",
    run=run,
    check=check_payments_feed,
    settings_used=("recurring_months", "recurring_reward", "points_per_usd", "reward_hold_days", "recovery",
                   "payments_table", "batch_size"),
    description="referrers earn a share of each paid month 1..N of the people they referred",
    stats_labels=STATS_LABELS,
)
