-- Lets another session be the folder (see fold_lock.sql).
SELECT pg_advisory_unlock(7436021955162518310);
