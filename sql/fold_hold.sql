-- Starts folding the sealed half $1: waits for the transactions that may still
-- append to it, and keeps new ones out until the fold ends.
--
-- A fold need not wait for its commit to reach the disk: lost in a crash, it
-- is lost whole, rollups and log together, and the half is folded again.
SELECT hold_pending_half($1), set_config('synchronous_commit', 'off', true);
