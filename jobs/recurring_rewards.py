"""recurring-rewards: the referrer earns a reward for each paid month 1 .. N of a level-1 relationship.

For each relationship `r` with `level = 1`, `status = 'REWARDED'`, `rewarded_at` set and
`referrer_user_id <> referred_user_id`, and each paid month k in 1 .. REWARDS_RECURRING_MONTHS
(default 12): one `REFERRAL_RECURRING` row for `r.referrer_user_id`, `ref_id = r.id`, key
`recurring:{r.id}:{k}`, worth REWARDS_RECURRING_REWARD (default 10%) of the month's basis payment.
Month windows, basis payments, amounts and the scan restriction are in core/rewards.py; a
REWARDED relationship without `rewarded_at`, or a self-referral, is skipped and counted.
"""
from __future__ import annotations

from core.job import Job, RunContext
from core.rewards import RewardQueries, RewardRule, run_reward_job
from core.settings import Settings
from core.sql import Queries

_queries = Queries(__file__)

LEDGER_TYPE = "REFERRAL_RECURRING"


def rule_for(settings: Settings) -> RewardRule:
    return RewardRule(
        job=JOB.name, ledger_type=LEDGER_TYPE, key_prefix="recurring", note_label="recurring",
        first_month=1, last_month=settings.recurring_months,
        amount=settings.recurring_reward, amount_variable="REWARDS_RECURRING_REWARD",
        months_variable="REWARDS_RECURRING_MONTHS", points_per_usd=settings.points_per_usd,
    )


QUERIES = RewardQueries(
    count_to_scan=_queries["count_to_scan"],
    count_missing_rewarded_at=_queries["count_missing_rewarded_at"],
    select_batch=_queries["select_batch"],
    relationships=_queries.raw("relationships"),
)


def run(ctx: RunContext) -> None:
    run_reward_job(ctx, rule_for(ctx.settings), QUERIES)


JOB = Job(
    name="recurring-rewards",
    run=run,
    settings_used=("recurring_months", "recurring_reward", "points_per_usd", "payments_table", "batch_size"),
    description="referrers earn a share of each paid month 1..N of the people they referred",
)
