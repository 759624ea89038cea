"""`--shape random`: a dataset's shape drawn from wide ranges by the seed (issue 26, target 1).

The two fixed shapes (`default`, `skewed`, cli/sample_data.py) are the ones the jobs were tuned on. A
random shape is drawn per seed, every parameter independently from its range (RANGES), so that over a
few seeds the jobs meet worlds nobody chose: one referrer with tens of thousands of invites or none with
more than a handful, almost every relationship REWARDED or almost none, subscriptions of one month or
of two years, a fifth of the payments failed or refunded, payments late by days or by months (so a
month is paid twice or not at all), one ledger row per user or fifty, long referral chains.

`draw(seed)` is a pure function of the seed (Python's `random.Random`, whose `random()` is the same on
every platform and version), so the same seed always gives the same shape, and the shape, with the
seed, gives the same rows (bench/random_world.sql hashes (seed, stream, entity) as sample_data does).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from typing import Any

# Every parameter's range, inclusive: (low, high). Integers where both ends are ints.
RANGES: dict[str, tuple[float, float]] = {
    # who refers whom (invites per referrer from 1 to thousands, chain depth)
    "unreferred_share": (0.01, 0.50),      # users who came on their own (referrers never referred)
    "influencers": (1, 200),               # users who receive the influencer share of referrals
    "influencer_share": (0.0, 0.60),       # of referrals, to the influencers (the first gets the most)
    "chain_share": (0.0, 0.60),            # of referrals, to one of the 3 users just before (long chains)
    "referrer_bias": (1.0, 4.0),           # the rest: an earlier user n * u^bias (1 uniform, 4 the earliest)
    "level2_share": (0.0, 0.03),           # relationships stored at level 2 (grandparent as referrer)
    "self_referral_share": (0.0, 0.002),   # referred by themselves
    # relationship statuses and date spreads
    "activated_share": (0.20, 0.98),       # relationships ever activated
    "rewarded_share": (0.10, 0.98),        # of those activated, the first payment made (REWARDED)
    "expired_share": (0.0, 1.0),           # of the never activated older than 120 days, EXPIRED (else PENDING)
    "activation_days": (0.1, 60.0),        # activation within this many days of sign-up
    "reward_days": (0.1, 120.0),           # first payment within this many days of activation
    "signup_growth": (0.5, 3.0),           # user n signs up at as_of - span * (1 - (n/N)^(1/growth))
    # payments (0-24 per relationship; refund and failure rates 0-20 %; late by days to months)
    "mean_months": (0.5, 20.0),            # mean subscription length (exponential), months
    "max_months": (1, 24),                 # subscription length cap
    "no_payment_share": (0.0, 0.20),       # REWARDED relationships without a single payment in the feed
    "failure_rate": (0.0, 0.20),           # payments after the first that FAIL
    "retry_rate": (0.0, 1.0),              # of the failed, retried and PAID two days later
    "refund_rate": (0.0, 0.20),            # payments after the first REFUNDED
    "late_share": (0.0, 0.50),             # payments paid late
    "late_max_days": (1, 120),             # by up to this many days (into a later month, or two)
    "topups_max": (0, 3),                  # up to this many extra PAID top-ups a month
    # the app's ledger (rows per user 1-50, redemption share)
    "ledger_rows_per_user": (1.0, 50.0),   # aimed at (the realised figure is in the dataset's counts)
    "grant_share": (0.0, 1.0),             # of the aimed rows, earnings as ADMIN_GRANTs (the rest redemptions)
    "redemption_share": (0.0, 0.60),       # of each earning, spent in redemptions (each up to 1.5x its share)
    "correction_share": (0.0, 0.10),       # earnings corrected by -10 %
}
_LOG_SCALE = {"influencers", "ledger_rows_per_user", "late_max_days", "mean_months", "activation_days",
              "reward_days"}


@dataclass(frozen=True)
class RandomShape:
    seed: int
    unreferred_share: float
    influencers: int
    influencer_share: float
    chain_share: float
    referrer_bias: float
    level2_share: float
    self_referral_share: float
    activated_share: float
    rewarded_share: float
    expired_share: float
    activation_days: float
    reward_days: float
    signup_growth: float
    mean_months: float
    max_months: int
    no_payment_share: float
    failure_rate: float
    retry_rate: float
    refund_rate: float
    late_share: float
    late_max_days: int
    topups_max: int
    ledger_rows_per_user: float
    grant_share: float
    redemption_share: float
    correction_share: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def params(self) -> dict[str, Any]:
        """Every field but the seed, prefixed `s_`: what bench/random_world.sql's own statements read (the app's
        ledger rows; the planning and payment statements are sample_data.sql's, see random_world.sample_shape)."""
        return {f"s_{name}": value for name, value in asdict(self).items() if name != "seed"}

    def describe(self) -> str:
        """One line, for the progress log and the report."""
        parts = []
        for name, value in asdict(self).items():
            if name == "seed":
                continue
            parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
        return f"seed {self.seed}: " + ", ".join(parts)


def _draw_one(rng: random.Random, name: str) -> float | int:
    low, high = RANGES[name]
    u = rng.random()
    if name in _LOG_SCALE and low > 0:
        value = low * (high / low) ** u  # spread over orders of magnitude
    else:
        value = low + (high - low) * u
    if isinstance(low, int) and isinstance(high, int):
        return min(int(high), max(int(low), int(round(value))))
    return round(value, 4)


def draw(seed: int) -> RandomShape:
    """The shape of seed `seed`: each parameter drawn in RANGES' order from one generator of the seed."""
    rng = random.Random(f"rewards-bench-shape:{seed}")
    values: dict[str, Any] = {name: _draw_one(rng, name) for name in RANGES}
    return RandomShape(seed=seed, **values)


def field_names() -> list[str]:
    return [f.name for f in fields(RandomShape) if f.name != "seed"]
