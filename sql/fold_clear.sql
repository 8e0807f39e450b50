-- Empties the folded half $1 of the log, waiting at most $2 for answers that are
-- reading it; fails with lock_not_available when they take longer.
SELECT clear_pending_half($1, $2);
