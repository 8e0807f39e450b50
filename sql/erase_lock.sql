-- Waits for a fold under way to end and keeps the folder out until this
-- transaction ends: the key of fold_lock.sql. A fold holding the learner's
-- pending events in its batch would otherwise add them to the rollups after
-- the erasure took them out of the log, or while it subtracts what was folded.
SELECT pg_advisory_xact_lock(7436021955162518310);
