-- Migration 015: indexes that keep every batch of expire-pending and expire-points reading only
-- what it may change (measured with `python -m bench`, see bench/RESULTS.md).

-- expire-pending walks PENDING relationships in id order (keyset batches); without this index a
-- batch walked the primary key over every relationship between two due ones.
CREATE INDEX IF NOT EXISTS idx_urr_pending_id
    ON public.user_referral_relationships(id)
    WHERE status = 'PENDING';

-- expire-points sums a batch of users' whole ledgers; with the sums' columns in the index this is an
-- index-only scan of the batch's user_id range instead of heap pages spread over years (or a
-- sequential scan of the ledger per batch).
CREATE INDEX IF NOT EXISTS idx_upt_user_created_delta
    ON public.user_point_transactions(user_id) INCLUDE (created_at, delta);
