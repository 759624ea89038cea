#!/usr/bin/env bash
# Revert each of issue 23's fixes in a throwaway worktree and run the random-history test against it:
# every mutation must make it fail. Usage: bash tests/mutations/run.sh [EXAMPLES] (needs TEST_DATABASE_URL or the default local server)
set -u
examples=${1:-40}
base=$(cd "$(dirname "$0")/../.." && pwd)
out=${MUTATIONS_OUT:-/tmp/rewards-mutations}/results.txt; mkdir -p "$(dirname "$out")"
: > "$out"
mutate() {  # NAME FILE PYTHON-REPLACEMENT-SCRIPT
  name=$1; file=$2; script=$3
  dir=$(mktemp -d -u /tmp/rewards-mut-$name.XXXX)
  git -C $base worktree remove --force "$dir" >/dev/null 2>&1
  git -C $base worktree add -q --detach "$dir" HEAD
  (cd "$dir" && python3 -c "$script" "$file") || { echo "$name: mutation did not apply" >> "$out"; return; }
  (cd "$dir" && git diff --stat | tail -1) >> "$out"
  start=$(date +%s)
  (cd "$dir" && TEST_DATABASE_URL=${TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres} REWARDS_ANY_HISTORY_EXAMPLES=$examples \
     $base/.venv/bin/python -m pytest tests/integration/test_rewards_any_history.py -q -n 2 -p no:cacheprovider \
     -k "any_history_ends_exact" > $(dirname "$out")/$name.log 2>&1)
  rc=$?
  echo "$name: pytest exit $rc ($(tail -1 $(dirname "$out")/$name.log)) in $(( $(date +%s) - start )) s" >> "$out"
  git -C $base worktree remove --force "$dir"
}
R='import sys; p=sys.argv[1]; s=open(p).read(); old, new = OLD, NEW; assert old in s, "no match"; open(p,"w").write(s.replace(old, new))'
m() { echo "${R/OLD, NEW/$1}"; }
# 1. a payment moved out of its month keeps its reward (the basis rule's month test reverted)
mutate moved-payment jobs/rewards.sql "$(m "'WHEN NOT (grid.rewarded_at IS NULL', 'WHEN false AND NOT (grid.rewarded_at IS NULL'")"
# 1b. a corrected amount keeps its reward
mutate corrected-amount jobs/rewards.sql "$(m "'WHEN b.amount_cents <> w.basis_amount_cents', 'WHEN false'")"
# 2. no recovery: unrecovered points are written off
mutate no-recovery jobs/rewards.py "$(m "'            if ctx.settings.recovery:', '            if False:'")"
# 3. bad feed rows read as they are
mutate raw-feed jobs/rewards.py "$(m "'    if conn.execute(_queries[\"feed_is_clean\"], {\"feed\": feed}).scalar():', '    if True:'")"
# 5a. a clawback counted as a debit of the oldest points (expire-points)
mutate clawback-as-debit jobs/expire_points.sql "$(m "'ledger.due + coalesce(young_clawbacks.points, 0) AS due', 'ledger.due AS due'")"
# 5b. a clawback takes expired points again from other points
mutate clawback-ignores-expiry jobs/rewards.sql "$(m "'SELECT c.idempotency_key, c.user_id, least(c.points, coalesce(e.points, 0)) AS expired,\n           c.points - least(c.points, coalesce(e.points, 0)) AS points', 'SELECT c.idempotency_key, c.user_id, 0 AS expired,\n           c.points AS points'")"
# 5c. a run for a past as-of claws back rewards dated after it
mutate past-as-of-clawback jobs/rewards.sql "$(m "'    WHERE s.rewarded_at <= :as_of\n      AND (s.broken IS NOT NULL OR s.holding_rank > 1)', '    WHERE (s.broken IS NOT NULL OR s.holding_rank > 1)'")"
# 6. months identified by relationship row: a re-inserted relationship pays again
mutate month-by-relationship jobs/rewards.sql "$(m "'WHERE s.month_owner = o.referred_user_id AND s.month = o.k)', 'WHERE s.month_owner = o.relationship_id AND s.month = o.k)'")"
cat "$out"
